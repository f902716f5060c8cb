"""Backbones (SonoNet family, SA-SonoNet, torchvision ResNet-18/50) and the multi-head LightningModule.

``BACKBONES`` is the SonoNet factories (:mod:`~wsca_lightning.models.sononet`); every name ``backbone.name`` accepts
is in ``BACKBONE_NAMES`` / ``BACKBONE_REGISTRY`` (:mod:`~wsca_lightning.models.backbones`). Pretrained weights of
every backbone load through :mod:`~wsca_lightning.models.weights` (strict key check, one first-conv adapter).
"""

from wsca_lightning.models.backbones import (
    BACKBONE_NAMES,
    BACKBONE_REGISTRY,
    BackboneSpec,
    build_backbone,
    load_backbone_weights,
)
from wsca_lightning.models.module import MultiHeadModule
from wsca_lightning.models.resnet import ResNetBackbone, build_resnet, load_resnet_weights
from wsca_lightning.models.sononet import (
    BACKBONES,
    SonoNet,
    build_sononet,
    check_input_size,
    load_sononet_weights,
    sa_sononet32,
    sononet16,
    sononet32,
    sononet64,
)

__all__ = [
    "BACKBONES",
    "BACKBONE_NAMES",
    "BACKBONE_REGISTRY",
    "BackboneSpec",
    "MultiHeadModule",
    "ResNetBackbone",
    "SonoNet",
    "build_backbone",
    "build_resnet",
    "build_sononet",
    "check_input_size",
    "load_backbone_weights",
    "load_resnet_weights",
    "load_sononet_weights",
    "sa_sononet32",
    "sononet16",
    "sononet32",
    "sononet64",
]

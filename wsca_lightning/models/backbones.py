"""The one registry of backbones :class:`~wsca_lightning.models.MultiHeadModule` can use (``backbone.name``).

=============  ======================  ===========  =============  ==================================================
name           family                  d (pooled)   input size     ``backbone.pretrained``
=============  ======================  ===========  =============  ==================================================
sononet16      SonoNet                 128          multiples      public SonoNet layout (``SonoNet16.pth``),
sononet32                              256          of 16          features only
sononet64                              512
resnet18       torchvision ResNet      512          >= 32          torchvision layout (``resnet18().state_dict()``),
resnet50                               2048                        ``fc.*`` ignored, RGB ``conv1`` summed
=============  ======================  ===========  =============  ==================================================

Every backbone offers ``forward_features(x) -> (B, C, h, w)`` and ``out_channels`` (= C); SonoNets also offer
``forward_adaptation`` for ``embedding: adaptation_map`` (``spec.adaptation_map``). The configs in
``conf/model/`` use these names; hparams store only the name, so checkpoints stay plain Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from wsca_lightning.models.resnet import (
    RESNET_DOWNSAMPLING,
    RESNETS,
    build_resnet,
    check_resnet_input_size,
    load_resnet_weights,
)
from wsca_lightning.models.sononet import (
    BACKBONES as SONONETS,
    DOWNSAMPLING as SONONET_DOWNSAMPLING,
    build_sononet,
    check_input_size,
    load_sononet_weights,
)
from wsca_lightning.models.weights import WeightSource

__all__ = [
    "BACKBONE_NAMES",
    "BACKBONE_REGISTRY",
    "BackboneSpec",
    "build_backbone",
    "load_backbone_weights",
]


@dataclass(frozen=True)
class BackboneSpec:
    """What the module needs to know about one backbone name.

    Attributes:
        family: ``sononet`` or ``resnet``.
        downsampling: total stride of the feature map (16 or 32).
        adaptation_map: whether ``embedding: adaptation_map`` is available (SonoNet's 1x1 adaptation head).
        check_input_size: ``(height, width) -> None``, raises :class:`~wsca_lightning.problems.ConfigError` (one
            problem, no key) naming the size when it does not fit.
        build: ``(in_channels, adaptation_channels) -> nn.Module`` (``adaptation_channels`` only for SonoNet).
        load_weights: ``(model, state dict or path) -> None``, strict, loads nothing on failure; a pretrained first
            conv with other input channels goes through the backbone's
            :class:`~wsca_lightning.models.weights.FirstConvAdapter`.
    """

    family: str
    downsampling: int
    adaptation_map: bool
    check_input_size: Callable[[int, int], None]
    build: Callable[[int, int | None], nn.Module]
    load_weights: Callable[[nn.Module, WeightSource], None]


def _sononet(name: str) -> BackboneSpec:
    return BackboneSpec(
        family="sononet",
        downsampling=SONONET_DOWNSAMPLING,
        adaptation_map=True,
        check_input_size=check_input_size,
        build=lambda in_channels, adaptation_channels=None: build_sononet(name, in_channels, adaptation_channels),
        # the module builds its own adaptation head (K from the primary task), so only features are loaded
        load_weights=lambda model, source: load_sononet_weights(model, source, include_adaptation=False),
    )


def _resnet(name: str) -> BackboneSpec:
    def build(in_channels: int, adaptation_channels: int | None = None) -> nn.Module:
        if adaptation_channels is not None:
            raise ValueError(f"{name} has no adaptation head; embedding: adaptation_map needs a SonoNet backbone")
        return build_resnet(name, in_channels)

    return BackboneSpec(
        family="resnet",
        downsampling=RESNET_DOWNSAMPLING,
        adaptation_map=False,
        check_input_size=check_resnet_input_size,
        build=build,
        load_weights=load_resnet_weights,
    )


#: Backbone name -> spec; ``backbone.name`` must be one of these (in this order in error messages).
BACKBONE_REGISTRY: dict[str, BackboneSpec] = {
    **{name: _sononet(name) for name in SONONETS},
    **{name: _resnet(name) for name in RESNETS},
}
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONE_REGISTRY)


def build_backbone(name: str, in_channels: int = 1, adaptation_channels: int | None = None) -> nn.Module:
    """Build a registered backbone by name (random init; nothing is downloaded)."""
    if name not in BACKBONE_REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    return BACKBONE_REGISTRY[name].build(in_channels, adaptation_channels)


def load_backbone_weights(name: str, model: nn.Module, source: WeightSource) -> None:
    """Load ``backbone.pretrained`` (a state dict or a path to one) into ``model``, built as backbone ``name``."""
    if name not in BACKBONE_REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    BACKBONE_REGISTRY[name].load_weights(model, source)

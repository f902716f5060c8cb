"""Backbones (SonoNet family, SA-SonoNet) and the multi-head LightningModule."""

from wsca_lightning.models.module import MultiHeadModule
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
    "MultiHeadModule",
    "SonoNet",
    "build_sononet",
    "check_input_size",
    "load_sononet_weights",
    "sa_sononet32",
    "sononet16",
    "sononet32",
    "sononet64",
]

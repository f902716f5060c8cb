"""The small interface through which the WSC callback reads any LightningModule.

A module works with :class:`~wsca_lightning.callbacks.WeightSpaceCorrelation` when it provides:

* ``wsc_primary_task: str`` -- the name of the primary (clinical) head;
* ``wsc_embed(batch) -> Tensor`` -- the embedding ``z`` (``(B, d)``) of a collated batch of the training dataset, the
  very vector the heads take as input (the callback calls it in eval mode under ``torch.inference_mode``);
* ``wsc_head_weights() -> Mapping[str, HeadWeights]`` -- every head's weight matrix ``W`` (``(C, d)``; biases are
  ignored by WSC) with one name per row;
* ``wsc_targets(batch) -> Mapping[str, Tensor]`` -- the integer labels (``(B,)``, ``-1`` = missing) of every task in
  a collated batch, keyed by head name: the probes, the null and the encodability gate are fitted on them.

Optionally ``wsc_protocol: str`` names how the heads came to exist (``multitask``, ``probe_online``...); it is copied
into ``wsc_summary.json``; and ``wsc_task_classes() -> Mapping[str, Sequence[str]]`` names the classes of metadata
tasks that have labels in ``wsc_targets`` but no head (analysed with ``protocol="probe_refit"``).
:class:`~wsca_lightning.models.MultiHeadModule` implements all of it; a module of your own needs only these four
members. A module without them is read by attribute paths instead
(:class:`wsca_lightning.attach.AttributeView`, the callback's ``head=...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

from torch import Tensor


@dataclass(frozen=True)
class HeadWeights:
    """A linear head's weight matrix (``(C, d)``) and one name per row (usually the class names)."""

    weight: Tensor
    row_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.weight.ndim != 2:
            raise ValueError(f"head weight must be 2-D (rows, d), got shape {tuple(self.weight.shape)}")
        if len(self.row_names) != self.weight.shape[0]:
            raise ValueError(f"{self.weight.shape[0]} weight rows but {len(self.row_names)} row names")


@runtime_checkable
class SupportsWSC(Protocol):
    """What the WSC callback needs from a LightningModule (see the module docstring)."""

    wsc_primary_task: str

    def wsc_embed(self, batch: Any) -> Tensor: ...

    def wsc_head_weights(self) -> Mapping[str, HeadWeights]: ...

    def wsc_targets(self, batch: Any) -> Mapping[str, Tensor]: ...

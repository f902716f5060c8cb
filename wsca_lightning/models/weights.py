"""Loading a pretrained state dict into a backbone: reading the file, the strict key check, and the one first-conv
adapter every backbone uses when the pretrained first conv has other input channels than the model.

Every backbone's ``load_*_weights`` reads its source with :func:`read_state_dict`, picks the keys it loads, and
hands them to :func:`load_checked`, which validates everything before copying anything (a failed load leaves the
model unchanged).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["FirstConvAdapter", "WeightSource", "key_problems", "load_checked", "read_state_dict"]

#: A state dict or the path of a file holding one (``backbone.pretrained``).
WeightSource = Mapping[str, Tensor] | str | os.PathLike

_MAX_LISTED = 10


def read_state_dict(source: Mapping[str, Any] | str | os.PathLike) -> tuple[dict[str, Tensor], str]:
    """The state dict as a plain dict and a short description of where it came from (for error messages).

    A path is read with ``torch.load(path, map_location="cpu", weights_only=True)``; a ``{"state_dict": {...}}``
    wrapper is unwrapped. ``ValueError`` names the source when it is not a non-empty mapping of names to tensors;
    a missing file raises ``FileNotFoundError``.
    """
    if isinstance(source, (str, os.PathLike)):
        where = f"file {os.fspath(source)!r}"
        try:
            # weights_only: a weight file is data, never code to run.
            loaded = torch.load(source, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:  # unpickling errors come in several types depending on the content
            raise ValueError(
                f"{where} is not a readable PyTorch state dict: {type(error).__name__}: {error}") from error
    else:
        where = "the given state dict"
        loaded = source
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{where} is not a state dict (a mapping of names to tensors), got {type(loaded).__name__}")
    bad = [k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if not loaded or bad:
        detail = f"entries that are not name -> tensor: {_listing(bad)}" if bad else "it is empty"
        raise ValueError(f"{where} is not a state dict of tensors: {detail}")
    return dict(loaded), where


def key_problems(
    model_state: Mapping[str, Any], file_state: Mapping[str, Any], mismatched: Sequence[str] = ()
) -> list[str]:
    """The ``missing keys: ...`` / ``unexpected keys: ...`` / ``shape mismatches: ...`` lines of a strict load
    (public files may lack ``num_batches_tracked``; ``mismatched`` are ``"key: file ... vs model ..."`` lines)."""
    missing = [k for k in model_state if k not in file_state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in file_state if k not in model_state]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        more = f"; ... ({len(mismatched)} in total)" if len(mismatched) > _MAX_LISTED else ""
        problems.append(f"shape mismatches: {'; '.join(mismatched[:_MAX_LISTED])}{more}")
    return problems


def _listing(keys: list[Any]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = f", ... ({len(keys)} in total)" if len(keys) > _MAX_LISTED else f" ({len(keys)} in total)"
    return shown + more


@dataclass(frozen=True)
class FirstConvAdapter:
    """How a backbone takes a pretrained first conv whose input channels differ from the model's.

    The file's filters are summed over their ``file_channels`` input channels into one filter (for a 1-channel
    file, the filter itself), which goes into the model's input channel 0, the image. Summing RGB filters gives a
    grayscale image the activation the pretrained network gives that image replicated to RGB. The model's other
    input channels (segmentation maps, spacing planes) either keep their initialisation (``"keep"``) or start at
    zero (``"zero"``: the output at the start equals the pretrained network's on the image alone). Every other
    shape difference stays a mismatch.

    Attributes:
        key: the first conv's weight in the state dict.
        file_channels: the pretrained filters' input channels this adapter takes (1 grayscale, 3 RGB).
        other_channels: ``"keep"`` or ``"zero"``, what the model's input channels 1.. hold after the load.
    """

    key: str
    file_channels: int
    other_channels: Literal["keep", "zero"]

    def fits(self, key: str, file_weight: Tensor, model_shape: torch.Size) -> bool:
        """Whether this adapter loads ``file_weight`` into a ``model_shape`` weight of a different shape: the first
        conv, ``file_channels`` inputs in the file, other inputs in the model, every other dimension equal."""
        return (
            key == self.key
            and file_weight.dim() == 4
            and file_weight.shape[1] == self.file_channels
            and model_shape[1] != self.file_channels
            and (file_weight.shape[0], *file_weight.shape[2:]) == (model_shape[0], *model_shape[2:])
        )

    def copy_into(self, model_weight: Tensor, file_weight: Tensor) -> None:
        """Write the summed filter into input channel 0 of ``model_weight`` (in place, no autograd)."""
        if self.other_channels == "zero":
            model_weight.zero_()
        model_weight[:, :1].copy_(file_weight.sum(dim=1, keepdim=True))


def load_checked(
    model_state: Mapping[str, Tensor],
    file_state: Mapping[str, Tensor],
    first_conv: FirstConvAdapter,
    describe: str,
) -> None:
    """Copy ``file_state`` into ``model_state`` (tensors of the model's ``state_dict()``), strictly: every model
    key in the file (``num_batches_tracked`` may be absent), every file key in the model, equal shapes except what
    ``first_conv`` adapts. Everything is checked first; ``ValueError("<describe>: <problems>")`` leaves the model
    unchanged."""
    adapted: set[str] = set()
    mismatched = []
    for key, value in file_state.items():
        if key not in model_state or value.shape == model_state[key].shape:
            continue
        target = model_state[key].shape
        if first_conv.fits(key, value, target):
            adapted.add(key)
            continue
        mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(target)}")
    problems = key_problems(model_state, file_state, mismatched)
    if problems:
        raise ValueError(f"{describe}: " + "; ".join(problems))

    # model.state_dict() tensors share storage with the parameters and buffers, so copy_ writes into the model.
    with torch.no_grad():
        for key, value in file_state.items():
            if key in adapted:
                first_conv.copy_into(model_state[key], value)
            else:
                model_state[key].copy_(value)

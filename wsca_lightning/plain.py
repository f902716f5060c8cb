"""Plain Python config values: what hyperparameters may hold so checkpoints load with ``weights_only=True``."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def to_plain(value: Any, key: str = "value") -> Any:
    """Deep-copy ``value`` into plain dicts, lists and scalars (omegaconf containers included, without importing
    omegaconf), or raise ``ValueError`` naming the key of the first value that is none of these."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [to_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{key}: {type(value).__name__} is not a plain config value (use numbers, strings, lists, dicts)")


def is_int(value: Any) -> bool:
    """An integer config value (``True`` is an ``int`` to Python, not to a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float config value (``True`` is a number to Python, not to a config)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: empty for None and non-finite floats, floats with 6 significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value

"""The checks of plain datamodule options (counts, ranges, switches), each worded once for every datamodule.

Each returns the :class:`~wsca_lightning.problems.Problem` list of its options (empty when valid), keyed by the
option's name, so a datamodule collects them all and raises them at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wsca_lightning.plain import is_int
from wsca_lightning.problems import Problem

__all__ = ["integer_problems", "integer_range_problems", "is_number", "switch_problems"]


def integer_problems(limits: Sequence[tuple[str, Any, int]]) -> list[Problem]:
    """``<key>: must be an integer >= <minimum>, got ...`` for each ``(key, value, minimum)`` that fails."""
    return [Problem(key, f"must be an integer >= {minimum}, got {value!r}") for key, value, minimum in limits
            if not is_int(value) or value < minimum]


def integer_range_problems(key: str, value: object, limits: tuple[int, int]) -> list[Problem]:
    """``<key>: must be an integer in [low, high], got ...`` unless ``value`` is such an integer."""
    if not is_int(value) or not limits[0] <= value <= limits[1]:  # type: ignore[operator]
        return [Problem(key, f"must be an integer in [{limits[0]}, {limits[1]}], got {value!r}")]
    return []


def switch_problems(switches: Sequence[tuple[str, Any]]) -> list[Problem]:
    """``<key>: must be true or false, got ...`` for each ``(key, value)`` that is no bool."""
    return [Problem(key, f"must be true or false, got {value!r}") for key, value in switches
            if not isinstance(value, bool)]


def is_number(value: object) -> bool:
    """An int or float config value (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)

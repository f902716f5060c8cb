"""The numbers of the report: values read defensively from summaries, ranks, Spearman's rho, mean and sd, the
verdict's p and significance, and the natural order of run names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from wsca_lightning.summary import decision_p


def natural_key(name: str) -> list[Any]:
    """``2`` before ``10`` (multirun job numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def finite(value: Any) -> float | None:
    """A finite float, or None (missing, empty, NaN, not a number)."""
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given the average of the ranks they span (as ``scipy.stats.rankdata``)."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        stop = start + 1
        while stop < len(x) and sorted_x[stop] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of tie-averaged ranks) over pairs where both are finite;
    NaN with fewer than two pairs or when either side is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return float("nan")
    ra, rb = rankdata(a[keep]), rankdata(b[keep])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def mean_sd(values: Iterable[Any]) -> tuple[float | None, float | None, int]:
    """Mean, sample sd (n-1; None for one value) and count of the finite values."""
    xs = [v for v in (finite(x) for x in values) if v is not None]
    if not xs:
        return None, None, 0
    mean = float(np.mean(xs))
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    return mean, sd, len(xs)


def lookup(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def task_p(task: Mapping[str, Any]) -> float | None:
    """The verdict's p of a task entry or history record (:func:`wsca_lightning.summary.decision_p`)."""
    return finite(decision_p(task))


def significant(task: Mapping[str, Any], alpha: float) -> bool:
    p = task_p(task)
    return p is not None and p < alpha and task.get("interpretable") is not False

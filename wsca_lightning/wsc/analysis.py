"""One WSC analysis: projection fitted on embeddings, then the primary head against each metadata head (pure torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import Tensor

from .projection import PCAProjection, fit_pca_projection
from .similarity import WSCSummary, summarize, weight_space_correlation


@dataclass(frozen=True)
class TaskCorrelation:
    """WSC of the primary head against one metadata head: projected (the paper's measure) and unprojected."""

    matrix: Tensor  # (C_primary, C_task), signed cosines in the PCA space
    unprojected: Tensor  # same, in the raw embedding space (the paper's "w/o PCA" reference)
    summary: WSCSummary
    unprojected_summary: WSCSummary


@dataclass(frozen=True)
class WSCResult:
    projection: PCAProjection
    tasks: dict[str, TaskCorrelation]


def compute_wsc(
    embeddings: Tensor,
    primary_weight: Tensor,
    task_weights: Mapping[str, Tensor],
    *,
    k_min: int = 50,
    var_threshold: float = 0.99,
) -> WSCResult:
    """Fit the PCA projection on ``embeddings`` (``(N, d)``, the training set) and correlate ``primary_weight``
    (``(C_A, d)``) with every weight matrix in ``task_weights`` (``(C_m, d)`` each)."""
    projection = fit_pca_projection(embeddings, k_min=k_min, var_threshold=var_threshold)
    tasks: dict[str, TaskCorrelation] = {}
    for name, weight in task_weights.items():
        projected = weight_space_correlation(primary_weight, weight, projection)
        raw = weight_space_correlation(primary_weight, weight, None)
        tasks[name] = TaskCorrelation(projected, raw, summarize(projected), summarize(raw))
    return WSCResult(projection=projection, tasks=tasks)

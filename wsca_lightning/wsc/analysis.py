"""One WSC analysis without labels: projection fitted on embeddings, then the primary head against each metadata head
(pure torch). :mod:`.engine` adds the probes, the null and the gates on top of the same ``TaskCorrelation``."""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Mapping

from torch import Tensor

from .projection import PCAProjection, fit_pca_projection
from .similarity import WSCSummary, cosine_matrix, summarize


def plain_float(value: float | None) -> float | None:
    """JSON has no NaN/inf: those become None (``null``)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True, eq=False)
class TaskCorrelation:
    """WSC of the primary head against one metadata head: projected (the paper's measure) and unprojected.

    ``eq=False``: tensor fields have no single truth value.
    """

    matrix: Tensor  # (C_primary, C_task), signed cosines in the PCA space
    unprojected: Tensor  # same, in the raw embedding space (the paper's "w/o PCA" reference)
    summary: WSCSummary
    unprojected_summary: WSCSummary

    @classmethod
    def between(cls, primary_k: Tensor, task_k: Tensor, primary_d: Tensor, task_d: Tensor) -> "TaskCorrelation":
        """Cosines of projected rows (``..._k``, ``(C, k)``) and of raw rows (``..._d``, ``(C, d)``)."""
        projected = cosine_matrix(primary_k, task_k)
        raw = cosine_matrix(primary_d, task_d)
        return cls(projected, raw, summarize(projected), summarize(raw))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (NaN -> None): ``max_abs``, ``mean_abs``, ``matrix`` and the same under ``unprojected``."""
        def part(summary: WSCSummary, matrix: Tensor) -> dict[str, Any]:
            return {"max_abs": plain_float(summary.max_abs), "mean_abs": plain_float(summary.mean_abs),
                    "matrix": [[plain_float(v) for v in row] for row in matrix.tolist()]}

        return {**part(self.summary, self.matrix), "unprojected": part(self.unprojected_summary, self.unprojected)}


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
    primary_k = projection.project_weights(primary_weight)
    tasks = {
        name: TaskCorrelation.between(primary_k, projection.project_weights(weight), primary_weight, weight)
        for name, weight in task_weights.items()
    }
    return WSCResult(projection=projection, tasks=tasks)

"""Weight space correlation: cosines between the class rows of two linear heads (paper §2.3; pure torch).

``WSC(A, m)[i, j] = cos(W'_A[i], W'_m[j])`` with ``W' = W P^T`` (projected) or ``W' = W`` (the paper's "w/o PCA"
reference). The matrix is signed: a metadata class can align with a primary class (positive) or oppose it
(negative); the scalar summaries use absolute values because either sign means the two heads share a direction.
All results are float64 and detached: this is analysis, not a training loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Mapping

import torch
from torch import Tensor

from .projection import PCAProjection


def _unit_rows(x: Tensor, eps: float) -> Tensor:
    # Divide by each row's largest magnitude first so the norm neither overflows (1e200) nor underflows (1e-200).
    maxabs = x.abs().amax(dim=1, keepdim=True)
    scaled = x / torch.where(maxabs > 0, maxabs, torch.ones_like(maxabs))
    scaled_norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)  # in [1, sqrt(k)] for a non-zero row
    unit = scaled / scaled_norm.clamp_min(1.0)
    # A row of (near) zero norm has no direction; mapping it to the zero vector makes its cosines 0, not NaN.
    # Written as ``norm <= eps`` so that a NaN/inf row (NaN norm or NaN entries) stays NaN instead of becoming 0.
    return torch.where(maxabs * scaled_norm <= eps, torch.zeros_like(x), unit)


def cosine_matrix(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Signed cosines ``(m, n)`` between the rows of ``a`` ``(m, k)`` and ``b`` ``(n, k)``, float64, in [-1, 1].

    A row whose norm is <= ``eps`` (e.g. an all-zero row of a dead head) has cosine 0 with everything, so a
    degenerate head reads as "unrelated" instead of poisoning summaries with NaN. A row holding NaN or inf gives NaN
    cosines (a diverged head must stay visible).
    ``b`` is moved to ``a``'s device; inputs are never modified.
    """
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"cosine_matrix needs 2-D inputs, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"cosine_matrix needs rows of the same length, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a64 = a.detach().to(torch.float64)
    b64 = b.detach().to(device=a64.device, dtype=torch.float64)
    if a64.shape[1] == 0:  # no coordinates: every row is a zero row
        return torch.zeros(a64.shape[0], b64.shape[0], dtype=torch.float64, device=a64.device)
    cos = _unit_rows(a64, eps) @ _unit_rows(b64, eps).T
    return cos.clamp(-1.0, 1.0)


def weight_space_correlation(
    weight_a: Tensor, weight_b: Tensor, projection: PCAProjection | None = None
) -> Tensor:
    """WSC matrix ``(C_a, C_b)`` of two heads' weights (``(C, d)`` each; biases play no part).

    With ``projection`` the rows are compared in the PCA space of the training embeddings (the paper's measure);
    with ``None`` in the raw embedding space (the "w/o PCA" reference, which also counts directions the data never
    occupies).
    """
    if weight_a.ndim != 2 or weight_b.ndim != 2:
        raise ValueError(
            f"weights must be 2-D (C, d), got shapes {tuple(weight_a.shape)} and {tuple(weight_b.shape)}"
        )
    if projection is None:
        return cosine_matrix(weight_a, weight_b)
    d = projection.embedding_dim
    for name, w in (("weight_a", weight_a), ("weight_b", weight_b)):
        if w.shape[1] != d:
            raise ValueError(
                f"{name} has d={w.shape[1]} (shape {tuple(w.shape)}) but the projection's embedding_dim is {d}"
            )
    return cosine_matrix(projection.project_weights(weight_a), projection.project_weights(weight_b))


def identifiable_rows(weight: Tensor) -> Tensor:
    """The identifiable direction of a head: ``w1 - w0`` (``(1, d)``) for a 2-row softmax head, else ``weight``.

    Adding one vector to every row of a softmax head leaves its predictions unchanged, so only row differences are
    determined by the data; for two classes that is the single direction ``w1 - w0``, the same one a single-logit
    (BCE) head learns. Heads with one row or more than two rows are returned as they are.
    """
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (C, d), got shape {tuple(weight.shape)}")
    return weight[1:2] - weight[0:1] if weight.shape[0] == 2 else weight


@dataclass(frozen=True)
class WSCSummary:
    """Scalar summaries of one WSC matrix, for logging: the strongest and the typical alignment."""

    max_abs: float
    mean_abs: float

    def to_dict(self) -> dict[str, float]:
        """``{"max_abs": ..., "mean_abs": ...}``, ready for a logger."""
        return {"max_abs": self.max_abs, "mean_abs": self.mean_abs}


def summarize(matrix: Tensor) -> WSCSummary:
    """Max and mean of ``|matrix|`` (sign-free: opposing directions are as shared as aligned ones)."""
    if matrix.numel() == 0:
        raise ValueError(f"cannot summarize an empty WSC matrix (shape {tuple(matrix.shape)})")
    m = matrix.detach().to(torch.float64).abs()
    return WSCSummary(max_abs=float(m.max()), mean_abs=float(m.mean()))


def intra_inter_cosines(
    heads: Mapping[str, Tensor], projection: PCAProjection | None = None
) -> tuple[Tensor, Tensor]:
    """Reference cosine distributions (paper §3.2, Fig. 2): ``(intra, inter)``, 1-D float64 tensors.

    ``intra``: cosines between distinct rows of the same head, each unordered pair once (softmax competition makes
    these lean negative). ``inter``: cosines between rows of different heads, each unordered pair of heads once, in
    the mapping's order (the spread expected for unrelated tasks). A WSC value is read against these. Heads with a
    single row contribute nothing to ``intra``; empty results are empty tensors.
    """
    names = list(heads)
    for name in names:
        w = heads[name]
        if w.ndim != 2:
            raise ValueError(f"head {name!r} must be 2-D (C, d), got shape {tuple(w.shape)}")
    if projection is not None:
        rows = {name: projection.project_weights(heads[name]) for name in names}
        device = projection.components.device
    else:
        device = heads[names[0]].device if names else torch.device("cpu")
        rows = {name: heads[name].detach().to(device=device, dtype=torch.float64) for name in names}
    empty = torch.zeros(0, dtype=torch.float64, device=device)
    intra: list[Tensor] = [empty]
    for name in names:
        w = rows[name]
        if w.shape[0] < 2:
            continue
        cos = cosine_matrix(w, w)
        i, j = torch.triu_indices(w.shape[0], w.shape[0], offset=1, device=device)
        intra.append(cos[i, j])
    inter: list[Tensor] = [empty]
    for first, second in combinations(names, 2):
        try:
            inter.append(cosine_matrix(rows[first], rows[second]).flatten())
        except ValueError as err:
            raise ValueError(f"heads {first!r} and {second!r} are not comparable: {err}") from err
    return torch.cat(intra), torch.cat(inter)

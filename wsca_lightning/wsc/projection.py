"""PCA projection of the embedding space onto the data manifold (paper §2.2; pure torch).

Heads are compared inside the span of the directions along which the training embeddings actually vary, so that
weight components in directions the data never visits (which do not change any logit on real data) cannot create or
hide a correlation. The projection is fitted once on the training embeddings and then applied to every head.

Everything is computed in float64: the covariance of a few hundred dimensions loses the small eigenvalues in float32,
and ``choose_k`` depends on the tail of the spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Relative slack when comparing the cumulative explained-variance ratio with ``var_threshold``, so a spectrum that
#: reaches the threshold exactly (e.g. 99 of 100) is not pushed one component further by rounding in ``cumsum``.
_THRESHOLD_TOLERANCE = 1e-12


@dataclass(frozen=True, eq=False)
class PCAProjection:
    """A fitted PCA projection ``P`` (``k x d``, orthonormal rows, no whitening) and the spectrum it came from.

    ``eq=False``: instances compare by identity, because element-wise tensor comparison has no single truth value.
    """

    components: Tensor  # (k, d), orthonormal rows, float64, on the device of the fitted embeddings
    mean: Tensor  # (d,), float64, the column mean removed before the eigen-decomposition
    eigenvalues: Tensor  # (d,), all covariance eigenvalues, descending, float64, clamped at >= 0
    k: int

    def __post_init__(self) -> None:
        # Catch hand-built projections with inconsistent parts here rather than as a shape error deep in a matmul.
        if self.components.ndim != 2 or self.components.shape[0] != self.k:
            raise ValueError(f"components must have shape (k={self.k}, d), got {tuple(self.components.shape)}")
        d = self.components.shape[1]
        if tuple(self.mean.shape) != (d,):
            raise ValueError(f"mean must have shape ({d},) to match components {tuple(self.components.shape)}, "
                             f"got {tuple(self.mean.shape)}")
        if tuple(self.eigenvalues.shape) != (d,):
            raise ValueError(f"eigenvalues must have shape ({d},) to match components "
                             f"{tuple(self.components.shape)}, got {tuple(self.eigenvalues.shape)}")

    @property
    def explained_variance_ratio(self) -> float:
        """Share of the total variance kept by the top ``k`` components (1.0 for constant embeddings)."""
        total = float(self.eigenvalues.sum())
        if total <= 0.0:
            return 1.0
        return float(self.eigenvalues[: self.k].sum()) / total

    @property
    def embedding_dim(self) -> int:
        """``d``, the dimension a head's rows must have to be projected."""
        return int(self.components.shape[1])

    def project_weights(self, weight: Tensor) -> Tensor:
        """``W P^T``: ``(C, d)`` head weights -> ``(C, k)`` coordinates in the PCA basis (float64, detached).

        Only directions matter for WSC, so the bias and the embedding mean are irrelevant here. The result lives on
        ``components``' device; ``weight`` is copied there, never modified.
        """
        if weight.ndim != 2:
            raise ValueError(f"weight must be 2-D (C, d), got shape {tuple(weight.shape)}")
        if weight.shape[1] != self.embedding_dim:
            raise ValueError(
                f"weight has d={weight.shape[1]} (shape {tuple(weight.shape)}) but the projection was fitted on "
                f"d={self.embedding_dim}"
            )
        w = weight.detach().to(device=self.components.device, dtype=torch.float64)
        return w @ self.components.T


    def project_embeddings(self, embeddings: Tensor) -> Tensor:
        """``(Z - mean) P^T``: ``(N, d)`` embeddings -> ``(N, k)`` coordinates in the PCA basis (float64, detached);
        the features the probe protocol fits its probes on."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (N, d={self.embedding_dim}), got {tuple(embeddings.shape)}"
            )
        z = embeddings.detach().to(device=self.components.device, dtype=torch.float64)
        return (z - self.mean) @ self.components.T


def choose_k(
    eigenvalues: Tensor, k_min: int = 50, var_threshold: float = 0.99, max_k: int | None = None
) -> int:
    """Number of PCA components: ``min(cap, max(k_min, k_var))`` (paper §2.2 and §3.5).

    ``k_var`` is the smallest count whose cumulative explained-variance ratio reaches ``var_threshold``; the floor
    ``k_min`` guards against the unstable small-k regime the paper reports. ``cap`` is the number of eigenvalues,
    lowered to ``max_k`` when given (e.g. ``N - 1``, the most directions ``N`` samples can span). Always >= 1.
    Negative eigenvalues (round-off of a PSD matrix) count as 0; an all-zero spectrum gives ``k_var = 1``.
    """
    if isinstance(k_min, bool) or not isinstance(k_min, int) or k_min < 1:
        raise ValueError(f"k_min must be an integer >= 1, got {k_min!r}")
    if not (0.0 < float(var_threshold) <= 1.0):
        raise ValueError(f"var_threshold must be in (0, 1], got {var_threshold!r}")
    if max_k is not None and (isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 1):
        raise ValueError(f"max_k must be None or an integer >= 1, got {max_k!r}")
    if eigenvalues.ndim != 1:
        raise ValueError(f"eigenvalues must be 1-D, got shape {tuple(eigenvalues.shape)}")
    n = eigenvalues.numel()
    if n == 0:
        raise ValueError("eigenvalues is empty: need at least one eigenvalue to choose k")
    eig = eigenvalues.detach().to(torch.float64)
    if not bool(torch.isfinite(eig).all()):
        raise ValueError(f"eigenvalues must be finite, got {int((~torch.isfinite(eig)).sum())} non-finite values")
    eig = torch.sort(eig.clamp_min(0.0), descending=True).values
    total = float(eig.sum())
    if total <= 0.0:
        k_var = 1
    else:
        ratio = torch.cumsum(eig, dim=0) / total
        reached = torch.nonzero(ratio >= float(var_threshold) - _THRESHOLD_TOLERANCE)
        # Rounding can keep the last ratio just below 1.0; then all components are needed.
        k_var = int(reached[0, 0]) + 1 if reached.numel() else n
    cap = n if max_k is None else min(n, max_k)
    return max(1, min(cap, max(k_min, k_var)))


def fit_pca_projection(embeddings: Tensor, k_min: int = 50, var_threshold: float = 0.99) -> PCAProjection:
    """Fit the WSC projection on training embeddings ``(N, d)`` (any float dtype; computed in float64).

    Centre, eigen-decompose the covariance ``Xc^T Xc / (N - 1)``, sort descending and keep
    ``k = choose_k(eigenvalues, k_min, var_threshold, max_k=N - 1)``: the centred data span at most ``N - 1``
    directions, so ``k <= min(d, N - 1)`` and no component is an arbitrary basis vector of the null space. Each
    component's sign is fixed (its largest-magnitude entry is positive; the first such entry on ties) so repeated fits
    give identical output. Components of repeated eigenvalues are only defined up to a rotation within their
    eigenspace; WSC is unaffected whenever ``k`` does not split such an eigenspace.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, d), got shape {tuple(embeddings.shape)}")
    n, d = embeddings.shape
    if n < 2:
        raise ValueError(f"embeddings need at least 2 rows (samples) to estimate a covariance, got N={n}")
    if d < 1:
        raise ValueError(f"embeddings need at least 1 column, got shape {tuple(embeddings.shape)}")
    x = embeddings.detach().to(torch.float64)
    finite_rows = torch.isfinite(x).all(dim=1)
    if not bool(finite_rows.all()):
        bad = int((~finite_rows).sum())
        raise ValueError(f"embeddings contain non-finite values (NaN or inf) in {bad} of {n} rows")
    mean = x.mean(dim=0)
    xc = x - mean
    cov = xc.T @ xc / max(n - 1, 1)
    cov = (cov + cov.T) / 2  # exact symmetry for eigh
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals = torch.flip(evals, dims=(0,)).clamp_min(0.0)
    evecs = torch.flip(evecs, dims=(1,))
    components = evecs.T.contiguous()  # rows are components
    pivot = components.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(torch.gather(components, 1, pivot))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    components = components * signs
    k = choose_k(evals, k_min=k_min, var_threshold=var_threshold, max_k=max(n - 1, 1))
    return PCAProjection(components=components[:k].contiguous(), mean=mean, eigenvalues=evals, k=k)

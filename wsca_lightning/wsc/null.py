"""Permutation null for the probe protocol's WSC (pure torch).

Random directions in R^k have cosines of sd ~ 1/sqrt(k), far wider than the paper's reference histogram, so a raw
max |cos| needs a null computed for *this* model and *this* projection: the metadata probe is refitted on permuted
metadata labels (same embeddings, same projection, same class counts) and the observed value is read against those
refits. All probes (the real one and every permutation) are fitted in one batched ``fit_linear_probes`` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .probes import ProbeFit, fit_linear_probes
from .similarity import _unit_rows

#: Row-norm threshold below which a head row has no direction (same default as ``similarity.cosine_matrix``).
_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class NullResult:
    """Observed max |cos| of the real probe against the primary head, and its permutation null.

    ``z = (observed - mean(null)) / std(null)`` (``std`` with ``correction=1``); when ``std == 0`` it is 0 if
    ``observed`` equals the mean and ``±inf`` otherwise. ``p = (1 + #(null >= observed)) / (B + 1)``, never 0.
    ``fit`` holds every fitted probe (index 0 is the real one, 1.. the permutations), so a caller can report the real
    probe's matrix, AUROC and convergence without refitting. ``eq=False``: tensor fields have no single truth value.
    """

    observed: float
    null: Tensor  # (B,) float64
    z: float
    p: float
    num_permutations: int
    fit: ProbeFit | None = field(default=None, repr=False)


def _max_abs_cos(primary: Tensor, probe_weight: Tensor) -> Tensor:
    """``max |cos|`` between the rows of ``primary`` ``(C_A, k)`` and each probe ``(B, C, k)`` -> ``(B,)``.

    Same semantics as ``cosine_matrix`` (zero rows give cosine 0, NaN rows stay NaN), batched over probes.
    """
    b, c, k = probe_weight.shape
    ua = _unit_rows(primary, _EPS)
    ub = _unit_rows(probe_weight.reshape(b * c, k), _EPS)
    cos = (ub @ ua.T).clamp(-1.0, 1.0).view(b, -1)
    return cos.abs().amax(dim=1)


def permuted_labels(labels: Tensor, num_permutations: int, *, seed: int = 0) -> Tensor:
    """``(num_permutations, N)`` int64 copies of ``labels`` ``(N,)`` (CPU), each permuted among the valid rows.

    Rows holding -1 (missing) stay -1 in every copy, so each copy has the same missing rows and class counts. The
    permutations come from a ``torch.Generator`` seeded with ``seed`` on the CPU: same seed, same copies.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {tuple(labels.shape)}")
    if isinstance(num_permutations, bool) or not isinstance(num_permutations, int) or num_permutations < 1:
        raise ValueError(f"num_permutations must be an integer >= 1, got {num_permutations!r}")
    y = labels.detach().to(torch.int64).cpu()
    valid_idx = torch.nonzero(y >= 0).flatten()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    keys = torch.rand(num_permutations, valid_idx.numel(), generator=gen, dtype=torch.float64)
    perms = torch.argsort(keys, dim=1)
    out = y.repeat(num_permutations, 1)
    out[:, valid_idx] = y[valid_idx][perms]
    return out


def permutation_null(
    features: Tensor,
    labels: Tensor,
    primary_weight: Tensor,
    num_classes: int,
    *,
    num_permutations: int = 100,
    seed: int = 0,
    **probe_kwargs: object,
) -> NullResult:
    """Observed max |cos(primary row, probe row)| and its null from ``num_permutations`` label permutations.

    ``features`` ``(N, k)``: the projected training embeddings (:meth:`PCAProjection.project_embeddings`);
    ``labels`` ``(N,)`` (int, -1 = missing); ``primary_weight`` ``(C_A, k)``: the projected primary head. Labels are
    permuted among the valid rows only (missing rows stay missing, class counts are kept) with a ``torch.Generator``
    seeded by ``seed`` on the CPU, so the null is identical for the same seed on any device. ``probe_kwargs`` go to
    ``fit_linear_probes``; a ``sample_weight`` ``(N,)`` stays attached to its row (it describes the sample, not the
    label).
    """
    if isinstance(num_permutations, bool) or not isinstance(num_permutations, int) or num_permutations < 2:
        raise ValueError(f"num_permutations must be an integer >= 2 (std of the null), got {num_permutations!r}")
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, k), got shape {tuple(features.shape)}")
    n, k = features.shape
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match features, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if primary_weight.ndim != 2 or primary_weight.shape[1] != k:
        raise ValueError(f"primary_weight must have shape (C_A, k={k}), got {tuple(primary_weight.shape)}")
    sample_weight = probe_kwargs.get("sample_weight")
    if isinstance(sample_weight, Tensor) and tuple(sample_weight.shape) != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) (one weight per row), got {tuple(sample_weight.shape)}")

    stacked = torch.cat([labels.detach().to(torch.int64).cpu().unsqueeze(0),
                         permuted_labels(labels, num_permutations, seed=seed)])
    stacked = stacked.to(features.device)
    fit = fit_linear_probes(features, stacked, num_classes, **probe_kwargs)  # type: ignore[arg-type]

    primary = primary_weight.detach().to(device=fit.weight.device, dtype=torch.float64)
    stats = _max_abs_cos(primary, fit.weight)
    return null_result(float(stats[0]), stats[1:].clone(), fit=fit)


def null_result(observed: float, null: Tensor, *, fit: ProbeFit | None = None) -> NullResult:
    """Read ``observed`` against a null sample ``(B,)`` (``B >= 2``): z-score and empirical p with the +1 correction.

    Used for the probe's own value and for any other direction compared against the same null (e.g. a metadata head
    trained with the model, read against probes refitted on permuted labels).
    """
    if null.ndim != 1 or null.numel() < 2:
        raise ValueError(f"null must be 1-D with at least 2 values, got shape {tuple(null.shape)}")
    null = null.detach().to(torch.float64)
    mean = float(null.mean())
    std = float(null.std(correction=1))
    diff = observed - mean
    z = diff / std if std > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    p = (1 + int((null >= observed).sum())) / (null.numel() + 1)
    return NullResult(observed=observed, null=null, z=z, p=p, num_permutations=int(null.numel()), fit=fit)

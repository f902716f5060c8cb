"""Nulls for WSC (pure torch): what max |cos| a metadata direction reaches with the primary head by chance.

Random directions in R^k have cosines of sd ~ 1/sqrt(k), far wider than the paper's reference histogram, so a raw
max |cos| needs a null computed for *this* model and *this* projection. Three references live here:

- :func:`permutation_null`: the metadata probe refitted on permuted metadata labels (same embeddings, same projection,
  same class counts), the probes of many permutations in each batched ``fit_linear_probes`` call. With ``strata`` (the
  primary labels) the labels are permuted within each primary class, which keeps the metadata-label association and
  breaks the rest. Permuted-label probes point into the embedding's low-variance noise directions, while the probe or
  head of an *encoded* variable follows its high-variance directions, where a primary head also lies: on its own this
  null is anti-conservative for encoded but unused metadata (measured: ``benchmarks/calibration.py``).
- :func:`covariance_null`: random directions drawn with the embedding's own covariance (``N(0, diag(lambda))`` in
  the PCA basis). They live in the same high-variance directions as any encoded variable, so they answer "how
  aligned with the primary head is a direction that the data make likely, but that has nothing to do with it?".
- :func:`score_dependence_test`: no directions at all; do the primary head's scores differ between metadata classes
  within each primary class (within-class permutations)? A direct test of dependence, kept for comparison.

The permutation and the metadata-blind nulls can be drawn sequentially (``stop_after``, Besag and Clifford 1991):
drawing stops once enough draws reach the observed value, so a clearly null result costs a fraction of the draws
and a small p all of them.
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
    ``observed`` equals the mean and ``±inf`` otherwise. ``p = (1 + #(null >= observed)) / (B + 1)``, never 0; or,
    when the draws stopped early (``stopped_early``, :func:`null_result`'s ``stop_after``), Besag and Clifford's
    ``h / l``. ``num_permutations`` is the number of draws made. ``fit`` holds every fitted probe (index 0 is the
    real one, 1.. the permutations), so a caller can report the real probe's matrix, AUROC and convergence without
    refitting. ``eq=False``: tensor fields have no single truth value.
    """

    observed: float
    null: Tensor  # (B,) float64
    z: float
    p: float
    num_permutations: int
    fit: ProbeFit | None = field(default=None, repr=False)
    stopped_early: bool = False


def _max_abs_cos(primary: Tensor, probe_weight: Tensor) -> Tensor:
    """``max |cos|`` between the rows of ``primary`` ``(C_A, k)`` and each probe ``(B, C, k)`` -> ``(B,)``.

    Same semantics as ``cosine_matrix`` (zero rows give cosine 0, NaN rows stay NaN), batched over probes.
    """
    b, c, k = probe_weight.shape
    ua = _unit_rows(primary, _EPS)
    ub = _unit_rows(probe_weight.reshape(b * c, k), _EPS)
    cos = (ub @ ua.T).clamp(-1.0, 1.0).view(b, -1)
    return cos.abs().amax(dim=1)


def draw_chunks(total: int, stop_after: int) -> list[int]:
    """Sizes of the batches in which a null of ``total`` draws is drawn: all at once without sequential stopping
    (``stop_after == 0``), else a first batch of ``max(20, 2 * stop_after)`` and then batches twice that size, so a
    clearly null result stops after one or two batched solves and a significant one costs a few more solver calls."""
    if stop_after <= 0:
        return [total]
    sizes: list[int] = []
    size = max(20, 2 * stop_after)
    while sum(sizes) < total:
        sizes.append(min(size, total - sum(sizes)))
        size = 2 * max(20, 2 * stop_after)
    return sizes


def _check_stop_after(stop_after: int) -> None:
    if isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 0:
        raise ValueError(f"stop_after must be an integer >= 0 (0 = draw every permutation), got {stop_after!r}")


def _concat_fits(fits: list[ProbeFit]) -> ProbeFit:
    if len(fits) == 1:
        return fits[0]
    return ProbeFit(weight=torch.cat([f.weight for f in fits]), bias=torch.cat([f.bias for f in fits]),
                    converged=torch.cat([f.converged for f in fits]), grad_norm=torch.cat([f.grad_norm for f in fits]),
                    iterations=sum(f.iterations for f in fits))


def permuted_labels(
    labels: Tensor, num_permutations: int, *, seed: int = 0, strata: Tensor | None = None
) -> Tensor:
    """``(num_permutations, N)`` int64 copies of ``labels`` ``(N,)`` (CPU), each permuted among the valid rows.

    Rows holding -1 (missing) stay -1 in every copy, so each copy has the same missing rows and class counts. With
    ``strata`` ``(N,)`` (e.g. the primary labels) labels move only between valid rows of the same stratum, so every
    copy keeps the label counts of each stratum; rows whose stratum is -1 keep their label. The permutations come
    from a ``torch.Generator`` seeded with ``seed`` on the CPU: same seed, same copies.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {tuple(labels.shape)}")
    if isinstance(num_permutations, bool) or not isinstance(num_permutations, int) or num_permutations < 1:
        raise ValueError(f"num_permutations must be an integer >= 1, got {num_permutations!r}")
    y = labels.detach().to(torch.int64).cpu()
    if strata is None:
        groups = torch.zeros_like(y)
    else:
        if tuple(strata.shape) != tuple(y.shape):
            raise ValueError(f"strata must have shape {tuple(y.shape)} like labels, got {tuple(strata.shape)}")
        groups = strata.detach().to(torch.int64).cpu()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out = y.repeat(num_permutations, 1)
    for group in torch.unique(groups[groups >= 0]).tolist():
        idx = torch.nonzero((y >= 0) & (groups == group)).flatten()
        keys = torch.rand(num_permutations, idx.numel(), generator=gen, dtype=torch.float64)
        out[:, idx] = y[idx][torch.argsort(keys, dim=1)]
    return out


def permutation_null(
    features: Tensor,
    labels: Tensor,
    primary_weight: Tensor,
    num_classes: int,
    *,
    num_permutations: int = 100,
    seed: int = 0,
    strata: Tensor | None = None,
    observed: float | None = None,
    stop_after: int = 0,
    **probe_kwargs: object,
) -> NullResult:
    """Observed max |cos(primary row, probe row)| and its null from ``num_permutations`` label permutations.

    ``features`` ``(N, k)``: the projected training embeddings (:meth:`PCAProjection.project_embeddings`);
    ``labels`` ``(N,)`` (int, -1 = missing); ``primary_weight`` ``(C_A, k)``: the projected primary head. Labels are
    permuted among the valid rows only (missing rows stay missing, class counts are kept) with a ``torch.Generator``
    seeded by ``seed`` on the CPU, so the null is identical for the same seed on any device. ``probe_kwargs`` go to
    ``fit_linear_probes``; a ``sample_weight`` ``(N,)`` stays attached to its row (it describes the sample, not the
    label). ``strata`` ``(N,)``: permute within these groups only (:func:`permuted_labels`).

    ``observed``: the value to test, when it is not the real probe's own (e.g. a trained metadata head's max |cos|;
    the real probe is still fitted, as ``fit`` index 0). ``stop_after`` > 0: sequential drawing (Besag and Clifford
    1991): the permutations are fitted in batches (:func:`draw_chunks`) and drawing stops once ``stop_after`` of
    them reach the observed value; ``p = stop_after / l`` with ``l`` the draw that made it so, exactly the p-value
    of drawing one at a time. The permutations are the same as without stopping (the first ``l`` of them), so a
    result with fewer than ``stop_after`` exceedances in all ``num_permutations`` draws gets the usual p.
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

    _check_stop_after(stop_after)

    permuted = permuted_labels(labels, num_permutations, seed=seed, strata=strata)
    primary = primary_weight.detach().to(device=features.device, dtype=torch.float64)
    fits: list[ProbeFit] = []
    stats: list[Tensor] = []
    drawn = 0
    for size in draw_chunks(num_permutations, stop_after):
        block = permuted[drawn:drawn + size]
        if not fits:  # the real labels ride with the first batch
            block = torch.cat([labels.detach().to(torch.int64).cpu().unsqueeze(0), block])
        fit = fit_linear_probes(features, block.to(features.device), num_classes,
                                **probe_kwargs)  # type: ignore[arg-type]
        fits.append(fit)
        stats.append(_max_abs_cos(primary, fit.weight))
        drawn += size
        if observed is None:
            observed = float(stats[0][0])
        if stop_after and int((torch.cat(stats)[1:] >= observed).sum()) >= stop_after:
            break
    assert observed is not None
    return null_result(observed, torch.cat(stats)[1:].clone(), fit=_concat_fits(fits), stop_after=stop_after)


def null_result(
    observed: float, null: Tensor, *, fit: ProbeFit | None = None, stop_after: int = 0
) -> NullResult:
    """Read ``observed`` against a null sample ``(B,)`` (``B >= 2``): z-score and empirical p with the +1 correction.

    Used for the probe's own value and for any other direction compared against the same null (e.g. a metadata head
    trained with the model, read against probes refitted on permuted labels). ``stop_after`` > 0 reads the draws
    as a sequential test (Besag and Clifford 1991): when ``stop_after`` draws (in their order) reach ``observed``,
    the null is cut at the draw ``l`` that made it so and ``p = stop_after / l``; otherwise the usual p.
    """
    if null.ndim != 1 or null.numel() < 2:
        raise ValueError(f"null must be 1-D with at least 2 values, got shape {tuple(null.shape)}")
    _check_stop_after(stop_after)
    null = null.detach().to(torch.float64)
    reached = torch.cumsum((null >= observed).to(torch.int64), dim=0)
    stopped = bool(stop_after and int(reached[-1]) >= stop_after)
    if stopped:
        null = null[: int(torch.searchsorted(reached, stop_after)) + 1]
    mean = float(null.mean())
    std = float(null.std(correction=1)) if null.numel() > 1 else 0.0
    diff = observed - mean
    z = diff / std if std > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    p = stop_after / null.numel() if stopped else (1 + int((null >= observed).sum())) / (null.numel() + 1)
    return NullResult(observed=observed, null=null, z=z, p=p, num_permutations=int(null.numel()), fit=fit,
                      stopped_early=stopped)


def covariance_null(
    observed: float,
    primary_weight: Tensor,
    eigenvalues: Tensor,
    num_rows: int,
    *,
    num_draws: int = 100,
    seed: int = 0,
) -> NullResult:
    """``observed`` max |cos| read against random heads whose rows are drawn with the embedding's covariance.

    ``primary_weight`` ``(C_A, k)`` in the PCA basis, ``eigenvalues`` ``(k,)`` the variances along those components;
    each draw is a ``(num_rows, k)`` head with independent rows ``N(0, diag(eigenvalues))``: directions the data
    make likely in proportion to their variance, unrelated to the primary head. Seeded CPU generator (the same
    draws on any device).
    """
    if primary_weight.ndim != 2 or tuple(eigenvalues.shape) != (primary_weight.shape[1],):
        raise ValueError(f"eigenvalues must have shape (k,) with k = primary_weight.shape[1]; got "
                         f"{tuple(eigenvalues.shape)} and {tuple(primary_weight.shape)}")
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(f"num_draws must be an integer >= 2, got {num_draws!r}")
    k = primary_weight.shape[1]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    draws = torch.randn(num_draws, int(num_rows), k, generator=gen, dtype=torch.float64)
    scale = eigenvalues.detach().to(torch.float64).cpu().clamp_min(0.0).sqrt()
    draws = (draws * scale).to(primary_weight.device)
    primary = primary_weight.detach().to(dtype=torch.float64)
    return null_result(observed, _max_abs_cos(primary, draws).cpu())


def score_dependence_test(
    scores: Tensor, metadata: Tensor, strata: Tensor, *, num_permutations: int = 100, seed: int = 0
) -> NullResult:
    """Do the primary scores differ between metadata classes within each primary class? A permutation test.

    ``scores`` ``(N, C_A)`` (e.g. the primary logits, centred per row), ``metadata`` and ``strata`` ``(N,)`` integer
    labels (-1 = missing, ignored). Statistic: the between-metadata-class sum of squares of the scores within each
    stratum, summed over strata; its null permutes the metadata within strata (exact under "scores independent of the
    metadata given the stratum"). ``observed`` is the statistic (not a cosine); a stratum where the metadata takes
    a single value contributes nothing, so with metadata determined by the strata the test has no power (p = 1).
    """
    if scores.ndim != 2 or metadata.shape != (scores.shape[0],) or strata.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (N, C) and metadata, strata (N,); got {tuple(scores.shape)}, "
                         f"{tuple(metadata.shape)}, {tuple(strata.shape)}")
    s = scores.detach().to(torch.float64).cpu()
    m = metadata.detach().to(torch.int64).cpu()
    g = strata.detach().to(torch.int64).cpu()
    valid = (m >= 0) & (g >= 0)
    labels = torch.cat([m.unsqueeze(0), permuted_labels(m, num_permutations, seed=seed, strata=g)])
    num_classes = int(m.max()) + 1 if valid.any() else 1
    stat = torch.zeros(labels.shape[0], dtype=torch.float64)
    for group in torch.unique(g[valid]).tolist():
        rows = valid & (g == group)
        centred = s[rows] - s[rows].mean(dim=0)
        onehot = torch.nn.functional.one_hot(labels[:, rows], num_classes).to(torch.float64)
        sums = torch.einsum("bnc,nk->bck", onehot, centred)
        stat += ((sums**2).sum(dim=2) / onehot.sum(dim=1).clamp_min(1.0)).sum(dim=1)
    return null_result(float(stat[0]), stat[1:].clone())


def metadata_subspace(features: Tensor, metadata: Tensor, strata: Tensor) -> Tensor:
    """``(r, k)`` orthonormal rows spanning how the metadata classes displace the features within primary classes.

    Each metadata class's displacement is the mean, over the strata where it occurs beside another class, of its
    class mean minus the stratum mean (so a label association contributes nothing). Where no stratum holds two
    metadata classes (the metadata is determined by the primary label) the plain class-mean differences are used:
    they then carry the label's direction too, which cannot be told apart from the metadata's.
    """
    x = features.detach().to(torch.float64)
    m = metadata.detach().to(device=x.device, dtype=torch.int64)
    g = strata.detach().to(device=x.device, dtype=torch.int64)
    valid = (m >= 0) & (g >= 0)
    classes = torch.unique(m[valid]).tolist()
    shifts: dict[int, list[Tensor]] = {c: [] for c in classes}
    for group in torch.unique(g[valid]).tolist():
        rows = valid & (g == group)
        present = torch.unique(m[rows]).tolist()
        if len(present) < 2:
            continue
        centre = x[rows].mean(dim=0)
        for c in present:
            shifts[c].append(x[rows & (m == c)].mean(dim=0) - centre)
    if any(shifts[c] for c in classes):
        directions = torch.stack([torch.stack(v).mean(dim=0) for v in shifts.values() if v])
    else:
        centre = x[valid].mean(dim=0)
        directions = torch.stack([x[valid & (m == c)].mean(dim=0) - centre for c in classes])
    # C classes displace within a (C - 1)-dimensional span: keep that many axes (fewer if degenerate)
    _, sv, vh = torch.linalg.svd(directions - directions.mean(dim=0), full_matrices=False)
    keep = (sv > sv.max().clamp_min(1e-300) * 1e-8)[: max(1, len(classes) - 1)]
    return vh[: keep.numel()][keep]


def blind_primary_null(
    observed: float,
    task_weight: Tensor,
    features: Tensor,
    primary_labels: Tensor,
    metadata: Tensor,
    num_primary_classes: int,
    *,
    num_draws: int = 100,
    seed: int = 0,
    stop_after: int = 0,
    **probe_kwargs: object,
) -> NullResult:
    """``observed`` max |cos(primary head, metadata direction)| against primary heads that *cannot* use the metadata.

    The metadata's displacement of the features within primary classes (:func:`metadata_subspace`) is projected out
    of ``features`` ``(N, k)``, and primary probes are fitted there on ``num_draws`` bootstrap resamples (one batched
    solve). Each is a primary head as the data allow it without the metadata; its max |cos| with the metadata
    direction ``task_weight`` ``(C_m, k)`` is what geometry alone gives (the metadata and the label sharing the
    embedding's dominant directions). A head that uses the metadata aligns with it beyond that. ``stop_after``:
    sequential drawing, as in :func:`permutation_null` (the same resamples, fitted in batches).
    """
    x = features.detach().to(torch.float64)
    basis = metadata_subspace(x, metadata, primary_labels)
    blind = x - (x @ basis.T) @ basis
    n = x.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    rows = torch.randint(0, n, (num_draws, n), generator=gen)
    weights = torch.zeros(num_draws, n, dtype=torch.float64).scatter_add_(1, rows, torch.ones(num_draws, n,
                                                                                                  dtype=torch.float64))
    y = primary_labels.detach().to(device=x.device, dtype=torch.int64)
    task = task_weight.detach().to(device=x.device, dtype=torch.float64)
    stats: list[Tensor] = []
    drawn = 0
    for size in draw_chunks(num_draws, stop_after):
        fit = fit_linear_probes(blind, y.expand(size, -1), num_primary_classes,
                                sample_weight=weights[drawn:drawn + size].to(x.device),
                                **probe_kwargs)  # type: ignore[arg-type]
        stats.append(_max_abs_cos(task, fit.weight).cpu())
        drawn += size
        if stop_after and int((torch.cat(stats) >= observed).sum()) >= stop_after:
            break
    return null_result(observed, torch.cat(stats), stop_after=stop_after)

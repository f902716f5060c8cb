"""Linear probes on frozen embeddings and their quality metrics (the paper's probe protocol, §3.3; pure torch).

The probe protocol fits a new multinomial head per metadata task on fixed (projected) embeddings and compares its
rows with the primary head. A permutation null needs the same probe refitted on ~100 shuffled label vectors, so
``fit_linear_probes`` fits ``B`` independent probes *together*: the summed objective is block-separable, so one
L-BFGS run on the stacked parameters solves every probe at the cost of a few large matrix products per iteration.

Everything is float64: the probe directions feed cosines that are compared against a narrow null distribution, and
the convergence tolerance on the gradient is far below float32 resolution of the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: L-BFGS iterations per ``step`` call between two convergence checks in the original coordinates.
_CHECK_EVERY = 10


@dataclass(frozen=True, eq=False)
class ProbeFit:
    """``B`` fitted multinomial probes, in the coordinates of the features they were fitted on.

    ``logits = features @ weight[b].T + bias[b]``. ``grad_norm`` is the infinity norm (largest absolute entry) of the
    gradient of each probe's regularised objective with respect to its weight and bias, in those original
    coordinates; ``converged`` says it fell below ``tol``. ``iterations`` counts L-BFGS iterations of the joint run.
    ``eq=False``: instances compare by identity, because element-wise tensor comparison has no single truth value.
    """

    weight: Tensor  # (B, C, k) float64
    bias: Tensor  # (B, C) float64
    converged: Tensor  # (B,) bool
    grad_norm: Tensor  # (B,) float64, infinity norm
    iterations: int


def _as_label_matrix(labels: Tensor, n: int, name: str = "labels") -> Tensor:
    if labels.ndim not in (1, 2) or labels.shape[-1] != n:
        raise ValueError(f"{name} must have shape (N,) or (B, N) with N={n}, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise ValueError(f"{name} must be an integer tensor (class index, -1 = missing), got dtype {labels.dtype}")
    y = labels.to(torch.int64)
    return y.unsqueeze(0) if y.ndim == 1 else y


def _probe_weights(
    y: Tensor, num_classes: int, class_balanced: bool, sample_weight: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One-hot labels ``(B, N, C)`` and the per-row weights ``(B, N)`` (0 on missing rows), unnormalised."""
    b, n = y.shape
    valid = y >= 0
    onehot = torch.zeros(b, n, num_classes, dtype=torch.float64, device=y.device)
    onehot.scatter_(2, y.clamp_min(0).unsqueeze(2), 1.0)
    onehot *= valid.unsqueeze(2)
    counts = onehot.sum(dim=1)  # (B, C)
    present = (counts > 0).sum(dim=1)
    too_few = torch.nonzero(present < 2).flatten()
    if too_few.numel():
        i = int(too_few[0])
        raise ValueError(
            f"labels of probe {i} hold {int(present[i])} class(es) among their {int(valid[i].sum())} valid rows; "
            f"a probe needs at least 2 ({too_few.numel()} probe(s) affected)"
        )
    weight = valid.to(torch.float64)
    if class_balanced:
        n_valid = valid.sum(dim=1, keepdim=True).to(torch.float64)
        per_class = torch.where(counts > 0, n_valid / (num_classes * counts.clamp_min(1.0)), torch.zeros_like(counts))
        weight = (onehot * per_class.unsqueeze(1)).sum(dim=2)
    if sample_weight is not None:
        if sample_weight.ndim not in (1, 2) or sample_weight.shape[-1] != n or (
            sample_weight.ndim == 2 and sample_weight.shape[0] != b
        ):
            raise ValueError(
                f"sample_weight must have shape ({n},) or ({b}, {n}) to match labels, got {tuple(sample_weight.shape)}"
            )
        sw = sample_weight.detach().to(device=y.device, dtype=torch.float64)
        if not bool(torch.isfinite(sw).all()):
            raise ValueError("sample_weight must be finite")
        if bool((sw < 0).any()):
            raise ValueError(f"sample_weight must be >= 0, got minimum {float(sw.min())}")
        weight = weight * sw
    mass = (onehot * weight.unsqueeze(2)).sum(dim=1)  # (B, C) weight mass per class
    weighted_present = (mass > 0).sum(dim=1)
    bad = torch.nonzero(weighted_present < 2).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"after sample_weight, probe {i} has positive weight on {int(weighted_present[i])} class(es); "
            "a probe needs at least 2"
        )
    return onehot, weight


def fit_linear_probes(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    l2: float = 1e-2,
    class_balanced: bool = True,
    sample_weight: Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-5,
) -> ProbeFit:
    """Fit ``B`` independent L2-regularised multinomial logistic regressions on the same ``features`` ``(N, k)``.

    ``labels`` is ``(N,)`` or ``(B, N)`` (int, ``-1`` = missing, ignored). Probe ``b`` minimises
    ``sum_n w_bn CE_bn / sum_n w_bn + l2/2 ||W_b||_F^2`` (bias not penalised), where ``w_bn`` is the class-balanced
    weight ``n_valid / (C n_c)`` (if ``class_balanced``) times ``sample_weight`` (``(N,)`` or ``(B, N)``, >= 0).

    Solver: deterministic full-batch L-BFGS (strong Wolfe line search) on all probes at once. It runs on an exact
    linear reparametrisation ``W = V A`` with ``A = (Σ/C + l2 I)^{-1/2}`` (``Σ`` the feature covariance) and centred
    features; this only preconditions the problem (same objective, same optimum), so a steeply decaying PCA
    spectrum does not slow convergence. Convergence is checked every few iterations in the original coordinates;
    the run also stops when the objective no longer decreases (optimum reached to rounding). The returned
    ``weight``/``bias`` are in the original feature coordinates. A class absent from a probe's labels has no finite
    optimal bias; its bias drifts towards ``-inf`` until the gradient is below ``tol``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not (float(l2) >= 0.0):
        raise ValueError(f"l2 must be >= 0, got {l2!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (float(tol) > 0.0):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, k), got shape {tuple(features.shape)}")
    n, k = features.shape
    if n < 2 or k < 1:
        raise ValueError(f"features need N >= 2 rows and k >= 1 columns, got shape {tuple(features.shape)}")
    x = features.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain non-finite values (NaN or inf)")
    device = x.device
    y = _as_label_matrix(labels, n).to(device)
    if bool((y < -1).any()):
        raise ValueError(f"labels must be class indices or -1 (missing), got minimum {int(y.min())}")
    if bool((y >= num_classes).any()):
        raise ValueError(f"labels must be < num_classes={num_classes}, got maximum {int(y.max())}")
    b = y.shape[0]
    c = num_classes
    onehot, weight = _probe_weights(y, c, class_balanced, sample_weight)
    wn = weight / weight.sum(dim=1, keepdim=True)  # (B, N), each row sums to 1
    # Layout (C, B, N): reductions over the (small) class axis become element-wise ops on large contiguous slabs,
    # several times faster than a softmax over a trailing axis of length C.
    target = onehot.permute(2, 0, 1).contiguous()  # (C, B, N)
    label_idx = y.clamp_min(0).unsqueeze(0)  # (1, B, N)
    l2 = float(l2)

    # Preconditioner: whiten to roughly unit curvature. The mean-CE Hessian is about Σ/C per class block, the
    # penalty adds l2; a floor keeps A finite for constant directions when l2 == 0.
    mu = x.mean(dim=0)
    xc = x - mu
    cov = xc.T @ xc / n
    cov = (cov + cov.T) / 2
    evals, evecs = torch.linalg.eigh(cov)
    curv = evals.clamp_min(0.0) / c + l2
    curv = curv.clamp_min(max(float(curv.max()), 1e-300) * 1e-12)
    a_mat = (evecs * curv.rsqrt()) @ evecs.T  # symmetric, (k, k)
    a_mat = (a_mat + a_mat.T) / 2
    zt = (xc @ a_mat).T.contiguous()  # (k, N)
    xt = x.T.contiguous()  # (k, N)

    nv = c * b * k

    def unpack(theta: Tensor) -> tuple[Tensor, Tensor]:
        return theta[:nv].view(c * b, k), theta[nv:].view(c, b, 1)

    def objective(logits: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """Sum of the probes' objectives and the logit gradient ``(C, B, N)`` (weighted by ``wn``)."""
        p = torch.softmax(logits, dim=0)
        p_true = torch.gather(p, 0, label_idx)
        ce = -torch.log(p_true)
        if bool((p_true < 1e-300).any()):  # underflow: recompute those terms exactly
            ce_exact = torch.logsumexp(logits, dim=0, keepdim=True) - torch.gather(logits, 0, label_idx)
            ce = torch.where(p_true < 1e-300, ce_exact, ce)
        obj = (wn * ce[0]).sum() + 0.5 * l2 * (w**2).sum()
        g = p.sub_(target).mul_(wn)
        return obj, g

    param = torch.zeros(nv + c * b, dtype=torch.float64, device=device, requires_grad=True)

    def closure() -> Tensor:
        with torch.no_grad():
            v, cc = unpack(param)
            w = v @ a_mat
            obj, g = objective((v @ zt).view(c, b, n) + cc, w)
            grad_v = g.view(c * b, n) @ zt.T + l2 * (w @ a_mat)
            grad_c = g.sum(dim=2).reshape(-1)
            param.grad = torch.cat([grad_v.reshape(-1), grad_c])
        return obj

    def original_grad_norm() -> tuple[Tensor, Tensor, Tensor, float]:
        with torch.no_grad():
            v, cc = unpack(param)
            w = v @ a_mat  # (C*B, k)
            bias = cc - (w @ mu).view(c, b, 1)  # logits = x W^T + bias
            obj, g = objective((w @ xt).view(c, b, n) + bias, w)
            grad_w = (g.view(c * b, n) @ x + l2 * w).view(c, b, k)
            grad_b = g.sum(dim=2)
            norm = torch.maximum(grad_w.abs().amax(dim=(0, 2)), grad_b.abs().amax(dim=0))
            return w.view(c, b, k).permute(1, 0, 2), bias.view(c, b).T, norm, float(obj)

    opt = torch.optim.LBFGS(
        [param], lr=1.0, max_iter=_CHECK_EVERY, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=0.0, tolerance_change=0.0,
    )
    iterations = 0
    weight_out, bias_out, norm, obj = original_grad_norm()
    while iterations < max_iter and not bool((norm < tol).all()):
        opt.param_groups[0]["max_iter"] = min(_CHECK_EVERY, max_iter - iterations)
        opt.step(closure)
        iterations = int(opt.state[param]["n_iter"])
        prev_obj = obj
        weight_out, bias_out, norm, obj = original_grad_norm()
        if not obj < prev_obj:  # no decrease over a whole chunk: at the optimum to rounding, more steps are futile
            break
    return ProbeFit(
        weight=weight_out.detach().clone(),
        bias=bias_out.detach().clone(),
        converged=norm < tol,
        grad_norm=norm.detach().clone(),
        iterations=iterations,
    )


def probe_scores(fit: ProbeFit, features: Tensor) -> Tensor:
    """Softmax probabilities ``(B, N, C)`` of every probe in ``fit`` on ``features`` ``(N, k)`` (float64)."""
    if features.ndim != 2 or features.shape[1] != fit.weight.shape[2]:
        raise ValueError(
            f"features must have shape (N, k={fit.weight.shape[2]}), got {tuple(features.shape)}"
        )
    x = features.detach().to(device=fit.weight.device, dtype=torch.float64)
    logits = torch.einsum("nk,bck->bnc", x, fit.weight) + fit.bias.unsqueeze(1)
    return torch.softmax(logits, dim=2)


def _scores_and_labels(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, bool]:
    if scores.ndim not in (2, 3):
        raise ValueError(f"scores must be (N, C) or (B, N, C), got shape {tuple(scores.shape)}")
    single = scores.ndim == 2
    s = scores.detach().to(torch.float64)
    if single:
        s = s.unsqueeze(0)
    b, n, c = s.shape
    if labels.ndim not in (1, 2) or labels.shape[-1] != n or (labels.ndim == 2 and labels.shape[0] != b):
        raise ValueError(f"labels must have shape ({n},) or ({b}, {n}) to match scores {tuple(scores.shape)}, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    y = labels.to(device=s.device, dtype=torch.int64)
    y = y.expand(b, n) if y.ndim == 1 else y
    if bool((y < -1).any()) or bool((y >= c).any()):
        raise ValueError(f"labels must be in [-1, {c - 1}] for scores with C={c} columns")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores must be finite")
    return s, y, single


def macro_auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """Macro one-vs-rest AUROC: ``(B,)`` for ``(B, N, C)`` scores, a scalar for ``(N, C)`` (float64).

    Exact Mann-Whitney statistic from mid-ranks (a tie between a positive and a negative counts 1/2), averaged over
    the classes that have both positives and negatives among the valid (``!= -1``) rows; NaN for a probe where no
    class qualifies. Vectorised over probes and classes (one sort).
    """
    s, y, single = _scores_and_labels(scores, labels)
    b, n, c = s.shape
    valid = y >= 0
    # Missing rows sort after every valid row (+inf) and are neither positive nor negative, so they never shift a
    # valid row's rank.
    keyed = torch.where(valid.unsqueeze(2), s, torch.full_like(s, float("inf"))).permute(0, 2, 1)  # (B, C, N)
    sorted_s, order = torch.sort(keyed, dim=2)
    pos = (y.unsqueeze(1) == torch.arange(c, device=s.device).view(1, c, 1))  # (B, C, N)
    pos_sorted = torch.gather(pos, 2, order).to(torch.float64)
    idx = torch.arange(n, device=s.device, dtype=torch.float64).expand_as(sorted_s)
    starts = torch.ones_like(sorted_s, dtype=torch.bool)
    starts[..., 1:] = sorted_s[..., 1:] != sorted_s[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=2).values
    last = torch.flip(torch.flip(torch.where(ends, idx, torch.full_like(idx, n)), (2,)).cummin(dim=2).values, (2,))
    midrank = (first + last) / 2 + 1  # 1-based
    n_pos = pos_sorted.sum(dim=2)
    n_valid = valid.sum(dim=1, keepdim=True).to(torch.float64)
    n_neg = n_valid - n_pos
    rank_sum = (midrank * pos_sorted).sum(dim=2)
    ok = (n_pos > 0) & (n_neg > 0)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / torch.where(ok, n_pos * n_neg, torch.ones_like(n_pos))
    auc = torch.where(ok, auc, torch.zeros_like(auc))
    num_ok = ok.sum(dim=1).to(torch.float64)
    out = torch.where(num_ok > 0, auc.sum(dim=1) / num_ok.clamp_min(1.0), torch.full_like(num_ok, float("nan")))
    return out[0] if single else out


def balanced_accuracy(scores: Tensor, labels: Tensor) -> Tensor:
    """Mean per-class recall of the arg-max prediction over the classes present among the valid rows.

    Shapes as in ``macro_auroc``; NaN for a probe with no valid row. Ties in the arg-max go to the lowest class.
    """
    s, y, single = _scores_and_labels(scores, labels)
    b, n, c = s.shape
    valid = y >= 0
    pred = s.argmax(dim=2)
    onehot = torch.zeros(b, n, c, dtype=torch.float64, device=s.device)
    onehot.scatter_(2, y.clamp_min(0).unsqueeze(2), 1.0)
    onehot *= valid.unsqueeze(2)
    counts = onehot.sum(dim=1)
    hits = (onehot * (pred == y).unsqueeze(2)).sum(dim=1)
    present = counts > 0
    recall = torch.where(present, hits / counts.clamp_min(1.0), torch.zeros_like(counts))
    num_present = present.sum(dim=1).to(torch.float64)
    out = torch.where(num_present > 0, recall.sum(dim=1) / num_present.clamp_min(1.0),
                      torch.full_like(num_present, float("nan")))
    return out[0] if single else out


def bootstrap_auroc_ci(
    scores: Tensor, labels: Tensor, *, num_bootstrap: int = 200, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI ``(low, high)`` of ``macro_auroc`` for one probe (``(N, C)`` scores, ``(N,)`` labels).

    Rows are resampled with replacement by a ``torch.Generator`` seeded with ``seed`` (on the CPU, so the CI does
    not depend on the device); all resamples are scored in one batched ``macro_auroc`` call. Resamples where no
    class has both positives and negatives are dropped.
    """
    if scores.ndim != 2 or labels.ndim != 1:
        raise ValueError(f"bootstrap_auroc_ci takes one probe: scores (N, C) and labels (N,), got "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    if isinstance(num_bootstrap, bool) or not isinstance(num_bootstrap, int) or num_bootstrap < 1:
        raise ValueError(f"num_bootstrap must be an integer >= 1, got {num_bootstrap!r}")
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    s, y, _ = _scores_and_labels(scores, labels)
    n = s.shape[1]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    idx = torch.randint(0, n, (num_bootstrap, n), generator=gen).to(s.device)
    aucs = macro_auroc(s[0][idx], y[0][idx])
    aucs = aucs[~torch.isnan(aucs)]
    if aucs.numel() == 0:
        raise ValueError("no bootstrap resample had a class with both positives and negatives")
    alpha = (1.0 - float(level)) / 2
    q = torch.quantile(aucs, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=aucs.device))
    return float(q[0]), float(q[1])


def independence_weights(primary: Tensor, metadata: Tensor) -> Tensor:
    """Row weights ``p(m) p(y) / p(m, y)`` that make ``metadata`` independent of ``primary``.

    A probe fit with these weights sees every (metadata, primary) cell in proportion to the product of the
    marginals, so it cannot borrow the primary label's direction through their correlation. Returns ``(N,)``
    float64: 0 where either label is -1, mean 1 over the valid rows. The weighted marginals equal the unweighted
    ones and the weighted joint is their product.
    """
    if primary.ndim != 1 or metadata.ndim != 1 or primary.shape != metadata.shape:
        raise ValueError(f"primary and metadata must be 1-D of equal length, got {tuple(primary.shape)} and "
                         f"{tuple(metadata.shape)}")
    for name, t in (("primary", primary), ("metadata", metadata)):
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got dtype {t.dtype}")
        if t.numel() and bool((t < -1).any()):
            raise ValueError(f"{name} must hold class indices or -1 (missing), got minimum {int(t.min())}")
    ya = primary.to(torch.int64)
    ym = metadata.to(device=ya.device, dtype=torch.int64)
    valid = (ya >= 0) & (ym >= 0)
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("primary and metadata share no row where both labels are present")
    na = int(ya.max()) + 1
    nm = int(ym.max()) + 1
    cell = torch.where(valid, ym.clamp_min(0) * na + ya.clamp_min(0), torch.zeros_like(ya))
    joint = torch.zeros(nm * na, dtype=torch.float64, device=ya.device)
    joint.index_add_(0, cell[valid], torch.ones(n_valid, dtype=torch.float64, device=ya.device))
    joint = joint.view(nm, na)
    expected = joint.sum(dim=1, keepdim=True) * joint.sum(dim=0, keepdim=True) / n_valid
    ratio = torch.where(joint > 0, expected / joint.clamp_min(1.0), torch.zeros_like(joint)).flatten()
    w = torch.where(valid, ratio[cell], torch.zeros(ya.shape, dtype=torch.float64, device=ya.device))
    return w * (n_valid / w.sum())

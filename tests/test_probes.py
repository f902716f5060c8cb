"""Tests for the batched linear probes and their metrics (wsca_lightning.wsc.probes)."""

from __future__ import annotations

import itertools

import pytest
import torch

from wsca_lightning.wsc.probes import (
    balanced_accuracy,
    bootstrap_auroc_ci,
    fit_linear_probes,
    independence_weights,
    macro_auroc,
    probe_scores,
)

D = torch.float64


def _blobs(n: int, k: int, c: int, sep: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, k, generator=g, dtype=D) * sep
    y = torch.arange(n) % c
    x = means[y] + torch.randn(n, k, generator=g, dtype=D)
    return x, y


def _objective(x, y, w, b, l2, sample_weight=None):
    """Independent reference objective: weighted mean CE + l2/2 ||W||^2 (written with log_softmax/gather)."""
    logp = torch.log_softmax(x @ w.T + b, dim=1)
    ce = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
    sw = torch.ones_like(ce) if sample_weight is None else sample_weight
    return (sw * ce).sum() / sw.sum() + 0.5 * l2 * (w**2).sum()


def _newton_reference(x, y, c, l2, sample_weight=None, steps=30):
    """Exact optimum of a tiny problem by Newton's method on autograd's full Hessian."""
    k = x.shape[1]
    theta = torch.zeros(c * k + c, dtype=D)

    def f(t):
        return _objective(x, y, t[: c * k].view(c, k), t[c * k :], l2, sample_weight)

    for _ in range(steps):
        grad = torch.autograd.functional.jacobian(f, theta)
        hess = torch.autograd.functional.hessian(f, theta)
        # The softmax is invariant to adding a constant to all biases: the Hessian is singular there; lstsq picks the
        # minimum-norm step, which is fine for an optimum defined up to that shift.
        theta = theta - torch.linalg.lstsq(hess, grad.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    return theta[: c * k].view(c, k), theta[c * k :]


def test_separable_two_and_three_classes_predict_perfectly_and_converge():
    for c in (2, 3):
        x, y = _blobs(60, 4, c, sep=8.0, seed=c)
        fit = fit_linear_probes(x, y, c)
        assert fit.weight.shape == (1, c, 4) and fit.bias.shape == (1, c)
        assert fit.weight.dtype == D and bool(fit.converged.all())
        scores = probe_scores(fit, x)
        assert torch.equal(scores[0].argmax(dim=1), y)
        assert float(balanced_accuracy(scores, y)[0]) == 1.0
        assert float(macro_auroc(scores[0], y)) == 1.0


def test_matches_newton_reference_and_gradient_vanishes():
    x, y = _blobs(40, 3, 3, sep=1.0, seed=0)
    x = x * torch.tensor([5.0, 1.0, 0.1], dtype=D) + 3.0  # uneven scales and an offset
    l2 = 0.05
    fit = fit_linear_probes(x, y, 3, l2=l2, class_balanced=False, tol=1e-8, max_iter=500)
    assert bool(fit.converged.all())
    w_ref, b_ref = _newton_reference(x, y, 3, l2)
    assert torch.allclose(fit.weight[0], w_ref, atol=1e-6)
    # Biases are identified only up to a common shift: compare centred biases.
    assert torch.allclose(fit.bias[0] - fit.bias[0].mean(), b_ref - b_ref.mean(), atol=1e-6)
    # The gradient of the independently written objective is ~0 at the returned point, and grad_norm is its inf-norm.
    w = fit.weight[0].clone().requires_grad_(True)
    b = fit.bias[0].clone().requires_grad_(True)
    _objective(x, y, w, b, l2).backward()
    inf_norm = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
    assert inf_norm < 1e-8
    assert float(fit.grad_norm[0]) == pytest.approx(inf_norm, rel=1e-6, abs=1e-13)


def test_batched_fit_equals_single_fits():
    x, _ = _blobs(80, 5, 3, sep=1.0, seed=1)
    g = torch.Generator().manual_seed(2)
    labels = torch.stack([torch.randint(0, 3, (80,), generator=g) for _ in range(3)])
    labels[1, :5] = -1
    sw = torch.rand(3, 80, generator=g, dtype=D)
    batched = fit_linear_probes(x, labels, 3, sample_weight=sw, tol=1e-8, max_iter=500)
    for i in range(3):
        single = fit_linear_probes(x, labels[i], 3, sample_weight=sw[i], tol=1e-8, max_iter=500)
        assert torch.allclose(batched.weight[i], single.weight[0], atol=1e-6)
        assert torch.allclose(batched.bias[i], single.bias[0], atol=1e-6)


def test_class_balanced_equals_explicit_sample_weight():
    x, _ = _blobs(90, 4, 3, sep=1.0, seed=3)
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 10)
    y[::7] = -1
    valid = y >= 0
    n_valid = int(valid.sum())
    counts = torch.bincount(y[valid], minlength=3).to(D)
    explicit = torch.where(valid, n_valid / (3 * counts[y.clamp_min(0)]), torch.zeros(90, dtype=D))
    a = fit_linear_probes(x, y, 3, class_balanced=True, tol=1e-8, max_iter=500)
    b = fit_linear_probes(x, y, 3, class_balanced=False, sample_weight=explicit, tol=1e-8, max_iter=500)
    assert torch.allclose(a.weight, b.weight, atol=1e-8)
    assert torch.allclose(a.bias, b.bias, atol=1e-8)


def test_missing_labels_equal_fitting_on_the_subset():
    x, y = _blobs(70, 4, 3, sep=1.0, seed=4)
    y = y.clone()
    missing = torch.zeros(70, dtype=torch.bool)
    missing[[1, 5, 9, 22, 40, 41, 69]] = True
    y[missing] = -1
    full = fit_linear_probes(x, y, 3, tol=1e-8, max_iter=500)
    sub = fit_linear_probes(x[~missing], y[~missing], 3, tol=1e-8, max_iter=500)
    assert torch.allclose(full.weight, sub.weight, atol=1e-7)
    assert torch.allclose(full.bias - full.bias.mean(), sub.bias - sub.bias.mean(), atol=1e-7)


def test_orthogonal_equivariance_weights_in_original_coordinates():
    x, y = _blobs(100, 6, 4, sep=1.0, seed=5)
    x = x * torch.logspace(1, -1, 6, dtype=D)  # decaying spectrum, as after PCA
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=D))
    a = fit_linear_probes(x, y, 4, tol=1e-8, max_iter=500)
    b = fit_linear_probes(x @ q, y, 4, tol=1e-8, max_iter=500)
    assert torch.allclose(b.weight[0], a.weight[0] @ q, atol=1e-7)
    assert torch.allclose(b.bias - b.bias.mean(), a.bias - a.bias.mean(), atol=1e-7)


def test_deterministic_and_float32_input():
    x, y = _blobs(60, 4, 3, sep=1.0, seed=7)
    a = fit_linear_probes(x, y, 3)
    b = fit_linear_probes(x, y, 3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and a.iterations == b.iterations
    c = fit_linear_probes(x.float(), y, 3)
    assert c.weight.dtype == D
    short = fit_linear_probes(x, y, 3, max_iter=1)  # stopped early: reported as not converged
    assert short.iterations == 1 and not bool(short.converged[0]) and float(short.grad_norm[0]) >= 1e-5


def test_errors_name_the_argument():
    x, y = _blobs(20, 3, 2, sep=1.0, seed=8)
    with pytest.raises(ValueError, match="num_classes"):
        fit_linear_probes(x, y, 1)
    with pytest.raises(ValueError, match="features"):
        fit_linear_probes(x[0], y, 2)
    with pytest.raises(ValueError, match="labels"):
        fit_linear_probes(x, y[:-1], 2)
    with pytest.raises(ValueError, match="num_classes=2"):
        fit_linear_probes(x, torch.where(y == 1, 2, y), 2)
    bad = torch.stack([y, torch.zeros_like(y)])
    with pytest.raises(ValueError, match="probe 1 hold 1 class"):
        fit_linear_probes(x, bad, 2)
    with pytest.raises(ValueError, match="sample_weight must be >= 0"):
        fit_linear_probes(x, y, 2, sample_weight=-torch.ones(20, dtype=D))
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        fit_linear_probes(x, y, 2, sample_weight=torch.ones(19, dtype=D))
    with pytest.raises(ValueError, match="l2"):
        fit_linear_probes(x, y, 2, l2=-1.0)
    with pytest.raises(ValueError, match="integer"):
        fit_linear_probes(x, y.to(D), 2)


def _brute_auroc(s: torch.Tensor, y: torch.Tensor) -> float:
    aucs = []
    for c in range(s.shape[1]):
        pos = [float(v) for v, t in zip(s[:, c], y) if t == c]
        neg = [float(v) for v, t in zip(s[:, c], y) if t >= 0 and t != c]
        if not pos or not neg:
            continue
        total = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
        aucs.append(total / (len(pos) * len(neg)))
    return sum(aucs) / len(aucs)


def test_macro_auroc_matches_brute_force_with_ties_and_missing():
    g = torch.Generator().manual_seed(9)
    scores = torch.randint(0, 4, (3, 25, 4), generator=g).to(D) / 4  # many ties
    labels = torch.randint(-1, 4, (3, 25), generator=g)
    labels[2][labels[2] == 3] = 0  # class 3 has no positives in probe 2: excluded from its mean
    got = macro_auroc(scores, labels)
    assert got.shape == (3,) and got.dtype == D
    for i in range(3):
        assert float(got[i]) == pytest.approx(_brute_auroc(scores[i], labels[i]), abs=1e-12)
        assert float(macro_auroc(scores[i], labels[i])) == pytest.approx(float(got[i]), abs=1e-15)


def test_macro_auroc_edge_cases():
    s = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=D)
    assert float(macro_auroc(s, torch.tensor([0, 1, 0]))) == 1.0
    assert float(macro_auroc(s, torch.tensor([1, 0, 1]))) == 0.0
    assert torch.isnan(macro_auroc(s, torch.tensor([0, 0, -1])))


def test_balanced_accuracy_by_hand():
    s = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7],
                      [0.3, 0.3, 0.4]], dtype=D)
    y = torch.tensor([0, 0, 1, 1, 1, -1])
    # class 0: 2/2, class 1: 1/3 (row 3 predicted 0, row 4 predicted 2); class 2 absent; row 5 ignored.
    assert float(balanced_accuracy(s, y)) == pytest.approx((1.0 + 1.0 / 3) / 2)
    # all-class-2 labels: rows 4 and 5 are predicted 2 -> recall 2/6
    batched = balanced_accuracy(s.expand(2, 6, 3), torch.stack([y, torch.tensor([2, 2, 2, 2, 2, 2])]))
    assert batched.tolist() == pytest.approx([(1.0 + 1.0 / 3) / 2, 2.0 / 6])


def test_bootstrap_ci_contains_estimate_and_narrows():
    x, y = _blobs(2000, 3, 3, sep=0.5, seed=10)
    fit = fit_linear_probes(x, y, 3)
    s = probe_scores(fit, x)[0]
    lo, hi = bootstrap_auroc_ci(s, y, num_bootstrap=200, seed=1)
    point = float(macro_auroc(s, y))
    assert lo <= point <= hi
    lo_s, hi_s = bootstrap_auroc_ci(s[:200], y[:200], num_bootstrap=200, seed=1)
    assert hi_s - lo_s > 1.5 * (hi - lo)
    assert bootstrap_auroc_ci(s, y, num_bootstrap=50, seed=3) == bootstrap_auroc_ci(s, y, num_bootstrap=50, seed=3)


def test_independence_weights_factorise_the_contingency_table():
    g = torch.Generator().manual_seed(11)
    n = 600
    primary = torch.randint(0, 3, (n,), generator=g)
    # strongly confounded: metadata mostly equals the primary label
    metadata = torch.where(torch.rand(n, generator=g) < 0.8, primary, torch.randint(0, 4, (n,), generator=g))
    primary[:7] = -1
    metadata[5:12] = -1
    w = independence_weights(primary, metadata)
    valid = (primary >= 0) & (metadata >= 0)
    assert w.dtype == D and bool((w[~valid] == 0).all())
    assert float(w[valid].mean()) == pytest.approx(1.0, abs=1e-12)

    def table(weights):
        t = torch.zeros(4, 3, dtype=D)
        t.index_put_((metadata[valid], primary[valid]), weights[valid], accumulate=True)
        return t / t.sum()

    before = table(torch.ones(n, dtype=D))
    assert float((before - before.sum(1, keepdim=True) * before.sum(0, keepdim=True)).abs().max()) > 0.1
    after = table(w)
    assert torch.allclose(after, after.sum(1, keepdim=True) * after.sum(0, keepdim=True), atol=1e-8, rtol=0)
    # the weighted marginals are the unweighted ones
    assert torch.allclose(after.sum(0), before.sum(0), atol=1e-12)
    assert torch.allclose(after.sum(1), before.sum(1), atol=1e-12)
    with pytest.raises(ValueError, match="primary"):
        independence_weights(primary[:-1], metadata)

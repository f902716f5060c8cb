"""Tests for the permutation null of the probe WSC (wsca_lightning.wsc.null)."""

from __future__ import annotations

import pytest
import torch

from wsca_lightning.wsc.null import permutation_null, permuted_labels
from wsca_lightning.wsc.probes import fit_linear_probes
from wsca_lightning.wsc.similarity import cosine_matrix

D = torch.float64


def _aligned_problem(seed: int, n: int = 240, k: int = 8):
    """Primary label y with orthogonal class means, the primary head's rows; metadata may relabel y."""
    g = torch.Generator().manual_seed(seed)
    means = torch.linalg.qr(torch.randn(k, 3, generator=g, dtype=D))[0].T * 3.0
    y = torch.arange(n) % 3
    x = means[y] + torch.randn(n, k, generator=g, dtype=D)
    return x, y, means


def test_metadata_determined_by_primary_gives_minimal_p_and_large_z():
    x, y, means = _aligned_problem(0, n=300, k=24)
    metadata = torch.tensor([2, 0, 1])[y]
    res = permutation_null(x, metadata, means, 3, num_permutations=39, seed=0)
    assert res.num_permutations == 39 and res.null.shape == (39,)
    assert res.p == pytest.approx(1 / 40)
    assert res.z > 5
    assert res.observed > 0.75  # a softmax row is e_c minus the mean of the others: cos sqrt(2/3) at best
    assert res.fit is not None and bool(res.fit.converged.all())


def test_independent_metadata_is_not_significant_on_average():
    ps = []
    for seed in range(5):
        x, _, means = _aligned_problem(100 + seed, n=150, k=5)
        g = torch.Generator().manual_seed(200 + seed)
        metadata = torch.randint(0, 2, (150,), generator=g)
        ps.append(permutation_null(x, metadata, means, 2, num_permutations=19, seed=seed).p)
    assert sum(p > 0.1 for p in ps) >= 3, ps


def test_permutations_keep_missing_rows_and_class_counts():
    y = torch.tensor([0, -1, 1, 2, -1, 0, 1, 1, 2, -1, 0, 2])
    perm = permuted_labels(y, 50, seed=3)
    assert perm.shape == (50, 12) and perm.dtype == torch.int64
    assert bool((perm[:, y < 0] == -1).all()) and bool((perm[:, y >= 0] >= 0).all())
    for row in perm:
        assert torch.equal(torch.bincount(row[y >= 0], minlength=3), torch.bincount(y[y >= 0], minlength=3))
    assert len({tuple(r.tolist()) for r in perm}) > 40  # the copies differ
    assert torch.equal(perm, permuted_labels(y, 50, seed=3))
    assert not torch.equal(perm, permuted_labels(y, 50, seed=4))


def test_same_seed_same_null_and_matches_manual_computation():
    x, y, means = _aligned_problem(1, n=120, k=6)
    metadata = (y + torch.arange(120) % 2) % 2
    metadata[::11] = -1
    sw = torch.rand(120, generator=torch.Generator().manual_seed(5), dtype=D) + 0.5
    a = permutation_null(x, metadata, means, 2, num_permutations=10, seed=7, sample_weight=sw)
    b = permutation_null(x, metadata, means, 2, num_permutations=10, seed=7, sample_weight=sw)
    c = permutation_null(x, metadata, means, 2, num_permutations=10, seed=8, sample_weight=sw)
    assert torch.equal(a.null, b.null) and a.observed == b.observed and a.p == b.p
    assert not torch.equal(a.null, c.null)
    # Manual: the same permuted labels, sample weights attached to the rows (not permuted), cosine_matrix semantics.
    stacked = torch.cat([metadata.unsqueeze(0), permuted_labels(metadata, 10, seed=7)])
    fit = fit_linear_probes(x, stacked, 2, sample_weight=sw)
    stats = torch.tensor([float(cosine_matrix(means, w).abs().max()) for w in fit.weight], dtype=D)
    assert a.observed == pytest.approx(float(stats[0]), abs=1e-12)
    assert torch.allclose(a.null, stats[1:], atol=1e-12)
    mean, std = float(stats[1:].mean()), float(stats[1:].std(correction=1))
    assert a.z == pytest.approx((a.observed - mean) / std)
    assert a.p == pytest.approx((1 + int((stats[1:] >= stats[0]).sum())) / 11)


def test_errors():
    x, y, means = _aligned_problem(2, n=60, k=4)
    with pytest.raises(ValueError, match="num_permutations"):
        permutation_null(x, y, means, 3, num_permutations=1)
    with pytest.raises(ValueError, match="primary_weight"):
        permutation_null(x, y, means[:, :3], 3, num_permutations=5)
    with pytest.raises(ValueError, match="labels"):
        permutation_null(x, y[:-1], means, 3, num_permutations=5)
    with pytest.raises(ValueError, match="sample_weight"):
        permutation_null(x, y, means, 3, num_permutations=5, sample_weight=torch.ones(2, 60, dtype=D))


# --- sequential drawing (Besag-Clifford) ---------------------------------------------------------------------------


def _one_at_a_time_p(null: torch.Tensor, observed: float, h: int) -> tuple[float, int]:
    """Besag and Clifford's p drawing one permutation at a time: stop at the h-th draw reaching ``observed``."""
    reached = 0
    for i, value in enumerate(null.tolist(), start=1):
        reached += value >= observed
        if reached == h:
            return h / i, i
    return (1 + reached) / (null.numel() + 1), null.numel()


@pytest.mark.parametrize("signal", [0.0, 3.0])
def test_sequential_null_is_the_one_at_a_time_p_on_a_prefix_of_the_same_permutations(signal):
    gen = torch.Generator().manual_seed(3)
    n, k = 120, 6
    metadata = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, k, generator=gen, dtype=D)
    x[:, 0] += signal * metadata.to(D)  # signal 3: the probe follows axis 0, where the primary head lies
    primary = torch.eye(k, dtype=D)[:2]
    full = permutation_null(x, metadata, primary, 2, num_permutations=100, seed=4)
    seq = permutation_null(x, metadata, primary, 2, num_permutations=100, seed=4, stop_after=5)
    p, drawn = _one_at_a_time_p(full.null, full.observed, 5)
    assert seq.num_permutations == drawn and seq.p == pytest.approx(p, abs=1e-12)
    assert torch.allclose(seq.null, full.null[:drawn], atol=1e-6)  # same permutations, batched differently
    assert seq.stopped_early == (drawn < 100)
    if signal == 0.0:
        assert seq.stopped_early and seq.num_permutations < 100  # a null result stops early
    else:
        assert not seq.stopped_early and seq.p == full.p == 1 / 101  # a significant one draws everything


def test_sequential_null_tests_a_given_observed_value_and_rejects_a_bad_stop_after():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(80, 4, generator=gen, dtype=D)
    y = torch.randint(0, 2, (80,), generator=gen)
    primary = torch.eye(4, dtype=D)[:2]
    res = permutation_null(x, y, primary, 2, num_permutations=60, seed=1, observed=0.0, stop_after=3)
    # every draw reaches 0: drawing stops at the third, p = 3 / 3
    assert res.observed == 0.0 and res.stopped_early and res.num_permutations == 3 and res.p == 1.0
    with pytest.raises(ValueError, match="stop_after"):
        permutation_null(x, y, primary, 2, num_permutations=10, stop_after=-1)

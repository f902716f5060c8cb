"""Property tests for the WSC core: invariances the paper's measure must have whatever the numbers."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsca_lightning.wsc import (
    choose_k,
    cosine_matrix,
    fit_pca_projection,
    intra_inter_cosines,
    weight_space_correlation,
)

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=F64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed, and never a degenerate sign


def gapped_embeddings(n: int, d: int, k0: int, seed: int) -> torch.Tensor:
    """(n, d) embeddings: k0 strong, distinct directions (std 5..10) and a weak rest (std 0.01), then a random rotation
    and a random offset, so the top-k0 subspace is well separated from the rest."""
    g = gen(seed)
    strong = torch.linspace(10.0, 5.0, k0, dtype=F64)
    stds = torch.cat([strong, torch.full((d - k0,), 0.01, dtype=F64)])
    z = torch.randn(n, d, generator=g, dtype=F64) * stds
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return z @ rot.T + torch.randn(d, generator=g, dtype=F64) * 3.0


def matrix_strategy(max_rows: int = 5, max_cols: int = 6):
    finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False, allow_subnormal=True)
    return st.integers(1, max_rows).flatmap(
        lambda m: st.integers(1, max_cols).flatmap(
            lambda k: st.lists(st.lists(finite, min_size=k, max_size=k), min_size=m, max_size=m)
        )
    )


@SETTINGS
@given(rows=matrix_strategy(), seed=seeds, n=st.integers(1, 5))
def test_cosines_in_unit_interval(rows, seed, n):
    a = torch.tensor(rows, dtype=F64)
    b = torch.randn(n, a.shape[1], generator=gen(seed), dtype=F64)
    for x, y in ((a, b), (a, a)):
        cos = cosine_matrix(x, y)
        assert cos.shape == (x.shape[0], y.shape[0]) and cos.dtype == F64
        assert bool(torch.isfinite(cos).all())
        assert float(cos.abs().max()) <= 1.0


@SETTINGS
@given(seed=seeds, ca=st.integers(1, 5), cm=st.integers(1, 5), d=st.integers(2, 10), project=st.booleans())
def test_swapping_heads_transposes(seed, ca, cm, d, project):
    g = gen(seed)
    wa, wb = torch.randn(ca, d, generator=g), torch.randn(cm, d, generator=g)
    proj = fit_pca_projection(torch.randn(30, d, generator=g), k_min=1, var_threshold=0.8) if project else None
    ab = weight_space_correlation(wa, wb, proj)
    ba = weight_space_correlation(wb, wa, proj)
    assert ab.shape == (ca, cm)
    assert torch.allclose(ba, ab.T, atol=1e-12, rtol=0)


@SETTINGS
@given(
    seed=seeds,
    ca=st.integers(1, 5),
    cm=st.integers(1, 5),
    d=st.integers(2, 10),
    log_scale=st.floats(min_value=-3.0, max_value=3.0),
)
def test_positive_row_scaling_changes_nothing(seed, ca, cm, d, log_scale):
    g = gen(seed)
    wa, wb = torch.randn(ca, d, generator=g, dtype=F64), torch.randn(cm, d, generator=g, dtype=F64)
    proj = fit_pca_projection(torch.randn(40, d, generator=g), k_min=1, var_threshold=0.9)
    sa = 10.0 ** (log_scale + torch.rand(ca, 1, generator=g, dtype=F64))
    sb = 10.0 ** (-log_scale + torch.rand(cm, 1, generator=g, dtype=F64))
    for p in (proj, None):
        base = weight_space_correlation(wa, wb, p)
        assert torch.allclose(weight_space_correlation(wa * sa, wb * sb, p), base, atol=1e-12, rtol=0)
        # a negative factor on one row flips exactly that row's signs
        flipped = weight_space_correlation(-sa[:1] * wa[:1], wb, p)
        assert torch.allclose(flipped, -base[:1], atol=1e-12, rtol=0)


@SETTINGS
@given(
    seed=seeds,
    rot_seed=seeds,
    d=st.integers(2, 12),
    ca=st.integers(1, 4),
    cm=st.integers(1, 4),
    full=st.booleans(),
    data=st.data(),
)
def test_rotating_the_embedding_space_leaves_wsc_unchanged(seed, rot_seed, d, ca, cm, full, data):
    """Z -> Z Q and W -> W Q describe the same model in another basis; the projected WSC must not notice."""
    k0 = d if full else data.draw(st.integers(1, d - 1), label="k0")
    z = gapped_embeddings(200, d, k0, seed)
    g = gen(seed + 1)
    wa, wb = torch.randn(ca, d, generator=g, dtype=F64), torch.randn(cm, d, generator=g, dtype=F64)
    q = random_orthogonal(d, rot_seed)

    # k = d via the k_min floor (capped at d), or k = k0 from the variance threshold at the spectrum's gap
    kwargs = {"k_min": 50} if full else {"k_min": 1, "var_threshold": 0.99}
    p, pq = fit_pca_projection(z, **kwargs), fit_pca_projection(z @ q, **kwargs)
    assert p.k == pq.k == k0
    assert torch.allclose(pq.eigenvalues, p.eigenvalues, atol=1e-8 * float(p.eigenvalues[0]), rtol=0)

    before = weight_space_correlation(wa, wb, p)
    after = weight_space_correlation(wa @ q, wb @ q, pq)
    assert torch.allclose(after, before, atol=1e-6, rtol=0)
    assert torch.allclose(weight_space_correlation(wa @ q, wb @ q), weight_space_correlation(wa, wb), atol=1e-10)


@SETTINGS
@given(seed=seeds, d=st.integers(2, 8), shift=st.floats(min_value=-1e3, max_value=1e3))
def test_translating_embeddings_changes_only_the_mean(seed, d, shift):
    z = gapped_embeddings(100, d, max(1, d // 2), seed)
    offset = torch.full((d,), shift, dtype=F64)
    p, ps = fit_pca_projection(z, k_min=1), fit_pca_projection(z + offset, k_min=1)
    assert p.k == ps.k
    assert torch.allclose(ps.mean, p.mean + offset, atol=1e-9 * (1 + abs(shift)))
    # each component is fixed up to nothing: the sign convention makes them comparable directly
    assert torch.allclose(ps.components, p.components, atol=1e-6)


@SETTINGS
@given(seed=seeds, n=st.integers(2, 40), d=st.integers(1, 15), k_min=st.integers(1, 60),
       var=st.floats(min_value=0.01, max_value=1.0))
def test_projection_is_orthonormal_and_k_bounded(seed, n, d, k_min, var):
    z = torch.randn(n, d, generator=gen(seed)) * torch.rand(d, generator=gen(seed + 1)) * 10
    p = fit_pca_projection(z, k_min=k_min, var_threshold=var)
    assert 1 <= p.k <= min(d, n - 1)
    assert p.k >= min(k_min, d, n - 1)
    assert p.k == choose_k(p.eigenvalues, k_min, var, max_k=n - 1)
    assert torch.allclose(p.components @ p.components.T, torch.eye(p.k, dtype=F64), atol=1e-10)
    assert bool((p.eigenvalues[:-1] >= p.eigenvalues[1:]).all()) and bool((p.eigenvalues >= 0).all())
    assert 0.0 < p.explained_variance_ratio <= 1.0 + 1e-12


@SETTINGS
@given(
    eigs=st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=1, max_size=30),
    k_min=st.integers(1, 40),
    var=st.floats(min_value=1e-3, max_value=1.0),
    max_k=st.one_of(st.none(), st.integers(1, 40)),
)
def test_choose_k_matches_definition(eigs, k_min, var, max_k):
    k = choose_k(torch.tensor(eigs, dtype=F64), k_min=k_min, var_threshold=var, max_k=max_k)
    cap = len(eigs) if max_k is None else min(len(eigs), max_k)
    assert 1 <= k <= cap
    s = sorted(eigs, reverse=True)
    total = sum(s)
    if total > 0:
        k_var = next((i + 1 for i in range(len(s)) if sum(s[: i + 1]) / total >= var - 1e-9), len(s))
        assert k == min(cap, max(k_min, k_var)) or abs(sum(s[:k]) / total - var) < 1e-9


@SETTINGS
@given(seed=seeds, sizes=st.lists(st.integers(1, 5), min_size=0, max_size=4), d=st.integers(1, 6))
def test_intra_inter_counts_and_range(seed, sizes, d):
    g = gen(seed)
    heads = {f"h{i}": torch.randn(c, d, generator=g) for i, c in enumerate(sizes)}
    intra, inter = intra_inter_cosines(heads)
    assert intra.numel() == sum(c * (c - 1) // 2 for c in sizes)
    assert inter.numel() == sum(sizes[i] * sizes[j] for i in range(len(sizes)) for j in range(i + 1, len(sizes)))
    for x in (intra, inter):
        assert x.dtype == F64 and x.ndim == 1
        assert bool((x.abs() <= 1.0).all())

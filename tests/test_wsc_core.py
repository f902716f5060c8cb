"""Hand-computed cases for the pure WSC core: PCA projection, choice of k and the cosine matrices."""

from __future__ import annotations

import math

import pytest
import torch

from wsca_lightning.wsc import (
    PCAProjection,
    WSCSummary,
    choose_k,
    cosine_matrix,
    fit_pca_projection,
    intra_inter_cosines,
    summarize,
    weight_space_correlation,
)

F64 = torch.float64


def t(rows, dtype=F64):
    return torch.tensor(rows, dtype=dtype)


def plane_embeddings() -> torch.Tensor:
    """Four points in the (e1, e2) plane of R^4: covariance diag(6, 2/3, 0, 0) exactly (N - 1 = 3)."""
    return t([[3.0, 0.0, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]])


def exact_embeddings(scales, n=64, seed=0, mean=None):
    """Embeddings whose sample covariance is exactly R diag(scales^2) R^T, for a random rotation R."""
    g = torch.Generator().manual_seed(seed)
    d = len(scales)
    raw = torch.randn(n, d, generator=g, dtype=F64)
    raw = raw - raw.mean(dim=0)
    q, _ = torch.linalg.qr(raw)  # orthonormal columns, orthogonal to the ones vector
    x = q * math.sqrt(n - 1)  # x^T x = (n - 1) I, column means 0
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    z = x @ torch.diag(t(scales)) @ rot.T
    if mean is not None:
        z = z + t(mean)
    return z, rot


# --------------------------------------------------------------------------------------------------- cosine_matrix
class TestCosineMatrix:
    def test_orthogonal_rows_give_zero(self):
        assert cosine_matrix(t([[1.0, 0.0, 0.0]]), t([[0.0, 2.0, 0.0], [0.0, 0.0, -5.0]])).tolist() == [[0.0, 0.0]]

    def test_identical_rows_give_one(self):
        w = t([[1.0, 2.0, 3.0], [-4.0, 0.5, 2.0]])
        cos = cosine_matrix(w, w)
        assert torch.allclose(torch.diagonal(cos), torch.ones(2, dtype=F64), atol=1e-15)

    def test_sign_flip_gives_minus_one(self):
        w = t([[1.0, 2.0, 3.0]])
        assert cosine_matrix(w, -w).item() == pytest.approx(-1.0, abs=1e-15)

    def test_row_scaling(self):
        a = t([[1.0, 0.0], [1.0, 1.0]])
        b = t([[3.0, 4.0], [0.0, -2.0]])
        base = cosine_matrix(a, b)
        scaled = cosine_matrix(a * t([[7.5], [0.01]]), b * t([[3.0], [100.0]]))
        assert torch.allclose(scaled, base, atol=1e-15)
        flipped = cosine_matrix(a * t([[-2.0], [1.0]]), b)
        assert torch.allclose(flipped[0], -base[0], atol=1e-15)
        assert torch.allclose(flipped[1], base[1], atol=1e-15)

    def test_two_by_two_by_hand(self):
        a = t([[1.0, 0.0], [1.0, 1.0]])
        b = t([[3.0, 4.0], [0.0, -2.0]])
        # (1,0).(3,4)/5 = 0.6; (1,0).(0,-2) = 0; (1,1).(3,4)/(sqrt2 * 5) = 7/(5 sqrt2); (1,1).(0,-2)/(sqrt2 * 2)
        expected = t([[0.6, 0.0], [7.0 / (5.0 * math.sqrt(2.0)), -1.0 / math.sqrt(2.0)]])
        assert torch.allclose(cosine_matrix(a, b), expected, atol=1e-15)

    def test_zero_row_gives_zero(self):
        cos = cosine_matrix(t([[0.0, 0.0], [1.0, 0.0]]), t([[1.0, 1.0], [0.0, 0.0]]))
        assert cos.tolist() == [[0.0, 0.0], [pytest.approx(1 / math.sqrt(2.0)), 0.0]]
        assert not torch.isnan(cos).any()

    def test_extreme_magnitudes_do_not_overflow(self):
        cos = cosine_matrix(t([[1e200, 1e200]]), t([[1e300, 0.0], [1e-11, 0.0], [1e-13, 0.0]]))
        r = 1.0 / math.sqrt(2.0)
        # huge rows keep their direction; a row with norm below eps = 1e-12 counts as a zero row
        assert cos.tolist() == [[pytest.approx(r, abs=1e-15), pytest.approx(r, abs=1e-15), 0.0]]

    def test_non_finite_row_is_nan_not_zero(self):
        cos = cosine_matrix(t([[float("nan"), 1.0], [1.0, 0.0]]), t([[1.0, 0.0]]))
        assert math.isnan(cos[0, 0].item())
        assert cos[1, 0].item() == 1.0

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_low_precision_inputs_upcast(self, dtype):
        a = t([[1.0, 0.0], [1.0, 1.0]], dtype)
        b = t([[3.0, 4.0]], dtype)
        cos = cosine_matrix(a, b)
        assert cos.dtype == F64
        assert torch.allclose(cos, t([[0.6], [7.0 / (5.0 * math.sqrt(2.0))]]), atol=1e-6)

    def test_result_is_clamped_to_unit_interval(self):
        w = t([[0.1, 0.2, 0.3], [1e-3, 7.0, -2.0]])
        cos = cosine_matrix(w, w)
        assert cos.abs().max().item() <= 1.0

    def test_inputs_are_not_modified(self):
        a = t([[3.0, 4.0], [0.0, 0.0]], torch.float32)
        b = t([[1.0, 2.0]], torch.float32)
        a0, b0 = a.clone(), b.clone()
        cosine_matrix(a, b)
        assert torch.equal(a, a0) and torch.equal(b, b0)

    def test_gradients_are_not_tracked(self):
        a = torch.nn.Parameter(t([[1.0, 2.0]]))
        assert not cosine_matrix(a, a).requires_grad

    def test_shape_errors_name_both_shapes(self):
        with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
            cosine_matrix(torch.zeros(2, 3), torch.zeros(2, 4))
        with pytest.raises(ValueError, match="2-D"):
            cosine_matrix(torch.zeros(3), torch.zeros(2, 3))


# ------------------------------------------------------------------------------------------------------- choose_k
SPECTRUM = [50.0, 30.0, 19.0, 0.5, 0.5]


class TestChooseK:
    def test_k_var_from_spectrum(self):
        # cumulative ratios 0.50, 0.80, 0.99, 0.995, 1.0: 0.99 is reached (exactly) at 3 components
        assert choose_k(t(SPECTRUM), k_min=1, var_threshold=0.99) == 3
        assert choose_k(t(SPECTRUM), k_min=2, var_threshold=0.99) == 3
        assert choose_k(t(SPECTRUM), k_min=4, var_threshold=0.99) == 4
        assert choose_k(t(SPECTRUM), k_min=1, var_threshold=0.8) == 2
        assert choose_k(t(SPECTRUM), k_min=1, var_threshold=0.81) == 3
        assert choose_k(t(SPECTRUM), k_min=1, var_threshold=0.5) == 1
        assert choose_k(t(SPECTRUM), k_min=1, var_threshold=0.992) == 4
        assert choose_k(t(SPECTRUM), k_min=1, var_threshold=1.0) == 5

    def test_threshold_reached_exactly_despite_rounding(self):
        # float64 cumsum gives 0.9899999999999999 at 5 components; the tolerance must still count it as 0.99.
        eig = t([0.37, 0.33, 0.12, 0.09, 0.08, 0.01])
        assert float((torch.cumsum(eig, 0) / eig.sum())[4]) < 0.99  # the case really exercises the tolerance
        assert choose_k(eig, k_min=1, var_threshold=0.99) == 5

    def test_unsorted_and_float32_input(self):
        assert choose_k(t([19.0, 0.5, 50.0, 0.5, 30.0], torch.float32), k_min=1) == 3

    def test_k_min_larger_than_d_is_capped(self):
        assert choose_k(t(SPECTRUM)) == 5  # default k_min = 50
        assert choose_k(t(SPECTRUM), k_min=50, var_threshold=0.5) == 5

    def test_max_k_cap(self):
        assert choose_k(t(SPECTRUM), k_min=1, max_k=2) == 2
        assert choose_k(t(SPECTRUM), k_min=4, max_k=2) == 2
        assert choose_k(t(SPECTRUM), k_min=1, max_k=10) == 3
        assert choose_k(t(SPECTRUM), k_min=50, max_k=10) == 5

    def test_zero_and_negative_eigenvalues(self):
        assert choose_k(t([3.0, 1.0, 0.0, -1e-17]), k_min=1, var_threshold=1.0) == 2
        assert choose_k(t([0.0, 0.0, 0.0]), k_min=1) == 1
        assert choose_k(t([0.0, 0.0, 0.0]), k_min=2) == 2

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"k_min": 0}, "k_min"),
            ({"k_min": -3}, "k_min"),
            ({"var_threshold": 0.0}, "var_threshold"),
            ({"var_threshold": 1.5}, "var_threshold"),
            ({"var_threshold": -0.1}, "var_threshold"),
            ({"max_k": 0}, "max_k"),
        ],
    )
    def test_invalid_arguments_raise(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            choose_k(t(SPECTRUM), **kwargs)

    def test_empty_or_bad_eigenvalues_raise(self):
        with pytest.raises(ValueError, match="eigenvalues"):
            choose_k(torch.zeros(0, dtype=F64))
        with pytest.raises(ValueError, match="eigenvalues"):
            choose_k(torch.ones(2, 2, dtype=F64))
        with pytest.raises(ValueError, match="eigenvalues"):
            choose_k(t([1.0, float("nan")]))


# --------------------------------------------------------------------------------------------- fit_pca_projection
class TestFitPCAProjection:
    def test_plane_embeddings_exact(self):
        proj = fit_pca_projection(plane_embeddings(), k_min=1, var_threshold=0.99)
        # eigenvalues 6 and 2/3: 6 / (20/3) = 0.9 < 0.99, so both are needed
        assert proj.k == 2
        assert torch.allclose(proj.eigenvalues, t([6.0, 2.0 / 3.0, 0.0, 0.0]), atol=1e-12)
        assert torch.allclose(proj.components, t([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]), atol=1e-12)
        assert torch.equal(proj.mean, torch.zeros(4, dtype=F64))
        assert proj.embedding_dim == 4
        assert proj.explained_variance_ratio == pytest.approx(1.0)
        assert torch.allclose(proj.project_weights(t([[1.0, 2.0, 5.0, 0.0]])), t([[1.0, 2.0]]), atol=1e-12)

    def test_heads_differing_off_the_data_plane_become_identical(self):
        proj = fit_pca_projection(plane_embeddings(), k_min=1)
        wa = t([[1.0, 2.0, 5.0, 0.0]])
        wb = t([[1.0, 2.0, 0.0, -7.0]])
        assert weight_space_correlation(wa, wb, proj).item() == pytest.approx(1.0, abs=1e-12)
        # raw: (1 + 4) / (sqrt(30) sqrt(54))
        assert weight_space_correlation(wa, wb).item() == pytest.approx(5.0 / math.sqrt(30.0 * 54.0), abs=1e-12)
        # and a head living only off the plane projects to zero, so its cosine is 0
        assert weight_space_correlation(wa, t([[0.0, 0.0, 1.0, 1.0]]), proj).item() == 0.0

    def test_known_rotation_and_scales(self):
        scales = [5.0, 3.0, 2.0, 1.0, 0.5]
        z, rot = exact_embeddings(scales, n=64, seed=1, mean=[1.0, -2.0, 3.0, 0.0, 10.0])
        proj = fit_pca_projection(z)  # k_min = 50 is capped at d = 5
        assert proj.k == 5
        assert torch.allclose(proj.eigenvalues, t(scales) ** 2, atol=1e-10)
        assert torch.allclose(proj.mean, t([1.0, -2.0, 3.0, 0.0, 10.0]), atol=1e-12)
        # component i is column i of the rotation, up to sign
        assert torch.allclose((proj.components @ rot).abs(), torch.eye(5, dtype=F64), atol=1e-10)

    def test_components_orthonormal(self):
        g = torch.Generator().manual_seed(3)
        z = torch.randn(100, 8, generator=g) * torch.linspace(0.1, 3.0, 8)
        proj = fit_pca_projection(z, k_min=1, var_threshold=0.9)
        assert 1 <= proj.k < 8
        assert proj.components.shape == (proj.k, 8)
        assert torch.allclose(proj.components @ proj.components.T, torch.eye(proj.k, dtype=F64), atol=1e-12)
        assert proj.components.dtype == proj.mean.dtype == proj.eigenvalues.dtype == F64

    def test_k_and_explained_variance_with_a_gap(self):
        scales = [10.0, math.sqrt(50.0), math.sqrt(0.5), math.sqrt(0.001)]
        z, _ = exact_embeddings(scales, n=40, seed=2)
        total = 100.0 + 50.0 + 0.5 + 0.001
        proj = fit_pca_projection(z, k_min=1, var_threshold=0.99)
        assert proj.k == 2  # 150 / 150.501 = 0.9967
        assert proj.explained_variance_ratio == pytest.approx(150.0 / total, abs=1e-12)
        assert fit_pca_projection(z, k_min=3).k == 3
        assert fit_pca_projection(z, k_min=1, var_threshold=0.999).k == 3

    def test_k_capped_at_n_minus_one(self):
        z = torch.randn(5, 10, generator=torch.Generator().manual_seed(4))
        proj = fit_pca_projection(z)
        assert proj.k == 4
        assert proj.eigenvalues.shape == (10,)
        assert bool((proj.eigenvalues >= 0).all())
        assert bool((proj.eigenvalues[:-1] >= proj.eigenvalues[1:]).all())
        assert float(proj.eigenvalues[4:].max()) < 1e-10  # only N - 1 directions carry variance
        assert fit_pca_projection(z[:2]).k == 1

    def test_deterministic(self):
        z = torch.randn(50, 6, generator=torch.Generator().manual_seed(5))
        p1, p2 = fit_pca_projection(z), fit_pca_projection(z.clone())
        assert p1.k == p2.k
        assert torch.equal(p1.components, p2.components)
        assert torch.equal(p1.eigenvalues, p2.eigenvalues)
        assert torch.equal(p1.mean, p2.mean)

    def test_sign_convention(self):
        z, _ = exact_embeddings([4.0, 3.0, 2.0, 1.0], n=30, seed=6)
        for zz in (z, -z):
            comps = fit_pca_projection(zz).components
            pivot = comps.abs().argmax(dim=1)
            assert bool((comps[torch.arange(comps.shape[0]), pivot] > 0).all())
        # flipping the data flips no component: the convention removes eigh's arbitrary sign
        assert torch.allclose(fit_pca_projection(z).components, fit_pca_projection(-z).components, atol=1e-10)

    def test_mean_is_column_mean(self):
        z = torch.randn(20, 3, generator=torch.Generator().manual_seed(7)) + torch.tensor([5.0, -1.0, 0.25])
        assert torch.allclose(fit_pca_projection(z).mean, z.to(F64).mean(dim=0), atol=1e-12)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_low_precision_input(self, dtype):
        z = plane_embeddings().to(dtype)
        z0 = z.clone()
        proj = fit_pca_projection(z, k_min=1)
        assert proj.k == 2 and proj.components.dtype == F64
        assert torch.allclose(proj.eigenvalues, t([6.0, 2.0 / 3.0, 0.0, 0.0]), atol=1e-6)
        assert torch.equal(z, z0)

    def test_constant_embeddings(self):
        proj = fit_pca_projection(torch.ones(6, 3), k_min=1)
        assert proj.k == 1
        assert proj.explained_variance_ratio == 1.0
        assert torch.equal(proj.eigenvalues, torch.zeros(3, dtype=F64))

    def test_invalid_input(self):
        with pytest.raises(ValueError, match="2-D"):
            fit_pca_projection(torch.zeros(5))
        with pytest.raises(ValueError, match="N=1"):
            fit_pca_projection(torch.zeros(1, 3))
        z = torch.randn(6, 3)
        z[1, 0] = float("nan")
        z[4, 2] = float("inf")
        z[4, 1] = float("nan")
        with pytest.raises(ValueError, match="2 of 6 rows"):
            fit_pca_projection(z)
        with pytest.raises(ValueError, match="var_threshold"):
            fit_pca_projection(torch.randn(6, 3), var_threshold=0.0)


class TestPCAProjection:
    def test_project_weights_checks_shape(self):
        proj = fit_pca_projection(plane_embeddings(), k_min=1)
        with pytest.raises(ValueError, match=r"d=3.*d=4"):
            proj.project_weights(torch.zeros(2, 3))
        with pytest.raises(ValueError, match="2-D"):
            proj.project_weights(torch.zeros(4))

    def test_project_weights_does_not_modify_input(self):
        proj = fit_pca_projection(plane_embeddings(), k_min=1)
        w = t([[1.0, 2.0, 3.0, 4.0]], torch.float32)
        w0 = w.clone()
        out = proj.project_weights(w)
        assert out.dtype == F64 and out.shape == (1, 2)
        assert torch.equal(w, w0)

    def test_inconsistent_parts_rejected(self):
        comps = torch.eye(3, dtype=F64)[:2]
        with pytest.raises(ValueError, match="components"):
            PCAProjection(components=comps, mean=torch.zeros(3, dtype=F64), eigenvalues=torch.ones(3, dtype=F64), k=3)
        with pytest.raises(ValueError, match="mean"):
            PCAProjection(components=comps, mean=torch.zeros(4, dtype=F64), eigenvalues=torch.ones(3, dtype=F64), k=2)
        with pytest.raises(ValueError, match="eigenvalues"):
            PCAProjection(components=comps, mean=torch.zeros(3, dtype=F64), eigenvalues=torch.ones(2, dtype=F64), k=2)

    def test_frozen(self):
        proj = fit_pca_projection(plane_embeddings(), k_min=1)
        with pytest.raises(AttributeError):
            proj.k = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------------------- weight_space_correlation
class TestWeightSpaceCorrelation:
    def test_without_projection_is_raw_cosine(self):
        a = t([[1.0, 0.0], [1.0, 1.0]])
        b = t([[3.0, 4.0], [0.0, -2.0]])
        assert torch.equal(weight_space_correlation(a, b), cosine_matrix(a, b))

    def test_full_rank_projection_equals_raw(self):
        z, _ = exact_embeddings([3.0, 2.0, 1.5, 1.0], n=20, seed=8)
        proj = fit_pca_projection(z)
        assert proj.k == 4
        g = torch.Generator().manual_seed(9)
        a, b = torch.randn(3, 4, generator=g), torch.randn(2, 4, generator=g)
        assert torch.allclose(weight_space_correlation(a, b, proj), weight_space_correlation(a, b), atol=1e-12)

    def test_shape_is_ca_by_cm(self):
        proj = fit_pca_projection(plane_embeddings(), k_min=1)
        out = weight_space_correlation(torch.randn(4, 4), torch.randn(3, 4), proj)
        assert out.shape == (4, 3) and out.dtype == F64

    def test_dimension_mismatch_names_both(self):
        proj = fit_pca_projection(plane_embeddings(), k_min=1)
        with pytest.raises(ValueError, match=r"weight_b has d=5.*embedding_dim is 4"):
            weight_space_correlation(torch.zeros(2, 4), torch.zeros(2, 5), proj)
        with pytest.raises(ValueError, match=r"weight_a has d=3.*embedding_dim is 4"):
            weight_space_correlation(torch.zeros(2, 3), torch.zeros(2, 4), proj)
        with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
            weight_space_correlation(torch.zeros(2, 3), torch.zeros(2, 4))


# ------------------------------------------------------------------------------------------------------ summarize
class TestSummarize:
    def test_values(self):
        s = summarize(t([[0.5, -0.9], [0.1, 0.0]]))
        assert s == WSCSummary(max_abs=0.9, mean_abs=pytest.approx(0.375))
        assert isinstance(s.max_abs, float) and isinstance(s.mean_abs, float)
        assert s.to_dict() == {"max_abs": 0.9, "mean_abs": pytest.approx(0.375)}

    def test_negative_dominant_entry(self):
        assert summarize(t([[-1.0]])).max_abs == 1.0

    def test_empty_raises(self):
        with pytest.raises(ValueError, match="empty"):
            summarize(torch.zeros(0, 3))


# -------------------------------------------------------------------------------------------- intra_inter_cosines
class TestIntraInterCosines:
    def test_by_hand(self):
        heads = {"a": t([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), "b": t([[-1.0, 0.0]])}
        intra, inter = intra_inter_cosines(heads)
        r = 1.0 / math.sqrt(2.0)
        assert torch.allclose(intra, t([0.0, r, r]), atol=1e-15)  # pairs (0,1), (0,2), (1,2) of "a"; "b" has one row
        assert torch.allclose(inter, t([-1.0, 0.0, -r]), atol=1e-15)
        assert intra.dtype == inter.dtype == F64

    def test_counts(self):
        g = torch.Generator().manual_seed(10)
        heads = {name: torch.randn(c, 5, generator=g) for name, c in (("a", 3), ("b", 2), ("c", 4))}
        intra, inter = intra_inter_cosines(heads)
        assert intra.shape == (3 + 1 + 6,)
        assert inter.shape == (3 * 2 + 3 * 4 + 2 * 4,)
        assert torch.allclose(inter[:6], cosine_matrix(heads["a"], heads["b"]).flatten())

    def test_with_projection(self):
        proj = fit_pca_projection(plane_embeddings(), k_min=1)
        heads = {"a": t([[1.0, 2.0, 5.0, 0.0]]), "b": t([[1.0, 2.0, 0.0, -7.0], [2.0, -1.0, 3.0, 3.0]])}
        intra, inter = intra_inter_cosines(heads, proj)
        assert torch.allclose(inter, t([1.0, 0.0]), atol=1e-12)
        assert torch.allclose(intra, t([0.0]), atol=1e-12)  # (1,2) and (2,-1) are orthogonal in the plane

    def test_empty_and_errors(self):
        intra, inter = intra_inter_cosines({})
        assert intra.numel() == 0 and inter.numel() == 0
        intra, inter = intra_inter_cosines({"only": t([[1.0, 0.0]])})
        assert intra.numel() == 0 and inter.numel() == 0
        with pytest.raises(ValueError, match="'a' and 'b'"):
            intra_inter_cosines({"a": torch.zeros(2, 3), "b": torch.zeros(2, 4)})
        with pytest.raises(ValueError, match="'x'"):
            intra_inter_cosines({"x": torch.zeros(3)})


def test_project_embeddings_centres_and_rotates_into_the_pca_basis():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 5, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5]) + 7.0
    proj = fit_pca_projection(z, k_min=3, var_threshold=0.5)
    coords = proj.project_embeddings(z)
    assert coords.shape == (200, proj.k)
    assert torch.allclose(coords.mean(dim=0), torch.zeros(proj.k, dtype=torch.float64), atol=1e-10)
    # coordinates along principal components are uncorrelated, with the eigenvalues as variances
    cov = coords.T @ coords / 199
    assert torch.allclose(cov, torch.diag(proj.eigenvalues[: proj.k]), atol=1e-8)
    with pytest.raises(ValueError, match="d=5"):
        proj.project_embeddings(z[:, :4])


def test_compute_wsc_matches_the_pairwise_functions_and_the_engine():
    """The label-free analysis and the engine's heads protocol give the same matrices for the same heads."""
    from wsca_lightning.wsc import AnalysisSettings, analyze_embeddings, compute_wsc, weight_space_correlation

    g = torch.Generator().manual_seed(3)
    z = torch.randn(200, 12, generator=g, dtype=torch.float64)
    primary, scanner = torch.randn(3, 12, generator=g), torch.randn(4, 12, generator=g)
    result = compute_wsc(z, primary, {"scanner": scanner}, k_min=5)
    task = result.tasks["scanner"]
    assert torch.allclose(task.matrix, weight_space_correlation(primary, scanner, result.projection))
    assert torch.allclose(task.unprojected, weight_space_correlation(primary, scanner, None))
    assert task.summary.max_abs == pytest.approx(float(task.matrix.abs().max()))
    labels = torch.randint(0, 4, (200,), generator=g)
    engine = analyze_embeddings(z, primary, {"scanner": labels}, {"scanner": 4}, head_weights={"scanner": scanner},
                                settings=AnalysisSettings(k_min=5, num_permutations=0))
    assert torch.allclose(engine.tasks["scanner"].correlation.matrix, task.matrix)
    assert engine.tasks["scanner"].to_dict()["unprojected"]["matrix"] == task.to_dict()["unprojected"]["matrix"]

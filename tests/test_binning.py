"""Binning of continuous metadata: edges fitted on training values, applied to any split."""

from __future__ import annotations

import math

import pytest
import torch

from wsca_lightning.wsc import BINNING_METHODS, IGNORE_INDEX, bin_names, digitize, fit_bin_edges

F64 = torch.float64
NAN = float("nan")


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def test_constants():
    assert IGNORE_INDEX == -1
    assert BINNING_METHODS == ("equal_width", "quantile")


class TestFitBinEdges:
    def test_equal_width(self):
        edges = fit_bin_edges(t([4.0, 0.0, 1.0, 3.5, 2.0]), 4)
        assert edges.dtype == F64
        assert edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]

    def test_equal_width_uses_range_not_density(self):
        edges = fit_bin_edges(t([0.0, 0.1, 0.2, 0.3, 10.0]), 2, "equal_width")
        assert edges.tolist() == [0.0, 5.0, 10.0]

    def test_quantile(self):
        values = torch.arange(101, dtype=torch.float32)  # 0..100
        edges = fit_bin_edges(values, 4, "quantile")
        assert torch.allclose(edges, t([0.0, 25.0, 50.0, 75.0, 100.0]))
        # about the same number of training values per bin (the last bin is closed, so it gets the maximum)
        assert torch.bincount(digitize(values, edges)).tolist() == [25, 25, 25, 26]

    def test_quantile_on_skewed_data_differs_from_equal_width(self):
        values = t([0.0, 1.0, 2.0, 3.0, 100.0])
        assert fit_bin_edges(values, 2, "quantile").tolist() == [0.0, 2.0, 100.0]
        assert fit_bin_edges(values, 2, "equal_width").tolist() == [0.0, 50.0, 100.0]

    def test_nan_and_inf_ignored_when_fitting(self):
        edges = fit_bin_edges(t([NAN, 0.0, 10.0, math.inf, -math.inf]), 2)
        assert edges.tolist() == [0.0, 5.0, 10.0]

    def test_integer_input(self):
        assert fit_bin_edges(torch.tensor([0, 2, 4]), 2, "quantile").tolist() == [0.0, 2.0, 4.0]

    def test_input_not_modified(self):
        values = t([3.0, NAN, 1.0])
        before = values.clone()
        fit_bin_edges(values, 2)
        assert torch.equal(torch.isnan(values), torch.isnan(before))
        assert values[~torch.isnan(values)].tolist() == [3.0, 1.0]

    def test_collapsed_quantile_edges_raise(self):
        values = t([0.0] * 10 + [1.0])
        with pytest.raises(ValueError, match="repeated edges"):
            fit_bin_edges(values, 4, "quantile")
        # equal width is still possible on the same data
        assert fit_bin_edges(values, 4, "equal_width").tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]

    @pytest.mark.parametrize("values", [[], [NAN, NAN], [2.0, 2.0, NAN]])
    def test_too_few_distinct_values_raise(self, values):
        with pytest.raises(ValueError, match="two distinct finite values"):
            fit_bin_edges(t(values), 3)

    def test_bad_arguments_raise(self):
        with pytest.raises(ValueError, match="num_bins"):
            fit_bin_edges(t([0.0, 1.0]), 1)
        with pytest.raises(ValueError, match="binning"):
            fit_bin_edges(t([0.0, 1.0]), 2, "kmeans")  # type: ignore[arg-type]


class TestDigitize:
    EDGES = t([0.0, 1.0, 2.0, 3.0])

    def test_bins_are_left_closed(self):
        idx = digitize(t([0.0, 0.5, 1.0, 1.999, 2.0, 2.5]), self.EDGES)
        assert idx.dtype == torch.int64
        assert idx.tolist() == [0, 0, 1, 1, 2, 2]

    def test_last_bin_closed(self):
        assert digitize(t([3.0]), self.EDGES).tolist() == [2]

    def test_out_of_range_clamps(self):
        assert digitize(t([-5.0, -math.inf, 3.0001, 1e9, math.inf]), self.EDGES).tolist() == [0, 0, 2, 2, 2]

    def test_nan_is_ignore_index(self):
        assert digitize(t([NAN, 1.5, NAN]), self.EDGES).tolist() == [IGNORE_INDEX, 1, IGNORE_INDEX]

    def test_keeps_shape_and_accepts_float32(self):
        values = t([[0.5, NAN], [2.5, 1.0]], torch.float32)
        idx = digitize(values, self.EDGES)
        assert idx.shape == (2, 2)
        assert idx.tolist() == [[0, -1], [2, 1]]

    def test_two_bins(self):
        assert digitize(t([-1.0, 0.0, 0.49, 0.5, 1.0, 2.0]), t([0.0, 0.5, 1.0])).tolist() == [0, 0, 0, 1, 1, 1]

    def test_train_edges_applied_to_other_split(self):
        edges = fit_bin_edges(t([10.0, 20.0, 30.0, 40.0]), 3)  # [10, 20, 30, 40]
        assert digitize(t([5.0, 15.0, 25.0, 45.0, NAN]), edges).tolist() == [0, 0, 1, 2, -1]


class TestBinNames:
    def test_format(self):
        assert bin_names(t([0.0, 0.5, 0.75, 1.0])) == ["[0, 0.5)", "[0.5, 0.75)", "[0.75, 1]"]

    def test_precision(self):
        edges = t([0.0, 1.0 / 3.0, 2.0 / 3.0])
        assert bin_names(edges) == ["[0, 0.333)", "[0.333, 0.667]"]
        assert bin_names(edges, precision=5) == ["[0, 0.33333)", "[0.33333, 0.66667]"]

    def test_one_name_per_bin(self):
        edges = fit_bin_edges(torch.arange(10.0), 5)
        names = bin_names(edges)
        assert len(names) == 5
        assert names[0] == "[0, 1.8)" and names[-1] == "[7.2, 9]"

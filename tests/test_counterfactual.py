"""Counterfactual dependence: the same anatomy through every scanner / hospital, and the score of a model's change."""

from __future__ import annotations

import pytest
import torch

from wsca_lightning.data.counterfactual import counterfactual_dependence, counterfactual_inputs, dependence_score

OPTIONS = dict(image_size=(32, 48), num_scanners=3, num_hospitals=4, normalization="none", seed=5)


def test_only_the_swapped_column_changes_the_image():
    hospitals = counterfactual_inputs("hospital", n=6, **OPTIONS)
    assert hospitals.shape == (4, 6, 1, 32, 48)
    changed = (hospitals[0] != hospitals[1]).flatten(1).float().mean(dim=1)
    assert (changed > 0).all() and (changed < 0.02).all()  # a burnt-in corner marker: a few pixels
    scanners = counterfactual_inputs("scanner", n=6, **OPTIONS)
    assert (scanners[0] != scanners[1]).flatten(1).float().mean(dim=1).min() > 0.2  # the whole acquisition chain
    again = counterfactual_inputs("scanner", n=6, **OPTIONS)
    assert torch.equal(scanners, again)  # deterministic in the seed


def test_dependence_score_is_zero_without_dependence_and_one_for_a_flip():
    same = torch.tensor([[0.7, 0.3], [0.2, 0.8]]).expand(3, 2, 2)
    assert dependence_score(same) == {"tv": 0.0, "flip_rate": 0.0}
    flipped = torch.stack([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])])
    assert dependence_score(flipped) == {"tv": 1.0, "flip_rate": 1.0}
    with pytest.raises(ValueError, match="V >= 2"):
        dependence_score(torch.ones(1, 3, 2))


def test_a_model_reading_the_marker_corner_depends_on_the_hospital():
    def corner_reader(x: torch.Tensor) -> torch.Tensor:  # looks only at the top-left marker position
        logit = 20 * (x[:, 0, :4, :4].amax(dim=(1, 2)) - 0.5)
        return torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], dim=1)

    hospital = counterfactual_dependence(corner_reader, "hospital", n=16, **OPTIONS)
    assert hospital["tv"] > 0.3 and hospital["n"] == 16
    with pytest.raises(ValueError, match="column: must be one of scanner, hospital"):
        counterfactual_inputs("bmi", n=2, **OPTIONS)

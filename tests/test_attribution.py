"""Shared-direction attribution: the direction a primary head shares with a metadata head (pure core), the two
gradient methods on a constructed model whose shared direction reads a known pixel patch, the region metric, the
settings, and the files the callback's evaluator and ``wsca-analyze`` write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from wsca_lightning.attribution import (
    AttributionSettings,
    attribute,
    attribute_decisions,
    gradient_x_input,
    integrated_gradients,
    region_fraction,
    region_share,
    shared_score,
    with_input,
)
from wsca_lightning.callbacks import WeightSpaceCorrelation
from wsca_lightning.data.scanner import hospital_marker_masks
from wsca_lightning.epoch_analysis import attribution_tasks
from wsca_lightning.epoch_analysis.outputs import write_attributions
from wsca_lightning.interface import HeadWeights
from wsca_lightning.problems import ConfigError
from wsca_lightning.wsc.shared_direction import decision_rows, shared_direction

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
H, W = 16, 20
PATCH = (slice(2, 6), slice(3, 7))  # the 4 x 4 patch the shared coordinate reads


def patch_mask() -> torch.Tensor:
    mask = torch.zeros(H, W)
    mask[PATCH] = 1.0
    return mask


class PatchModel(nn.Module):
    """Embedding z (d = 3): z0 = softplus(sum of the patch / 4), z1 = sum of the bottom-right 4 x 4 corner, z2 = mean
    of row 12. The primary head has three classes: a reads z0, b and c read z1 with opposite signs, so the contrast
    "a against the others" reads z0 alone and "b against c" z1 alone. The metadata head's three rows (summing to
    zero) discriminate by z0 and z2: the primary contrast most aligned with the metadata is the first, which reads
    the patch alone. Implements the WSC interface."""

    wsc_primary_task = "risk"

    def __init__(self) -> None:
        super().__init__()
        self.primary = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
        self.metadata = torch.tensor([[1.5, 0.0, 0.0], [0.0, 0.0, -1.0], [-1.5, 0.0, 1.0]])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = images[:, 0]
        return torch.stack([nn.functional.softplus(x[:, PATCH[0], PATCH[1]].sum(dim=(1, 2)) / 4),
                            x[:, -4:, -4:].sum(dim=(1, 2)), x[:, 12].mean(dim=1)], dim=1)

    def wsc_embed(self, batch):
        return self.embed(batch["image"])

    def wsc_head_weights(self):
        return {"risk": HeadWeights(self.primary, ("a", "b", "c")),
                "site": HeadWeights(self.metadata, ("s0", "s1", "s2"))}

    def wsc_targets(self, batch):
        return batch["targets"]


class Images(Dataset):
    def __init__(self, n: int = 48) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 1, H, W, generator=g)
        self.risk = torch.randint(0, 3, (n,), generator=g)
        self.site = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "targets": {"risk": self.risk[i], "site": self.site[i]}}


# --- the shared direction (pure core) -------------------------------------------------------------------------------
def test_orthogonal_heads_share_nothing():
    basis = torch.eye(4)
    assert shared_direction(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), torch.tensor([[0, 0, 1.0, 0]]),
                            basis) is None


def test_a_softmax_heads_common_row_shift_is_no_decision_and_shares_nothing():
    # both primary rows carry the same component along direction 2, which the metadata head reads: adding it to
    # every logit changes no prediction, so after centring the primary head discriminates by direction 0 alone
    primary = torch.tensor([[1.0, 0.0, 5.0], [-1.0, 0.0, 5.0]])
    assert shared_direction(primary, torch.tensor([[0.0, 0.0, 1.0]]), torch.eye(3)) is None
    # a one-row (sigmoid) head is a decision as it is: its component along direction 2 is shared
    found = shared_direction(primary[:1], torch.tensor([[0.0, 0.0, 1.0]]), torch.eye(3))
    assert found is not None and found.share == pytest.approx(5 / 26**0.5)
    assert torch.equal(decision_rows(primary), torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))
    assert torch.equal(decision_rows(primary[:1]), primary[:1])


def test_identical_heads_share_their_contrast():
    head = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    found = shared_direction(head, head, torch.eye(3))
    assert found is not None
    # centred rows +-(1.5, -0.5, 0): one contrast, class a minus class b
    assert torch.allclose(found.direction, torch.tensor([3.0, -1.0, 0.0], dtype=torch.float64) / 10**0.5)
    assert found.strength == pytest.approx(5**0.5) and found.share == pytest.approx(1.0)
    assert torch.allclose(found.class_weights, torch.tensor([1.0, -1.0], dtype=torch.float64) / 2**0.5)


def test_the_direction_is_the_primary_class_contrast_with_most_inside_the_metadata_span():
    # three primary classes (rows sum to zero) mix directions 0 and 1; the metadata head discriminates by direction 0
    # only (in a rotated basis)
    rotation = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    components = rotation[:3]  # (k=3, d=5), orthonormal rows
    primary_k = torch.tensor([[1.0, 2.0, 0.0], [-2.0, 1.0, 0.0], [1.0, -3.0, 0.0]], dtype=torch.float64)
    metadata_k = torch.tensor([[0.5, 0.0, 0.0], [-0.1, 0.0, 0.0]], dtype=torch.float64)
    found = shared_direction(primary_k, metadata_k, components)
    assert found is not None
    # the rows' direction-0 parts (1, -2, 1) give c = (-1, 2, -1) / sqrt(6) (sign: its largest weight positive), a
    # contrast (weights sum to 0); c^T W'_p = (-6, 3, 0) / sqrt(6) also reads direction 1: share = sqrt(6) / |.|
    assert torch.allclose(found.class_weights, torch.tensor([-1.0, 2.0, -1.0], dtype=torch.float64) / 6**0.5)
    assert float(found.class_weights.sum()) == pytest.approx(0.0, abs=1e-12)
    expected = torch.tensor([-6.0, 3.0, 0.0], dtype=torch.float64) / 45**0.5
    assert torch.allclose(found.direction, components.T @ expected)
    assert found.strength == pytest.approx(6**0.5) and found.share == pytest.approx(6 / 45**0.5)
    assert torch.allclose(found.shared_part, -components[0])


def test_a_direction_partly_outside_the_span_has_a_share_below_one_and_is_attributed_whole():
    primary_k = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)  # one sigmoid row
    found = shared_direction(primary_k, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64),
                             torch.eye(3, dtype=torch.float64))
    assert found is not None
    # the shared part lies inside the metadata span; the attributed direction is the primary row itself
    assert torch.allclose(found.shared_part, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(found.direction, torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64))
    assert found.strength == pytest.approx(3.0) and found.share == pytest.approx(0.6)


def test_shape_mismatches_are_refused_and_zero_heads_give_none():
    with pytest.raises(ValueError, match="k = 3"):
        shared_direction(torch.ones(2, 4), torch.ones(2, 3), torch.eye(3))
    assert shared_direction(torch.zeros(2, 3), torch.ones(2, 3), torch.eye(3)) is None
    assert shared_direction(torch.ones(2, 3), torch.zeros(2, 3), torch.eye(3)) is None


# --- the gradient methods on the constructed model ------------------------------------------------------------------
@pytest.fixture
def score_and_images():
    model = PatchModel()
    direction = shared_direction(model.primary, model.metadata, torch.eye(3))
    assert direction is not None and torch.allclose(direction.direction.abs(), torch.tensor([1.0, 0, 0],
                                                                                            dtype=torch.float64))
    images = Images(8).images
    return shared_score(model.wsc_embed, {"image": images}, direction.direction), images


@pytest.mark.parametrize("method", [gradient_x_input, integrated_gradients])
def test_both_methods_put_all_attribution_on_the_patch_the_shared_direction_reads(score_and_images, method):
    score, images = score_and_images
    attributions = method(score, images).sum(dim=1)
    fraction = region_fraction(attributions, patch_mask())
    assert torch.allclose(fraction, torch.ones_like(fraction))
    assert float(region_share(patch_mask())) == pytest.approx(16 / (H * W))


def test_integrated_gradients_are_complete(score_and_images):
    score, images = score_and_images
    attributions = integrated_gradients(score, images, steps=64, batch_size=128)
    expected = score(images) - score(torch.zeros_like(images))
    assert torch.allclose(attributions.sum(dim=(1, 2, 3)).double(), expected, atol=1e-3, rtol=1e-3)


def test_each_image_is_attributed_its_own_primary_decision():
    model, images = PatchModel(), Images(9).images
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, -1])
    rows = decision_rows(model.primary.to(torch.float64))
    maps = attribute_decisions(model.wsc_embed, {"image": images}, images, labels, rows, "gradient_x_input")
    inside = region_fraction(maps, patch_mask())
    # class a against the others reads z0 (the patch) alone; b's and c's decisions also read the corner (z1)
    assert torch.allclose(inside[labels == 0], torch.ones(3, dtype=torch.float64))
    assert bool(((inside[(labels == 1) | (labels == 2)] > 0.01) & (inside[(labels == 1) | (labels == 2)] < 0.99)).all())
    corner = torch.zeros(H, W)
    corner[-4:, -4:] = 1.0
    assert bool((region_fraction(maps[(labels == 1) | (labels == 2)], corner) > 0.01).all())
    assert not bool(maps[-1].any())  # a missing label: no decision, a zero map
    # each label's images are attributed with their own row: the same as attributing them one label at a time
    one = attribute(shared_score(model.wsc_embed, {"image": images[labels == 1]}, rows[1]), images[labels == 1],
                    "gradient_x_input")
    assert torch.allclose(maps[labels == 1], one)
    # a one-row (sigmoid) head: label 1 takes the row, label 0 its negation (same magnitude, opposite sign)
    binary = attribute_decisions(model.wsc_embed, {"image": images[:2]}, images[:2].repeat(2, 1, 1, 1),
                                 torch.tensor([1, 1, 0, 0]), model.primary[:1].to(torch.float64), "gradient_x_input")
    assert torch.allclose(binary[2:], -binary[:2]) and bool(binary[:2].any())


def test_integrated_gradients_do_not_depend_on_how_path_points_are_batched(score_and_images):
    score, images = score_and_images
    assert torch.allclose(integrated_gradients(score, images, steps=8, batch_size=8),
                          integrated_gradients(score, images, steps=8, batch_size=64), atol=1e-6)


def test_attribution_leaves_parameter_gradients_alone_and_works_under_inference_mode():
    layer = nn.Linear(4, 1)
    score = lambda x: layer(x.flatten(1))[:, 0]  # noqa: E731
    with torch.inference_mode():
        out = gradient_x_input(score, torch.ones(2, 1, 2, 2))
    assert torch.allclose(out.flatten(1), layer.weight.detach().expand(2, -1))
    assert layer.weight.grad is None


def test_with_input_replaces_the_input_entry_of_dict_and_tuple_batches():
    images = torch.zeros(1)
    assert with_input({"image": 1, "id": 2}, images)["image"] is images
    assert with_input((1, 2, 3), images)[0] is images
    assert with_input({"x": 1}, images, input_key="x")["x"] is images
    with pytest.raises(KeyError, match="input_key"):
        with_input({"x": 1}, images)


def test_region_fraction_is_per_image_and_nan_without_attribution():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, -1.0
    mask = torch.zeros(4, 4)
    mask[0, 0] = 1
    fraction = region_fraction(maps, mask)
    assert fraction[0] == pytest.approx(0.75) and torch.isnan(fraction[1])


def test_hospital_marker_masks_are_the_burnt_in_squares():
    masks = hospital_marker_masks(4, 64, 80, torch.device("cpu"))
    assert masks.shape == (4, 64, 80) and masks.sum(dim=(1, 2)).tolist() == [4.0] * 4


# --- settings -------------------------------------------------------------------------------------------------------
def test_settings_are_off_by_default_and_every_problem_is_keyed():
    assert AttributionSettings.from_mapping(None) is None
    assert WeightSpaceCorrelation().attribution is None
    assert AttributionSettings.from_mapping({}).method == "integrated_gradients"  # docs/method.md: measured
    assert AttributionSettings.from_mapping({"method": "gradient_x_input"}).steps == 32
    with pytest.raises(ConfigError) as err:
        WeightSpaceCorrelation(attribution={"method": "saliency", "steps": 0, "colour": 1})
    keys = {p.key for p in err.value.problems}
    assert {"attribution.colour"} <= keys
    with pytest.raises(ConfigError) as err:
        WeightSpaceCorrelation(attribution={"method": "saliency", "steps": 0, "tasks": "scanner"})
    assert {p.key for p in err.value.problems} == {"attribution.method", "attribution.steps", "attribution.tasks"}
    with pytest.raises(ConfigError, match="attribution.tasks"):
        WeightSpaceCorrelation(tasks=["scanner"], attribution={"tasks": ["hospital"]})


def test_the_attributed_tasks_are_the_significant_ones_unless_named():
    entry = {"tasks": {"a": {"interpretable": True, "test": {"p": 0.01}},
                       "b": {"interpretable": True, "test": {"p": 0.5}}}}
    assert attribution_tasks(entry, AttributionSettings()) == ["a"]
    assert attribution_tasks(entry, AttributionSettings(tasks=("b",))) == ["b"]


# --- the evaluator's step and its files -----------------------------------------------------------------------------
def test_the_evaluator_attributes_the_shared_direction_to_the_patch_and_writes_figure_json_and_maps(tmp_path):
    model, data = PatchModel(), Images(48)
    callback = WeightSpaceCorrelation(subset_size=32, num_permutations=0, k_min=3,
                                      attribution={"tasks": ["site"], "max_images": 6, "examples": 2})
    analysis, entry = callback.evaluator.evaluate(model, data)
    directions = callback.evaluator.shared_directions(analysis, model.primary, ["site"])
    # the embedding's third coordinate is a mean of 20 pixels: the projection keeps all 3 coordinates (k = d)
    assert torch.allclose(directions["site"].direction.abs(), torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          atol=1e-6)
    for method in ("gradient_x_input", "integrated_gradients"):
        settings = AttributionSettings(method=method, max_images=6, examples=2, tasks=("site",), steps=16)
        # wsca-analyze's progress bar (silent here: not a terminal) changes nothing
        result = callback.evaluator.attribute(model, data, directions, settings,
                                              progress=method == "integrated_gradients")["site"]
        assert result.attributions.shape == (6, H, W) and result.images.shape == (6, 1, H, W)
        assert result.indices == callback.evaluator.subset_indices(len(data))[:6]
        assert torch.allclose(region_fraction(result.attributions, patch_mask()), torch.ones(6, dtype=torch.float64))
        assert torch.equal(result.labels, data.site[result.indices])
        # beside it, each image's own primary decision: class a's reads the patch alone
        assert torch.equal(result.primary_labels, data.risk[result.indices])
        expected = attribute_decisions(model.wsc_embed, {"image": result.images}, result.images, result.primary_labels,
                                       decision_rows(model.primary.to(torch.float64)), method, steps=16)
        assert torch.allclose(result.decision_attributions, expected.float(), atol=1e-6)
    figures = write_attributions({"site": result}, str(tmp_path), "risk", examples=2,
                                 context={"classes": {"site": ["s0", "s1", "s2"]}})
    assert Path(figures["site"]).read_bytes()[:8] == PNG_MAGIC
    record = json.loads((tmp_path / "attribution" / "site.json").read_text())
    assert record["method"] == "integrated_gradients" and record["n_images"] == 6 and record["steps"] == 16
    maps = np.load(tmp_path / "attribution" / "site.npz")
    assert maps["attributions"].shape == (6, H, W) and maps["indices"].tolist() == result.indices
    assert maps["decision_attributions"].shape == (6, H, W)
    assert maps["primary_labels"].tolist() == result.primary_labels.tolist()


@pytest.mark.slow  # a tiny training run and wsca-analyze on its checkpoint
def test_wsca_analyze_writes_the_attribution_figure_of_a_named_task(tmp_path):
    from conftest import TINY

    from wsca_lightning.cli.analyze import analyze
    from wsca_lightning.cli.train import compose_train_config, train

    run = tmp_path / "run"
    train(compose_train_config(run, [*TINY, "trainer.max_epochs=1", "callbacks.wsc.num_permutations=0",
                                     "callbacks.wsc.attribution={tasks: [scanner], max_images: 4}"]))
    # the callback's fit-end attribution of the named task, by the default method
    assert (run / "wsc" / "attribution" / "scanner.png").read_bytes()[:8] == PNG_MAGIC
    trained = json.loads((run / "wsc" / "attribution" / "scanner.json").read_text())
    assert trained["method"] == "integrated_gradients" and trained["steps"] == 32
    tiny_data = [o for o in TINY if o.startswith("data.")]
    result = analyze(compose_train_config(tmp_path / "a", [
        *tiny_data, "wsc.subset_size=64", "wsc.num_permutations=0", f"checkpoint={run / 'checkpoints' / 'last.ckpt'}",
        "wsc.attribution.tasks=[scanner]", "wsc.attribution.max_images=4", "wsc.attribution.method=gradient_x_input"],
        config_name="analyze"))
    assert Path(result["paths"]["attribution/scanner"]).read_bytes()[:8] == PNG_MAGIC
    record = json.loads((tmp_path / "a" / "wsc" / "attribution" / "scanner.json").read_text())
    assert record["method"] == "gradient_x_input" and record["n_images"] == 4 and record["steps"] is None


def test_wsca_report_shows_each_runs_attribution_figures(tmp_path):
    from test_report import _fake_runs, _sample_summary

    from wsca_lightning import report
    from wsca_lightning.figures import save_figure
    from wsca_lightning.figures.attribution import attribution_figure

    _fake_runs(_sample_summary(None), tmp_path / "mr", [("multitask", 0.0), ("multitask", 1.0)], seeds=1)
    rng = np.random.default_rng(0)
    png = tmp_path / "mr" / "1" / "wsc" / "attribution" / "site.png"
    save_figure(attribution_figure(rng.random((3, 8, 10)), rng.normal(size=(3, 8, 10)), examples=2), png)
    result = report.build_report(tmp_path / "mr", tmp_path / "out")
    copied = [p for p in result.figures if p.name.startswith("attribution_")]
    assert [p.name for p in copied] == ["attribution_1_site.png"]
    assert copied[0].read_bytes() == png.read_bytes()
    page = result.html.read_text()
    assert "shared direction with &#x27;site&#x27;" in page or "shared direction with 'site'" in page
    assert page.count("data:image/png;base64,") == len(result.figures)


def test_the_figure_shows_the_decision_map_under_the_shared_direction_and_refuses_mismatched_maps():
    from wsca_lightning.figures.attribution import attribution_figure

    rng = np.random.default_rng(0)
    images, shared, decisions = rng.random((3, 8, 10)), rng.normal(size=(3, 8, 10)), rng.normal(size=(3, 8, 10))
    titles = [ax.get_title() for ax in attribution_figure(images, shared, decisions=decisions, examples=2).axes]
    assert titles.count("shared direction |attribution|") == 2 and titles.count("primary decision |attribution|") == 2
    assert "primary decision:\nmean |attribution|" in titles
    without = [ax.get_title() for ax in attribution_figure(images, shared, examples=2).axes]
    assert not any("primary decision" in t for t in without)
    with pytest.raises(ValueError, match=r"must all be \(N, H, W\)"):
        attribution_figure(images, shared, decisions=decisions[:2])

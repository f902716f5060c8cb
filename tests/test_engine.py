"""Tests for the WSC engine (wsca_lightning.wsc.engine): significance, gate, deconfounding, forms, serialisation.

Every embedding is synthetic with a planted structure, ``z = noise + class_means[y] + scanner_means[scanner]``, the
directions taken from one random orthonormal basis, so which task is encoded (and where) is known. All data come
from fixed ``torch.Generator`` seeds: the tests are deterministic.
"""

from __future__ import annotations

import json
import math
from itertools import combinations

import pytest
import torch

from wsca_lightning.wsc import (
    AnalysisSettings,
    Deconfounded,
    ProbeQuality,
    analyze_embeddings,
    null_to_dict,
    split_subset,
)
from wsca_lightning.wsc.engine import task_seed
from wsca_lightning.wsc.null import permutation_null
from wsca_lightning.wsc.similarity import cosine_matrix

D = torch.float64
N, DIM = 360, 32
B = 40  # permutations of the shared analysis
FAST = {"num_bootstrap": 100}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The problems here are tiny: one thread avoids oversubscription stalls on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _basis(g: torch.Generator, d: int = DIM) -> torch.Tensor:
    """``(d, d)`` orthonormal rows."""
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=D))[0].T.contiguous()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# --- the shared world: 3 primary classes, an independent encoded scanner, labels that are pure noise -------------


@pytest.fixture(scope="module")
def world():
    g = torch.Generator().manual_seed(0)
    basis = _basis(g)
    class_means = 2.0 * basis[:3]
    scanner_means = 1.5 * basis[3:5]
    y = torch.arange(N) % 3
    scanner = torch.randint(0, 2, (N,), generator=g)
    noise_labels = torch.randint(0, 3, (N,), generator=g)  # in no way in the embedding
    z = torch.randn(N, DIM, generator=g, dtype=D) + class_means[y] + scanner_means[scanner]
    primary = class_means.clone()  # the primary head: the class means
    aligned_head = primary + 0.05 * torch.randn(3, DIM, generator=g, dtype=D)
    random_head = torch.randn(3, DIM, generator=torch.Generator().manual_seed(100), dtype=D)
    return {
        "z": z, "y": y, "scanner": scanner, "noise": noise_labels, "primary": primary,
        "aligned_head": aligned_head, "random_head": random_head, "basis": basis,
    }


def _main_inputs(w):
    labels = {
        "aligned": w["y"],  # head = primary head + small noise
        "noise": w["noise"],  # head = random, labels independent of everything
        "scanner": w["scanner"],  # probe, encoded, independent of the primary label
        "copy": w["y"],  # probe, labels == primary labels (perfect confounding)
        "noise_probe": w["noise"],  # probe, labels not encoded
    }
    num_classes = {"aligned": 3, "noise": 3, "scanner": 2, "copy": 3, "noise_probe": 3}
    heads = {"aligned": w["aligned_head"], "noise": w["random_head"]}
    return labels, num_classes, heads


@pytest.fixture(scope="module")
def main(world):
    labels, num_classes, heads = _main_inputs(world)
    settings = AnalysisSettings(num_permutations=B, seed=0, **FAST)
    return analyze_embeddings(world["z"], world["primary"], labels, num_classes, head_weights=heads,
                              primary_labels=world["y"], settings=settings)


# --- 1. significance ------------------------------------------------------------------------------------------


def test_planted_head_alignment_is_maximally_significant(main):
    task = main.tasks["aligned"]
    assert task.source == "head"
    assert task.correlation.summary.max_abs > 0.95
    assert task.null is not None and task.null.num_permutations == B
    assert task.null.p <= 2 / (B + 1)
    assert task.null.z > 5


def test_independent_task_with_random_head_is_not_significant(main):
    task = main.tasks["noise"]
    assert task.source == "head"
    assert task.null.p > 0.05
    assert abs(task.null.z) < 2


def test_source_is_head_only_for_tasks_given_a_head(main, world):
    assert {n: t.source for n, t in main.tasks.items()} == {
        "aligned": "head", "noise": "head", "scanner": "probe", "copy": "probe", "noise_probe": "probe",
    }
    # a head task compares the projected head; a probe task compares its own probe
    expected = main.projection.project_weights(world["aligned_head"])
    assert torch.allclose(main.tasks["aligned"].observed_weight, expected, atol=1e-12)
    assert torch.equal(main.tasks["copy"].observed_weight, main.tasks["copy"].probe_weight)
    assert not torch.allclose(main.tasks["aligned"].observed_weight, main.tasks["aligned"].probe_weight)


def test_probe_of_labels_equal_to_primary_aligns_with_primary_head(main):
    task = main.tasks["copy"]
    assert task.source == "probe"
    # a softmax probe row is e_c minus the mean of the others: cos sqrt(2/3) ~ 0.82 with a class mean at best
    assert task.correlation.summary.max_abs > 0.7
    assert task.null.p <= 2 / (B + 1)
    assert task.null.z > 5
    # the encoded but unrelated scanner's probe is not aligned
    assert main.tasks["scanner"].correlation.summary.max_abs < 0.3
    assert main.tasks["scanner"].null.p > 0.05


# --- 2. p-value definition --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aligned", "noise", "scanner", "copy", "noise_probe"])
def test_p_value_and_observed_follow_the_definition(main, name):
    task = main.tasks[name]
    null = task.null
    h = main.settings.stop_after_exceedances
    reached = int((null.null >= null.observed).sum())
    assert null.null.shape == (null.num_permutations,)
    if null.stopped_early:  # Besag-Clifford: drawing stopped at the h-th draw reaching the observed value
        assert reached == h and null.null[-1] >= null.observed and null.num_permutations < B
        assert null.p == h / null.num_permutations
    else:
        assert null.num_permutations == B and reached < h
        assert null.p == (1 + reached) / (B + 1)
    assert null.observed == pytest.approx(task.correlation.summary.max_abs, rel=1e-12, abs=1e-12)
    sd = float(null.null.std(correction=1))
    assert null.z == pytest.approx((null.observed - float(null.null.mean())) / sd, rel=1e-9)


def test_zero_permutations_gives_no_null(world):
    labels, num_classes, heads = _main_inputs(world)
    keep = ["aligned", "scanner"]
    analysis = analyze_embeddings(
        world["z"], world["primary"], {k: labels[k] for k in keep}, {k: num_classes[k] for k in keep},
        head_weights={"aligned": heads["aligned"]}, primary_labels=world["y"],
        settings=AnalysisSettings(num_permutations=0, **FAST),
    )
    for task in analysis.tasks.values():
        assert task.null is None
        assert task.to_dict()["null"] is None
        # the deconfounded probe is still fitted, without a null
        assert task.deconfounded is not None and task.deconfounded.null is None
        assert task.deconfounded.to_dict()["p"] is None
    assert analysis.tasks["aligned"].correlation.summary.max_abs > 0.95


# --- 3. encodability gate ------------------------------------------------------------------------------------------


def test_unencoded_task_is_not_interpretable(main):
    for name in ("noise", "noise_probe"):  # the gate reads the probe, whatever the source
        task = main.tasks[name]
        assert task.interpretable is False
        assert "includes chance" in task.reason
        assert task.probe.auroc_ci[0] <= 0.5
        assert task.to_dict()["interpretable"] is False and task.to_dict()["reason"] == task.reason


def test_encoded_task_is_interpretable(main):
    for name in ("scanner", "copy", "aligned"):
        task = main.tasks[name]
        assert task.interpretable is True and task.reason is None
        assert task.probe.auroc > 0.9
        assert 0.5 < task.probe.auroc_ci[0] <= task.probe.auroc <= task.probe.auroc_ci[1] + 1e-12
        assert task.probe.balanced_accuracy > 0.7


def test_auroc_floor_above_achieved_auroc_blocks_interpretation(world, main):
    achieved = main.tasks["scanner"].probe.auroc
    floor = min(0.999, achieved + 0.02)
    analysis = analyze_embeddings(
        world["z"], world["primary"], {"scanner": world["scanner"]}, {"scanner": 2},
        settings=AnalysisSettings(num_permutations=0, auroc_floor=floor, **FAST),
    )
    task = analysis.tasks["scanner"]
    assert task.probe.auroc == pytest.approx(achieved)  # same split, same probe
    assert task.interpretable is False
    assert "auroc_floor" in task.reason


# --- 4. deconfounded probe --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def confounded():
    """Binary primary label; scanner agrees with it 80 % of the time; the two are encoded in orthogonal directions."""
    n = 400
    g = torch.Generator().manual_seed(1)
    basis = _basis(g)
    class_means = 2.0 * basis[:2]
    scanner_means = 0.75 * basis[2:4]  # weakly encoded: the primary direction helps predict the scanner
    y = torch.arange(n) % 2
    flip = torch.rand(n, generator=g) < 0.2
    scanner = torch.where(flip, 1 - y, y)
    tri = torch.randint(0, 3, (n,), generator=g)
    tri_means = 1.5 * basis[4:7]
    z = torch.randn(n, DIM, generator=g, dtype=D) + class_means[y] + scanner_means[scanner] + tri_means[tri]
    primary = class_means.clone()
    scanner_head = scanner_means + 0.1 * torch.randn(2, DIM, generator=g, dtype=D)
    tri_head = tri_means + 0.1 * torch.randn(3, DIM, generator=g, dtype=D)
    labels = {"scanner": scanner, "scanner_head": scanner, "tri": tri}
    num_classes = {"scanner": 2, "scanner_head": 2, "tri": 3}
    heads = {"scanner_head": scanner_head, "tri": tri_head}
    analysis = analyze_embeddings(z, primary, labels, num_classes, head_weights=heads, primary_labels=y,
                                  settings=AnalysisSettings(num_permutations=0, **FAST))
    return {"z": z, "y": y, "scanner": scanner, "primary": primary, "heads": heads, "analysis": analysis}


def test_confound_setup_has_all_cells_populated(confounded):
    y, s = confounded["y"], confounded["scanner"]
    agreement = float((y == s).double().mean())
    assert 0.75 < agreement < 0.85
    counts = torch.bincount(s * 2 + y, minlength=4)
    assert bool((counts > 20).all())


def test_deconfounded_probe_drops_the_borrowed_primary_direction(confounded):
    task = confounded["analysis"].tasks["scanner"]
    assert task.source == "probe" and task.interpretable
    assert task.deconfounded is not None and task.deconfounded.reason is None
    confounded_wsc = task.correlation.summary.max_abs
    deconfounded_wsc = task.deconfounded.max_abs
    assert deconfounded_wsc is not None
    # here ~0.41 vs ~0.19; ~0.15-0.2 is the chance floor of a probe fit on ~300 rows in 32 dimensions
    assert confounded_wsc > deconfounded_wsc + 0.15
    assert confounded_wsc > 1.5 * deconfounded_wsc
    assert deconfounded_wsc < 0.25
    assert task.to_dict()["deconfounded"]["max_abs"] == pytest.approx(deconfounded_wsc)


def test_deconfounded_null_is_reported_with_permutations(confounded):
    analysis = analyze_embeddings(
        confounded["z"], confounded["primary"], {"scanner": confounded["scanner"]}, {"scanner": 2},
        primary_labels=confounded["y"], settings=AnalysisSettings(num_permutations=20, **FAST),
    )
    task = analysis.tasks["scanner"]
    dec = task.deconfounded
    assert dec.null is not None and dec.null.num_permutations == 20
    assert dec.null.observed == dec.max_abs
    assert dec.null.p == (1 + int((dec.null.null >= dec.max_abs).sum())) / 21
    # the confounded probe is significantly aligned with the primary head, the deconfounded one less so
    assert task.null.p <= 2 / 21
    assert dec.null.z < task.null.z
    d = dec.to_dict()
    assert d["p"] == dec.null.p and d["max_abs"] == pytest.approx(dec.max_abs) and "reason" not in d


def test_empty_cell_leaves_deconfounded_undefined_with_named_cell(world):
    scanner = world["scanner"].clone()
    scanner[world["y"] == 2] = 0  # no S1 image of the "normal" class
    names = {"scanner": ["S0", "S1"], "__primary__": ["benign", "malignant", "normal"]}
    analysis = analyze_embeddings(
        world["z"], world["primary"], {"scanner": scanner}, {"scanner": 2}, primary_labels=world["y"],
        class_names=names, settings=AnalysisSettings(num_permutations=0, **FAST),
    )
    dec = analysis.tasks["scanner"].deconfounded
    assert dec is not None and dec.max_abs is None and dec.null is None
    assert "scanner=S1" in dec.reason and "primary=normal" in dec.reason
    assert "1 (metadata, primary) cell" in dec.reason
    assert "scanner=S0" not in dec.reason  # populated cells are not named
    d = analysis.tasks["scanner"].to_dict()["deconfounded"]
    assert d["max_abs"] is None and d["p"] is None and d["reason"] == dec.reason
    json.dumps(d, allow_nan=False)


def test_no_deconfounded_without_primary_labels_or_when_disabled(world):
    common = dict(settings=AnalysisSettings(num_permutations=0, **FAST))
    analysis = analyze_embeddings(world["z"], world["primary"], {"scanner": world["scanner"]}, {"scanner": 2},
                                  **common)
    assert analysis.tasks["scanner"].deconfounded is None
    assert analysis.tasks["scanner"].to_dict()["deconfounded"] is None
    off = analyze_embeddings(world["z"], world["primary"], {"scanner": world["scanner"]}, {"scanner": 2},
                             primary_labels=world["y"],
                             settings=AnalysisSettings(num_permutations=0, deconfound=False, **FAST))
    assert off.tasks["scanner"].deconfounded is None


# --- 5. binary (identifiable) forms ------------------------------------------------------------------------------


def test_identifiable_form_of_two_binary_heads_is_cosine_of_row_differences(confounded):
    analysis = confounded["analysis"]
    task = analysis.tasks["scanner_head"]
    assert task.source == "head"
    ident = task.identifiable
    assert ident is not None
    assert ident.matrix.shape == (1, 1) and ident.unprojected.shape == (1, 1)
    pk = analysis.projection.project_weights(confounded["primary"])
    tk = analysis.projection.project_weights(confounded["heads"]["scanner_head"])
    assert float(ident.matrix[0, 0]) == pytest.approx(_cos(pk[1] - pk[0], tk[1] - tk[0]), abs=1e-12)
    pd, td = confounded["primary"], confounded["heads"]["scanner_head"]
    assert float(ident.unprojected[0, 0]) == pytest.approx(_cos(pd[1] - pd[0], td[1] - td[0]), abs=1e-12)
    assert ident.summary.max_abs == pytest.approx(abs(float(ident.matrix[0, 0])), abs=1e-15)
    assert "identifiable" in task.to_dict()
    # the full (2, 2) matrix is still reported alongside
    assert task.correlation.matrix.shape == (2, 2)


def test_identifiable_form_when_only_the_primary_is_binary(confounded):
    task = confounded["analysis"].tasks["tri"]
    assert task.identifiable is not None
    assert task.identifiable.matrix.shape == (1, 3)
    pk = confounded["analysis"].projection.project_weights(confounded["primary"])
    expected = cosine_matrix((pk[1] - pk[0]).unsqueeze(0), task.observed_weight)
    assert torch.allclose(task.identifiable.matrix, expected, atol=1e-12)


def test_no_identifiable_form_for_multiclass_heads(main):
    task = main.tasks["aligned"]  # 3-class primary, 3-class head
    assert task.identifiable is None
    assert "identifiable" not in task.to_dict()
    assert main.tasks["scanner"].identifiable is not None  # a binary probe on the task side is enough
    assert main.tasks["scanner"].identifiable.matrix.shape == (3, 1)


# --- 6. determinism and seeds ------------------------------------------------------------------------------------


def _small(world, seed: int):
    keep = ["aligned", "scanner"]
    labels, num_classes, heads = _main_inputs(world)
    return analyze_embeddings(
        world["z"], world["primary"], {k: labels[k] for k in keep}, {k: num_classes[k] for k in keep},
        head_weights={"aligned": heads["aligned"]}, primary_labels=world["y"],
        settings=AnalysisSettings(num_permutations=20, seed=seed, **FAST),
    )


def _dump(analysis) -> str:
    return json.dumps({"tasks": {n: t.to_dict() for n, t in analysis.tasks.items()},
                       "reference": analysis.reference_dict(), "n": [analysis.n_fit, analysis.n_holdout]},
                      allow_nan=False)


def test_same_inputs_and_settings_give_identical_output(world):
    assert _dump(_small(world, 0)) == _dump(_small(world, 0))


def test_different_seed_changes_split_and_null(world):
    a, b = _small(world, 0), _small(world, 1)
    fit0, hold0 = split_subset(N, 0.25, 0)
    fit1, hold1 = split_subset(N, 0.25, 1)
    assert not torch.equal(hold0, hold1)
    assert (a.n_fit, a.n_holdout) == (b.n_fit, b.n_holdout) == (270, 90)
    for name in a.tasks:
        assert not torch.equal(a.tasks[name].null.null, b.tasks[name].null.null)
    # the head's own WSC does not depend on the seed (PCA on all rows), the probe's does (other fit part)
    assert a.tasks["aligned"].correlation.summary.max_abs == b.tasks["aligned"].correlation.summary.max_abs
    assert a.tasks["scanner"].probe.n_holdout == 90 and b.tasks["scanner"].probe.n_holdout == 90
    assert a.tasks["scanner"].correlation.summary.max_abs != b.tasks["scanner"].correlation.summary.max_abs


def test_null_is_permuted_probes_on_the_fit_part_seeded_by_seed_and_task_name(world):
    """The null is ``permutation_null`` on the projected fit part, seeded per task by ``task_seed(seed, name)``."""
    analysis = _small(world, 1)
    fit, _ = split_subset(N, 0.25, 1)
    features = analysis.projection.project_embeddings(world["z"])[fit]
    primary_k = analysis.projection.project_weights(world["primary"])
    for name, labels, c in (("aligned", world["y"], 3), ("scanner", world["scanner"], 2)):
        ref = permutation_null(features, labels[fit], primary_k, c, num_permutations=20, seed=task_seed(1, name),
                               stop_after=analysis.settings.stop_after_exceedances)
        assert torch.allclose(analysis.tasks[name].null.null, ref.null, atol=1e-12, rtol=0)
    assert analysis.tasks["scanner"].null.observed == pytest.approx(ref.observed, abs=1e-12)
    assert len({task_seed(0, "copy"), task_seed(1, "copy"), task_seed(0, "aligned")}) == 3


def test_same_labels_under_another_name_get_other_permutations(main):
    assert not torch.allclose(main.tasks["copy"].null.null, main.tasks["aligned"].null.null)


def test_adding_a_task_changes_no_other_task(world):
    both = _small(world, 0)
    alone = analyze_embeddings(world["z"], world["primary"], {"scanner": world["scanner"]}, {"scanner": 2},
                               primary_labels=world["y"], settings=AnalysisSettings(num_permutations=20, **FAST))
    assert json.dumps(alone.tasks["scanner"].to_dict()) == json.dumps(both.tasks["scanner"].to_dict())


@pytest.mark.parametrize("n,fraction,seed", [(360, 0.25, 0), (101, 0.3, 7), (10, 0.5, 3), (4, 0.5, 1)])
def test_split_subset_partitions_the_rows(n, fraction, seed):
    fit, hold = split_subset(n, fraction, seed)
    assert fit.dtype == hold.dtype == torch.int64
    assert hold.numel() == round(n * fraction) and fit.numel() == n - round(n * fraction)
    assert torch.equal(fit, fit.sort().values) and torch.equal(hold, hold.sort().values)
    assert set(fit.tolist()).isdisjoint(hold.tolist())
    assert sorted(fit.tolist() + hold.tolist()) == list(range(n))
    again = split_subset(n, fraction, seed)
    assert torch.equal(again[0], fit) and torch.equal(again[1], hold)


@pytest.mark.parametrize("n,fraction", [(5, 0.25), (3, 0.5), (10, 0.9), (40, 0.01)])
def test_split_subset_rejects_parts_below_two_rows(n, fraction):
    with pytest.raises(ValueError, match="subset_size"):
        split_subset(n, fraction, 0)


# --- 7. missing labels ------------------------------------------------------------------------------------------


def test_missing_labels_are_ignored(world):
    scanner = world["scanner"].clone()
    g = torch.Generator().manual_seed(5)
    missing = torch.randperm(N, generator=g)[: N // 5]
    scanner[missing] = -1
    valid = scanner >= 0
    analysis = analyze_embeddings(
        world["z"], world["primary"], {"scanner": scanner}, {"scanner": 2}, primary_labels=world["y"],
        settings=AnalysisSettings(num_permutations=20, **FAST),
    )
    task = analysis.tasks["scanner"]
    assert task.probe.n_fit + task.probe.n_holdout == int(valid.sum()) == N - N // 5
    fit, hold = split_subset(N, 0.25, 0)
    assert task.probe.n_fit == int(valid[fit].sum()) and task.probe.n_holdout == int(valid[hold].sum())
    assert (analysis.n_fit, analysis.n_holdout) == (fit.numel(), hold.numel())  # the split itself is unchanged
    assert task.interpretable and task.probe.auroc > 0.9
    assert task.null is not None and math.isfinite(task.null.z)
    assert task.deconfounded is not None and task.deconfounded.max_abs is not None


# --- 8. validation ----------------------------------------------------------------------------------------------


def test_invalid_settings_are_all_reported_together(world):
    bad = AnalysisSettings(num_permutations=1, holdout_fraction=1.0, var_threshold=0)
    problems = bad.problems()
    assert len(problems) == 3
    with pytest.raises(ValueError) as info:
        analyze_embeddings(world["z"], world["primary"], {"scanner": world["scanner"]}, {"scanner": 2},
                           settings=bad)
    message = str(info.value)
    for name in ("num_permutations", "holdout_fraction", "var_threshold"):
        assert name in message
    assert AnalysisSettings().problems() == []


@pytest.mark.parametrize("changes,field", [
    ({"seed": 1.5}, "seed"), ({"auroc_floor": 1.0}, "auroc_floor"), ({"deconfound": 1}, "deconfound"),
    ({"ci_level": 1.0}, "ci_level"), ({"num_bootstrap": 0}, "num_bootstrap"), ({"k_min": True}, "k_min"),
])
def test_each_invalid_field_is_named(changes, field):
    problems = AnalysisSettings(**changes).problems()
    assert len(problems) == 1 and problems[0].key == field and str(problems[0]).startswith(f"{field}:")


def test_labels_of_wrong_length_name_the_task(world):
    with pytest.raises(ValueError, match="site"):
        analyze_embeddings(world["z"], world["primary"],
                           {"scanner": world["scanner"], "site": torch.zeros(N - 1, dtype=torch.int64)},
                           {"scanner": 2, "site": 2}, settings=AnalysisSettings(num_permutations=0, **FAST))


@pytest.mark.parametrize("num_permutations", [0, 20])
def test_single_class_fit_part_names_the_task(world, num_permutations):
    _, hold = split_subset(N, 0.25, 0)
    mono = torch.zeros(N, dtype=torch.int64)
    mono[hold] = 1  # the second class exists only in the held-out part
    with pytest.raises(ValueError, match="'mono'"):
        analyze_embeddings(world["z"], world["primary"], {"scanner": world["scanner"], "mono": mono},
                           {"scanner": 2, "mono": 2},
                           settings=AnalysisSettings(num_permutations=num_permutations, **FAST))


# --- 9. serialisation and reference distributions ----------------------------------------------------------------


def test_every_task_serialises_to_strict_json(main):
    for name, task in main.tasks.items():
        d = json.loads(json.dumps(task.to_dict(), allow_nan=False))
        assert d["source"] == task.source
        assert d["max_abs"] == pytest.approx(task.correlation.summary.max_abs)
        assert d["null"]["p"] == task.null.p
        assert d["probe"]["n_fit"] == task.probe.n_fit
        assert len(d["matrix"]) == 3
    json.dumps(main.reference_dict(), allow_nan=False)


def test_nan_fields_become_none():
    quality = ProbeQuality(math.nan, (math.nan, math.nan), math.nan, False, 10, 0)
    d = quality.to_dict()
    assert d["auroc"] is None and d["auroc_ci"] == [None, None] and d["balanced_accuracy"] is None
    assert Deconfounded(math.inf).to_dict()["max_abs"] is None
    json.dumps([d, Deconfounded(None, reason="x").to_dict()], allow_nan=False)


def test_null_to_dict_summarises_the_null(main):
    null = main.tasks["copy"].null
    d = null_to_dict(null)
    assert set(d) == {"z", "p", "B", "stopped_early", "observed", "mean", "sd", "q05", "q95"}
    assert d["B"] == B and d["p"] == null.p and d["observed"] == null.observed
    assert d["mean"] == pytest.approx(float(null.null.mean()))
    assert d["sd"] == pytest.approx(float(null.null.std()))
    assert float(null.null.min()) <= d["q05"] <= d["q95"] <= float(null.null.max())
    assert d["z"] == pytest.approx(null.z)
    assert main.tasks["copy"].to_dict()["null"] == d


def test_reference_distributions_count_every_row_pair(main, world):
    sizes = [3] + [t.observed_weight.shape[0] for t in main.tasks.values()]
    assert sizes == [3, 3, 3, 2, 3, 3]
    ref = main.reference_dict()
    assert ref["intra"]["n"] == sum(c * (c - 1) // 2 for c in sizes) == 16
    assert ref["inter"]["n"] == sum(a * b for a, b in combinations(sizes, 2)) == 120
    assert len(ref["intra"]["values"]) == 16 and len(ref["inter"]["values"]) == 120
    # the values are the projected cosines between rows of the same head, head by head
    heads = [main.projection.project_weights(world["primary"])] + [t.observed_weight for t in main.tasks.values()]
    expected = []
    for w in heads:
        cos = cosine_matrix(w, w)
        expected += [float(cos[i, j]) for i, j in combinations(range(w.shape[0]), 2)]
    assert ref["intra"]["values"] == pytest.approx(expected, abs=1e-12)
    assert ref["intra"]["mean"] == pytest.approx(sum(expected) / len(expected))
    # the primary head against the aligned head is one of the inter pairs: near-1 cosines are present
    assert max(ref["inter"]["values"]) > 0.95


# --- a diverged head -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diverged(world):
    """A metadata head whose weights went NaN (a diverged training run); embeddings and primary head are fine."""
    nan_head = torch.full((2, DIM), math.nan, dtype=D)
    analysis = analyze_embeddings(world["z"], world["primary"], {"scanner": world["scanner"]}, {"scanner": 2},
                                  head_weights={"scanner": nan_head},
                                  settings=AnalysisSettings(num_permutations=20, **FAST))
    return analysis.tasks["scanner"]


def test_diverged_head_is_not_reported_as_significant(diverged):
    """NaN >= nothing, so the +1 formula alone would give the smallest p: a diverged head must not read as a
    shortcut."""
    assert math.isnan(diverged.correlation.summary.max_abs)
    assert math.isnan(diverged.null.p)
    assert diverged.interpretable is False and "non-finite weights" in diverged.reason


def test_diverged_head_still_serialises(diverged):
    out = json.loads(json.dumps(diverged.to_dict(), allow_nan=False))
    assert out["max_abs"] is None and out["null"]["p"] is None and out["null"]["observed"] is None
    assert out["matrix"][0][0] is None


def test_a_diverged_primary_head_leaves_a_strict_json_summary_and_no_verdict(world):
    """Every number that feeds wsc_summary.json stays standard JSON, and nothing reads as significant."""
    nan_primary = torch.full((3, DIM), math.nan, dtype=D)
    analysis = analyze_embeddings(world["z"], nan_primary, {"scanner": world["scanner"]}, {"scanner": 2},
                                  primary_labels=world["y"], settings=AnalysisSettings(num_permutations=20, **FAST))
    task = analysis.tasks["scanner"]
    assert task.interpretable is False and "non-finite weights" in task.reason
    out = json.loads(json.dumps({"task": task.to_dict(), "reference": analysis.reference_dict()}, allow_nan=False))
    assert out["task"]["null"]["p"] is None
    assert out["task"]["deconfounded"]["max_abs"] is None and "primary head" in out["task"]["deconfounded"]["reason"]
    assert out["reference"]["inter"]["mean"] is None and None in out["reference"]["inter"]["values"]


# --- k sensitivity (paper §3.5) --------------------------------------------------------------------------------


def test_k_sweep_at_the_analysis_k_equals_the_reported_value_and_drops_k_beyond_the_span(world):
    labels, num_classes, heads = _main_inputs(world)
    keep = ["aligned", "noise", "scanner"]
    k_values = (4, 10, 20, DIM, 1000)  # DIM = 32 = the span of 360 rows; 1000 is beyond it
    analysis = analyze_embeddings(
        world["z"], world["primary"], {k: labels[k] for k in keep}, {k: num_classes[k] for k in keep},
        head_weights={k: heads[k] for k in ("aligned", "noise")},
        settings=AnalysisSettings(num_permutations=0, k_min=20, var_threshold=0.5, k_values=k_values, **FAST),
    )
    assert analysis.projection.k == 20
    sweep = analysis.k_sweep
    assert sweep["k"] == [4, 10, 20, DIM]
    assert set(sweep["max_abs"]) == set(keep)
    for name in ("aligned", "noise"):  # trained heads: at k = 20 exactly the analysis's own value
        assert sweep["max_abs"][name][2] == pytest.approx(analysis.tasks[name].correlation.summary.max_abs, abs=1e-12)
        # at k = d the projection is a rotation: the unprojected value
        assert sweep["max_abs"][name][3] == pytest.approx(analysis.tasks[name].to_dict()["unprojected"]["max_abs"],
                                                          abs=1e-9)
    assert sweep["max_abs"]["aligned"][2] > 0.9 > max(sweep["max_abs"]["noise"])
    assert json.dumps(sweep, allow_nan=False)


def test_k_values_are_validated():
    assert any(p.key == "k_values" for p in AnalysisSettings(k_values=(0, 5)).problems())
    assert any(p.key == "k_values" for p in AnalysisSettings(k_values=[5]).problems())
    assert AnalysisSettings(k_values=(5, 10)).to_dict()["k_values"] == [5, 10]

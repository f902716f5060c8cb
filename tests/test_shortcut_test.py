"""The verdict's test on constructed embeddings: a used direction is found, an encoded but unused one and a column
that is only associated with the label are not (docs/method.md, "The shortcut test"; engine module docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from wsca_lightning.wsc import AnalysisSettings, analyze_embeddings
from wsca_lightning.wsc.null import (
    blind_primary_null,
    covariance_null,
    metadata_subspace,
    permuted_labels,
    score_dependence_test,
)

N, D = 480, 24
SETTINGS = AnalysisSettings(k_min=D, num_permutations=60, num_bootstrap=60)


def world(seed: int, *, association: float, encoded: float = 3.0) -> dict[str, torch.Tensor]:
    """Labels y (3 classes) along axes 0-1, metadata m (3 classes) along axes 2-3 (``encoded`` apart), with
    ``P(m = y) = association + (1 - association) / 3``; a column c drawn from y alone, in no axis."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (N,), generator=g)
    m = torch.where(torch.rand(N, generator=g) < association, y, torch.randint(0, 3, (N,), generator=g))
    c = (torch.rand(N, generator=g) < torch.tensor([0.85, 0.5, 0.15])[y]).long()
    corners = torch.tensor([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])
    z = torch.randn(N, D, generator=g, dtype=torch.float64)
    z[:, 0:2] += 3.0 * corners[y].double()
    z[:, 2:4] += encoded * corners[m].double()
    return {"z": z, "y": y, "m": m, "c": c, "corners": corners.double()}


def heads(w: dict[str, torch.Tensor], *, uses_metadata: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The primary head (rows: class directions on axes 0-1, plus the metadata class directions when it uses
    them) and a trained metadata head (the metadata class directions on axes 2-3), both ``(3, D)``."""
    primary = torch.zeros(3, D, dtype=torch.float64)
    primary[:, 0:2] = w["corners"]
    if uses_metadata:
        primary[:, 2:4] = w["corners"]
    meta = torch.zeros(3, D, dtype=torch.float64)
    meta[:, 2:4] = w["corners"]
    return primary, meta + 0.05 * torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def shortcut(w, primary, label, num_classes, head=None, decision="calibrated"):
    settings = AnalysisSettings(**{**SETTINGS.to_dict(), "k_values": (), "decision": decision})
    return analyze_embeddings(w["z"], primary, {"m": label}, {"m": num_classes},
                              head_weights=None if head is None else {"m": head}, primary_labels=w["y"],
                              settings=settings).tasks["m"]


@pytest.mark.parametrize("protocol", ["heads", "probe_refit"])
def test_a_primary_head_that_uses_the_metadata_direction_is_significant(protocol):
    w = world(0, association=0.5)
    primary, meta = heads(w, uses_metadata=True)
    task = shortcut(w, primary, w["m"], 3, head=meta if protocol == "heads" else None)
    assert task.interpretable
    assert task.test.p < 0.05, task.test.to_dict()
    assert task.test.parts["deconfounded"] is not None and not task.test.notes
    assert task.test.effect > 0.2 and task.test.effect_ci[0] > 0.0


@pytest.mark.parametrize("protocol", ["heads", "probe_refit"])
def test_strongly_encoded_metadata_the_head_does_not_use_is_not_significant(protocol):
    w = world(1, association=0.0, encoded=6.0)
    primary, meta = heads(w, uses_metadata=False)
    task = shortcut(w, primary, w["m"], 3, head=meta if protocol == "heads" else None)
    assert task.interpretable and task.probe.auroc > 0.95  # encoded ...
    assert task.test.p >= 0.05, task.test.to_dict()  # ... but not used
    assert task.test.effect_ci[1] < 0.2


def test_a_column_only_associated_with_the_label_is_not_significant_though_its_probe_follows_the_label():
    w = world(2, association=0.0)
    primary, _ = heads(w, uses_metadata=False)
    old = shortcut(w, primary, w["c"], 2, decision="permutation")
    assert old.test.p < 0.05  # the permutation part alone calls it: the probe learnt the label through it
    new = shortcut(w, primary, w["c"], 2)
    assert new.test.parts["permutation"] == old.test.p
    assert new.test.p >= 0.05, new.test.to_dict()


def test_metadata_tied_to_the_label_leaves_the_permutation_part_and_says_so():
    w = world(3, association=1.0)
    primary, meta = heads(w, uses_metadata=True)
    task = shortcut(w, primary, w["m"], 3, head=meta)
    assert task.test.parts["deconfounded"] is None
    assert task.test.p == max(task.test.parts["permutation"], task.test.parts["blind"]) < 0.05
    assert any("cannot tell use of the metadata from use of a label" in note for note in task.test.notes)


def test_the_gate_uses_the_holdout_data_when_given_and_checks_its_shape():
    w, fresh = world(4, association=0.0), world(5, association=0.0)
    primary, _ = heads(w, uses_metadata=False)
    kwargs = dict(primary_labels=w["y"], settings=SETTINGS)
    task = analyze_embeddings(w["z"], primary, {"m": w["m"]}, {"m": 3}, holdout_embeddings=fresh["z"][:100],
                              holdout_labels={"m": fresh["m"][:100]}, holdout_split="validation", **kwargs).tasks["m"]
    assert task.probe.split == "validation" and task.probe.n_holdout == 100
    with pytest.raises(ValueError, match="holdout_labels\\['m'\\] must have shape"):
        analyze_embeddings(w["z"], primary, {"m": w["m"]}, {"m": 3}, holdout_embeddings=fresh["z"][:100],
                           holdout_labels={"m": fresh["m"][:99]}, **kwargs)
    with pytest.raises(ValueError, match="come together"):
        analyze_embeddings(w["z"], primary, {"m": w["m"]}, {"m": 3}, holdout_embeddings=fresh["z"], **kwargs)


def test_stratified_permutations_keep_each_stratums_label_counts():
    labels = torch.tensor([0, 1, 1, 2, 0, -1, 2, 1])
    strata = torch.tensor([0, 0, 0, 1, 1, 1, 1, -1])
    out = permuted_labels(labels, 50, seed=3, strata=strata)
    for group in (0, 1):
        rows = strata == group
        assert all(sorted(o[rows].tolist()) == sorted(labels[rows].tolist()) for o in out)
    assert (out[:, 5] == -1).all() and (out[:, 7] == 1).all()  # missing and unstratified rows stay
    assert len({tuple(o.tolist()) for o in out}) > 1


def test_candidate_nulls_on_the_constructed_worlds():
    used, unused = world(6, association=0.5), world(6, association=0.5)
    p_used, meta = heads(used, uses_metadata=True)
    p_unused, _ = heads(unused, uses_metadata=False)
    cos_used = float(torch.nn.functional.cosine_similarity(p_used[0], meta[0], dim=0))
    # random heads drawn with the covariance follow its dominant axes: alignment there is what chance gives
    eig = torch.tensor([20.0, 20.0] + [0.5] * (D - 2), dtype=torch.float64)
    along_top = torch.eye(D, dtype=torch.float64)[:1]
    assert covariance_null(0.8, along_top, eig, 3, seed=0).p > 0.2
    assert covariance_null(0.8, torch.eye(D, dtype=torch.float64)[5:6], eig, 3, seed=0).p < 0.05
    # the metadata subspace is the plane of axes 2-3, found within label classes
    basis = metadata_subspace(used["z"], used["m"], used["y"])
    assert basis.shape[0] == 2 and float(basis[:, 2:4].norm()) > 0.95 * math.sqrt(2)
    blind = blind_primary_null(cos_used, meta, used["z"], used["y"], used["m"], 3, num_draws=30, seed=0)
    assert blind.p < 0.05 and float(blind.null.max()) < 0.3
    scores = unused["z"] @ p_unused.T
    assert score_dependence_test(scores, unused["m"], unused["y"], num_permutations=60).p >= 0.05
    scores = used["z"] @ p_used.T
    assert score_dependence_test(scores, used["m"], used["y"], num_permutations=60).p < 0.05

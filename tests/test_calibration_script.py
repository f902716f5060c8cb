"""benchmarks/calibration.py: its plan, its interval and its tables (the trainings themselves are the benchmark)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import calibration  # noqa: E402


def test_clopper_pearson_matches_known_exact_intervals():
    low, high = calibration.clopper_pearson(2, 40)
    assert low == pytest.approx(0.00611, abs=1e-4) and high == pytest.approx(0.16919, abs=1e-4)
    assert calibration.clopper_pearson(0, 40) == (0.0, pytest.approx(0.08810, abs=1e-4))
    assert calibration.clopper_pearson(20, 20) == (pytest.approx(0.83157, abs=1e-4), 1.0)


def test_the_plan_has_the_issue_sizes_and_skips_fashion_without_its_files(monkeypatch):
    monkeypatch.setattr(calibration, "fashion_available", lambda: False)
    runs = calibration.planned_runs(quick=False)
    for mode in calibration.HEAD_MODES:
        assert sum(1 for d, s, m, _ in runs if m == mode and s == 0.0) == 40
        for strength in (0.5, 0.8, 1.0):
            assert sum(1 for d, s, m, _ in runs if m == mode and s == strength) == 20
    assert not any(d == "fashion" for d, *_ in runs)
    assert len({seed for *_, seed in runs}) == 100  # every scenario's runs have seeds of their own
    monkeypatch.setattr(calibration, "fashion_available", lambda: True)
    assert sum(1 for d, *_ in calibration.planned_runs(quick=False) if d == "fashion") == 40


def row(task, strength, significant, parts, dependence=None, mode="multitask", protocol="heads", effect=0.0):
    return {"data": "synthetic", "shortcut_strength": strength, "task": task, "head_mode": mode,
            "protocol": protocol, "significant": significant, "interpretable": True, "candidates": parts,
            "max_abs": 0.2, "effect": effect, "dependence": dependence}


def test_aggregate_counts_verdicts_per_scenario_and_candidate_rules():
    rows = [row("scanner", 0.0, False, {"permutation": 0.01, "deconfounded": 0.5, "blind": 0.3}, 0.1, effect=0.0),
            row("scanner", 0.0, False, {"permutation": 0.4, "deconfounded": 0.5, "blind": 0.3}, 0.05, effect=-0.1),
            row("scanner", 1.0, True, {"permutation": 0.01, "deconfounded": None, "blind": 0.01}, 0.9, effect=0.5),
            row("scanner", 0.8, True, {"permutation": 0.01, "deconfounded": 0.02, "blind": 0.01}, 0.7, effect=0.4)]
    result = calibration.aggregate(rows)
    h0a = next(t for t in result["table"] if t["scenario"].startswith("H0a"))
    assert (h0a["n"], h0a["significant"]) == (2, 0)
    assert h0a["candidates"]["permutation (the old rule)"] == 0.5 and h0a["candidates"]["calibrated"] == 0.0
    strong = next(t for t in result["table"] if t["scenario"] == "H1 scanner shortcut 1.0")
    assert strong["rate"] == 1.0 and strong["candidates"]["calibrated"] == 1.0  # a part that does not apply
    agreement = result["agreement"][0]
    assert agreement["spearman_effect_vs_dependence"] == pytest.approx(1.0)
    assert agreement["balanced_dependence_max"] == 0.1 and agreement["n_at_balanced_level"] == 2
    assert "| H0a scanner encoded, unassociated | **0.000**" in calibration.markdown_table(result)

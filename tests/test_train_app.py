"""End-to-end tests of the training app: the real module, callback and built-in data, composed through Hydra."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from wsca_lightning.cli.train import ConfigError, main, train


# a console-script run that only has to work: small images, a small null and bootstrap
SMALL_RUN = ["data.image_size=[32,48]", "callbacks.wsc.num_permutations=20", "callbacks.wsc.num_bootstrap=50"]


def read_metrics(run_dir: Path, version: int = 0) -> list[dict[str, str]]:
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def epochs_with(rows: list[dict[str, str]], key: str) -> list[int]:
    return [int(r["epoch"]) for r in rows if r.get(key, "") != ""]


@pytest.mark.slow
def test_training_logs_wsc_every_epoch_writes_matrices_and_summary(tiny_config, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config("trainer.max_epochs=3", "callbacks.wsc.num_permutations=100"))

    rows = read_metrics(run)
    tasks = ["scanner", "hospital", "spacing", "cervical_length", "bmi"]
    loss_rows = {(r["epoch"], r["step"]) for r in rows if r.get("train/loss")}
    for task in tasks:
        # exactly one value per epoch, logged at that epoch's step (the row of its training loss, or -- analysed in
        # the background -- a row of its own with the same epoch and step)
        assert epochs_with(rows, f"wsc/{task}/max_abs") == [0, 1, 2]
        for row in rows:
            if row.get(f"wsc/{task}/max_abs"):
                assert (row["epoch"], row["step"]) in loss_rows
                assert 0.0 <= float(row[f"wsc/{task}/max_abs"]) <= 1.0
                assert float(row[f"wsc/{task}/mean_abs"]) <= float(row[f"wsc/{task}/max_abs"])
    assert epochs_with(rows, "wsc/k") == [0, 1, 2]
    # k = min(d, N - 1, max(50, k_99%)) with d = 128 (SonoNet16 pooled) and N = 64 embeddings
    assert all(50 <= float(r["wsc/k"]) <= 63 for r in rows if r.get("wsc/k"))
    assert epochs_with(rows, "val/risk/auroc") == [0, 1, 2]

    wsc_dir = run / "wsc"
    assert sorted(p.name for p in wsc_dir.glob("epoch_*.npz")) == [f"epoch_{e:04d}.npz" for e in range(3)]
    with np.load(wsc_dir / "epoch_0002.npz") as npz:
        assert npz["scanner"].shape == (3, 3)  # 3 risk classes x 3 scanners
        assert npz["spacing"].shape == (3, 4)  # 4 spacing bins
        assert list(npz["scanner__rows"]) == ["short", "intermediate", "normal"]

    summary = json.loads((wsc_dir / "wsc_summary.json").read_text())
    assert summary["primary"] == "risk"
    assert summary["epoch"] == 2
    assert summary["protocol"] == "multitask"
    assert set(summary["tasks"]) == set(tasks)
    scanner = summary["tasks"]["scanner"]
    assert scanner["rows"] == ["short", "intermediate", "normal"]
    assert scanner["cols"] == ["scanner_A", "scanner_B", "scanner_C"]
    matrix = np.array(scanner["matrix"])
    assert matrix.shape == (3, 3)
    assert math.isclose(scanner["max_abs"], np.abs(matrix).max(), rel_tol=1e-9)
    assert math.isclose(scanner["mean_abs"], np.abs(matrix).mean(), rel_tol=1e-9)
    # the logged scalar of the last epoch is the summary's value
    last = [r for r in rows if r.get("wsc/scanner/max_abs")][-1]
    assert math.isclose(float(last["wsc/scanner/max_abs"]), scanner["max_abs"], rel_tol=1e-5)
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2]
    assert result["summary_path"] == str(wsc_dir / "wsc_summary.json")
    # significance, probe quality, gate and deconfounded WSC per task, logged and summarised
    assert epochs_with(rows, "wsc/scanner/p") == [0, 1, 2]
    assert math.isclose(float(last["wsc/scanner/p"]), scanner["null"]["p"], rel_tol=1e-5)
    assert scanner["null"]["q05"] <= scanner["null"]["q95"]
    # B = 100 permutations, fewer when the sequential null stopped at its 10th draw reaching the observed value
    assert scanner["null"]["B"] == 100 or (scanner["null"]["stopped_early"] and 10 <= scanner["null"]["B"] < 100)
    assert scanner["source"] == "head" and set(scanner["probe"]) >= {"auroc", "auroc_ci", "balanced_accuracy"}
    assert isinstance(scanner["interpretable"], bool) and set(scanner["deconfounded"]) >= {"max_abs", "p"}
    assert summary["reference"]["inter"]["n"] > 0 and summary["alarm"]["counts"] == {}
    assert set(summary["history"][-1]["tasks"]["scanner"]) >= {"max_abs", "p", "q05", "q95", "interpretable",
                                                                 "test_p", "effect", "effect_ci"}
    # the verdict's test: its p (logged as test_p), its parts, an effect size with an interval; the gate on val data
    test = scanner["test"]
    assert math.isclose(float(last["wsc/scanner/test_p"]), test["p"], rel_tol=1e-5)
    assert test["p"] == max(v for v in test["parts"].values() if v is not None) and test["decision"] == "calibrated"
    assert test["effect_ci"][0] <= test["effect_ci"][1]
    assert scanner["probe"]["split"] == "validation"
    assert "train/loss" in summary["history"][-1]["metrics"]
    # pictures: a heatmap per epoch, the latest one, the fit-end plot; and the table
    assert sorted(p.name for p in (wsc_dir / "heatmaps").glob("*.png")) == [f"epoch_{e:04d}.png" for e in range(3)]
    for png in ("wsc_heatmap.png", "wsc_over_epochs.png"):
        assert (wsc_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (wsc_dir / "wsc_table.csv").read_text().count("\n") == 1 + len(tasks)
    assert not list(wsc_dir.rglob("*.partial*"))


@pytest.mark.slow
def test_sa_sononet_trains_on_eight_channel_builtin_data(tiny_config, tmp_path):
    result = train(tiny_config("model=sa_sononet32", "trainer.max_epochs=1", "data.image_size=[32,48]",
                               "callbacks.wsc.save_plots=false"))
    summary = result["summary"]
    # primary head = fixed pooling of the 3 adaptation maps (one per risk class), embedding = 3 x 2 x 3 maps
    assert summary["embedding_dim"] == 3 * 2 * 3
    assert summary["tasks"]["scanner"]["rows"] == ["short", "intermediate", "normal"]
    assert summary["k"] <= summary["embedding_dim"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+model.loss_weights.scannr=2.0", "model.loss_weights.scannr: unknown head"),
        ("callbacks.wsc.tasks=[scannr]", "callbacks.wsc.tasks: unknown metadata head(s) ['scannr']"),
        ("callbacks.wsc.alarm.tasks=[scannr]", "callbacks.wsc.alarm.tasks: unknown metadata head(s) ['scannr']"),
        ("callbacks.wsc.alarm.patience=0", "callbacks.wsc.alarm.patience: must be an integer >= 1"),
        ("callbacks.wsc.protocol=probes", "callbacks.wsc.protocol: must be one of heads, probe_refit"),
        ("+data.metadata.site={type: categorical}", "data.metadata.site: a metadata head needs a 'column'"),
        ("data.metadata.scanner.column=scaner", "data.metadata.scanner.column"),
        ("callbacks.wsc.k_min=0", "callbacks.wsc.k_min: must be an integer >= 1"),
        ("data.image_size=[60,80]", "data.image_size"),
        ("+data.num_trian=10", "data.num_trian: unknown key"),
        # only detectable once the training split exists: almost every cell blanked leaves nothing to bin
        ("data.missing_fraction=0.999", "data.metadata.spacing: cannot bin column 'pixel_spacing'"),
    ],
)
def test_bad_configuration_fails_before_training_naming_the_key(tiny_config, tmp_path, override, expected):
    with pytest.raises(ConfigError) as err:
        train(tiny_config(override))
    assert expected in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def run_console_script(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """``wsca-train argv...`` in this process (the console script's entry point, without an interpreter start):
    its exit status."""
    monkeypatch.setattr(sys, "argv", ["wsca-train", *argv])
    try:
        main()
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_output_directory(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    monkeypatch.chdir(tmp_path)
    code = run_console_script(monkeypatch, "-m", "seed=0,1", f"hydra.sweep.dir={sweep}", "data.num_train=64",
                              "data.num_val=32", *SMALL_RUN, "trainer.max_epochs=1", "callbacks.wsc.subset_size=60",
                              "callbacks.wsc.save_plots=false", "trainer.enable_progress_bar=false")
    assert code == 0, capsys.readouterr().err[-3000:]
    summaries = sorted(sweep.glob("*/wsc/wsc_summary.json"))
    assert [p.parent.parent.name for p in summaries] == ["0", "1"]
    configs = [(sweep / job / ".hydra" / "config.yaml").read_text() for job in ("0", "1")]
    assert "seed: 0" in configs[0] and "seed: 1" in configs[1]


def test_a_bad_setting_exits_2_naming_the_key_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_console_script(monkeypatch, f"hydra.run.dir={tmp_path / 'bad'}", "callbacks.wsc.k_min=0") == 2
    assert "callbacks.wsc.k_min: must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoints").exists()

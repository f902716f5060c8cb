"""Post-hoc analysis: `wsca-analyze` on a wsca-train checkpoint, and the Python API for any backbone + head."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import wsca_lightning
from conftest import TINY
from wsca_lightning.cli.train import compose_train_config
from wsca_lightning.cli.analyze import analyze
from wsca_lightning.cli.analyze import main as analyze_main
from wsca_lightning.cli.train import ConfigError, train
from wsca_lightning.posthoc import analyze_model, write_analysis
from wsca_lightning.summary import TABLE_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the analyze config names the callback settings `wsc.*` and has no trainer
TINY_DATA = [o for o in TINY if o.startswith("data.")]
TINY_WSC = ["wsc.subset_size=64", "wsc.batch_size=64", "wsc.num_permutations=30"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run (multitask, 2 epochs); its run directory. Its figures are never looked at (the tests
    analyse its checkpoint): not drawn."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = train(compose_train_config(run, [*TINY, "callbacks.wsc.num_permutations=30",
                                              "callbacks.wsc.save_plots=false"]))
    return run, result["summary"]


def run_analyze(out: Path, *overrides: str) -> dict:
    return analyze(compose_train_config(out, [*TINY_DATA, *TINY_WSC, *overrides], config_name="analyze"))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.slow  # an end-to-end training run
def test_analyze_writes_summary_table_and_heatmap_with_probe_refit(trained, tmp_path, monkeypatch):
    run, _ = trained
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # on a terminal, the embedding passes show progress bars
    result = run_analyze(tmp_path / "a", f"checkpoint={run / 'checkpoints' / 'last.ckpt'}")
    monkeypatch.undo()
    for bar in ("embedding the training subset: 100%", "embedding the holdout: 100%"):
        assert bar in terminal.getvalue()
    summary, paths = result["summary"], result["paths"]
    # the file records which version wrote it
    assert json.loads(Path(paths["summary"]).read_text())["wsca_lightning_version"] == wsca_lightning.__version__
    assert summary["protocol"] == "probe_refit" and summary["head_mode"] == "multitask"
    assert summary["epoch"] == 1 and summary["split"] == "train"
    assert set(summary["tasks"]) == {"scanner", "hospital", "spacing", "cervical_length", "bmi"}
    for task in summary["tasks"].values():
        assert task["source"] == "probe"
        # 30 permutations, or fewer when the sequential null stopped early (10 draws at or above the observed value)
        assert 0 < task["null"]["p"] <= 1
        assert task["null"]["B"] == 30 or (task["null"]["stopped_early"] and 10 <= task["null"]["B"] < 30)
        assert set(task["probe"]) >= {"auroc", "auroc_ci", "balanced_accuracy"}
        assert isinstance(task["interpretable"], bool)
        assert set(task["deconfounded"]) >= {"max_abs", "p"}
        assert task["probe"]["split"] == "validation"  # the gate reads images the backbone did not train on
        assert set(task["test"]["parts"]) == {"permutation", "deconfounded", "blind"}
        assert task["test"]["p"] >= task["null"]["p"]
    on_disk = json.loads(Path(paths["summary"]).read_text())
    assert on_disk["tasks"].keys() == summary["tasks"].keys()
    with open(paths["table"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == list(summary["tasks"]) and list(rows[0]) == list(TABLE_COLUMNS)
    assert Path(paths["heatmap"]).read_bytes()[:8] == PNG_MAGIC
    assert Path(paths["summary"]).parent == tmp_path / "a" / "wsc"


def test_analyze_with_the_heads_protocol_reproduces_the_training_callback(trained, tmp_path):
    """Same weights (last.ckpt is taken after the callback), same subset and seed: the same numbers."""
    run, train_summary = trained
    summary = run_analyze(tmp_path / "h", f"checkpoint={run / 'checkpoints' / 'last.ckpt'}", "wsc.protocol=heads",
                          "wsc.save_plots=false")["summary"]
    assert summary["protocol"] == "multitask"
    assert summary["k"] == train_summary["k"]
    for name, task in summary["tasks"].items():
        expected = train_summary["tasks"][name]
        assert task["source"] == "head"
        assert task["max_abs"] == pytest.approx(expected["max_abs"], abs=1e-9)
        assert task["null"]["p"] == expected["null"]["p"]
        assert task["probe"]["auroc"] == pytest.approx(expected["probe"]["auroc"], abs=1e-9)
    assert not (tmp_path / "h" / "wsc" / "wsc_heatmap.png").exists()


class Unsafe:
    """Not a tensor or plain value: torch.load(weights_only=True) must refuse to rebuild it."""


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_text("not a checkpoint"), "is not a PyTorch checkpoint"),
        (lambda p: torch.save({"weights": torch.zeros(2)}, p), "is not a Lightning checkpoint of a wsca_lightning"),
        (lambda p: torch.save({"state_dict": {}, "hyper_parameters": {"x": Unsafe()}}, p),
         "torch.load(weights_only=True) refuses"),
        (lambda p: torch.save({"state_dict": {}, "hyper_parameters": {"backbone": {"name": "sononet16"}}}, p),
         "hyper_parameters do not build a MultiHeadModule"),
    ],
)
def test_a_bad_checkpoint_is_refused_with_the_reason(tmp_path, make, expected):
    path = tmp_path / "model.ckpt"
    make(path)
    with pytest.raises(ConfigError) as err:
        run_analyze(tmp_path / "out", f"checkpoint={path}")
    assert expected in str(err.value) and str(path) in str(err.value)
    assert not (tmp_path / "out" / "wsc").exists()


def test_weights_that_do_not_fit_the_described_model_are_refused(trained, tmp_path):
    run, _ = trained
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["state_dict"].pop("heads.scanner.weight")
    torch.save(ckpt, tmp_path / "broken.ckpt")
    with pytest.raises(ConfigError, match=r"missing: \['heads.scanner.weight'\]"):
        run_analyze(tmp_path / "out", f"checkpoint={tmp_path / 'broken.ckpt'}")
    ckpt["state_dict"]["heads.scanner.weight"] = torch.zeros(5, 7)
    torch.save(ckpt, tmp_path / "reshaped.ckpt")
    with pytest.raises(ConfigError, match="(?s)its weights do not fit .*size mismatch for heads.scanner.weight"):
        run_analyze(tmp_path / "out", f"checkpoint={tmp_path / 'reshaped.ckpt'}")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.num_scanners=4", "scanner: classes ['scanner_A', 'scanner_B', 'scanner_C', 'scanner_D'] in the data"),
        ("data.image_size=[64,80]", "input shape [1, 64, 80] in the data, [1, 32, 48] in the model"),
        ("~data.metadata.bmi", "bmi: the model has this head but the data defines no such task"),
        ("split=test", "split: must be one of train, val"),
        ("wsc.alarm.tasks=[site]", "wsc.alarm.tasks: unknown metadata head(s) ['site']"),
    ],
)
def test_data_that_does_not_match_the_checkpoint_is_refused_naming_the_difference(trained, tmp_path, override,
                                                                                   expected):
    run, _ = trained
    with pytest.raises(ConfigError) as err:
        run_analyze(tmp_path / "out", f"checkpoint={run / 'checkpoints' / 'last.ckpt'}", override)
    assert expected in str(err.value)


def test_missing_checkpoint_argument_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint: missing"):
        run_analyze(tmp_path / "out")


def test_console_script_exits_2_with_the_error_on_a_bad_checkpoint(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("nope")
    monkeypatch.chdir(tmp_path)
    # the console script's entry point, in this process
    monkeypatch.setattr(sys, "argv", ["wsca-analyze", f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'o'}"])
    with pytest.raises(SystemExit) as exit:
        analyze_main()
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "Configuration error" in err and "is not a PyTorch checkpoint" in err


def test_python_api_analyzes_any_backbone_and_head(tmp_path):
    """A plain torch model: the primary label is read from inputs 0-2, 'site' from input 3, 'noise' from nothing."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    primary = x[:, :3].argmax(dim=1)
    site = (x[:, 3] > 0).long()
    noise = torch.randint(0, 3, (400,), generator=g)
    backbone = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
    head = nn.Linear(16, 3)
    loader = DataLoader(TensorDataset(x, primary, site, noise), batch_size=100)
    batches = ((xb, {"plane": yb, "site": sb, "noise": nb}) for xb, yb, sb, nb in loader)
    summary = analyze_model(backbone, head, batches, primary="plane",
                            class_names={"plane": ["a", "b", "c"], "site": ["s0", "s1"], "noise": ["n0", "n1", "n2"]})
    assert summary["protocol"] == "probe_refit" and summary["n_embeddings"] == 400
    assert summary["tasks"]["site"]["interpretable"] is True
    assert summary["tasks"]["noise"]["interpretable"] is False
    assert "includes chance" in summary["tasks"]["noise"]["reason"]
    assert summary["tasks"]["site"]["probe"]["split"] == "subset_holdout"
    # with images the backbone did not see, the gate is measured on them
    fresh = torch.randn(200, 8, generator=g)
    held_out = [(fresh, {"plane": fresh[:, :3].argmax(dim=1), "site": (fresh[:, 3] > 0).long(),
                         "noise": torch.randint(0, 3, (200,), generator=g)})]
    again = analyze_model(backbone, head, ((xb, {"plane": yb, "site": sb, "noise": nb}) for xb, yb, sb, nb in loader),
                          primary="plane", holdout_batches=held_out,
                          class_names={"plane": ["a", "b", "c"], "site": ["s0", "s1"], "noise": ["n0", "n1", "n2"]})
    assert again["tasks"]["site"]["probe"]["split"] == "validation"
    assert again["tasks"]["site"]["probe"]["n_holdout"] == 200 and again["tasks"]["site"]["interpretable"] is True
    assert again["tasks"]["noise"]["interpretable"] is False
    # a binary metadata task also gets the identifiable w1 - w0 form
    assert summary["tasks"]["site"]["identifiable"]["cols"] == ["s1-s0"]
    assert backbone.training  # the train/eval state is restored
    paths = write_analysis(summary, tmp_path / "posthoc")
    assert Path(paths["heatmap"]).read_bytes()[:8] == PNG_MAGIC
    assert json.loads(Path(paths["summary"]).read_text())["tasks"]["site"]["cols"] == ["s0", "s1"]


def test_python_api_reports_missing_labels_by_batch_and_task():
    backbone, head = nn.Linear(4, 6), nn.Linear(6, 2)
    batches = [(torch.randn(10, 4), {"plane": torch.zeros(10, dtype=torch.long)})]
    with pytest.raises(ValueError, match="batch 0: labels have no entry for task 'site'"):
        analyze_model(backbone, head, batches, primary="plane", class_names={"plane": ["a", "b"], "site": ["x", "y"]})


def test_python_api_refuses_an_empty_batch_iterable_and_restores_the_mode():
    backbone, head = nn.Linear(4, 6), nn.Linear(6, 2)
    with pytest.raises(ValueError, match="batches is empty: nothing to embed"):
        analyze_model(backbone, head, [], primary="plane", class_names={"plane": ["a", "b"], "site": ["x", "y"]})
    assert backbone.training

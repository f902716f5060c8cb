"""Who may write a run directory: one run at a time, reuse only when asked, never inside a data root, and a resume
that continues its own run. Refusals come before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from wsca_lightning.problems import Problem
from wsca_lightning.cli.run_directory import (
    LOCK_FILENAME,
    RunDirectoryError,
    check_run_directory,
    claim_run_directory,
    config_differences,
    release_run_directory,
)


def problem_lines(cfg, run_dir):
    """The problems as the user reads them (``key: message``)."""
    return [str(p) for p in check_run_directory(cfg, run_dir)]


def config(**top) -> OmegaConf:
    base = {"seed": 0, "ckpt_path": None, "overwrite": False, "data": {"root": None, "image_size": [32, 48]},
            "trainer": {"max_epochs": 2}}
    base.update(top)
    return OmegaConf.create(base)


def finished_run(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (path / "wsc").mkdir()
    (path / "wsc" / "wsc_summary.json").write_text("{}")
    return path


def test_a_directory_holding_a_run_is_reused_only_to_resume_it_or_when_overwrite_is_asked(tmp_path):
    run = finished_run(tmp_path / "run")
    problems = problem_lines(config(), run)
    assert len(problems) == 1 and problems[0].startswith("hydra.run.dir:")
    assert "already holds a run (checkpoints, wsc)" in problems[0] and "ckpt_path=last" in problems[0]
    assert "overwrite=true" in problems[0]
    with pytest.raises(RunDirectoryError):
        claim_run_directory(config(), run)
    assert (run / "wsc" / "wsc_summary.json").exists() and not (run / LOCK_FILENAME).exists()

    assert problem_lines(config(ckpt_path="last"), run) == []
    claim_run_directory(config(overwrite=True), run)  # asked: the old outputs go, nothing stale stays beside new ones
    try:
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILENAME]
    finally:
        release_run_directory(run)
    assert not (run / LOCK_FILENAME).exists()


def test_nothing_to_resume_or_an_unreadable_checkpoint_is_refused_naming_ckpt_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (problem,) = problem_lines(config(ckpt_path="last"), tmp_path / "empty")
    assert problem.startswith("ckpt_path: 'last' but ") and "nothing to resume" in problem
    (problem,) = problem_lines(config(ckpt_path=str(tmp_path / "nope.ckpt")), tmp_path / "new")
    assert problem.startswith("ckpt_path: ") and "nope.ckpt is not a readable file" in problem


def test_a_run_directory_inside_the_data_root_is_refused_and_nothing_is_created(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    run = data / "outputs" / "run1"
    with pytest.raises(RunDirectoryError, match=r"hydra.run.dir: .* is inside data.root"):
        claim_run_directory(config(data={"root": str(data)}), run)
    assert sorted(p.name for p in data.iterdir()) == []


def test_a_run_directory_that_cannot_be_created_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    (problem,) = problem_lines(config(), blocker / "run")
    assert problem.startswith("hydra.run.dir: cannot write") and "not a writable directory" in problem


@pytest.mark.parametrize("seed", ["abc", -1, 2**32, 1.5, True])
def test_a_seed_lightning_would_reject_is_refused_naming_the_key(tmp_path, seed):
    (problem,) = problem_lines(config(seed=seed), tmp_path / "run")
    assert problem.startswith("seed: must be a whole number from 0 to 4294967295")


def test_required_values_never_set_are_named_with_their_full_key(tmp_path):
    cfg = config(data={"manifest": "???", "root": "???"})
    problems = problem_lines(cfg, tmp_path / "run")
    assert "data.manifest: required and not set; add data.manifest=<value> to the command line" in problems
    assert any(p.startswith("data.root: required") for p in problems)


def test_one_run_at_a_time_a_live_owner_keeps_the_directory_a_dead_one_does_not(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run / LOCK_FILENAME).write_text(json.dumps({"host": socket.gethostname(), "pid": owner.pid,
                                                     "started": "2026-12-01T10:00:00"}))
        with pytest.raises(RunDirectoryError, match=rf"another run \(host .*, pid {owner.pid}, started"):
            claim_run_directory(config(), run)
        assert json.loads((run / LOCK_FILENAME).read_text())["pid"] == owner.pid  # not taken from its owner
    finally:
        owner.kill()
        owner.wait()
    claim_run_directory(config(), run)  # its owner died without releasing it (SIGKILL): taken over
    try:
        assert json.loads((run / LOCK_FILENAME).read_text())["pid"] == os.getpid()
    finally:
        release_run_directory(run)


def test_resume_differences_name_every_key_outside_what_a_resume_may_change():
    saved = OmegaConf.create({"seed": 0, "data": {"image_size": [32, 32], "batch_size": 10},
                              "trainer": {"max_epochs": 1, "precision": 32}, "ckpt_path": None,
                              "paths": {"output_dir": "a"}})
    current = OmegaConf.create({"seed": 0, "data": {"image_size": [64, 80], "batch_size": 10},
                                "trainer": {"max_epochs": 3, "precision": 32}, "ckpt_path": "last",
                                "paths": {"output_dir": "b"}, "hydra": {"run": {"dir": "x"}}})
    assert config_differences(saved, current) == [
        Problem("data.image_size", "was [32, 32] in the run being resumed, now [64, 80]")
    ]


@pytest.mark.slow
def test_the_readme_resume_command_verifies_the_runs_own_config_and_continues_it(tmp_path, monkeypatch, capsys):
    import torch
    from conftest import TINY
    from test_train_app import epochs_with, read_metrics, run_console_script

    run = tmp_path / "run"
    # 2 epochs; no figures (a second each, not looked at here): every command below gives the setting too
    first = [f"hydra.run.dir={run}", *TINY, "data.batch_size=16", "callbacks.wsc.save_plots=false"]
    assert run_console_script(monkeypatch, *first) == 0
    saved = {name: (run / ".hydra" / name).read_bytes() for name in ("config.yaml", "overrides.yaml")}
    summary = (run / "wsc" / "wsc_summary.json").read_bytes()
    capsys.readouterr()

    # the README's resume command with one of the first run's overrides left out: refused, naming the key and
    # the command that resumes; the run's saved config and outputs stay as they were, no new logger version
    resume = [f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_epochs=4", "callbacks.wsc.save_plots=false"]
    assert run_console_script(monkeypatch, *resume, *TINY) == 2
    err = capsys.readouterr().err
    assert "data.batch_size: was 16 in the run being resumed, now 32" in err
    assert "data.batch_size=16" in err and f"hydra.run.dir={run} ckpt_path=last" in err
    assert {name: (run / ".hydra" / name).read_bytes() for name in saved} == saved
    assert (run / "wsc" / "wsc_summary.json").read_bytes() == summary
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["version_0"]
    assert not (run / LOCK_FILENAME).exists()

    # the same directory again without ckpt_path: refused, the finished run is kept
    assert run_console_script(monkeypatch, *first) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "wsc" / "wsc_summary.json").read_bytes() == summary

    # checkpoints hold only plain Python: they load with weights_only=True
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (wsc_state,) = [v for k, v in state["callbacks"].items() if k.startswith("WeightSpaceCorrelation")]
    assert [h["epoch"] for h in wsc_state["history"]] == [0, 1]

    # with the run's own overrides the resume continues it, without gaps or duplicates
    assert run_console_script(monkeypatch, *first, "trainer.max_epochs=4", "ckpt_path=last") == 0
    on_disk = json.loads((run / "wsc" / "wsc_summary.json").read_text())
    assert [h["epoch"] for h in on_disk["history"]] == [0, 1, 2, 3]
    assert on_disk["history"][:2] == wsc_state["history"]  # the first two are the original run's
    assert sorted(p.name for p in (run / "wsc").glob("epoch_*.npz")) == [f"epoch_{e:04d}.npz" for e in range(4)]
    # the logger keeps the first segment's metrics and writes the resumed epochs to a new version
    assert epochs_with(read_metrics(run), "wsc/scanner/max_abs") == [0, 1]
    assert epochs_with(read_metrics(run, version=1), "wsc/scanner/max_abs") == [2, 3]
    assert not (run / LOCK_FILENAME).exists()


def test_a_wsc_output_path_taken_by_a_directory_fails_before_training_naming_the_key(tiny_config, tmp_path):
    from wsca_lightning.cli.train import ConfigError, train

    wsc_dir = tmp_path / "elsewhere"
    (wsc_dir / "wsc_summary.json").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"callbacks\.wsc\.dirpath: .*wsc_summary.json is a directory where the "
                                          r"WSC callback writes a file"):
        train(tiny_config(f"callbacks.wsc.dirpath={wsc_dir}"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_resume_sets_aside_the_rows_an_earlier_segment_logged_for_epochs_it_trains_again(tmp_path):
    from wsca_lightning.cli.run_directory import SUPERSEDED_FILENAME, set_aside_rows_from

    old, new = tmp_path / "csv" / "version_0", tmp_path / "csv" / "version_1"
    old.mkdir(parents=True)
    new.mkdir()
    # epoch 2 trained and was logged (its WSC step too), then the run was killed before epoch 2's checkpoint
    rows = ["epoch,step,train/loss,wsc/scanner/max_abs", "0,2,1.0,", "0,2,,0.5", "1,5,0.9,", "1,5,,0.6",
            "2,8,0.8,", "2,8,,0.7"]
    (old / "metrics.csv").write_text("\n".join(rows) + "\n")
    (new / "metrics.csv").write_text("epoch,step,train/loss\n2,8,0.85\n")

    moved = set_aside_rows_from(tmp_path / "csv", new, first_epoch=2)
    assert moved == {str(old / "metrics.csv"): 2}
    assert (old / "metrics.csv").read_text().splitlines() == rows[:5]
    assert (old / SUPERSEDED_FILENAME).read_text().splitlines() == [rows[0], *rows[5:]]
    assert (new / "metrics.csv").read_text() == "epoch,step,train/loss\n2,8,0.85\n"  # the resumed run's own rows
    assert set_aside_rows_from(tmp_path / "csv", new, first_epoch=2) == {}  # nothing twice


def test_a_resume_whose_saved_config_cannot_be_read_is_refused_naming_the_file(tmp_path):
    run = finished_run(tmp_path / "run")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: [unclosed\n")
    problems = problem_lines(config(ckpt_path="last"), run)
    assert problems[0].startswith("ckpt_path: the saved config of the run to resume, ")
    assert "config.yaml, cannot be read" in problems[0]

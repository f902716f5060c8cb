"""The shortcut alarm (warn / stop / patience / the counter recurrence) and its survival of a hard kill.

* Alarm tests run the callback on a toy LightningModule of our own (the 4-member WSC interface only), with a
  metadata head ``copy`` whose weight *is* the primary head's weight: its WSC is exactly 1, above every permuted
  probe, so ``p = 1 / (B + 1)`` -- with ``B = 20`` that is 0.0476 < 0.05 at every epoch -- and its labels are the
  primary labels, linearly encoded in the inputs, so the encodability gate passes. ``other`` has labels drawn
  independently of the inputs: never interpretable, never counted.
* The SIGKILL test runs the real Hydra app in a process of its own (forked from one launch for both scenarios),
  kills it (SIGKILL, no cleanup) in the middle of an epoch, and resumes from ``last.ckpt``: the history and the
  alarm counters must continue from the checkpointed epoch, without gaps, duplicates or a reset counter.
* ``last.ckpt`` must be rewritten at every epoch end even when the monitored val/loss gets worse.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from wsca_lightning.callbacks import WeightSpaceCorrelation
from wsca_lightning.cli.train import train
from wsca_lightning.epoch_analysis import AlarmSettings, ShortcutAlarm
from wsca_lightning.interface import HeadWeights
from test_callback import TupleBatchModule

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded machine (CI, a benchmark alongside) two
    torch threads per process oversubscribe the cores: a tiny epoch went from ~1 s to over a minute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the toy module ---------------------------------------------------------------------------------------------


class ShortcutToyModule(TupleBatchModule):
    """(x, y, m) batches; ``label`` = argmax of the first three inputs (linearly encoded), ``copy`` = the primary
    head itself on the same labels (WSC 1, p minimal, interpretable), ``other`` = labels independent of x (its head
    is not trained on them: nothing about m reaches the encoder)."""

    def __init__(self, lr: float = 0.05):
        super().__init__(lr=lr)

    def wsc_head_weights(self):
        w = self.primary.weight.detach()
        return {
            "label": HeadWeights(w, ("a", "b", "c")),
            "copy": HeadWeights(w.clone(), ("c0", "c1", "c2")),
            "other": HeadWeights(self.other.weight.detach(), ("o0", "o1")),
        }

    def wsc_targets(self, batch):
        _, y, m = batch
        return {"label": y, "copy": y, "other": m}


def toy_dataset(n: int = 200) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=g)
    y = x[:, :3].argmax(dim=1)  # linearly encoded in x
    # independent of x and y. A probe's held-out AUROC on 30 rows still passes the gate by chance in a few % of
    # draws (~3 % measured over 150 seeds); this draw is far from it (AUROC ~0.48 at every epoch), so the
    # never-significant test below is deterministic rather than lucky
    m = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(1))
    return TensorDataset(x, y, m)


def alarm_callback(async_analysis: bool = False, **alarm: Any) -> WeightSpaceCorrelation:
    """Synchronous by default: the alarm then acts at the end of the epoch it counts (asynchronous: see below)."""
    return WeightSpaceCorrelation(subset_size=120, batch_size=60, k_min=4, num_permutations=20, num_bootstrap=100,
                                  save_plots=False, alarm=alarm, async_analysis=async_analysis)


def fit_toy(tmp_path: Path, callback: WeightSpaceCorrelation, epochs: int) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=CSVLogger(tmp_path, name="csv", version=""),
                        callbacks=[callback], enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(ShortcutToyModule(), DataLoader(toy_dataset(), batch_size=50, shuffle=True))
    return trainer


def significant(task: dict[str, Any], alpha: float) -> bool:
    return bool(task["interpretable"]) and task["p"] is not None and task["p"] < alpha


def assert_recurrence(history: list[dict[str, Any]], task: str, alpha: float, start: int = 0) -> None:
    """``count_e = count_{e-1} + 1`` if (interpretable and p < alpha) else 0, ``count_{-1} = start``."""
    count = start
    for h in history:
        count = count + 1 if significant(h["tasks"][task], alpha) else 0
        assert h["alarm_counts"][task] == count, (h["epoch"], h["tasks"][task], h["alarm_counts"])


def alarm_messages(records) -> list[str]:
    return [str(w.message) for w in records if "WSC shortcut alarm" in str(w.message)]


# --- 1. the alarm on the toy module ------------------------------------------------------------------------------


def test_stop_action_ends_training_after_patience_significant_epochs(tmp_path):
    callback = alarm_callback(tasks=["copy"], action="stop", alpha=0.05, patience=2)
    with pytest.warns(UserWarning, match=r"WSC shortcut alarm at epoch 1: .*Stopping training"):
        trainer = fit_toy(tmp_path, callback, epochs=6)

    assert [h["epoch"] for h in callback.history] == [0, 1]
    # the fit loop counts the stopped epoch as finished: epoch 1 was the last one run
    assert trainer.current_epoch == 2 and trainer.should_stop
    assert [h["alarm_counts"]["copy"] for h in callback.history] == [1, 2]
    assert all(h["tasks"]["copy"]["p"] == pytest.approx(1 / 21) for h in callback.history)
    assert callback.alarm_epoch == 1
    summary = json.loads((tmp_path / "wsc" / "wsc_summary.json").read_text())
    assert summary["alarm"] == {"tasks": ["copy"], "action": "stop", "alpha": 0.05, "patience": 2,
                                "counts": {"copy": 2}, "first_epoch": 1}
    assert summary["epoch"] == 1 and [h["epoch"] for h in summary["history"]] == [0, 1]


def test_with_asynchronous_analysis_the_stop_comes_when_the_result_arrives_at_most_one_epoch_later(tmp_path):
    callback = alarm_callback(async_analysis=True, tasks=["copy"], action="stop", alpha=0.05, patience=2)
    with pytest.warns(UserWarning, match=r"WSC shortcut alarm at epoch 1: .*Stopping training"):
        trainer = fit_toy(tmp_path, callback, epochs=6)

    # epoch 1's result arrives while epoch 2 trains: training stops within epoch 2, whose (last) state is analysed
    # too before fit end
    assert trainer.should_stop and trainer.current_epoch == 3
    assert [h["epoch"] for h in callback.history] == [0, 1, 2]
    assert [h["alarm_counts"]["copy"] for h in callback.history] == [1, 2, 3]
    assert callback.alarm_epoch == 1
    summary = json.loads((tmp_path / "wsc" / "wsc_summary.json").read_text())
    assert summary["alarm"]["first_epoch"] == 1 and summary["epoch"] == 2


def test_warn_action_warns_at_every_epoch_past_patience_and_keeps_training(tmp_path):
    callback = alarm_callback(tasks=["copy"], action="warn", alpha=0.05, patience=2)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        trainer = fit_toy(tmp_path, callback, epochs=4)

    messages = alarm_messages(records)
    assert [m.split(":")[0] for m in messages] == [f"WSC shortcut alarm at epoch {e}" for e in (1, 2, 3)]
    assert all(issubclass(w.category, UserWarning) for w in records if "WSC shortcut alarm" in str(w.message))
    assert not any("Stopping training" in m for m in messages)
    assert "['copy']" in messages[0] and "for at least 2 consecutive epoch(s) (now {'copy': 2})" in messages[0]
    assert "(now {'copy': 4})" in messages[-1]
    assert [h["epoch"] for h in callback.history] == [0, 1, 2, 3]
    assert trainer.current_epoch == 4 and not trainer.should_stop
    assert [h["alarm_counts"]["copy"] for h in callback.history] == [1, 2, 3, 4]
    assert callback.alarm_epoch == 1  # the first epoch it went off, not the latest
    summary = json.loads((tmp_path / "wsc" / "wsc_summary.json").read_text())
    assert summary["alarm"]["first_epoch"] == 1 and summary["alarm"]["counts"] == {"copy": 4}
    # the watched task's verdict p is on Lightning's progress bar (the last epoch's)
    assert trainer.progress_bar_metrics["wsc/copy/test_p"] == pytest.approx(callback.history[-1]["tasks"]["copy"]
                                                                           ["test_p"])


@pytest.mark.parametrize(
    ("alarm", "reason"),
    [
        ({"tasks": ["other"], "alpha": 0.05}, "labels independent of the inputs: never interpretable"),
        ({"tasks": ["copy"], "alpha": 1e-9}, "p >= 1 / (B + 1) = 1/21 can never be below 1e-9"),
    ],
    ids=["independent-task", "tiny-alpha"],
)
def test_a_task_that_is_never_significant_never_fires(tmp_path, alarm, reason):
    (task,) = alarm["tasks"]
    callback = alarm_callback(action="stop", patience=1, **alarm)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        trainer = fit_toy(tmp_path, callback, epochs=3)

    assert not alarm_messages(records), reason
    assert [h["epoch"] for h in callback.history] == [0, 1, 2]  # patience 1 + stop would have ended at epoch 0
    assert trainer.current_epoch == 3
    assert [h["alarm_counts"][task] for h in callback.history] == [0, 0, 0]
    assert callback.alarm_counts == {task: 0} and callback.alarm_epoch is None
    if task == "other":
        assert not any(h["tasks"]["other"]["interpretable"] for h in callback.history)
    else:  # interpretable and at the smallest p the null allows, still not below alpha
        assert all(h["tasks"]["copy"]["interpretable"] for h in callback.history)
        assert all(h["tasks"]["copy"]["p"] == pytest.approx(1 / 21) for h in callback.history)
    summary = json.loads((tmp_path / "wsc" / "wsc_summary.json").read_text())
    assert summary["alarm"]["counts"] == {task: 0} and summary["alarm"]["first_epoch"] is None


def test_counters_follow_the_recurrence_over_the_history(tmp_path):
    callback = alarm_callback(tasks=["copy", "other"], action="warn", alpha=0.05, patience=100)
    fit_toy(tmp_path, callback, epochs=3)
    assert [h["epoch"] for h in callback.history] == [0, 1, 2]
    for task in ("copy", "other"):
        assert_recurrence(callback.history, task, 0.05)
        assert callback.alarm_counts[task] == callback.history[-1]["alarm_counts"][task]
    assert [h["alarm_counts"]["copy"] for h in callback.history] == [1, 2, 3]
    # the checkpointed state carries the counters (and loads into a fresh callback)
    state = json.loads(json.dumps(callback.state_dict()))
    assert state["alarm_counts"] == {"copy": 3, "other": 0} and state["alarm_epoch"] is None
    restored = alarm_callback(tasks=["copy", "other"], action="warn", alpha=0.05, patience=100)
    restored.load_state_dict(state)
    assert restored.alarm_counts == callback.alarm_counts and restored.history == callback.history


def _entry(interpretable: bool, p: float | None) -> dict[str, Any]:
    return {"tasks": {"scanner": {"interpretable": interpretable, "null": None if p is None else {"p": p}}}}


def test_update_rule_counts_only_interpretable_and_strictly_significant_epochs():
    alarm = ShortcutAlarm(AlarmSettings(tasks=("scanner",), alpha=0.05, patience=3))
    steps = [
        (_entry(True, 0.01), 1, []),
        (_entry(True, 0.049), 2, []),
        (_entry(True, 0.01), 3, ["scanner"]),  # patience reached
        (_entry(True, 0.01), 4, ["scanner"]),  # stays past patience while significant
        (_entry(False, 0.01), 0, []),  # significant but not interpretable: reset
        (_entry(True, 0.01), 1, []),
        (_entry(True, 0.05), 0, []),  # p == alpha is not p < alpha
        (_entry(True, 0.01), 1, []),
        (_entry(True, None), 0, []),  # no p-value: reset
    ]
    for epoch, (entry, count, fired) in enumerate(steps):
        assert alarm.update(entry) == fired, epoch
        assert alarm.counts == {"scanner": count}, epoch


# --- 2. SIGKILL mid-epoch, then resume from last.ckpt ------------------------------------------------------------

# Settings of the real app for the kill/resume test. shortcut_strength=1 makes scanner = risk (mod 3) in the
# training split; lr=0.02 (AdamW) moves the freshly initialised risk and scanner heads far enough along the same
# gradient that the scanner head's WSC beats all 20 permuted probes from epoch 1 on (measured: p = 2/21 at epoch 0,
# 1/21 after; with the default lr=1e-3 both heads are still near their random init after 3 steps and p is ~0.3 for
# several epochs, which would leave the checkpointed counter at 0). Small images, a small bootstrap, no plots and
# the analysis of the watched task alone (the others' probes, which do not converge at this lr, took two thirds of
# an epoch; the scanner's values are the same either way) keep an epoch around a second (one torch thread).
KILL_RESUME_OVERRIDES = [
    "data.shortcut_strength=1.0",
    "data.image_size=[32,48]",
    "model.optimizer.lr=0.02",
    "callbacks.wsc.tasks=[scanner]",
    "callbacks.wsc.alarm.tasks=[scanner]",
    "callbacks.wsc.alarm.patience=10",  # never reached: training must not stop
    "callbacks.wsc.num_permutations=20",  # smallest p = 1/21 < 0.05
    "callbacks.wsc.num_bootstrap=50",
    "callbacks.wsc.deconfound=false",
    "callbacks.wsc.save_plots=false",
]

# One launch for both kill scenarios: the script imports the app once, then trains each scenario in a process
# forked from it (multiprocessing's fork), which kills itself with SIGKILL in the middle of an epoch; its output goes
# to <dir>/stdout.txt and <dir>/stderr.txt, and the script prints, per scenario, how that process ended
# (tests/forked_runs.py).
KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path

    import lightning as L

    sys.path.insert(0, sys.argv[1])
    from conftest import TINY
    from forked_runs import run_forked
    from wsca_lightning.callbacks import WeightSpaceCorrelation
    from wsca_lightning.cli.train import compose_train_config
    from wsca_lightning.cli.train import train

    class KillMidEpoch(L.Callback):
        def __init__(self, kill_epoch):
            self.kill_epoch = kill_epoch

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == self.kill_epoch and batch_idx == 1:  # 96 / 32 = 3 batches an epoch: mid-epoch
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    def train_until_killed(directory, kill_epoch, slow_epoch, overrides):
        for fd, name in ((1, "stdout.txt"), (2, "stderr.txt")):
            with open(Path(directory, name), "wb") as handle:
                os.dup2(handle.fileno(), fd)
        if slow_epoch >= 0:  # that epoch's background analysis is still running when the kill comes
            run_analysis = WeightSpaceCorrelation._run_analysis

            def slow(self, pending):
                if pending.epoch == slow_epoch:
                    time.sleep(120)
                return run_analysis(self, pending)

            WeightSpaceCorrelation._run_analysis = slow

        run = Path(directory, "run")
        train(compose_train_config(run, [*TINY, *overrides]), extra_callbacks=[KillMidEpoch(kill_epoch)])
        print("NOT KILLED")

    # timed out: never killed itself (a hang)
    outcomes = {name: run_forked(train_until_killed, tuple(scenario), timeout=100)
                for name, scenario in json.loads(sys.argv[2]).items()}
    print(json.dumps(outcomes))
    """
)


def _children_of(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid``, read from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def wsc_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("WeightSpaceCorrelation")]
    return state


def kill_scenario(in_flight: bool) -> tuple[int, int, list[str]]:
    """The last completed (checkpointed) epoch, the epochs to train, and the overrides: synchronous, killed in epoch 2
    after epoch 1's analysis and checkpoint; asynchronous, ``in_flight``, killed in epoch 3 while epoch 2's analysis
    still runs in the background. The kill comes in the last epoch; the resume trains it again."""
    last = 2 if in_flight else 1
    epochs = last + 2
    overrides = [*KILL_RESUME_OVERRIDES, f"trainer.max_epochs={epochs}", f"callbacks.wsc.async_analysis={in_flight}"]
    return last, epochs, overrides


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, tuple[Path, dict[str, Any]]]:
    """Both scenarios, each killed with SIGKILL mid-epoch, from one launch of KILL_SCRIPT (the app imported once):
    per ``in_flight``, the scenario's directory (``run``, ``stdout.txt``, ``stderr.txt``) and how its process
    ended."""
    base = tmp_path_factory.mktemp("killed")
    scenarios = {}
    for in_flight in (False, True):
        last, _, overrides = kill_scenario(in_flight)
        directory = base / ("analysis-in-flight" if in_flight else "synchronous")
        directory.mkdir()
        scenarios[str(in_flight)] = (str(directory), last + 1, last if in_flight else -1, overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # a session of its own: a timeout kills the launch and the scenario's process it forked
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(TESTS_DIR), json.dumps(scenarios)],
                            cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, (proc.returncode, stdout[-2000:], stderr[-4000:])
    # nothing is left running: the launch is reaped (no zombie, no process) and this process has no children
    if Path("/proc/self/stat").exists():  # Linux
        assert not Path(f"/proc/{proc.pid}").exists()
        assert _children_of(os.getpid()) == []
    outcomes = json.loads(stdout.strip().splitlines()[-1])
    return {in_flight: (Path(scenarios[str(in_flight)][0]), outcomes[str(in_flight)]) for in_flight in (False, True)}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("in_flight", [False, True], ids=["synchronous", "analysis-in-flight"])
def test_sigkill_mid_epoch_then_resume_continues_history_and_alarm_counters(killed_runs, in_flight):
    """Synchronous: killed in epoch 2, after epoch 1's analysis and checkpoint. Asynchronous, ``in_flight``: killed
    in epoch 3 while epoch 2's analysis still runs in the background; epoch 2's checkpoint carries its inputs."""
    from conftest import TINY
    from wsca_lightning.cli.train import compose_train_config

    directory, outcome = killed_runs[in_flight]
    run = directory / "run"
    last, epochs, overrides = kill_scenario(in_flight)
    stdout, stderr = (directory / "stdout.txt").read_text(), (directory / "stderr.txt").read_text()
    assert not outcome["timed_out"] and outcome["exitcode"] == -signal.SIGKILL, (outcome, stdout[-2000:],
                                                                                  stderr[-4000:])
    assert "NOT KILLED" not in stdout
    if Path("/proc/self/stat").exists():  # Linux: the killed process was reaped, no zombie, nothing of it left
        assert outcome["reaped"] and outcome["left"] == [], outcome

    # last.ckpt is that of the last completed epoch, written after its WSC entry -- or, in flight, with the inputs
    # of its analysis in place of the entry
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == last
    saved = wsc_state(ckpt)
    analysed = list(range(last)) if in_flight else list(range(last + 1))
    assert [h["epoch"] for h in saved["history"]] == analysed
    assert (saved["pending"] or {}).get("epoch") == (last if in_flight else None)
    assert set(saved["alarm_counts"]) == {"scanner"} and saved["alarm_epoch"] is None
    assert_recurrence(saved["history"], "scanner", 0.05)
    assert saved["alarm_counts"]["scanner"] == saved["history"][-1]["alarm_counts"]["scanner"]
    # a non-zero counter, so the resumed run really has to continue it (not restart at 0)
    assert saved["alarm_counts"]["scanner"] > 0, saved["history"]
    # the summary on disk (written atomically every epoch) is that of the last analysed epoch; no partial files
    killed_summary = json.loads((run / "wsc" / "wsc_summary.json").read_text())
    assert killed_summary["epoch"] == analysed[-1] and killed_summary["history"] == saved["history"]
    assert not list((run / "wsc").glob("*.partial"))
    assert sorted(p.name for p in (run / "wsc").glob("epoch_*.npz")) == [f"epoch_{e:04d}.npz" for e in analysed]

    result = train(compose_train_config(run, [*TINY, *overrides, "ckpt_path=last"]))
    summary = result["summary"]
    history = summary["history"]
    assert [h["epoch"] for h in history] == list(range(epochs))  # the in-flight epoch recomputed: no gap or duplicate
    assert history[:len(analysed)] == saved["history"]
    assert_recurrence(history[len(analysed):], "scanner", 0.05, start=saved["alarm_counts"]["scanner"])
    assert summary["alarm"]["counts"]["scanner"] == history[-1]["alarm_counts"]["scanner"]
    assert summary["alarm"]["first_epoch"] is None  # patience 10 never reached
    on_disk = json.loads((run / "wsc" / "wsc_summary.json").read_text())
    assert on_disk["history"] == history and on_disk["alarm"] == summary["alarm"]
    assert sorted(p.name for p in (run / "wsc").glob("epoch_*.npz")) == [f"epoch_{e:04d}.npz" for e in range(epochs)]
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == epochs - 1


# --- 3. last.ckpt follows the latest epoch even when val/loss gets worse ------------------------------------------


class WorseningValLoss(L.Callback):
    """Replaces the monitored val/loss with the epoch number before the checkpoints read it (ModelCheckpoint
    callbacks always run last): every epoch after the first is worse than the best."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.callback_metrics["val/loss"] = torch.tensor(float(trainer.current_epoch))


@pytest.mark.slow
def test_last_checkpoint_is_rewritten_every_epoch_even_when_val_loss_gets_worse(tiny_config, tmp_path):
    run = tmp_path / "run"
    max_epochs = 3
    train(tiny_config(f"trainer.max_epochs={max_epochs}", "data.image_size=[32,48]", "callbacks.wsc.save_plots=false",
                      "callbacks.wsc.num_permutations=20", "callbacks.wsc.num_bootstrap=50"),
          extra_callbacks=[WorseningValLoss()])
    checkpoints = run / "checkpoints"
    # the best-by-val/loss checkpoint stayed at epoch 0: val/loss never improved after it
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["epoch_000.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "epoch_000.ckpt", map_location="cpu", weights_only=True)["epoch"] == 0
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == max_epochs - 1
    # every epoch is in the history, or (the last one, still analysed in the background when the checkpoint was
    # taken) carried as the inputs a resumed run recomputes
    state = wsc_state(last)
    carried = [] if state["pending"] is None else [state["pending"]["epoch"]]
    assert [h["epoch"] for h in state["history"]] + carried == list(range(max_epochs))

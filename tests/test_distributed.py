"""The WSC callback and the training app on 2 CPU processes (gloo, ``ddp_spawn``) against 1 process.

Every distributed run happens in its own process tree with a timeout (``wsca-train``, or a process forked from one
launch of ``tests/ddp_worker.py``, which makes all of the worker's runs); each test checks that the tree is gone
afterwards.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from conftest import TINY

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

WORKER = Path(__file__).with_name("ddp_worker.py")
# the app's runs: one epoch, and no figures (about a second each; that only rank 0 writes files, figures included,
# is checked on the worker's runs)
ONE_EPOCH = [o for o in TINY if not o.startswith("trainer.max_epochs=")] + ["trainer.max_epochs=1",
                                                                             "callbacks.wsc.save_plots=false"]
WSCA_TRAIN = Path(sys.executable).with_name("wsca-train")
TIMEOUT_S = 240


def run_isolated(command: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> tuple[int, str, float]:
    """Run ``command`` in a new session; returns (exit status, stdout + stderr, seconds). Fails the test if it
    outlives ``timeout`` or leaves any process of its session behind (both are killed first)."""
    start = time.monotonic()
    # one torch thread per process on 1 and on 2 processes alike: the same arithmetic, bit for bit
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{command[1:3]} still running after {timeout} s (a hang); last output:\n{output[-3000:]}")
    seconds = time.monotonic() - start
    deadline = time.monotonic() + 10  # helpers such as multiprocessing's resource tracker exit on their own
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return proc.returncode, output, seconds  # nothing left
        time.sleep(0.2)
    left = subprocess.run(["ps", "-o", "pid,args", "-g", str(proc.pid)], capture_output=True, text=True).stdout
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"{command[1:3]} left processes behind:\n{left}")


def wsc_rows(out: Path) -> dict[int, dict[str, float]]:
    """The logged ``wsc/*`` values per epoch from metrics.csv."""
    with open(out / "csv" / "version_0" / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    values: dict[int, dict[str, float]] = {}
    for row in rows:
        logged = {k: float(v) for k, v in row.items() if k.startswith("wsc/") and v != ""}
        if logged:
            values.setdefault(int(row["epoch"]), {}).update(logged)
    return values


def written(out: Path, rank: int) -> list[str]:
    log = out / "writes" / f"rank{rank}.txt"
    return log.read_text().splitlines() if log.exists() else []


#: the worker's runs: directory name -> devices [and the failure injected]
WORKER_RUNS = {"one": ["1"], "two": ["2"], "fail_embed": ["2", "embed:1"], "fail_analysis": ["2", "analysis"]}
#: a worker's run: its directory, its outcome (result.json) and its output
WorkerRun = tuple[Path, dict[str, Any], str]


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, WorkerRun]:
    """The worker's runs on 1 and on 2 processes (the latter also checks the collective helpers before training), and
    two 2-process runs with an injected failure: one launch of the worker, each run in a process forked from it
    (one interpreter start and ``import lightning`` for the four). Per run: its directory, its outcome (exit code,
    seconds, processes it left behind) and its output."""
    base = tmp_path_factory.mktemp("wsc_ddp")
    command = [sys.executable, str(WORKER), "--timeout", "180"]
    for name, spec in WORKER_RUNS.items():
        command += ["--run", str(base / name), *spec]
    code, output, _ = run_isolated(command, base, timeout=290)
    assert code == 0, output[-3000:]
    return {name: (base / name, json.loads((base / name / "result.json").read_text()),
                   (base / name / "output.txt").read_text()) for name in WORKER_RUNS}


def worker_run(worker_runs: dict[str, WorkerRun], name: str) -> WorkerRun:
    """One of the worker's runs; fails the test if it outlived its timeout or left any process behind (the worker
    killed them)."""
    out, result, output = worker_runs[name]
    if result["timed_out"]:
        pytest.fail(f"the {name} run still ran after 180 s (a hang); last output:\n{output[-3000:]}")
    if result["left"]:
        pytest.fail(f"the {name} run left processes behind:\n" + "\n".join(result["left"]))
    return out, result, output


@pytest.fixture(scope="module")
def one_and_two_processes(worker_runs) -> tuple[Path, Path]:
    for name in ("one", "two"):
        _, result, output = worker_run(worker_runs, name)
        assert result["exitcode"] == 0, output[-3000:]
    return worker_runs["one"][0], worker_runs["two"][0]


def test_callback_gives_the_same_wsc_on_two_processes_as_on_one_and_writes_files_once(one_and_two_processes):
    single, double = one_and_two_processes
    one, two = wsc_rows(single), wsc_rows(double)
    assert sorted(one) == sorted(two) == [0, 1]
    for epoch in one:
        assert sorted(one[epoch]) == sorted(two[epoch])
        assert len(one[epoch]) > 20  # every task's max_abs, mean_abs, p, z, probe_auroc, ...
        for key, value in one[epoch].items():
            assert two[epoch][key] == pytest.approx(value, abs=1e-5), key
    # the analysed subset is the same 61 images, no sampler padding: same count in both summaries
    summaries = [json.loads((out / "wsc" / "wsc_summary.json").read_text()) for out in (single, double)]
    assert summaries[0]["n_embeddings"] == summaries[1]["n_embeddings"] == 61
    # one set of files: rank 1 wrote nothing, rank 0 the same files as the single process
    assert written(double, 1) == []
    assert sorted(set(written(double, 0))) == sorted(set(p.replace(str(single), str(double))
                                                         for p in written(single, 0)))
    assert sorted(p.name for p in (double / "wsc").iterdir()) == sorted(p.name for p in (single / "wsc").iterdir())


@pytest.mark.parametrize(
    "fail, error",
    [
        ("embed:1", "ValueError: injected failure in wsc_embed on rank 1"),
        ("analysis", "ValueError: injected failure in the analysis"),
    ],
)
def test_a_failure_on_one_rank_ends_the_job_with_that_error_instead_of_hanging(worker_runs, fail, error):
    (name,) = [name for name, spec in WORKER_RUNS.items() if spec[1:] == [fail]]
    _, result, output = worker_run(worker_runs, name)  # the worker's 2-process run with this failure injected
    assert result["exitcode"] != 0
    # whichever rank the launcher reports first, its error names the original one (RankFailure quotes it)
    assert error in output
    # the error reached the parent well before any collective timeout (30 min by default)
    assert result["seconds"] < 180


def test_collective_helpers_raise_on_every_rank_and_gather_uneven_shards_in_order(one_and_two_processes):
    _, double = one_and_two_processes  # the helpers ran on the 2-process trainer's gloo group before training
    outcomes = [json.loads((double / f"agreement_rank{r}.json").read_text()) for r in (0, 1)]
    # 5 rows over 2 ranks (shards of 3 and 2, padded for the gather): every rank gets them all, in order
    assert outcomes[0]["gathered"] == outcomes[1]["gathered"] == [10, 11, 12, 13, 14]
    # in whole batches of 4: shards of 4 and 1 rows
    assert outcomes[0]["gathered_in_batches"] == outcomes[1]["gathered_in_batches"] == [0, 1, 2, 3, 4]
    # run_on_every_rank, failing on rank 1 only: rank 1 re-raises its error, rank 0 a RankFailure quoting it
    assert outcomes[1]["every_rank"] == "ValueError: only on rank 1"
    assert outcomes[0]["every_rank"].startswith("RankFailure: ")
    assert "rank 1: ValueError: only on rank 1" in outcomes[0]["every_rank"]
    # run_on_rank_zero: the result reaches rank 1; a failure on rank 0 reaches it as a RankFailure
    assert outcomes[0]["zero_result"] == outcomes[1]["zero_result"] == {"computed on": 0}
    assert outcomes[0]["zero_failure"] == "ValueError: only on rank 0"
    assert outcomes[1]["zero_failure"].startswith("RankFailure: ")


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON document (list items merged under ``[]``)."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{prefix}/{k}"} | key_paths(v, f"{prefix}/{k}")}
    if isinstance(value, list):
        return {p for item in value for p in key_paths(item, f"{prefix}[]")}
    return set()


@pytest.fixture(scope="module")
def ddp_spawn_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `wsca-train -m trainer=ddp_spawn` sweep (a job of two spawned processes), shared by the tests below: the
    sweep's directories, and job 0 as the two-process run compared with a one-process run. (That every job of a
    sweep gets its own directory is tested without DDP, test_train_app.py; here: none per rank.)"""
    base = tmp_path_factory.mktemp("ddp_spawn")
    sweep = base / "sweep"
    # without OMP_NUM_THREADS (it would decide the ranks' threads), on 2 cores where taskset exists; every rank
    # records its threads (RecordThreads, imported by the spawned ranks from this file)
    cpus = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else []
    pin = ["taskset", "-c", ",".join(map(str, cpus))] if len(cpus) == 2 and shutil.which("taskset") else []
    code, output, _ = run_isolated(
        ["env", "-u", "OMP_NUM_THREADS", f"PYTHONPATH={Path(__file__).parent}", *pin, str(WSCA_TRAIN), "-m",
         "trainer=ddp_spawn", "seed=0", f"hydra.sweep.dir={sweep}", *ONE_EPOCH,
         "+callbacks.record._target_=test_distributed.RecordThreads", f"+callbacks.record.out={base}"], base)
    assert code == 0, output[-3000:]
    return sweep, output


class RecordThreads(L.Callback):
    """In every rank, at its first training step: ``<out>/rank<R>.json`` with its torch threads and cores."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        from wsca_lightning.threads import available_cores

        if batch_idx == 0:
            record = {"threads": torch.get_num_threads(), "cores": available_cores(), "pid": os.getpid()}
            Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def test_each_spawned_rank_trains_with_its_share_of_the_cores_and_the_log_says_why(ddp_spawn_sweep):
    """torch would give each of the 2 spawned ranks every core; each trains with its share, and the run's log
    (written by the launching process) says so once."""
    sweep, _ = ddp_spawn_sweep
    ranks = [json.loads((sweep.parent / f"rank{r}.json").read_text()) for r in (0, 1)]
    cores = ranks[0]["cores"]
    assert [r["threads"] for r in ranks] == [max(1, cores // 2)] * 2, ranks
    assert ranks[0]["pid"] != ranks[1]["pid"]
    line = (f"torch intra-op threads: {max(1, cores // 2)} ({cores} cores shared by 2 local processes: 2 DDP "
            "ranks; set torch_threads=N to change)")
    assert (sweep / "0" / "train.log").read_text().count(line) == 1


def test_training_on_two_processes_writes_a_summary_with_the_keys_of_a_one_process_run(tmp_path, ddp_spawn_sweep,
                                                                                       monkeypatch, capsys):
    from wsca_lightning.cli.train import main

    sweep, sweep_output = ddp_spawn_sweep
    run = tmp_path / "cpu"
    # the one-process run in this process, through the console script's entry point (no interpreter start)
    monkeypatch.setattr(sys, "argv", ["wsca-train", f"hydra.run.dir={run}", "trainer=cpu", *ONE_EPOCH])
    main()
    output = capsys.readouterr().out
    summaries = {}
    for trainer, run, out in (("cpu", run, output), ("ddp_spawn", sweep / "0", sweep_output)):
        assert f"WSC summary: {run / 'wsc' / 'wsc_summary.json'}" in out  # the app's report, also after spawn
        summaries[trainer] = json.loads((run / "wsc" / "wsc_summary.json").read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["cpu"]  # one output directory per run, none per rank
    assert key_paths(summaries["ddp_spawn"]) == key_paths(summaries["cpu"])
    assert [h["epoch"] for h in summaries["ddp_spawn"]["history"]] == [0]


def test_a_multirun_ddp_spawn_job_writes_one_directory_for_both_ranks(ddp_spawn_sweep):
    sweep, _ = ddp_spawn_sweep
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]  # one directory per job, not per rank
    assert (sweep / "0" / "wsc" / "wsc_summary.json").exists()
    assert "seed: 0" in (sweep / "0" / ".hydra" / "config.yaml").read_text()


def test_ddp_started_by_lightning_writes_one_run_directory_for_both_ranks(tmp_path):
    """strategy=ddp: Lightning re-runs the command line for rank 1 and hands it rank 0's Hydra run directory, so the
    default timestamped directory exists once (checked without giving hydra.run.dir)."""
    code, output, _ = run_isolated(
        [str(WSCA_TRAIN), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
         *ONE_EPOCH], tmp_path)
    assert code == 0, output[-3000:]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    assert (runs[0] / "wsc" / "wsc_summary.json").exists()
    assert output.count("WSC summary:") == 1  # rank 1 trains, only rank 0 reports
    assert (runs[0] / ".hydra" / "config.yaml").exists()

"""Two training runs side by side on one machine: torch's default threads in each, against the automatic share.

Arms, each two `wsca-train` subprocesses started at the same moment with the same small configuration (the
default data and model, no WSC callback, no validation, no checkpoints, ``trainer.max_steps=--steps``):

* ``before``: ``torch_threads=<cores>`` in both: torch's default, every process takes every core;
* ``after``: ``torch_threads=null`` and ``WSCA_CONCURRENT_RUNS=2`` in both (wsca_lightning.threads: two runs share
  the machine), so each takes half the cores.

``OMP_NUM_THREADS`` is removed from the subprocesses' environment (it would decide instead). Each process records
the wall-clock end of every training step and its thread count (:class:`StepClock`, added as
``+callbacks.step_clock``); an arm's throughput is counted where both processes train (from the later one's
``--warmup``-th step to the earlier one's last): each process's steps per second, and their sum. Reported per arm
(the median over ``--repeats`` rounds, run in ABBA order) and ``ratio_after_over_before`` of the summed
throughput (above 1: the share helps).

Usage: ``python benchmarks/thread_share.py [--steps 60] [--warmup 5] [--repeats 2] [OVERRIDE ...]`` (extra Hydra
overrides go to both arms, e.g. ``data.image_size=[32,48]`` for a quick check). Writes
``benchmarks/results/thread_share.json`` and prints a table. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from wsca_lightning.threads import available_cores

RESULTS = Path(__file__).parent / "results" / "thread_share.json"
WSCA_TRAIN = Path(sys.executable).with_name("wsca-train")
FIXED = ["callbacks.wsc=null", "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null",
         "trainer.max_epochs=-1", "+trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0",
         "trainer.enable_progress_bar=false"]
LOG_PREFIX = "torch intra-op threads:"


class StepClock(L.Callback):
    """Writes ``path`` (JSON) at the end of training: the thread count the training loop ran with and the
    wall-clock end (``time.time()``, comparable between processes) of every training step."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.step_ends: list[float] = []
        self.threads = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.threads = torch.get_num_threads()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.step_ends.append(time.time())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(self.path).write_text(json.dumps({"threads": self.threads, "step_ends": self.step_ends}))


def run_pair(arm: str, cores: int, steps: int, overrides: list[str], workdir: Path,
             timeout: float) -> list[dict[str, Any]]:
    """Start two `wsca-train` processes of ``arm`` together; returns each one's clock record and log line."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # StepClock is imported from this file by its module name in the subprocesses
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), env.get("PYTHONPATH")) if p)
    env["PYTHONWARNINGS"] = "ignore"
    arm_overrides = [f"torch_threads={cores}"] if arm == "before" else []
    if arm == "after":
        env["WSCA_CONCURRENT_RUNS"] = "2"
    procs, outs = [], []
    for index in range(2):
        out = Path(tempfile.mkdtemp(prefix=f"{arm}{index}_", dir=workdir))
        outs.append(out)
        command = [str(WSCA_TRAIN), f"hydra.run.dir={out / 'run'}", f"+trainer.max_steps={steps}", *FIXED,
                   "+callbacks.step_clock._target_=thread_share.StepClock",
                   f"+callbacks.step_clock.path={out / 'steps.json'}", *arm_overrides, *overrides]
        # output to a file, not a pipe: a full pipe would stall the process read second
        with open(out / "output.txt", "w", encoding="utf-8") as output:
            procs.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
    records = []
    try:
        for proc, out in zip(procs, outs):
            proc.wait(timeout=timeout)
            output = (out / "output.txt").read_text(encoding="utf-8")
            if proc.returncode != 0:
                raise RuntimeError(f"{arm}: wsca-train exited with {proc.returncode}:\n{output[-3000:]}")
            log_line = next((line.split("] - ", 1)[-1] for line in output.splitlines() if LOG_PREFIX in line), None)
            records.append({**json.loads((out / "steps.json").read_text()), "log_line": log_line})
    finally:
        for proc in procs:  # after a failure or a timeout: nothing of this arm keeps running
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return records


def overlap_throughput(records: list[dict[str, Any]], warmup: int) -> list[float]:
    """Each process's training steps per second while both train: from the later process's ``warmup``-th step end
    to the earlier process's last."""
    start = max(r["step_ends"][warmup - 1] for r in records)
    end = min(r["step_ends"][-1] for r in records)
    if end <= start:
        raise RuntimeError("the two processes never trained at the same time; raise --steps")
    return [sum(start < t <= end for t in r["step_ends"]) / (end - start) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per process")
    parser.add_argument("--warmup", type=int, default=5, help="steps of each process not counted")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of both arms (ABBA order)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one arm may take")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both arms")
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 1 and below --steps")

    cores = available_cores()  # the subprocesses inherit this process's affinity
    workdir = Path(tempfile.mkdtemp(prefix="wsca_thread_share_"))
    arms: dict[str, dict[str, list[Any]]] = {"before": {}, "after": {}}
    try:
        for repeat in range(args.repeats):
            for arm in (["before", "after"] if repeat % 2 == 0 else ["after", "before"]):
                records = run_pair(arm, cores, args.steps, args.overrides, workdir, args.timeout)
                per_process = overlap_throughput(records, args.warmup)
                measured = arms[arm]
                measured.setdefault("steps_per_second", []).append(per_process)
                measured.setdefault("total_steps_per_second", []).append(sum(per_process))
                measured.setdefault("threads", []).append([r["threads"] for r in records])
                measured.setdefault("log_lines", []).append([r["log_line"] for r in records])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    expected = {"before": cores, "after": max(1, cores // 2)}
    for arm, measured in arms.items():  # the arms compare what they claim to, or the numbers mean nothing
        if any(t != expected[arm] for pair in measured["threads"] for t in pair):
            raise RuntimeError(f"{arm}: processes trained with {measured['threads']} threads, not {expected[arm]}")

    def median_total(arm: str) -> float:
        return statistics.median(arms[arm]["total_steps_per_second"])

    results = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {cores} CPUs, torch {torch.__version__}",
        "command": "python benchmarks/thread_share.py " + " ".join(sys.argv[1:]),
        "steps": args.steps,
        "warmup": args.warmup,
        "arms": arms,
        "median_total_steps_per_second": {arm: median_total(arm) for arm in arms},
        "ratio_after_over_before": median_total("after") / median_total("before"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for arm, measured in arms.items():
        rates = ", ".join("+".join(f"{r:.2f}" for r in pair) for pair in measured["steps_per_second"])
        print(f"{arm:7s} {expected[arm]} threads each: {rates} it/s (processes, per round); median total "
              f"{median_total(arm):.2f} it/s")
    print(f"after / before (two runs' total throughput): {results['ratio_after_over_before']:.2f}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()

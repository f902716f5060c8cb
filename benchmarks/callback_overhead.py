"""What the WSC callback costs: the default run's wall time, and the callback's share of an epoch.

Measured side by side in one process run, because these machines are noisy:

* ``default run``: ``wsca-train`` with its default config, as a subprocess (interpreter start-up and data
  generation included), i.e. the first quick-start command;
* ``with`` / ``without``: the default config in-process with and without the WSC callback, interleaved in ABBA
  order (with, without, without, with, ...), each epoch timed from its start to the end of all epoch-end work
  (validation and the WSC callback included). The ratio of median epoch times is the callback's overhead; the
  callback also times itself, which gives its share of the ``with`` epochs directly.

Usage: ``python benchmarks/callback_overhead.py [--repeats 2] [--epochs 2] [--skip-default-run]``.
Writes ``benchmarks/results/callback_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from wsca_lightning.cli.train import compose_train_config, train

RESULTS = Path(__file__).parent / "results" / "callback_overhead.json"


class EpochTimer(L.Callback):
    """Wall time of each training epoch, from its start until every epoch-end hook before it has run."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def run_arm(with_wsc: bool, epochs: int, workdir: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=workdir))
    overrides = [f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false", "callbacks.model_checkpoint=null",
                 "callbacks.last_checkpoint=null"]
    if not with_wsc:
        overrides.append("callbacks.wsc=null")
    cfg = compose_train_config(out, overrides)
    timer = EpochTimer()  # after the configured callbacks: its epoch end comes after the WSC callback's
    result = train(cfg, extra_callbacks=[timer])
    shutil.rmtree(out, ignore_errors=True)
    history = result["summary"]["history"] if with_wsc else []
    return {"epoch_seconds": timer.seconds, "wsc_seconds": [h["seconds"] for h in history],
            "wsc_parts": [h["seconds_parts"] for h in history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved pairs of runs (ABBA order)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per in-process run")
    parser.add_argument("--skip-default-run", action="store_true", help="do not time the full default wsca-train")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wsca_bench_"))

    default_run_seconds = None
    if not args.skip_default_run:
        script = Path(sys.executable).with_name("wsca-train")
        start = time.perf_counter()
        subprocess.run([str(script), f"hydra.run.dir={workdir / 'default'}", "trainer.enable_progress_bar=false"],
                       check=True, capture_output=True, text=True)
        default_run_seconds = time.perf_counter() - start

    arms: dict[str, list[float]] = {"with": [], "without": []}
    wsc_seconds: list[float] = []
    wsc_parts: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        # ABBA order: a machine that speeds up or slows down during the benchmark biases neither arm
        for name in (("with", "without") if repeat % 2 == 0 else ("without", "with")):
            measured = run_arm(name == "with", args.epochs, workdir)
            arms[name] += measured["epoch_seconds"]
            wsc_seconds += measured["wsc_seconds"]
            wsc_parts += measured["wsc_parts"]
    shutil.rmtree(workdir, ignore_errors=True)

    with_median = statistics.median(arms["with"])
    without_median = statistics.median(arms["without"])
    results = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "command": "python benchmarks/callback_overhead.py " + " ".join(sys.argv[1:]),
        "default_run_seconds": default_run_seconds,
        "epoch_seconds_with_wsc": arms["with"],
        "epoch_seconds_without_wsc": arms["without"],
        "wsc_callback_seconds": wsc_seconds,
        "wsc_callback_median_parts": {k: statistics.median(p[k] for p in wsc_parts) for k in wsc_parts[0]},
        "epoch_time_ratio_with_over_without": with_median / without_median,
        "wsc_share_of_epoch": statistics.median(wsc_seconds) / with_median,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if default_run_seconds is not None:
        print(f"default `wsca-train` run (subprocess, start-up included): {default_run_seconds:.1f} s")
    print(f"median epoch: {with_median:.2f} s with WSC, {without_median:.2f} s without "
          f"-> ratio {results['epoch_time_ratio_with_over_without']:.3f}")
    print(f"WSC callback: median {statistics.median(wsc_seconds):.3f} s per epoch = "
          f"{results['wsc_share_of_epoch']:.1%} of an epoch")
    print("  median parts: " + ", ".join(f"{k} {v:.3f} s" for k, v in results["wsc_callback_median_parts"].items()))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()

"""What the WSC callback costs the training loop, as ratios measured side by side in one run.

Arms, all the default `wsca-train` configuration (SonoNet-16, 64x80 built-in data, 3000 training images) run
in-process, interleaved in ABBA order (a machine that speeds up or slows down during the benchmark biases no arm):

* ``async``: the WSC callback as configured (analysis in a background thread, ``async_analysis=true``);
* ``sync``: the same callback with ``callbacks.wsc.async_analysis=false`` (the analysis inside the epoch-end hook);
* ``without``: no WSC callback;
* ``single_head``: no WSC callback and no metadata head (``data.metadata={}``): the same backbone with the primary
  head only.

Per epoch (every epoch of a run but its last, whose analysis runs inline by design and is reported apart as
``last_epoch_blocking_seconds``): the wall time from the epoch's start to the end of every epoch-end hook (validation included), the
validation time, and the time the training loop spent inside the WSC callback's hooks (its *blocking* time: the
embedding pass, a wait for the previous epoch's analysis if it is not done, and taking the result in). Reported:

* ``blocking_over_embedding``: the callback's blocking time per epoch over its embedding pass alone (target <= 1.25);
* ``cpu_share_of_epoch``: the callback's blocking time over the epoch (target <= 8 %);
* ``epoch_ratio_with_over_without``: whole epochs with the callback over epochs without it: what the training run
  really pays, including the background thread's competition for the cores;
* ``multi_head_throughput_ratio``: training images/s of the multi-head module over the single-head one (target
  >= 0.97), from the training part of the epochs (validation excluded).

``default_run_seconds``: the first quick-start command (``wsca-train``, as a subprocess, start-up included).

Usage: ``python benchmarks/callback_overhead.py [--repeats 2] [--epochs 3] [--skip-default-run]``.
Writes ``benchmarks/results/callback_overhead.json`` and prints a table. Run it alone on the machine.
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
from typing import Any

import lightning as L
import torch

from wsca_lightning.callbacks import WeightSpaceCorrelation
from wsca_lightning.cli.train import compose_train_config, train

RESULTS = Path(__file__).parent / "results" / "callback_overhead.json"
ARMS: dict[str, list[str]] = {
    "async": [],
    "sync": ["callbacks.wsc.async_analysis=false"],
    "without": ["callbacks.wsc=null"],
    "single_head": ["callbacks.wsc=null", "data.metadata={}"],
}
#: The WSC callback's hooks that run inside the training loop (fit end is counted apart).
LOOP_HOOKS = ("on_train_epoch_end", "on_train_batch_end")


class EpochTimer(L.Callback):
    """Per training epoch: wall time from its start until every epoch-end hook before this one has run, the
    validation time inside it, and the time spent in the WSC callback's loop hooks (set by :func:`time_hooks`)."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.validation_seconds: list[float] = []
        self.blocking_seconds: list[float] = []
        self.in_hooks = 0.0  # accumulated by the wrapped WSC hooks
        self._start = self._val_start = self._val = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._val = 0.0
        self.in_hooks = 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.epoch_seconds.append(time.perf_counter() - self._start)
        self.validation_seconds.append(self._val)
        self.blocking_seconds.append(self.in_hooks)


def time_hooks(callback: WeightSpaceCorrelation, timer: EpochTimer) -> dict[str, float]:
    """Wrap the callback's loop hooks so their time adds to ``timer.in_hooks``; returns the fit-end wait box."""
    fit_end = {"seconds": 0.0}

    def timed(hook: Any, add: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                add(time.perf_counter() - start)
        return wrapper

    def add_loop(seconds: float) -> None:
        timer.in_hooks += seconds

    def add_fit_end(seconds: float) -> None:
        fit_end["seconds"] += seconds

    for name in LOOP_HOOKS:
        setattr(callback, name, timed(getattr(callback, name), add_loop))
    callback.on_train_end = timed(callback.on_train_end, add_fit_end)  # type: ignore[method-assign]
    return fit_end


def run_arm(arm: str, epochs: int, workdir: Path) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(dir=workdir))
    overrides = [f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
                 "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null", *ARMS[arm]]
    cfg = compose_train_config(out, overrides)
    timer = EpochTimer()  # after the configured callbacks: its epoch end comes after the WSC callback's

    class Attach(L.Callback):  # wraps the WSC callback's hooks once the trainer holds it
        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            for cb in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(cb, WeightSpaceCorrelation):
                    self.fit_end = time_hooks(cb, timer)

    attach = Attach()
    result = train(cfg, extra_callbacks=[attach, timer])
    shutil.rmtree(out, ignore_errors=True)
    history = result["summary"]["history"] if result else []
    # the steady state: every epoch but the run's last, whose analysis runs inline by design (nothing is left to
    # train beside it); the last epoch is reported on its own
    steady = slice(0, epochs - 1)
    return {
        "epoch_seconds": timer.epoch_seconds[steady],
        "validation_seconds": timer.validation_seconds[steady],
        "train_seconds": [e - v for e, v in zip(timer.epoch_seconds, timer.validation_seconds)][steady],
        "blocking_seconds": timer.blocking_seconds[steady] if history else [],
        "embed_seconds": [h["seconds_parts"]["embed"] for h in history][steady],
        "analysis_seconds": [h["seconds_parts"]["analysis"] for h in history][steady],
        "last_epoch_blocking_seconds": timer.blocking_seconds[-1:] if history else [],
        "fit_end_wait_seconds": getattr(attach, "fit_end", {}).get("seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of every arm (ABBA order)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per in-process run (>= 2; the last is "
                        "reported apart)")
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

    measured: dict[str, dict[str, list[Any]]] = {arm: {} for arm in ARMS}
    for repeat in range(args.repeats):
        order = list(ARMS) if repeat % 2 == 0 else list(reversed(ARMS))
        for arm in order:
            for key, values in run_arm(arm, args.epochs, workdir).items():
                measured[arm].setdefault(key, []).extend(values if isinstance(values, list) else [values])
    shutil.rmtree(workdir, ignore_errors=True)

    def median(arm: str, key: str) -> float:
        return statistics.median(measured[arm][key])

    def blocking_ratio(arm: str) -> float:
        return statistics.median(b / e for b, e in zip(measured[arm]["blocking_seconds"],
                                                        measured[arm]["embed_seconds"]))

    results = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "command": "python benchmarks/callback_overhead.py " + " ".join(sys.argv[1:]),
        "default_run_seconds": default_run_seconds,
        "arms": measured,
        "blocking_over_embedding": {"async": blocking_ratio("async"), "sync": blocking_ratio("sync")},
        "cpu_share_of_epoch": {arm: median(arm, "blocking_seconds") / median(arm, "epoch_seconds")
                               for arm in ("async", "sync")},
        "epoch_ratio_with_over_without": {arm: median(arm, "epoch_seconds") / median("without", "epoch_seconds")
                                          for arm in ("async", "sync")},
        "multi_head_throughput_ratio": median("single_head", "train_seconds") / median("without", "train_seconds"),
        "targets": {"blocking_over_embedding": 1.25, "cpu_share_of_epoch": 0.08, "multi_head_throughput_ratio": 0.97},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if default_run_seconds is not None:
        print(f"default `wsca-train` run (subprocess, start-up included): {default_run_seconds:.1f} s")
    for arm in ARMS:
        print(f"{arm:12s} median epoch {median(arm, 'epoch_seconds'):6.2f} s, training part "
              f"{median(arm, 'train_seconds'):6.2f} s"
              + (f", callback blocking {median(arm, 'blocking_seconds'):.2f} s (embedding pass "
                 f"{median(arm, 'embed_seconds'):.2f} s, analysis {median(arm, 'analysis_seconds'):.2f} s)"
                 if measured[arm].get("blocking_seconds") else ""))
    for arm in ("async", "sync"):
        print(f"{arm:12s} blocking / embedding {results['blocking_over_embedding'][arm]:.2f}, share of epoch "
              f"{results['cpu_share_of_epoch'][arm]:.1%}, epoch with / without "
              f"{results['epoch_ratio_with_over_without'][arm]:.3f}")
    print(f"multi-head / single-head training throughput: {results['multi_head_throughput_ratio']:.3f}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()

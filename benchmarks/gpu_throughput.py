"""GPU training throughput of SonoNet-16/32 at 224x288, the loader paths, and the WSC callback's share of an epoch.

All arms run in one process, one after another, on the built-in data through ``wsca-train``'s own ``train(cfg)``:

* ``throughput``: SonoNet-16 and -32 at 224x288, ``trainer=gpu`` (bf16-mixed; the model is channels_last on CUDA),
  with and without ``model.compile_backbone``, data on the device (``data.on_device=true``). Images/s over
  ``--steps`` training steps after ``--warmup`` steps (compilation and cuDNN autotuning happen there), timed
  between two ``torch.cuda.synchronize()``. The same steps run under ``torch.cuda.set_sync_debug_mode("warn")``:
  ``host_syncs_per_step`` counts the step's device-to-host synchronisations (0 is the goal).
* ``loader``: SonoNet-32 without compile, fed by the device-resident split against the CPU DataLoader with 0 and
  ``--workers`` worker processes: whether the loader bounds the step rate.
* ``callback``: two epochs with the default WSC callback (512 embedded images, 100 permutations, the analysis in a
  background thread); the first epoch's blocking time (its embedding pass and any wait for its result at the next
  epoch's end) against the epoch time of ``--epoch-images`` images at the measured rate:
  ``share = callback / (epoch_images / images_per_s + callback)``, and ``blocking_over_embedding`` (the same ratio
  as ``callback_overhead.py`` on the CPU).

Usage on a GPU machine: ``python benchmarks/gpu_throughput.py`` (writes
``benchmarks/results/gpu_throughput_<date>_<gpu>.json`` and prints a table). ``--smoke`` runs every arm tiny on the
CPU to check the script (its numbers mean nothing and are not written to results/ unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from wsca_lightning.cli.train import compose_train_config, train

RESULTS_DIR = Path(__file__).parent / "results"


class StepTimer(L.Callback):
    """Images/s over ``steps`` training steps after ``warmup``, and the host syncs those steps make (CUDA)."""

    def __init__(self, warmup: int, steps: int, batch_size: int) -> None:
        self.warmup, self.steps, self.batch_size = warmup, steps, batch_size
        self.images_per_s: float | None = None
        self.host_syncs_per_step: float | None = None
        self._start = 0.0
        self._caught: Any = None
        self._records: list[warnings.WarningMessage] = []

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if trainer.global_step == self.warmup:
            self._sync(pl_module)
            if pl_module.device.type == "cuda":
                self._caught = warnings.catch_warnings(record=True)
                self._records = self._caught.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           i: int) -> None:
        if trainer.global_step == self.warmup + self.steps:
            if self._caught is not None:
                torch.cuda.set_sync_debug_mode("default")
                self._caught.__exit__(None, None, None)
                syncs = [r for r in self._records if "synchroniz" in str(r.message)]
                self.host_syncs_per_step = len(syncs) / self.steps
                self._caught = None
            self._sync(pl_module)
            self.images_per_s = self.steps * self.batch_size / (time.perf_counter() - self._start)
            trainer.should_stop = True


def run_arm(workdir: Path, base: list[str], extra: list[str], warmup: int, steps: int, batch_size: int,
            with_wsc: bool = False) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(dir=workdir))
    timer = StepTimer(warmup, steps, batch_size)
    overrides = [*base, *extra, f"+trainer.max_steps={warmup + steps}", "trainer.max_epochs=1000",
                 "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null", "~logger",
                 "trainer.enable_progress_bar=false"]
    if not with_wsc:
        overrides.append("callbacks.wsc=null")
    start = time.perf_counter()
    result = train(compose_train_config(out, overrides), extra_callbacks=[timer])
    arm: dict[str, Any] = {"overrides": extra, "images_per_s": timer.images_per_s,
                           "host_syncs_per_step": timer.host_syncs_per_step,
                           "wall_s": round(time.perf_counter() - start, 2)}
    if with_wsc:
        # the first computed epoch: with the asynchronous analysis (the default) its blocking time includes the
        # wait for its result at the next epoch's end, the steady state (the last epoch's waits at fit end instead)
        history = result["summary"]["history"][0]
        arm["callback_s"] = history["seconds"]
        arm["callback_parts_s"] = history["seconds_parts"]
    return arm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script")
    parser.add_argument("--images", type=int, default=4096, help="rendered training images (held on the device)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=8, help="loader workers of the CPU loader arm")
    parser.add_argument("--epoch-images", type=int, default=50_000, help="epoch size for the callback's share")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: benchmarks/results/...)")
    args = parser.parse_args()

    if args.smoke:
        hardware = ["trainer=cpu", "data.image_size=[32,48]", "callbacks.wsc.num_permutations=20",
                    "callbacks.wsc.num_bootstrap=50", "callbacks.wsc.save_plots=false"]
        args.images, args.batch_size, args.warmup, args.steps, args.workers = 96, 16, 2, 3, 1
        models, compile_options = ["sononet16"], [False]
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_throughput.py needs a CUDA GPU (use --smoke to check the script on a CPU)")
        hardware = ["trainer=gpu", "data.image_size=[224,288]"]
        models, compile_options = ["sononet16", "sononet32"], [False, True]
    data = [f"data.num_train={args.images}", "data.num_val=64", f"data.batch_size={args.batch_size}",
            "+trainer.limit_val_batches=0"]
    on_device = ["data.on_device=true"]
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "cpu"
    report: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "device": device_name,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "throughput": [],
        "loader": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base = [*hardware, *data]
        for model in models:
            for compiled in compile_options:
                arm = run_arm(workdir, base, [f"model={model}", f"model.compile_backbone={str(compiled).lower()}",
                                              *on_device], args.warmup, args.steps, args.batch_size)
                report["throughput"].append({"model": model, "compile": compiled, **arm})
                print(f"{model:10s} compile={compiled!s:5s} {arm['images_per_s']:9.1f} images/s  "
                      f"host syncs/step {arm['host_syncs_per_step']}", flush=True)
        loader_model = models[-1]
        for name, extra in (("device-resident", on_device), ("cpu loader, 0 workers", ["data.num_workers=0"]),
                            (f"cpu loader, {args.workers} workers", [f"data.num_workers={args.workers}"])):
            arm = run_arm(workdir, base, [f"model={loader_model}", *extra], args.warmup, args.steps, args.batch_size)
            report["loader"].append({"loader": name, "model": loader_model, **arm})
            print(f"{loader_model} {name:24s} {arm['images_per_s']:9.1f} images/s", flush=True)
        # the callback's share: two epochs with the default WSC callback, the first one's blocking time
        steps_per_epoch = -(-args.images // args.batch_size)
        arm = run_arm(workdir, base, [f"model={loader_model}", *on_device], 0, 2 * steps_per_epoch,
                      args.batch_size, with_wsc=True)
        rate = next(a["images_per_s"] for a in report["throughput"] if a["model"] == loader_model)
        epoch_s = args.epoch_images / rate
        report["callback"] = {
            "model": loader_model, "callback_s": arm["callback_s"], "parts_s": arm["callback_parts_s"],
            "epoch_images": args.epoch_images, "epoch_s_at_measured_rate": epoch_s,
            "share_of_epoch": arm["callback_s"] / (epoch_s + arm["callback_s"]),
            "blocking_over_embedding": arm["callback_s"] / arm["callback_parts_s"]["embed"],
        }
        print(f"WSC callback {arm['callback_s']:.2f} s = {100 * report['callback']['share_of_epoch']:.2f} % of an "
              f"epoch of {args.epoch_images} images at {rate:.0f} images/s; blocking / embedding pass "
              f"{report['callback']['blocking_over_embedding']:.2f}", flush=True)

    out = args.out
    if out is None and not args.smoke:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_")
        out = RESULTS_DIR / f"gpu_throughput_{report['date']}_{slug}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written: {out}")


if __name__ == "__main__":
    main()

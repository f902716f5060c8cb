"""Distributed runs of the WSC callback for tests/test_distributed.py, in their own process tree:

    python tests/ddp_worker.py --run OUT DEVICES [FAIL] [--run OUT DEVICES [FAIL] ...]

``FAIL``: ``embed:RANK`` or ``analysis``. The runs are made one after the other, each in a process forked from this
one (``import lightning`` and the rest once for all of them, instead of once per run), with its own output in
``OUT/output.txt`` and its outcome in ``OUT/result.json``: exit code, seconds, and any process of it still running
afterwards (it is killed). A run that outlives ``--timeout`` is killed and recorded as such.

Fixed weights: learning rate 0, no weight decay and BatchNorm momentum 0 (running statistics stay at their initial
values), so runs on 1 and on 2 processes (``ddp_fork``, gloo: the ranks fork from the run's process instead of
starting and importing everything again; ``ddp_spawn`` is tested through ``wsca-train trainer=ddp_spawn``) embed the
same images with the same model and their logged WSC values must agree. Every file the callback writes is recorded
per rank in ``OUT/writes/rank<R>.txt``. A 2-process run without a failure also exercises the collective helpers
directly on the trainer's process group before training (``OUT/agreement_rank<R>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger

import wsca_lightning.epoch_analysis.outputs as outputs
from wsca_lightning.callbacks import WeightSpaceCorrelation
from wsca_lightning.callbacks.distributed import gather_shards, own_shard, run_on_every_rank, run_on_rank_zero
from wsca_lightning.data import SyntheticUltrasoundDataModule
from wsca_lightning.models import MultiHeadModule

from forked_runs import run_forked  # tests/, this script's directory


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def recording_writes(write: Callable[..., Any], path_position: int) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        log = Path(os.environ["WSCA_TEST_WRITES"]) / f"rank{rank()}.txt"
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{args[path_position]}\n")
        return write(*args, **kwargs)

    return wrapper


# module level: every run's process and the ranks it forks inherit the recording
outputs.write_table = recording_writes(outputs.write_table, 1)
outputs.write_summary = recording_writes(outputs.write_summary, 1)
outputs.save_figure = recording_writes(outputs.save_figure, 1)
np.savez = recording_writes(np.savez, 0)


class EmbedFailure(MultiHeadModule):
    """Raises inside the callback's embedding pass on one rank."""

    fail_rank: int | None = None

    def wsc_embed(self, batch: Any) -> torch.Tensor:
        if rank() == self.fail_rank:
            raise ValueError(f"injected failure in wsc_embed on rank {rank()}")
        return super().wsc_embed(batch)


class AnalysisFailure(WeightSpaceCorrelation):
    """Raises in the analysis, which runs on global rank zero."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

        def fail(*_: Any, **__: Any) -> Any:
            raise ValueError("injected failure in the analysis")

        self.evaluator.analyze_heads = fail


def outcome(work: Callable[[], Any]) -> Any:
    try:
        return work()
    except Exception as err:  # recorded for the test to read
        return f"{type(err).__name__}: {err}"


def raise_value_error(message: str) -> None:
    raise ValueError(message)


class Agreement(L.Callback):
    """The collective helpers on the trainer's 2-process gloo group, before training; records what each rank saw."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        local_rank = trainer.global_rank
        shard = own_shard(list(range(10, 15)), local_rank, 2)  # rows 10, 11, 12 | 13, 14
        in_batches = own_shard(list(range(5)), local_rank, 2, granule=4)  # rows 0, 1, 2, 3 | 4
        record = {
            "gathered": gather_shards(trainer, torch.tensor(shard), 5).tolist(),
            "gathered_in_batches": gather_shards(trainer, torch.tensor(in_batches), 5, granule=4).tolist(),
            "every_rank": outcome(lambda: run_on_every_rank(
                trainer, lambda: raise_value_error("only on rank 1") if local_rank == 1 else None, "a step")),
            "zero_result": run_on_rank_zero(trainer, lambda: {"computed on": local_rank}, "a step"),
            "zero_failure": outcome(lambda: run_on_rank_zero(trainer, lambda: raise_value_error("only on rank 0"),
                                                             "a step")),
        }
        (self.out / f"agreement_rank{local_rank}.json").write_text(json.dumps(record))


def train_once(out: Path, devices: int, fail: str | None) -> None:
    (out / "writes").mkdir(parents=True, exist_ok=True)
    os.environ["WSCA_TEST_WRITES"] = str(out / "writes")

    L.seed_everything(0)
    datamodule = SyntheticUltrasoundDataModule(num_train=75, num_val=32, batch_size=16, image_size=(32, 48), seed=0)
    datamodule.setup("fit")
    model = EmbedFailure(
        backbone={"name": "sononet16", "in_channels": 1},
        tasks=[spec.to_dict() for spec in datamodule.task_specs],
        input_shape=list(datamodule.input_shape),
        primary=datamodule.primary_task,
        optimizer={"name": "adamw", "lr": 0.0, "weight_decay": 0.0},
    )
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
    if fail and fail.startswith("embed:"):
        model.fail_rank = int(fail.split(":")[1])
    callback_cls = AnalysisFailure if fail == "analysis" else WeightSpaceCorrelation
    # 61 of 75 images: an odd subset, so the two shards differ in size
    callback = callback_cls(subset_size=61, batch_size=16, num_permutations=20, num_bootstrap=20, seed=0,
                            dirpath=str(out / "wsc"))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        max_epochs=2,
        logger=CSVLogger(str(out), name="csv"),
        callbacks=[callback, *([Agreement(out)] if devices == 2 and not fail else [])],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=datamodule)


def run_with_output_in(out: Path, devices: int, fail: str | None) -> None:
    """The body of a run's process: everything it and its ranks print goes to ``OUT/output.txt``."""
    fd = os.open(out / "output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    train_once(out, devices, fail)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", nargs="+", action="append", required=True, metavar="OUT DEVICES [FAIL]",
                        help="FAIL: embed:RANK or analysis")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds each run may take")
    args = parser.parse_args()
    if os.getpgrp() != os.getpid():  # a group of its own: what it kills and checks is only its runs' processes
        os.setpgid(0, 0)
    for out, devices, *fail in args.run:
        Path(out).mkdir(parents=True, exist_ok=True)
        result = run_forked(run_with_output_in, (Path(out), int(devices), fail[0] if fail else None), args.timeout)
        (Path(out) / "result.json").write_text(json.dumps(result))
        print(out, result, flush=True)


if __name__ == "__main__":
    main()

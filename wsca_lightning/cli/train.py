"""``wsca-train``: train a multi-head model with per-epoch WSC (a thin Hydra shell around :func:`train`)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import hydra
import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from wsca_lightning.callbacks.wsc import WeightSpaceCorrelation
from wsca_lightning.cli.common import CONFIG_PATH, instantiate_group, instantiate_node, launch, report_or_exit
from wsca_lightning.cli.run_directory import (
    SetAsideSupersededRows,
    claim_run_directory,
    launcher_rank,
    release_run_directory,
)
from wsca_lightning.problems import ConfigError
from wsca_lightning.summary import SUMMARY_FILENAME, format_summary
from wsca_lightning.threads import TorchThreads

def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Train the configured model; returns the WSC summary (``{}`` without a WSC callback), its path and the last
    logged metrics. ``extra_callbacks`` are added after the configured ones.

    Everything is built and cross-checked before the first training step, so a bad config fails in seconds; the
    run directory is claimed first (:mod:`wsca_lightning.cli.run_directory`: one run at a time, reused only for a
    resume or with ``overwrite=true``, never inside ``data.root``).
    """
    check_launch(cfg)
    claim_run_directory(cfg, cfg.paths.output_dir)  # a RunDirectoryError is a ConfigError
    try:
        return _train_in_claimed_directory(cfg, extra_callbacks)
    finally:
        release_run_directory(cfg.paths.output_dir)


def _train_in_claimed_directory(cfg: DictConfig, extra_callbacks: Sequence[L.Callback]) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_node(cfg, "data")
    prepare_and_set_up(datamodule)
    model = instantiate_node(
        cfg,
        "model",
        tasks=[spec.to_dict() for spec in datamodule.task_specs],
        primary=datamodule.primary_task,
        input_shape=list(datamodule.input_shape),
    )
    callbacks = instantiate_group(cfg, "callbacks")
    for name, callback in callbacks.items():
        if isinstance(callback, WeightSpaceCorrelation):
            try:
                callback.check_module(model)
                if callback.dirpath:
                    callback.check_output_paths(callback.dirpath)
            except ConfigError as err:
                raise err.under(f"callbacks.{name}") from err
    loggers = list(instantiate_group(cfg, "logger").values())
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    # read here, in the process that starts the ranks: the user's OMP_NUM_THREADS, not Lightning's
    threads = TorchThreads(cfg.get("torch_threads"), launcher=HydraConfig.get().launcher if multirun else None)
    trainer = instantiate_node(cfg, "trainer",
                               callbacks=[threads, SetAsideSupersededRows(), *callbacks.values(), *extra_callbacks],
                               logger=loggers or False)
    threads.apply(trainer)  # logged here, where Hydra writes the run's log, also when ddp_spawn trains in children
    fit_start = time.time()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    finally:
        # a process group left to the interpreter's exit aborts it ("terminate called without an active exception")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    wsc = next((cb for cb in callbacks.values() if isinstance(cb, WeightSpaceCorrelation)), None)
    if wsc is None:
        return {}
    summary_path = os.path.join(wsc.output_dir(trainer), SUMMARY_FILENAME)
    if wsc.history:
        summary = wsc.summary(model.wsc_primary_task)
    elif os.path.exists(summary_path) and os.path.getmtime(summary_path) >= fit_start:
        # ddp_spawn trains in child processes and brings back weights and metrics, not callback state: the summary
        # global rank zero wrote during this fit is the record
        with open(summary_path, encoding="utf-8") as handle:
            summary = json.load(handle)
    else:
        return {}
    return {"summary": summary, "summary_path": summary_path, "metrics": _last_metrics(trainer)}


def prepare_and_set_up(datamodule: L.LightningDataModule) -> None:
    """Check the data (``prepare_data``, in the run's first process; Lightning's own call inside ``fit`` covers the
    first process of every other node) and build the training split (``setup``: bin edges and class names come
    from it) before the model exists, so bad data fails in seconds, before the first training step. Problems come
    back keyed from ``data``."""
    try:
        if launcher_rank() == 0:
            datamodule.prepare_data()
        datamodule.setup("fit")
    except ConfigError as err:
        raise err.under("data") from err
    except ValueError as err:  # a problem our validators did not anticipate: still keyed to the data node
        raise ConfigError.at("data", str(err)) from err


def outside_launch_size() -> int:
    """How many processes an outside launcher started for this run: torchrun's ``WORLD_SIZE``, SLURM's
    ``SLURM_NTASKS`` (a batch job, not an interactive allocation), else 1 (Lightning launches any others itself)."""
    if TorchElasticEnvironment.detect():
        return int(os.environ.get("WORLD_SIZE", "1"))
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 1


def compose_train_config(output_dir: str | os.PathLike, overrides: Sequence[str] = (),
                         config_name: str = "train") -> DictConfig:
    """The config `wsca-train` would run with these command-line ``overrides``, writing to ``output_dir``, with
    Hydra's runtime config set: what :func:`train` needs when called from Python (benchmarks, tests, notebooks)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="wsca_lightning.conf"):
        cfg = compose(config_name=config_name, return_hydra_config=True,
                      overrides=[f"paths.output_dir={output_dir}", f"hydra.run.dir={output_dir}", *overrides])
    HydraConfig().set_config(cfg)
    return cfg


def check_launch(cfg: DictConfig) -> None:
    """Refuse, before anything runs, the two launches that would scatter a run over several output directories.

    * A local multirun with ``strategy=ddp``: Lightning re-launches the command line for every extra rank, which
      under ``-m`` starts the whole sweep again per rank. Sweeps use ``trainer=ddp_spawn`` locally, or the SLURM
      launcher (``hydra/launcher=slurm``), where SLURM starts the ranks.
    * Several processes started by ``torchrun`` or ``srun`` for one run, without ``hydra.run.dir``: the default run
      directory holds each process's start time, which can differ by a second between ranks.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    outside_ranks = outside_launch_size()
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="auto"))
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    several = devices not in (1, "1", [0]) or OmegaConf.select(cfg, "trainer.num_nodes", default=1) != 1
    if (hydra_cfg.mode == RunMode.MULTIRUN and strategy.startswith("ddp") and "spawn" not in strategy and several
            and outside_ranks == 1):
        raise ConfigError.at(
            "trainer.strategy", f"{strategy!r} re-launches the command line for every extra process, which in a "
            "multirun (-m) would start the sweep again in each. Use trainer=ddp_spawn for local sweeps, or "
            "hydra/launcher=slurm to let SLURM start the processes."
        )
    run_dir_given = any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in hydra_cfg.overrides.hydra)
    if hydra_cfg.mode == RunMode.RUN and outside_ranks > 1 and not run_dir_given:
        raise ConfigError.at(
            "hydra.run.dir", f"this is one of {outside_ranks} processes of one run (torchrun or srun); give every "
            "process the same hydra.run.dir=<dir> on the command line, or each may write to its own timestamped "
            "directory."
        )


def _last_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def format_report(result: dict[str, Any]) -> str:
    """The few lines `wsca-train` prints at the end: where the summary is and what it says."""
    if not result:
        return "No WSC callback ran: no summary written."
    summary, metrics = result["summary"], result["metrics"]
    primary = summary["primary"]
    return "\n".join([
        f"WSC summary: {result['summary_path']}",
        format_summary(summary, alpha=summary["alarm"]["alpha"]),
        f"primary '{primary}': val AUROC {metrics.get(f'val/{primary}/auroc', float('nan')):.3f}, "
        f"balanced accuracy {metrics.get(f'val/{primary}/balanced_accuracy', float('nan')):.3f}",
    ])


def train_and_report(cfg: DictConfig) -> str | None:
    """Train and format the report; under DDP every process runs this and only global rank zero reports."""
    result = train(cfg)
    return format_report(result) if rank_zero_only.rank == 0 else None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    report_or_exit(lambda: train_and_report(cfg))


def main() -> None:
    launch(_hydra_main)


if __name__ == "__main__":
    main()

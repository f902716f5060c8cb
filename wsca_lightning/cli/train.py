"""``wsca-train``: train a multi-head model with per-epoch WSC (a thin Hydra shell around :func:`train`)."""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import hydra
import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from wsca_lightning.callbacks.wsc import WeightSpaceCorrelation
from wsca_lightning.cli.run_directory import (
    RunDirectoryError,
    SetAsideSupersededRows,
    claim_run_directory,
    release_run_directory,
)
from wsca_lightning.summary import SUMMARY_FILENAME, format_summary
from wsca_lightning.threads import TorchThreads

CONFIG_PATH = "pkg://wsca_lightning.conf"


class ConfigError(ValueError):
    """A configuration problem, reported with the config key it comes from."""


def instantiate_node(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg[key])`` whose errors name the config key (``data.image_size: ...``)."""
    node = OmegaConf.select(cfg, key)
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        unexpected = re.search(r"unexpected keyword argument '([^']+)'", str(cause))
        if isinstance(cause, TypeError) and unexpected:
            target = hydra.utils.get_class(node["_target_"])
            valid = [p for p in inspect.signature(target.__init__).parameters if p not in ("self", "args", "kwargs")]
            raise ConfigError(f"{key}.{unexpected.group(1)}: unknown key; valid keys: {', '.join(valid)}") from err
        raise ConfigError(prefix_keys(str(cause) or str(err), key)) from err


def prefix_keys(message: str, key: str) -> str:
    """Our classes report one problem per line, each starting with the key it concerns (``image_size: ...``);
    prefix those keys with the config node's key; other lines get ``<key>: `` in front."""
    lines = []
    for line in message.splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        first = stripped.split(" ")[0]
        if first.endswith(":") and len(first) > 1 and not stripped.endswith(":"):
            lines.append(f"{indent}{key}.{stripped}")
        else:
            lines.append(f"{key}: {stripped}" if not indent else line)
    return "\n".join(lines)


def instantiate_group(cfg: DictConfig, key: str) -> dict[str, Any]:
    """Instantiate every entry of a group of named objects (callbacks, loggers); ``None`` entries are skipped."""
    group = OmegaConf.select(cfg, key) or {}
    return {name: instantiate_node(cfg, f"{key}.{name}") for name, node in group.items() if node is not None}


def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Train the configured model; returns the WSC summary (``{}`` without a WSC callback), its path and the last
    logged metrics. ``extra_callbacks`` are added after the configured ones.

    Everything is built and cross-checked before the first training step, so a bad config fails in seconds; the
    run directory is claimed first (:mod:`wsca_lightning.cli.run_directory`: one run at a time, reused only for a
    resume or with ``overwrite=true``, never inside ``data.root``).
    """
    check_launch(cfg)
    try:
        claim_run_directory(cfg, cfg.paths.output_dir)
    except RunDirectoryError as err:
        raise ConfigError(str(err)) from err
    try:
        return _train_in_claimed_directory(cfg, extra_callbacks)
    finally:
        release_run_directory(cfg.paths.output_dir)


def _train_in_claimed_directory(cfg: DictConfig, extra_callbacks: Sequence[L.Callback]) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_node(cfg, "data")
    try:
        datamodule.setup("fit")  # bin edges and class names come from the training split
    except ValueError as err:  # e.g. a continuous column that cannot be binned on the training split
        raise ConfigError(prefix_keys(str(err), "data")) from err
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
            except ValueError as err:
                raise ConfigError(f"callbacks.{name}.{err}") from err
    loggers = list(instantiate_group(cfg, "logger").values())
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:  # read here, in the process that starts the ranks: the user's OMP_NUM_THREADS, not Lightning's
        threads = TorchThreads(cfg.get("torch_threads"), launcher=HydraConfig.get().launcher if multirun else None)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    trainer = instantiate_node(cfg, "trainer", callbacks=[threads, SetAsideSupersededRows(), *callbacks.values(), *extra_callbacks],
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
        raise ConfigError(
            f"trainer.strategy: {strategy!r} re-launches the command line for every extra process, which in a "
            "multirun (-m) would start the sweep again in each. Use trainer=ddp_spawn for local sweeps, or "
            "hydra/launcher=slurm to let SLURM start the processes."
        )
    run_dir_given = any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in hydra_cfg.overrides.hydra)
    if hydra_cfg.mode == RunMode.RUN and outside_ranks > 1 and not run_dir_given:
        raise ConfigError(
            f"hydra.run.dir: this is one of {outside_ranks} processes of one run (torchrun or srun); give every "
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


def report_or_exit(action: Callable[[], str | None]) -> None:
    """Print what ``action`` returns (nothing for ``None``); a ``ConfigError`` is printed to stderr and exits with
    status 2."""
    try:
        text = action()
    except ConfigError as err:
        print(f"Configuration error:\n{err}", file=sys.stderr)
        sys.exit(2)
    if text is not None:
        print(text)


def launch(hydra_main: Callable[[], None]) -> None:
    """Run a Hydra entry point without third-party noise."""
    # Lightning 2.6's own use of a torch API deprecated in torch 2.14; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    hydra_main()


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

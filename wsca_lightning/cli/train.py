"""``wsca-train``: train a multi-head model with per-epoch WSC (a thin Hydra shell around :func:`train`)."""

from __future__ import annotations

import inspect
import re
import sys
import warnings
from typing import Any, Callable, Sequence

import hydra
import lightning as L
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from wsca_lightning.callbacks.wsc import WeightSpaceCorrelation
from wsca_lightning.summary import format_summary

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

    Everything is built and cross-checked before the first training step, so a bad config fails in seconds.
    """
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
            except ValueError as err:
                raise ConfigError(f"callbacks.{name}.{err}") from err
    loggers = list(instantiate_group(cfg, "logger").values())
    trainer = instantiate_node(cfg, "trainer", callbacks=[*callbacks.values(), *extra_callbacks],
                               logger=loggers or False)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    wsc = next((cb for cb in callbacks.values() if isinstance(cb, WeightSpaceCorrelation)), None)
    if wsc is None or not wsc.history:
        return {}
    summary = wsc.summary(model.wsc_primary_task)
    return {"summary": summary, "summary_path": wsc.summary_path, "metrics": _last_metrics(trainer)}


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


def report_or_exit(action: Callable[[], str]) -> None:
    """Print what ``action`` returns; a ``ConfigError`` is printed to stderr and exits with status 2."""
    try:
        text = action()
    except ConfigError as err:
        print(f"Configuration error:\n{err}", file=sys.stderr)
        sys.exit(2)
    print(text)


def launch(hydra_main: Callable[[], None]) -> None:
    """Run a Hydra entry point without third-party noise."""
    # Lightning 2.6's own use of a torch API deprecated in torch 2.14; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    hydra_main()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    report_or_exit(lambda: format_report(train(cfg)))


def main() -> None:
    launch(_hydra_main)


if __name__ == "__main__":
    main()

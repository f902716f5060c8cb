"""What every Hydra entry point shares: the config location, instantiation whose errors name the config key, and
printing a configuration error as exit status 2."""

from __future__ import annotations

import inspect
import sys
import warnings
from typing import Any, Callable

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from wsca_lightning.problems import ConfigError, Problem

CONFIG_PATH = "pkg://wsca_lightning.conf"

__all__ = ["CONFIG_PATH", "ConfigError", "instantiate_group", "instantiate_node", "launch", "report_or_exit",
           "unknown_keys"]


def unknown_keys(node: Any, key: str, given: set[str]) -> list[Problem]:
    """Keys of ``node`` that its ``_target_`` does not accept (checked before instantiating, so the message can
    list the valid keys)."""
    target_path = node.get("_target_") if OmegaConf.is_dict(node) else None
    if target_path is None:
        return []
    try:
        target = hydra.utils.get_object(target_path)
        parameters = inspect.signature(target).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return []  # Hydra's own error names the target
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    valid = [name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    return [Problem(f"{key}.{name}", f"unknown key; valid keys: {', '.join(valid)}")
            for name in node if not str(name).startswith("_") and name not in valid and name not in given]


def instantiate_node(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg[key])`` whose errors name the config key: an unknown key, or the problems a
    constructor raises as :class:`ConfigError`, come back keyed from ``key`` (``data.image_size: ...``)."""
    node = OmegaConf.select(cfg, key)
    unknown = unknown_keys(node, key, set(kwargs))
    if unknown:
        raise ConfigError(unknown)
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, ConfigError):
            raise cause.under(key) from err
        raise ConfigError.at(key, str(cause) or str(err)) from err


def instantiate_group(cfg: DictConfig, key: str) -> dict[str, Any]:
    """Instantiate every entry of a group of named objects (callbacks, loggers); ``None`` entries are skipped."""
    group = OmegaConf.select(cfg, key) or {}
    return {name: instantiate_node(cfg, f"{key}.{name}") for name, node in group.items() if node is not None}


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

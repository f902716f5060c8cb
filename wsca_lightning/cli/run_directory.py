"""Who may write a run directory, checked before anything is written there.

A run directory has one owner at a time (a lock file naming the process), is reused only when asked (a resume with
``ckpt_path``, or ``overwrite=true``), never lies inside a data root, and a resume continues the run it names: its
checkpoint must exist and its saved configuration (``.hydra/config.yaml``) must match, apart from the keys a resume
may change (:data:`RESUME_MAY_CHANGE`).

`wsca-train` runs :func:`claim_run_directory` from a Hydra callback (:class:`RunDirectoryGuard`) before Hydra
creates the directory or writes ``.hydra/``, so a refused run leaves the directory as it was; :func:`train` runs
it again (a no-op for the owner), which guards runs started from Python too. A resumed fit moves the rows an
earlier, killed segment logged for epochs it trains again out of the earlier ``metrics.csv`` files
(:class:`SetAsideSupersededRows`), so each epoch has one row.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

import lightning as L
from hydra.experimental.callback import Callback
from lightning.pytorch.callbacks import Callback as LightningCallback
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

from wsca_lightning.plain import is_int
from wsca_lightning.problems import ConfigError, Problem

log = logging.getLogger(__name__)

LOCK_FILENAME = ".wsca_run.lock"
#: What a run writes into its directory; any of them means the directory holds a run.
OUTPUT_ENTRIES = ("checkpoints", "wsc", "csv", "tensorboard", "mlflow.db", "mlartifacts", "wandb")
#: Config keys (and key prefixes) a resume may set differently from the run it continues: how long to train, on
#: what hardware, what to show and where to log. Everything else shapes the model, the data or the analysis.
RESUME_MAY_CHANGE = (
    "ckpt_path", "overwrite", "paths", "logger", "torch_threads", "trainer.max_epochs", "trainer.max_steps",
    "trainer.max_time", "trainer.enable_progress_bar", "trainer.devices", "trainer.num_nodes", "trainer.accelerator",
    "trainer.strategy",
)
SEED_RANGE = (0, 2**32 - 1)  # numpy's and Lightning's seed range


class RunDirectoryError(ConfigError):
    """Why a run may not start in its directory: every problem, each keyed by the config key to change."""


def launcher_rank() -> int:
    """This process's rank as its launcher set it (torchrun, SLURM, Lightning's re-launch of extra ranks or
    nodes); 0 for a process that no launcher started. Only rank 0 owns the run directory."""
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
    return max(int(os.environ.get(name, "0") or 0) for name in names)


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:  # an interpolation that cannot resolve yet (e.g. ${hydra:...} outside a run) is no data root
        return None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _outputs(run_dir: Path) -> list[str]:
    return [name for name in OUTPUT_ENTRIES if (run_dir / name).exists()]


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        if not node and prefix:
            yield prefix, {}
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def _task_values(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf of the task config (Hydra's own node left out) as written: interpolations unresolved (outside a
    Hydra run ``${hydra:...}`` cannot resolve), a required value never set as ``"???"``."""
    container = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    container.pop("hydra", None)
    return dict(_flatten(container))


def config_differences(saved: DictConfig, current: DictConfig) -> list[Problem]:
    """The keys outside :data:`RESUME_MAY_CHANGE` whose values differ (``key: was X, now Y``). Values are
    compared as written (interpolations unresolved), as Hydra saved them."""
    old, new = _task_values(saved), _task_values(current)
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if _may_change(key) or old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        lines.append(Problem(key, f"was {old.get(key, '<unset>')!r} in the run being resumed, now "
                                  f"{new.get(key, '<unset>')!r}"))
    return lines


def _saved_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = OmegaConf.load(path)
    except (OSError, ValueError):
        return []
    return [str(o) for o in overrides] if isinstance(overrides, ListConfig) else []


def check_settings(cfg: DictConfig) -> list[Problem]:
    """Problems of the top-level settings that fail deep inside Lightning otherwise: required values never set
    (``???``), the seed, ``overwrite`` (``ckpt_path`` is checked with the directory it resumes)."""
    problems = [Problem(key, f"required and not set; add {key}=<value> to the command line")
                for key, value in _task_values(cfg).items() if value == "???"]
    seed = _select(cfg, "seed")
    if not is_int(seed) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        problems.append(Problem("seed", f"must be a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]}, "
                                        f"got {seed!r}"))
    overwrite = _select(cfg, "overwrite")
    if overwrite is not None and not isinstance(overwrite, bool):
        problems.append(Problem("overwrite", f"must be true or false, got {overwrite!r}"))
    return problems


def check_run_directory(cfg: DictConfig, run_dir: Path) -> list[Problem]:
    """Problems with starting this run in ``run_dir``; nothing is written."""
    problems = check_settings(cfg)
    run_real = Path(os.path.realpath(run_dir))
    root = _select(cfg, "data.root")
    if isinstance(root, str) and root and _inside(run_real, Path(os.path.realpath(root))):
        problems.append(Problem(
            "hydra.run.dir", f"{run_dir} is inside data.root ({root}); a run never writes into a data folder: "
            "choose a directory outside it"
        ))
    existing = _nearest_existing(run_real)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problems.append(Problem("hydra.run.dir", f"cannot write {run_dir} ({existing} is not a writable "
                                "directory); choose another directory"))
    ckpt_path = _select(cfg, "ckpt_path")
    outputs = _outputs(run_real) if run_real.is_dir() else []
    if ckpt_path is None:
        if outputs and not _select(cfg, "overwrite"):
            problems.append(Problem(
                "hydra.run.dir", f"{run_dir} already holds a run ({', '.join(outputs)}); resume it with "
                "ckpt_path=last, add overwrite=true to delete those outputs and start again, or choose a new "
                "directory"
            ))
        return problems
    checkpoint = run_real / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(str(ckpt_path))
    if ckpt_path == "last" and not checkpoint.is_file():
        problems.append(Problem("ckpt_path", f"'last' but {checkpoint} does not exist, so there is nothing to "
                                "resume; leave ckpt_path out to start a new run, or give the directory of the run "
                                "to resume as hydra.run.dir"))
    elif not checkpoint.is_file() or not os.access(checkpoint, os.R_OK):
        problems.append(Problem("ckpt_path", f"{ckpt_path} is not a readable file; give the path of a .ckpt "
                                "file, or 'last' to resume the run in hydra.run.dir"))
    saved_path = run_real / ".hydra" / "config.yaml"
    if saved_path.is_file():
        try:
            differences = config_differences(OmegaConf.load(saved_path), cfg)
        except Exception as err:  # noqa: BLE001 -- any unreadable YAML: the resume cannot be verified
            differences = [Problem(
                "ckpt_path", f"the saved config of the run to resume, {saved_path}, cannot be read "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); restore it from a copy, "
                "or start a new run in another directory")]
        if differences:
            saved = " ".join(_saved_overrides(run_real))
            problems.extend(differences)
            problems.append(Problem(
                "ckpt_path", f"a resume continues the run in {run_dir} with its own settings ({saved_path}); repeat "
                f"its overrides: wsca-train {saved + ' ' if saved else ''}hydra.run.dir={run_dir} "
                f"ckpt_path={ckpt_path} (only {', '.join(RESUME_MAY_CHANGE[2:])} may change)"
            ))
    return problems


def _read_lock(lock: Path) -> dict[str, Any]:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``<run dir>/.wsca_run.lock``: created exclusively, holding this process's host and pid; a lock whose process
    is gone (same host) is taken over; released at exit."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILENAME
        self.held = False

    def acquire(self) -> Problem | None:
        """Take the lock; returns the problem when another live run holds it."""
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(self.path)
                if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                    self.held = True
                    return None
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    self.path.unlink(missing_ok=True)  # a run that died without releasing it
                    continue
                return Problem(
                    "hydra.run.dir", f"another run (host {holder.get('host')}, pid {holder.get('pid')}, started "
                    f"{holder.get('started')}) is using {self.path.parent}; wait for it to finish or choose another "
                    f"directory (if no run is using it, delete {self.path})"
                )
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({**me, "started": dt.datetime.now().isoformat(timespec="seconds")}, handle)
            self.held = True
            atexit.register(self.release)
            return None
        return Problem("hydra.run.dir", f"could not take {self.path}; delete it if no run is using the directory")

    def release(self) -> None:
        if self.held and _read_lock(self.path).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


_LOCKS: dict[Path, RunLock] = {}


def claim_run_directory(cfg: DictConfig, run_dir: str | os.PathLike) -> None:
    """Check that this run may use ``run_dir`` and take its lock (rank 0 only; other ranks join rank 0's run);
    with ``overwrite=true``, delete the previous run's outputs. Raises :class:`RunDirectoryError` naming every
    problem; a refused run writes nothing (a directory it had to create for the lock is removed again)."""
    if launcher_rank() != 0:
        return
    run_dir = Path(os.path.realpath(run_dir))
    if run_dir in _LOCKS and _LOCKS[run_dir].held:
        return
    problems = check_run_directory(cfg, run_dir)
    if problems:
        raise RunDirectoryError(problems)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    problem = lock.acquire()
    if problem:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise RunDirectoryError(problem)
    _LOCKS[run_dir] = lock
    if _select(cfg, "overwrite") and _select(cfg, "ckpt_path") is None:
        for name in _outputs(run_dir):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()


def release_run_directory(run_dir: str | os.PathLike) -> None:
    lock = _LOCKS.pop(Path(os.path.realpath(run_dir)), None)
    if lock is not None:
        lock.release()


class RunDirectoryGuard(Callback):
    """Hydra callback (``hydra.callbacks`` in ``train.yaml``): claims the run directory before Hydra creates it and
    writes ``.hydra/``; a refusal prints the problems and exits with status 2, leaving the directory untouched."""

    def __init__(self) -> None:
        self._run_dir: str | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # resolved once: a timestamped default (${now:...}) read again later could name the next second
        self._run_dir = str(config.hydra.run.dir)
        try:
            claim_run_directory(config, self._run_dir)
        except RunDirectoryError as err:
            print(f"Configuration error:\n{err}", file=sys.stderr)
            sys.exit(2)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._run_dir is not None:
            release_run_directory(self._run_dir)


SUPERSEDED_FILENAME = "metrics_superseded.csv"


def set_aside_rows_from(csv_root: str | os.PathLike, current_version_dir: str | os.PathLike,
                        first_epoch: int) -> dict[str, int]:
    """In every ``<csv_root>/version_*/metrics.csv`` but the current one, move the rows of epochs ``>=
    first_epoch`` into ``metrics_superseded.csv`` beside it; returns ``{file: rows moved}``.

    A run killed after logging an epoch but before that epoch's checkpoint logged rows that the resumed run logs
    again (in its own version): without this, an epoch would have two rows, one of them from training the
    checkpoint does not contain. Nothing is deleted, and each ``metrics.csv`` is rewritten atomically.
    """
    import csv

    moved: dict[str, int] = {}
    current = Path(os.path.realpath(current_version_dir))
    for metrics in sorted(Path(csv_root).glob("version_*/metrics.csv")):
        if Path(os.path.realpath(metrics.parent)) == current:
            continue
        with open(metrics, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header, rows = list(reader.fieldnames or []), list(reader)
        if "epoch" not in header:
            continue

        def epoch_of(row: dict[str, str]) -> float:
            try:
                return float(row.get("epoch") or "nan")
            except ValueError:
                return float("nan")

        later = [row for row in rows if epoch_of(row) >= first_epoch]
        if not later:
            continue
        superseded = metrics.parent / SUPERSEDED_FILENAME
        new_file = not superseded.exists()
        with open(superseded, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerows(later)
        partial = metrics.with_name(metrics.name + ".partial")
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(row for row in rows if not epoch_of(row) >= first_epoch)
        os.replace(partial, metrics)
        moved[str(metrics)] = len(later)
    return moved


class SetAsideSupersededRows(LightningCallback):
    """On a resumed fit (global rank zero): :func:`set_aside_rows_from` for every CSV logger, from the first epoch
    the resumed run trains (known once the checkpoint is restored)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                moved = set_aside_rows_from(logger.root_dir, logger.log_dir, trainer.current_epoch)
                for path, count in moved.items():
                    log.info("resume: %d row(s) of epochs >= %d moved from %s to %s (training after the checkpoint "
                             "this run resumes from)", count, trainer.current_epoch, path, SUPERSEDED_FILENAME)

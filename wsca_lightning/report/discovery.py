"""Finding and reading runs: directories that look like runs, their summary, metrics and Hydra files.

A run that cannot be used becomes a :class:`~wsca_lightning.report.records.SkippedRun` with the reason; fields of a
summary that cannot be used are cleared (:mod:`~wsca_lightning.report.summary_checks`) and noted on the run.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from wsca_lightning.report.conditions import Sweep, config_value
from wsca_lightning.report.records import FIX_SUMMARY, MISSING, NO_VALUE, SUMMARY_PATH, RunRecord, SkippedRun
from wsca_lightning.report.statistics import finite, lookup, natural_key
from wsca_lightning.report.summary_checks import check_summary


#: Entries whose presence marks a directory as (an attempt at) a run; the search does not descend below a run.
_RUN_MARKERS = frozenset({".hydra", "wsc", "csv", "checkpoints", "metrics.csv"})


def find_run_dirs(root: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """Directories under ``root`` (``root`` included) that look like runs: they hold ``wsc/``, ``.hydra/``, ``csv/``,
    ``checkpoints/`` or a ``metrics.csv``. The search does not descend into a run, nor into ``exclude``."""
    excluded = {p.resolve() for p in exclude}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here.resolve() in excluded:
            dirnames[:] = []
            continue
        if _RUN_MARKERS & (set(dirnames) | set(filenames)):
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = sorted((d for d in dirnames if not d.startswith((".", "__"))), key=natural_key)
    return found


class _Skip(Exception):
    pass


def _read_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _version_key(path: Path) -> list[Any]:
    return natural_key(str(path.parent))


def read_metrics_csv(files: Sequence[Path]) -> dict[int, dict[str, float]]:
    """Lightning CSVLogger files merged into ``epoch -> {column: value}``.

    Rows are sparse (an epoch's train and val metrics sit on different rows), so each column keeps the last
    non-empty value of the epoch; files are read in version order, so a resumed run's later version wins.
    """
    by_epoch: dict[int, dict[str, float]] = {}
    for path in files:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                epoch = finite(row.get("epoch"))
                if epoch is None:
                    continue
                merged = by_epoch.setdefault(int(epoch), {})
                for key, raw in row.items():
                    if key is None or key == "epoch":
                        continue
                    value = finite(raw)
                    if value is not None:
                        merged[key] = value
    return by_epoch


def _history_metrics(summary: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for entry in summary.get("history") or []:
        if not isinstance(entry, Mapping) or finite(entry.get("epoch")) is None:
            continue
        values = {k: finite(v) for k, v in (entry.get("metrics") or {}).items()}
        out[int(entry["epoch"])] = {k: v for k, v in values.items() if v is not None}
    return {epoch: values for epoch, values in out.items() if values}


def load_run(path: Path, root: Path) -> RunRecord | SkippedRun:
    """Read one run directory; a :class:`SkippedRun` says why it cannot be used."""
    try:
        return _load_run(path, root)
    except _Skip as skip:
        return SkippedRun(path, str(skip))
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as err:
        # content no check foresaw: one run is lost, not the report
        return SkippedRun(path, f"unexpected content ({type(err).__name__}: {err}); check {path / SUMMARY_PATH} "
                                f"and {path / '.hydra'}, or remove the run")


def _load_run(path: Path, root: Path) -> RunRecord:
    summary_file = path / SUMMARY_PATH
    if not summary_file.is_file():
        raise _Skip(f"no {SUMMARY_PATH.as_posix()} (no epoch was analysed: the run failed or stopped early, "
                    "or its WSC callback was off)")
    try:
        with open(summary_file, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise _Skip(f"unreadable {summary_file}: {type(err).__name__}: {err}; {FIX_SUMMARY}") from err
    if not isinstance(summary, dict):
        raise _Skip(f"invalid {summary_file}: a JSON {type(summary).__name__}, expected an object; {FIX_SUMMARY}")
    tasks = summary.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise _Skip(f"{summary_file} has no metadata tasks (key 'tasks' missing or empty)")
    bad = [name for name, task in tasks.items() if not isinstance(task, dict)]
    if bad:
        raise _Skip(f"invalid {summary_file}: tasks {bad} are not objects; {FIX_SUMMARY}")

    # unusable fields are cleared here, so every table and figure reads only numbers where it expects numbers
    notes: list[str] = check_summary(summary, summary_file)
    csv_files = sorted(path.rglob("metrics.csv"), key=_version_key)
    metrics: dict[int, dict[str, float]] = {}
    source = "metrics.csv"
    problem = "no csv/version_*/metrics.csv (CSV logger off?)"
    if csv_files:
        try:
            metrics = read_metrics_csv(csv_files)
            problem = f"no epoch rows in {', '.join(str(f) for f in csv_files)}"
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            problem = f"unreadable metrics.csv ({type(err).__name__}: {err})"
    if not metrics:
        # the history repeats the epoch-end metrics of every analysed epoch: enough for accuracy and curves
        metrics = _history_metrics(summary)
        source = "summary history"
        if not metrics:
            raise _Skip(f"no metrics: {problem}, and none in the summary's history")
        notes.append(f"{problem}: accuracy and loss curves come from the summary's history (analysed epochs only)")

    overrides: list[str] = []
    overrides_file = path / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        notes.append("no .hydra/overrides.yaml: grouped as a run without overrides")
    else:
        try:
            loaded = _read_yaml(overrides_file)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            notes.append(f"unreadable {overrides_file} ({type(err).__name__}): grouped as a run without overrides")
        else:
            if isinstance(loaded, list):
                overrides = [str(item) for item in loaded]
            elif loaded is not None:
                notes.append(f"{overrides_file} is not a list: grouped as a run without overrides")

    config = _load_config(path / ".hydra" / "config.yaml", notes)
    choices: dict[str, Any] = {}
    try:
        hydra_cfg = _read_yaml(path / ".hydra" / "hydra.yaml") if (path / ".hydra" / "hydra.yaml").is_file() else None
        choices = dict(((hydra_cfg or {}).get("hydra") or {}).get("runtime", {}).get("choices") or {})
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        pass

    name = path.relative_to(root).as_posix() if path != root else root.name
    record = RunRecord(path=path, name=name, summary=summary, overrides=overrides, metrics=metrics,
                       metrics_source=source, config=config, choices=choices, notes=notes)
    seed_override = record.parsed_overrides().get("seed")
    seed = None if seed_override is None else seed_override.value
    if seed is NO_VALUE or isinstance(seed, Sweep):  # ~seed, or a sweep written into one run's file
        seed = None
    if seed is None and config is not None:
        seed = config_value(config, "seed")
    if seed is None or seed is MISSING:
        seed = lookup(summary, "settings", "seed")
    record.seed = seed
    return record


def _load_config(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        from omegaconf import OmegaConf

        return OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any parse problem only costs the config lookups
        notes.append(f"unreadable {path} ({type(err).__name__}: {err})")
        return None

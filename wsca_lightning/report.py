"""``wsca-report``: one HTML page, tables and figures that compare the WSC results of many runs.

Input is a run directory written by ``wsca-train`` (``wsc/wsc_summary.json``, ``csv/version_*/metrics.csv``,
``.hydra/``), a Hydra multirun directory of such runs, or a directory of several multiruns. Runs are grouped into
*conditions* by their command-line overrides, ``seed`` (and ``hydra.*``, ``paths.*``, ``ckpt_path``) left out, so the
seeds of a condition are its replicates; the override keys whose values differ across conditions are the *factors*.

Only files are read (JSON, CSV, YAML): no torch, Lightning or training code is imported, and every field is looked up
defensively, so run directories written by another version of the package are readable. A directory that looks like
a run but cannot be used is listed as skipped, with the reason, instead of stopping the report. Fields of a summary
that cannot be used (NaN, a string where a number belongs, a missing history, ...) are left out and listed in the
report's notes with the file and field; every statistic says how many runs it used.

``overrides.yaml`` is read with Hydra's own override parser (imported when the first run is read), so ``~key``,
``+key``/``++key``, ``key@package``, quoted values and sweeps mean what they mean on Hydra's command line.

Outputs under ``out_dir``: ``report.html`` (self-contained: PNGs as data URIs, inline CSS), ``figures/*.png`` and
``tables/*.csv`` + ``tables/*.md`` (the same content; the CSVs keep mean and sd as separate numeric columns).
"""

from __future__ import annotations

import base64
import csv
import datetime
import functools
import html
import io
import json
import math
import os
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from wsca_lightning import plots
from wsca_lightning.plain import csv_cell
from wsca_lightning.summary import decision_p

__all__ = [
    "Condition",
    "OverrideValue",
    "ReportError",
    "ReportResult",
    "RunRecord",
    "SkippedRun",
    "Table",
    "build_report",
    "find_run_dirs",
    "group_conditions",
    "load_run",
    "parse_overrides",
    "rankdata",
    "spearman",
]

SUMMARY_PATH = Path("wsc") / "wsc_summary.json"

#: Override keys that say where or how a replicate ran, not which condition it belongs to.
IGNORED_KEYS = frozenset({"seed", "ckpt_path", "hydra", "paths"})
IGNORED_PREFIXES = ("hydra.", "paths.", "hydra/")

#: Entries whose presence marks a directory as (an attempt at) a run; the search does not descend below a run.
_RUN_MARKERS = frozenset({".hydra", "wsc", "csv", "checkpoints", "metrics.csv"})
_NO_VALUE = "(not set)"
_DELETED = "(deleted)"  # display of ``~key``; compares equal to a key the config does not set
_MISSING = object()  # a config key that is absent (None is a value)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { background: #f4f4f4; padding: 0 3px; border-radius: 3px; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; max-width: 1000px; }
.meta { color: #555; font-size: 0.9em; }
.skipped li, .notes li { margin-bottom: .3em; }
"""


class ReportError(Exception):
    """The report cannot be built: the directory is missing or holds no readable run."""


# --------------------------------------------------------------------------------------------------- records


@dataclass
class RunRecord:
    """One readable run: its summary, metrics per epoch and the overrides that place it in a condition."""

    path: Path
    name: str  # path relative to the report root, for tables
    summary: dict[str, Any]
    overrides: list[str]
    metrics: dict[int, dict[str, float]]  # epoch -> last logged value of every metric column in that epoch
    metrics_source: str  # "metrics.csv" or "summary history"
    seed: Any = None
    config: Any = None  # the OmegaConf config of .hydra/config.yaml, or None
    choices: dict[str, Any] = field(default_factory=dict)  # Hydra config-group choices (.hydra/hydra.yaml)
    notes: list[str] = field(default_factory=list)
    condition: Condition | None = None
    _parsed: dict[str, OverrideValue] | None = field(default=None, repr=False, compare=False)

    @property
    def primary(self) -> str:
        return str(self.summary.get("primary") or "primary")

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        return self.summary["tasks"]

    def parsed_overrides(self) -> dict[str, OverrideValue]:
        """The overrides as Hydra reads them, by key (parsed once; problems go to ``notes``)."""
        if self._parsed is None:
            self._parsed, notes = parse_overrides(self.overrides, self.path / ".hydra" / "overrides.yaml")
            self.notes += notes
        return self._parsed

    def last_metric(self, key: str) -> tuple[int | None, float | None]:
        """The value of ``key`` in the last epoch that logged it, and that epoch."""
        for epoch in sorted(self.metrics, reverse=True):
            value = self.metrics[epoch].get(key)
            if value is not None:
                return epoch, value
        return None, None


@dataclass
class SkippedRun:
    """A directory that looked like a run but could not be used, and why."""

    path: Path
    reason: str


@dataclass
class Condition:
    """Runs that share every override but the seed."""

    id: str  # c1, c2, ... in sort order
    values: dict[str, Any]  # every condition key -> parsed value (shared by the runs)
    display: dict[str, str]  # every condition key -> value as written on the command line (or from the config)
    runs: list[RunRecord]
    label: str = ""  # the factor values, e.g. "data.shortcut_strength=0.5"
    slug: str = ""  # file-name part

    def overrides(self) -> list[str]:
        return [f"~{key}" if self.display[key] == _DELETED else f"{key}={self.display[key]}" for key in self.display]


@dataclass(frozen=True)
class OverrideValue:
    """One line of ``overrides.yaml`` as Hydra's parser reads it."""

    key: str  # the key or config group, with ``@package`` when given: what conditions are grouped by
    key_or_group: str  # without the package (``hydra.*``/``paths.*`` are recognised on it)
    value: Any  # the parsed value; ``_NO_VALUE`` for a deletion (``~key``); a ``_Sweep`` for a sweep
    display: str  # the value as written after ``=`` (``(deleted)`` for ``~key``)
    text: str  # the whole line


@dataclass
class Table:
    """A result table: CSV columns and rows, plus how its Markdown/HTML version shows them."""

    name: str
    title: str
    description: str
    columns: list[str]
    rows: list[dict[str, Any]]
    display: list[tuple[str, Callable[[dict[str, Any]], str]]]

    def display_rows(self) -> list[list[str]]:
        return [[render(row) for _, render in self.display] for row in self.rows]


@dataclass
class ReportResult:
    """What :func:`build_report` read and wrote."""

    root: Path
    out_dir: Path
    runs: list[RunRecord]
    skipped: list[SkippedRun]
    conditions: list[Condition]
    factors: list[str]
    tables: dict[str, Table]
    figures: list[Path]
    files: list[Path]  # every file written (figures, tables, report.html)
    html: Path
    notes: list[str] = field(default_factory=list)  # per-run caveats (missing files, left-out matrices, ...)


# --------------------------------------------------------------------------------------------------- discovery


def _natural_key(name: str) -> list[Any]:
    """``2`` before ``10`` (multirun job numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


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
        dirnames[:] = sorted((d for d in dirnames if not d.startswith((".", "__"))), key=_natural_key)
    return found


class _Skip(Exception):
    pass


def _read_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _finite(value: Any) -> float | None:
    """A finite float, or None (missing, empty, NaN, not a number)."""
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _version_key(path: Path) -> list[Any]:
    return _natural_key(str(path.parent))


def read_metrics_csv(files: Sequence[Path]) -> dict[int, dict[str, float]]:
    """Lightning CSVLogger files merged into ``epoch -> {column: value}``.

    Rows are sparse (an epoch's train and val metrics sit on different rows), so each column keeps the last
    non-empty value of the epoch; files are read in version order, so a resumed run's later version wins.
    """
    by_epoch: dict[int, dict[str, float]] = {}
    for path in files:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                epoch = _finite(row.get("epoch"))
                if epoch is None:
                    continue
                merged = by_epoch.setdefault(int(epoch), {})
                for key, raw in row.items():
                    if key is None or key == "epoch":
                        continue
                    value = _finite(raw)
                    if value is not None:
                        merged[key] = value
    return by_epoch


def _history_metrics(summary: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for entry in summary.get("history") or []:
        if not isinstance(entry, Mapping) or _finite(entry.get("epoch")) is None:
            continue
        values = {k: _finite(v) for k, v in (entry.get("metrics") or {}).items()}
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


#: What to do about a summary the report cannot read in full.
_FIX_SUMMARY = "fix it, or rerun the analysis (wsca-analyze on the run's checkpoint) to rewrite the file"


def _load_run(path: Path, root: Path) -> RunRecord:
    summary_file = path / SUMMARY_PATH
    if not summary_file.is_file():
        raise _Skip(f"no {SUMMARY_PATH.as_posix()} (no epoch was analysed: the run failed or stopped early, "
                    "or its WSC callback was off)")
    try:
        with open(summary_file, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise _Skip(f"unreadable {summary_file}: {type(err).__name__}: {err}; {_FIX_SUMMARY}") from err
    if not isinstance(summary, dict):
        raise _Skip(f"invalid {summary_file}: a JSON {type(summary).__name__}, expected an object; {_FIX_SUMMARY}")
    tasks = summary.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise _Skip(f"{summary_file} has no metadata tasks (key 'tasks' missing or empty)")
    bad = [name for name, task in tasks.items() if not isinstance(task, dict)]
    if bad:
        raise _Skip(f"invalid {summary_file}: tasks {bad} are not objects; {_FIX_SUMMARY}")

    # unusable fields are cleared here, so every table and figure reads only numbers where it expects numbers
    notes: list[str] = _check_summary(summary, summary_file)
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
    if seed is _NO_VALUE or isinstance(seed, _Sweep):  # ~seed, or a sweep written into one run's file
        seed = None
    if seed is None and config is not None:
        seed = _config_value(config, "seed")
    if seed is None or seed is _MISSING:
        seed = _get(summary, "settings", "seed")
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


# --------------------------------------------------------------------------------------------------- summary checks


def _json_kind(value: Any) -> str:
    """A JSON value as a note names it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("…" if len(value) > 40 else "")
    if value is None:
        return "null"
    return {dict: "an object", list: "an array"}.get(type(value), type(value).__name__)


class _SummaryCheck:
    """Clears what the report cannot use in a loaded summary and says what, where and what it costs; the same
    problem in many history entries is one note."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.found: dict[tuple[str, str, str, bool], list[str]] = {}  # (path, problem, effect, fixable) -> entries

    def flag(self, path: str, problem: str, effect: str, entry: str | None = None, fixable: bool = True) -> None:
        entries = self.found.setdefault((path, problem, effect, fixable), [])
        if entry is not None:
            entries.append(entry)

    def notes(self) -> list[str]:
        out = []
        for (path, problem, effect, fixable), entries in self.found.items():
            where = ""
            if entries:
                where = " (i = " + ", ".join(entries[:8]) + (", …" if len(entries) > 8 else "") + ")"
            fix = f"; {_FIX_SUMMARY}" if fixable else ""
            out.append(f"{self.file}: field {path}{where} {problem}: {effect}{fix}")
        return out

    def number(self, node: dict[str, Any], key: str, path: str, effect: str, entry: str | None = None) -> None:
        """``node[key]`` must be a finite number or null (what the writer puts for NaN); else it is cleared."""
        value = node.get(key)
        if value is not None and not _is_number(value):
            node[key] = None
            self.flag(path, f"is {_json_kind(value)}, expected a number", effect, entry)

    def mapping(self, node: dict[str, Any], key: str, path: str, effect: str, entry: str | None = None
                ) -> dict[str, Any]:
        """``node[key]`` as an object; one of another type is replaced by ``{}`` (not removed: an empty ``test``
        keeps the verdict's p unknown instead of falling back to an older field)."""
        value = node.get(key)
        if isinstance(value, dict):
            return value
        if value is not None:
            node[key] = {}
            self.flag(path, f"is {_json_kind(value)}, expected an object", effect, entry)
        return {}

    def boolean(self, node: dict[str, Any], key: str, path: str, entry: str | None = None) -> None:
        value = node.get(key)
        if value is not None and not isinstance(value, bool):
            del node[key]
            self.flag(path, f"is {_json_kind(value)}, expected true or false",
                      "read as absent (counted as interpretable, as in summaries without the field)", entry)


#: Numeric fields of a task entry the report reads (parent object or None, key), and what loses them when unusable.
_TASK_NUMBERS: tuple[tuple[str | None, str, str], ...] = (
    (None, "max_abs", "max|WSC|"), ("unprojected", "max_abs", "unprojected max|WSC|"),
    ("probe", "auroc", "probe AUROC"), ("deconfounded", "max_abs", "deconfounded max|WSC|"),
    ("null", "q95", "null q95"), ("null", "p", "the p-value (significant, median p)"),
    ("test", "p", "the p-value (significant, median p)"), (None, "test_p", "the p-value (significant, median p)"),
    (None, "p", "the p-value (significant, median p)"),
)
_PARENT_EFFECTS = {parent: " and ".join(label for p, _, label in _TASK_NUMBERS if p == parent)
                   for parent, _, _ in _TASK_NUMBERS if parent is not None}
_HISTORY_NUMBERS = ("max_abs", "q05", "q95", "p", "test_p")
_CURVES = "left out of the WSC-over-epochs curves"


def _check_summary(summary: dict[str, Any], file: Path) -> list[str]:
    """Clear, in place, every field of a loaded summary (``tasks`` already known to be objects) that the report
    reads but cannot use: a number that is NaN, infinite, a string or another type, an object or array of the wrong
    type, a history entry without an epoch. Returns notes naming ``file``, the field and what leaves it out; null
    values (the writer's NaN) stay, and statistics count only usable values."""
    check = _SummaryCheck(file)
    if "primary" in summary and not isinstance(summary["primary"], str):
        check.flag("primary", f"is {_json_kind(summary['primary'])}, expected a string",
                   "the primary task's accuracy is not found")
        summary["primary"] = None
    for key in ("epoch", "k"):
        check.number(summary, key, key, "shown as missing in the runs table")
    for name, task in summary["tasks"].items():
        if "max_abs" in task and task["max_abs"] is None:  # the headline value: its absence is worth a note
            check.flag(f"tasks.{name}.max_abs", "is null (the WSC was undefined, e.g. a diverged head)",
                       "left out of max|WSC|", fixable=False)
        for parent, key, label in _TASK_NUMBERS:
            base = f"tasks.{name}" if parent is None else f"tasks.{name}.{parent}"
            node = task if parent is None else check.mapping(task, parent, base,
                                                             f"left out of {_PARENT_EFFECTS[parent]}")
            check.number(node, key, f"{base}.{key}", f"left out of {label}")
        check.boolean(task, "interpretable", f"tasks.{name}.interpretable")
        _check_matrix(check, task, f"tasks.{name}")
    _check_history(check, summary)
    _check_k_sweep(check, summary)
    reference = check.mapping(summary, "reference", "reference", "left out of the reference histograms")
    for side in ("intra", "inter"):
        node = check.mapping(reference, side, f"reference.{side}", "left out of the reference histograms")
        values = node.get("values")
        if values is None:
            continue
        if not isinstance(values, list):
            node["values"] = []
            check.flag(f"reference.{side}.values", f"is {_json_kind(values)}, expected an array",
                       "left out of the reference histograms")
            continue
        bad = [v for v in values if v is not None and not _is_number(v)]
        if bad:
            node["values"] = [v for v in values if v is None or _is_number(v)]
            check.flag(f"reference.{side}.values", f"holds {len(bad)} values that are not numbers (first: "
                       f"{_json_kind(bad[0])})", "those values are left out of the reference histograms")
    return check.notes()


def _check_matrix(check: _SummaryCheck, task: dict[str, Any], base: str) -> None:
    """A task's ``matrix`` (numbers or null, equal rows) and its ``rows`` and ``cols`` names: otherwise the matrix is
    cleared, so the run is left out of the mean heatmap of its condition."""
    effect = "this run is left out of the mean heatmap"
    matrix = task.get("matrix")
    problem = None
    if matrix is None:
        problem = "is absent" if "matrix" not in task else None  # null: written so, nothing to average
    elif not isinstance(matrix, list) or not matrix or not all(isinstance(row, list) and row for row in matrix):
        problem = f"is {_json_kind(matrix)}, expected an array of arrays of numbers"
    elif len({len(row) for row in matrix}) > 1:
        problem = "has rows of different lengths"
    else:
        bad = next((v for row in matrix for v in row if v is not None and not _is_number(v)), _MISSING)
        if bad is not _MISSING:
            problem = f"holds {_json_kind(bad)}, expected numbers (or null)"
    if problem is not None:
        check.flag(f"{base}.matrix", problem, effect)
        task["matrix"] = None
    for key in ("rows", "cols"):
        names = task.get(key)
        if names is not None and not (isinstance(names, list)
                                      and all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                              for x in names)):
            check.flag(f"{base}.{key}", f"is {_json_kind(names)}, expected an array of names", effect)
            task[key] = None
            task["matrix"] = None


def _check_history(check: _SummaryCheck, summary: dict[str, Any]) -> None:
    if "history" not in summary:
        check.flag("history", "is absent (a wsca-analyze summary has none)", f"this run is {_CURVES}", fixable=False)
        return
    history = summary["history"]
    if not isinstance(history, list):
        check.flag("history", f"is {_json_kind(history)}, expected an array", f"this run is {_CURVES}")
        summary["history"] = []
        return
    kept = []
    for index, entry in enumerate(history):
        at = str(index)
        if not isinstance(entry, dict):
            check.flag("history[i]", f"is {_json_kind(entry)}, expected an object", f"the entry is {_CURVES}", at)
            continue
        epoch = entry.get("epoch")
        if not _is_number(epoch) or epoch < 0 or float(epoch) != int(epoch):
            check.flag("history[i].epoch", f"is {_json_kind(epoch)}, expected a whole number",
                       f"the entry is {_CURVES}", at)
            continue
        entry["epoch"] = int(epoch)
        metrics = check.mapping(entry, "metrics", "history[i].metrics", "left out of the loss and accuracy curves", at)
        for key in list(metrics):
            check.number(metrics, key, f"history[i].metrics.{key}", "left out of the loss and accuracy curves", at)
        tasks = check.mapping(entry, "tasks", "history[i].tasks", _CURVES, at)
        for name in list(tasks):
            task = tasks[name]
            if not isinstance(task, dict):
                check.flag(f"history[i].tasks.{name}", f"is {_json_kind(task)}, expected an object", _CURVES, at)
                del tasks[name]
                continue
            for key in _HISTORY_NUMBERS:
                check.number(task, key, f"history[i].tasks.{name}.{key}", _CURVES, at)
            check.boolean(task, "interpretable", f"history[i].tasks.{name}.interpretable", at)
        kept.append(entry)
    summary["history"] = kept


def _check_k_sweep(check: _SummaryCheck, summary: dict[str, Any]) -> None:
    sweep = summary.get("k_sweep")
    if sweep is None:
        return
    effect = "left out of the k sweep"
    ks = sweep.get("k") if isinstance(sweep, dict) else None
    values = sweep.get("max_abs") if isinstance(sweep, dict) else None
    if not isinstance(ks, list) or not isinstance(values, dict) \
            or not all(_is_number(k) or isinstance(k, str) for k in ks):
        check.flag("k_sweep", "is malformed (expected {\"k\": [numbers], \"max_abs\": {task: [numbers]}})",
                   f"this run is {effect}")
        summary["k_sweep"] = None
        return
    for name in list(values):
        series = values[name]
        if not isinstance(series, list):
            check.flag(f"k_sweep.max_abs.{name}", f"is {_json_kind(series)}, expected an array", effect)
            del values[name]
            continue
        for index, value in enumerate(series):
            if value is not None and not _is_number(value):
                series[index] = None
                check.flag(f"k_sweep.max_abs.{name}[i]", f"is {_json_kind(value)}, expected a number", effect,
                           str(index))


# --------------------------------------------------------------------------------------------------- conditions

@dataclass(frozen=True)
class _Sweep:
    """A sweep found in one run's overrides (``a,b``, ``choice(...)``, ``range(...)``, ``interval(...)``)."""

    levels: tuple[str, ...]  # sorted values as Hydra writes them, or the sweep as written when not enumerable


@functools.lru_cache(maxsize=1)
def _overrides_parser() -> Any:
    # imported here, not at module level: importing wsca_lightning.report stays free of Hydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_overrides(lines: Sequence[str], source: str | os.PathLike[str]) -> tuple[dict[str, OverrideValue], list[str]]:
    """The lines of an ``overrides.yaml`` read by Hydra's own override parser, by key (``key@package`` when a package
    is given; a later line for the same key wins, as in Hydra), and notes naming ``source`` for lines that do not
    parse or hold a sweep. ``+key``/``++key`` group with ``key``; ``~key`` reads as the key not being set."""
    from hydra.errors import HydraException

    parser = _overrides_parser()
    values: dict[str, OverrideValue] = {}
    notes: list[str] = []
    for number, line in enumerate(lines, start=1):
        try:
            (override,) = parser.parse_overrides([line])
        except (HydraException, ValueError, TypeError) as err:
            reason = " ".join(str(err).split("\n")[0].split())
            # kept apart as its own key: runs with different unreadable lines must not merge into one condition
            notes.append(f"{source}: item {number} {line!r} is not a Hydra override ({reason}): grouped by its text; "
                         "write it as key=value (see Hydra's override grammar) to group it by key")
            values[line] = OverrideValue(key=line, key_or_group=line, value=line, display="(unparsed)", text=line)
            continue
        group = override.key_or_group
        key = group if override.package is None else f"{group}@{override.package}"
        if override.is_delete():
            value: Any = _NO_VALUE
            display = _DELETED
        elif override.is_sweep_override():
            display = override.get_value_string().strip()
            levels: tuple[str, ...] = (display,)  # a range may be long and an interval has no levels: as written
            if override.is_choice_sweep():
                try:
                    levels = tuple(sorted(override.sweep_string_iterator()))  # so `a,b` equals `choice(b,a)`
                except HydraException:  # a glob needs Hydra's config repository
                    pass
            value = _Sweep(levels)
            notes.append(f"{source}: item {number} {line!r} is a sweep, not one value (a job's overrides.yaml holds "
                         "the value it ran with): grouped as the sweep written; check which value this run used")
        else:
            value = override.value()  # quoted strings stay strings: '1.0' is not 1.0
            display = override.get_value_string().strip()
        values[key] = OverrideValue(key=key, key_or_group=group, value=value, display=display, text=line)
    return values, notes


def _is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _canonical(value: Any) -> str:
    """A comparison key for a value: ``1`` and ``1.0`` are the same level."""

    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, _Sweep):  # never equal to a value, nor to the quoted string 'a,b'
            return {"(sweep)": list(v.levels)}
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return str(v)

    return json.dumps(norm(value), sort_keys=True, default=str)


def _config_value(config: Any, key: str) -> Any:
    """``key``'s value in a run's resolved config (plain Python), or ``_MISSING``."""
    from omegaconf import OmegaConf

    try:
        node = OmegaConf.select(config, key, default=_MISSING, throw_on_resolution_failure=False)
        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
        return node
    except Exception:  # noqa: BLE001 - an unresolvable interpolation is a missing value here
        return _MISSING


def _value_for(run: RunRecord, key: str, overrides: Mapping[str, OverrideValue]) -> tuple[Any, str]:
    """(parsed value, display text) of a condition key for one run: its override, else its config-group choice or
    config value, so a run that left a key at its default still compares equal to one that set it to that value."""
    if key in overrides:
        return overrides[key].value, overrides[key].display
    if key in run.choices:
        choice = run.choices[key]
        return choice, str(choice)
    if run.config is not None and not {"@", "/"} & set(key):  # config groups (and packages) live in the choices
        value = _config_value(run.config, key)
        if value is not _MISSING and not isinstance(value, dict):
            return value, json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
    return _NO_VALUE, _NO_VALUE


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, float(value)) if _is_number(value) else (1, _canonical(value))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "x"


def group_conditions(runs: Sequence[RunRecord]) -> tuple[list[Condition], list[str]]:
    """Group runs into conditions (same overrides, seed and paths aside) and name the factors.

    Returns the conditions, sorted by their factor values, and the factors: override keys, in command-line order,
    whose values differ across conditions. Each run's ``condition`` is set.
    """
    per_run: list[dict[str, OverrideValue]] = []
    keys: list[str] = []
    for run in runs:
        mapping = {key: o for key, o in run.parsed_overrides().items() if not _is_ignored(o.key_or_group)}
        keys += [key for key in mapping if key not in keys]
        per_run.append(mapping)

    groups: dict[tuple[str, ...], Condition] = {}
    for run, mapping in zip(runs, per_run):
        parsed = {key: _value_for(run, key, mapping) for key in keys}
        ident = tuple(_canonical(parsed[key][0]) for key in keys)
        if ident not in groups:
            groups[ident] = Condition(id="", values={k: v for k, (v, _) in parsed.items()},
                                      display={k: d for k, (_, d) in parsed.items()}, runs=[])
        groups[ident].runs.append(run)
        run.condition = groups[ident]

    conditions = list(groups.values())
    factors = [key for key in keys if len({_canonical(c.values[key]) for c in conditions}) > 1]
    conditions.sort(key=lambda c: [_sort_key(c.values[key]) for key in factors])
    for index, condition in enumerate(conditions, start=1):
        condition.id = f"c{index}"
        condition.label = ", ".join(f"{key}={condition.display[key]}" for key in factors) or "all runs"
        slug = "_".join(f"{key.split('.')[-1]}-{condition.display[key]}" for key in factors)
        condition.slug = f"{condition.id}_{_slug(slug)}" if factors else condition.id
        condition.runs.sort(key=lambda r: (_sort_key(r.seed), _natural_key(r.name)))
    return conditions, factors


# --------------------------------------------------------------------------------------------------- statistics


def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given the average of the ranks they span (as ``scipy.stats.rankdata``)."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        stop = start + 1
        while stop < len(x) and sorted_x[stop] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of tie-averaged ranks) over pairs where both are finite;
    NaN with fewer than two pairs or when either side is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return float("nan")
    ra, rb = rankdata(a[keep]), rankdata(b[keep])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def _mean_sd(values: Iterable[Any]) -> tuple[float | None, float | None, int]:
    """Mean, sample sd (n-1; None for one value) and count of the finite values."""
    xs = [v for v in (_finite(x) for x in values) if v is not None]
    if not xs:
        return None, None, 0
    mean = float(np.mean(xs))
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    return mean, sd, len(xs)


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _task_p(task: Mapping[str, Any]) -> float | None:
    """The verdict's p of a task entry or history record (:func:`wsca_lightning.summary.decision_p`)."""
    return _finite(decision_p(task))


def _significant(task: Mapping[str, Any], alpha: float) -> bool:
    p = _task_p(task)
    return p is not None and p < alpha and task.get("interpretable") is not False


# --------------------------------------------------------------------------------------------------- tables


def _fmt(value: Any, spec: str = ".3f") -> str:
    if isinstance(value, str):
        return value
    x = _finite(value)
    return "–" if x is None else format(x, spec)


def _pm(row: Mapping[str, Any], stem: str, spec: str = ".3f") -> str:
    mean, sd = row.get(f"{stem}_mean"), row.get(f"{stem}_sd")
    if _finite(mean) is None:
        return "–"
    text = _fmt(mean, spec) if _finite(sd) is None else f"{_fmt(mean, spec)} ± {_fmt(sd, spec)}"
    return text + _used(row, f"{stem}_n")


def _used(row: Mapping[str, Any], count: str) -> str:
    """`` (n=k)`` when a statistic used fewer runs than the row's ``n``, so no cell claims more runs than it used."""
    used, total = row.get(count), row.get("n")
    if isinstance(used, int) and isinstance(total, int) and used < total:
        return f" (n={used})"
    return ""


def _col(key: str, spec: str = ".3f") -> Callable[[dict[str, Any]], str]:
    return lambda row: _fmt(row.get(key), spec)


def _text(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: "" if row.get(key) is None else str(row.get(key))


def _task_names(runs: Sequence[RunRecord]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [name for name in run.tasks if name not in names]
    return names


def _factor_columns(condition: Condition, factors: Sequence[str]) -> dict[str, Any]:
    return {factor: condition.display[factor] for factor in factors}


def wsc_table(conditions: Sequence[Condition], factors: Sequence[str], tasks: Sequence[str], alpha: float) -> Table:
    """``wsc_by_condition``: one row per (condition, metadata task) over the condition's seeds: max|WSC| (projected,
    at the last analysed epoch) and its unprojected value, how many seeds are significant (p < alpha on an
    interpretable task), the median permutation p, the metadata probe's AUROC, the deconfounded max|WSC| and the
    mean 95th percentile of the permutation null."""
    rows = []
    for condition in conditions:
        for name in tasks:
            entries = [run.tasks[name] for run in condition.runs if name in run.tasks]
            if not entries:
                continue
            row: dict[str, Any] = {"condition_id": condition.id, "condition": condition.label,
                                   **_factor_columns(condition, factors), "task": name, "n": len(entries)}
            for stem, getter in (
                ("max_abs", lambda t: t.get("max_abs")),
                ("unprojected_max_abs", lambda t: _get(t, "unprojected", "max_abs")),
                ("probe_auroc", lambda t: _get(t, "probe", "auroc")),
                ("deconfounded_max_abs", lambda t: _get(t, "deconfounded", "max_abs")),
                ("null_q95", lambda t: _get(t, "null", "q95")),
            ):
                row[f"{stem}_mean"], row[f"{stem}_sd"], row[f"{stem}_n"] = _mean_sd(getter(t) for t in entries)
            # significance and the median p over the runs whose p is usable: a missing p is neither yes nor no
            ps = [p for p in (_task_p(t) for t in entries) if p is not None]
            row["p_n"] = len(ps)
            row["n_significant"] = sum(_significant(t, alpha) for t in entries)
            row["median_p"] = float(np.median(ps)) if ps else None
            row["n_interpretable"] = sum(t.get("interpretable") is not False for t in entries)
            rows.append(row)
    columns = ["condition_id", "condition", *factors, "task", "n", "max_abs_mean", "max_abs_sd", "max_abs_n",
               "unprojected_max_abs_mean", "unprojected_max_abs_sd", "unprojected_max_abs_n", "n_significant", "p_n",
               "median_p", "probe_auroc_mean", "probe_auroc_sd", "probe_auroc_n", "deconfounded_max_abs_mean",
               "deconfounded_max_abs_sd", "deconfounded_max_abs_n", "null_q95_mean", "null_q95_sd", "null_q95_n",
               "n_interpretable"]
    display = [
        ("id", _text("condition_id")), ("condition", _text("condition")), ("task", _text("task")), ("n", _text("n")),
        ("max|WSC|", lambda r: _pm(r, "max_abs")),
        ("unprojected max|WSC|", lambda r: _pm(r, "unprojected_max_abs")),
        (f"significant (p < {alpha:g})", lambda r: f"{r['n_significant']}/{r['p_n']}"),
        ("median p", lambda r: "–" if r.get("median_p") is None else _fmt(r["median_p"]) + _used(r, "p_n")),
        ("null q95", lambda r: _pm(r, "null_q95")),
        ("probe AUROC", lambda r: _pm(r, "probe_auroc")),
        ("deconfounded max|WSC|", lambda r: _pm(r, "deconfounded_max_abs")),
        ("interpretable", lambda r: f"{r['n_interpretable']}/{r['n']}"),
    ]
    return Table("wsc_by_condition", "WSC by condition",
                 "One row per condition and metadata task, mean ± sd over seeds of the last analysed epoch; n: runs "
                 "with the task; a statistic computed from fewer runs (a value missing or unusable: see the notes) "
                 f"says how many, as (n=k). Significant: permutation p < {alpha:g} on a task whose probe shows the "
                 "embedding encodes it (interpretable), out of the runs with a p-value.", columns, rows, display)


def _primary_accuracy(run: RunRecord) -> dict[str, Any]:
    epoch, auroc = run.last_metric(f"val/{run.primary}/auroc")
    balanced = run.metrics.get(epoch, {}).get(f"val/{run.primary}/balanced_accuracy") if epoch is not None else None
    if balanced is None:
        epoch_b, balanced = run.last_metric(f"val/{run.primary}/balanced_accuracy")
        epoch = epoch if epoch is not None else epoch_b
    return {"metrics_epoch": epoch, "val_auroc": auroc, "val_balanced_accuracy": balanced}


def accuracy_table(conditions: Sequence[Condition], factors: Sequence[str]) -> Table:
    """``accuracy_by_condition``: one row per condition, the primary task's validation AUROC and balanced accuracy
    at the last logged epoch of each run (metrics.csv), mean ± sd over seeds; a run without a value the condition's
    other runs have is noted."""
    rows = []
    for condition in conditions:
        accuracy = [_primary_accuracy(run) for run in condition.runs]
        row: dict[str, Any] = {"condition_id": condition.id, "condition": condition.label,
                               **_factor_columns(condition, factors),
                               "primary": ", ".join(sorted({run.primary for run in condition.runs})),
                               "n": len(condition.runs)}
        for stem, metric in (("val_auroc", "auroc"), ("val_balanced_accuracy", "balanced_accuracy")):
            row[f"{stem}_mean"], row[f"{stem}_sd"], row[f"{stem}_n"] = _mean_sd(a[stem] for a in accuracy)
            if 0 < row[f"{stem}_n"] < len(condition.runs):  # not logged by any run is a setting, not a gap
                for run, values in zip(condition.runs, accuracy):
                    if values[stem] is None:
                        run.notes.append(f"no finite val/{run.primary}/{metric} in its {run.metrics_source}: left "
                                         f"out of the accuracy table's {stem}")
        rows.append(row)
    columns = ["condition_id", "condition", *factors, "primary", "n", "val_auroc_mean", "val_auroc_sd", "val_auroc_n",
               "val_balanced_accuracy_mean", "val_balanced_accuracy_sd", "val_balanced_accuracy_n"]
    display = [("id", _text("condition_id")), ("condition", _text("condition")), ("primary", _text("primary")),
               ("n", _text("n")), ("val AUROC", lambda r: _pm(r, "val_auroc")),
               ("val balanced accuracy", lambda r: _pm(r, "val_balanced_accuracy"))]
    return Table("accuracy_by_condition", "Primary-task accuracy by condition",
                 "Validation AUROC and balanced accuracy of the primary task at each run's last logged epoch, "
                 "mean ± sd over seeds; (n=k): computed from k of the n runs (see the notes).", columns, rows, display)


def runs_table(runs: Sequence[RunRecord], tasks: Sequence[str]) -> Table:
    """``runs``: one row per run: its directory, condition, seed, analysed epoch, primary accuracy, and per task the
    max|WSC| and permutation p."""
    rows = []
    for run in runs:
        assert run.condition is not None
        row: dict[str, Any] = {"run": run.name, "condition_id": run.condition.id, "condition": run.condition.label,
                               "seed": run.seed, "epoch": run.summary.get("epoch"), "k": run.summary.get("k"),
                               "primary": run.primary, **_primary_accuracy(run), "metrics_source": run.metrics_source}
        for name in tasks:
            task = run.tasks.get(name) or {}
            row[f"{name}_max_abs"] = _finite(task.get("max_abs"))
            row[f"{name}_p"] = _task_p(task)
        rows.append(row)
    columns = ["run", "condition_id", "condition", "seed", "epoch", "k", "primary", "metrics_epoch", "val_auroc",
               "val_balanced_accuracy", "metrics_source"]
    columns += [f"{name}_{stat}" for name in tasks for stat in ("max_abs", "p")]
    display = [("run", _text("run")), ("id", _text("condition_id")), ("seed", _text("seed")),
               ("epoch", _text("epoch")), ("k", _text("k")), ("val AUROC", _col("val_auroc")),
               ("val bal. acc.", _col("val_balanced_accuracy"))]
    display += [(f"{name} max|WSC| (p)", _max_p(name)) for name in tasks]
    return Table("runs", "Runs", "One row per run: the analysed (last) epoch, the primary task's validation "
                 "metrics at the last logged epoch, and per metadata task max|WSC| with its permutation p.",
                 columns, rows, display)


def _max_p(name: str) -> Callable[[dict[str, Any]], str]:
    def render(row: dict[str, Any]) -> str:
        value, p = row.get(f"{name}_max_abs"), row.get(f"{name}_p")
        return _fmt(value) if p is None else f"{_fmt(value)} ({_fmt(p, '.3g')})"

    return render


def _k_sweep(run: RunRecord, tasks: Sequence[str]) -> dict[str, dict[Any, float | None]] | None:
    """``task -> {k or 'none': max|WSC|}`` of a run's summary ``k_sweep`` (None when absent or malformed)."""
    sweep = run.summary.get("k_sweep")
    if not isinstance(sweep, Mapping):
        return None
    ks, values = sweep.get("k"), sweep.get("max_abs")
    if not isinstance(ks, list) or not isinstance(values, Mapping):  # noted by _check_summary
        return None
    out: dict[str, dict[Any, float | None]] = {}
    for name in tasks:
        series = values.get(name)
        if not isinstance(series, list):
            continue
        if len(series) != len(ks):
            run.notes.append(f"{run.path / SUMMARY_PATH}: field k_sweep.max_abs.{name} has {len(series)} values for "
                             f"{len(ks)} k: left out of the k sweep; {_FIX_SUMMARY}")
            continue
        out[name] = {int(k) if _is_number(k) else k: _finite(v) for k, v in zip(ks, series)}
        out[name]["none"] = _finite(_get(run.tasks.get(name), "unprojected", "max_abs"))
    return out


def k_sweep_table(conditions: Sequence[Condition], factors: Sequence[str], tasks: Sequence[str]) -> Table | None:
    """``k_sweep``: per condition, task and number of principal components k (``none``: no projection), max|WSC| of
    the final epoch's heads, mean ± sd over seeds. None when no run has a ``k_sweep``."""
    rows = []
    for condition in conditions:
        sweeps = [s for s in (_k_sweep(run, tasks) for run in condition.runs) if s is not None]
        for name in tasks:
            per_k: dict[Any, list[float | None]] = {}
            for sweep in sweeps:
                for k, value in (sweep.get(name) or {}).items():
                    per_k.setdefault(k, []).append(value)
            for k in _ordered_ks(per_k):
                mean, sd, n = _mean_sd(per_k[k])
                rows.append({"condition_id": condition.id, "condition": condition.label,
                             **_factor_columns(condition, factors), "task": name, "k": k, "n": n,
                             "max_abs_mean": mean, "max_abs_sd": sd})
    if not rows:
        return None
    columns = ["condition_id", "condition", *factors, "task", "k", "n", "max_abs_mean", "max_abs_sd"]
    display = [("id", _text("condition_id")), ("condition", _text("condition")), ("task", _text("task")),
               ("k", _text("k")), ("n", _text("n")), ("max|WSC|", lambda r: _pm(r, "max_abs"))]
    return Table("k_sweep", "WSC vs number of principal components k",
                 "max|WSC| of the final epoch's heads projected on the first k principal components of the embedding "
                 "('none': unprojected), mean ± sd over seeds.", columns, rows, display)


def _ordered_ks(keys: Iterable[Any]) -> list[Any]:
    keys = list(keys)
    return sorted((k for k in keys if _is_number(k)), key=float) + [k for k in keys if not _is_number(k)]


@dataclass
class _Trend:
    factor: str
    series: list[tuple[str, list[Condition]]]  # (other factors' values, conditions sorted by the factor)


def _trend_design(conditions: Sequence[Condition], factors: Sequence[str]) -> _Trend | None:
    """The one numeric factor, and the conditions split into series by the other factors; None unless exactly one
    factor has only numeric levels."""
    numeric = [f for f in factors if all(_is_number(c.values[f]) for c in conditions)]
    if len(numeric) != 1:
        return None
    factor = numeric[0]
    others = [f for f in factors if f != factor]
    series: dict[str, list[Condition]] = {}
    for condition in conditions:
        name = ", ".join(f"{f}={condition.display[f]}" for f in others)
        series.setdefault(name, []).append(condition)
    return _Trend(factor, [(name, sorted(cs, key=lambda c: float(c.values[factor]))) for name, cs in series.items()])


def trend_table(trend: _Trend, tasks: Sequence[str]) -> Table:
    """``trend``: Spearman correlation between the numeric factor's level and the mean max|WSC| over seeds at that
    level, per task (and per combination of the other factors, if any)."""
    rows = []
    for series, conditions in trend.series:
        levels = [float(c.values[trend.factor]) for c in conditions]
        for name in tasks:
            means = [_mean_sd(run.tasks[name].get("max_abs") for run in c.runs if name in run.tasks)[0]
                     for c in conditions]
            ys = [np.nan if m is None else m for m in means]
            rows.append({"factor": trend.factor, "series": series or "all", "task": name,
                         "spearman_rho": spearman(levels, ys), "n_levels": int(np.isfinite(ys).sum())})
    columns = ["factor", "series", "task", "spearman_rho", "n_levels"]
    display = [("factor", _text("factor")), ("series", _text("series")), ("task", _text("task")),
               ("Spearman ρ", _col("spearman_rho", "+.2f")), ("levels", _text("n_levels"))]
    return Table("trend", f"Trend of max|WSC| with {trend.factor}",
                 f"Spearman correlation between {trend.factor} and the mean max|WSC| over seeds at each level "
                 "(with few levels, |ρ| = 1 is easy to reach by chance).", columns, rows, display)


# --------------------------------------------------------------------------------------------------- figures


@dataclass
class _Figure:
    name: str
    title: str
    caption: str
    fig: Any


def _mpl() -> Any:
    """matplotlib through ``plots``' lazy import (and its install hint), plus the submodules used here."""
    mpl = plots._matplotlib()
    import matplotlib.patches  # noqa: F401 - legend proxies

    return mpl


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _rc() -> dict[str, Any]:
    return {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
            "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12}


def mean_heatmap_tasks(condition: Condition, tasks: Sequence[str], alpha: float) -> tuple[dict[str, Any], list[str]]:
    """Per task, the element-wise mean over seeds of the signed WSC matrix, in the form ``plots.heatmap_figure``
    takes. Runs whose matrix shape or primary classes differ from the first run's are left out (noted).
    Continuous metadata are binned per run, so bin labels may differ across seeds: then bins are matched by position
    and labelled ``bin 1..n``."""
    notes: list[str] = []
    out: dict[str, Any] = {}
    rows_ref: list[str] | None = None
    for name in tasks:
        entries = [(run, run.tasks[name]) for run in condition.runs if name in run.tasks]
        matrices, cols_seen, used = [], [], []
        for run, task in entries:
            if task.get("matrix") is None:  # cleared by _check_summary, which noted why
                continue
            rows = [str(r) for r in task.get("rows") or []]
            try:
                matrix = np.asarray(task.get("matrix"), dtype=float)
            except (TypeError, ValueError):
                notes.append(f"{run.name}: task {name!r} has a non-numeric matrix")
                continue
            if rows_ref is None:
                rows_ref = rows
            if matrix.ndim != 2 or rows != rows_ref or matrix.shape[0] != len(rows):
                notes.append(f"{run.name}: task {name!r} rows {rows} differ from {rows_ref}: left out of the mean")
                continue
            if matrices and matrix.shape != matrices[0].shape:
                notes.append(f"{run.name}: task {name!r} has {matrix.shape[1]} classes, the first run "
                             f"{matrices[0].shape[1]}: left out of the mean")
                continue
            matrices.append(matrix)
            cols_seen.append([str(c) for c in task.get("cols") or []])
            used.append(task)
        if not matrices:
            continue
        cols = cols_seen[0]
        if any(c != cols for c in cols_seen) or len(cols) != matrices[0].shape[1]:
            cols = [f"bin {i + 1}" for i in range(matrices[0].shape[1])]
        n_sig = sum(_significant(t, alpha) for t in used)
        mean_max = _mean_sd(t.get("max_abs") for t in used)[0]
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(np.stack(matrices), axis=0) if len(matrices) > 1 else matrices[0]
        out[f"{name}\n{n_sig}/{len(used)} p<{alpha:g}"] = {
            "matrix": mean.tolist(), "rows": rows_ref, "cols": cols, "max_abs": mean_max, "null": None,
            "interpretable": any(t.get("interpretable") is not False for t in used),
        }
    return out, notes


def _band(ax: Any, xs: np.ndarray, mean: np.ndarray, sd: np.ndarray, **kwargs: Any) -> None:
    line = ax.plot(xs, mean, marker="o", markersize=3.5, **kwargs)[0]
    lo, hi = mean - np.nan_to_num(sd), mean + np.nan_to_num(sd)
    if np.isfinite(sd).any():
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)


def _epoch_series(per_run: Sequence[Mapping[int, float | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    epochs = sorted({e for series in per_run for e, v in series.items() if v is not None})
    means, sds = [], []
    for epoch in epochs:
        mean, sd, _ = _mean_sd(series.get(epoch) for series in per_run)
        means.append(np.nan if mean is None else mean)
        sds.append(np.nan if sd is None else sd)
    return np.asarray(epochs, dtype=float), np.asarray(means), np.asarray(sds)


def history_condition_figure(condition: Condition, tasks: Sequence[str], alpha: float) -> Any:
    """Training curves of a condition, mean ± sd over seeds (shaded): the primary task's train/val loss and its
    validation AUROC / balanced accuracy (metrics.csv), and per metadata task max|WSC| at each analysed epoch with
    the permutation null's q05–q95 band (mean over seeds, grey). Filled markers: at least half the seeds have
    p < alpha on an interpretable task."""
    mpl = _mpl()
    primary = condition.runs[0].primary
    n_tasks = max(1, len(tasks))
    fig = mpl.figure.Figure(figsize=(max(10.0, 2.6 * n_tasks), 7.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.05])
    ax_loss, ax_acc = top.subplots(1, 2)
    axes_wsc = np.atleast_1d(bottom.subplots(1, n_tasks, sharey=True))

    def metric(key: str) -> list[dict[int, float | None]]:
        return [{e: m.get(key) for e, m in run.metrics.items()} for run in condition.runs]

    def has(key: str) -> bool:
        return any(key in m for run in condition.runs for m in run.metrics.values())

    loss_keys = [k for k in (f"train/{primary}/loss", f"val/{primary}/loss") if has(k)]
    if not loss_keys:
        loss_keys = [k for k in ("train/loss", "val/loss") if has(k)]
    for key, color in zip(loss_keys, ("tab:blue", "tab:orange")):
        _band(ax_loss, *_epoch_series(metric(key)), color=color, label=key)
    ax_loss.set_title(f"{primary}: loss")
    ax_loss.set_ylabel("loss")
    for key, color in ((f"val/{primary}/auroc", "tab:green"), (f"val/{primary}/balanced_accuracy", "tab:purple")):
        if has(key):
            _band(ax_acc, *_epoch_series(metric(key)), color=color, label=key)
    ax_acc.set_title(f"{primary}: validation")
    ax_acc.set_ylabel("AUROC / balanced accuracy")
    for ax in (ax_loss, ax_acc):
        if ax.lines:
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="0.5")

    top_value = 0.0
    for index, (ax, name) in enumerate(zip(axes_wsc, tasks)):
        color = f"C{index % 10}"
        per_run = [[e for e in run.summary.get("history") or [] if isinstance(e, Mapping)] for run in condition.runs]

        def series(stat: str) -> list[dict[int, float | None]]:
            return [{int(e["epoch"]): _get(e, "tasks", name, stat) for e in hist if _finite(e.get("epoch")) is not None}
                    for hist in per_run]

        xs, mean, sd = _epoch_series(series("max_abs"))
        if xs.size:
            _, q05, _ = _epoch_series(series("q05"))
            xq, q95, _ = _epoch_series(series("q95"))
            if xq.size == xs.size and np.isfinite(q05).any():
                ax.fill_between(xs, q05, q95, color="0.6", alpha=0.3, linewidth=0)
                top_value = max(top_value, float(np.nanmax(q95)))
            _band(ax, xs, mean, sd, color=color)
            significant = np.zeros(xs.size, dtype=bool)
            for i, epoch in enumerate(xs):
                flags = [_significant(_get(e, "tasks", name), alpha)
                         for hist in per_run for e in hist if _finite(e.get("epoch")) == epoch
                         and _get(e, "tasks", name) is not None]
                significant[i] = bool(flags) and sum(flags) >= len(flags) / 2
            if significant.any():
                ax.scatter(xs[significant], mean[significant], color=color, s=36, zorder=3)
            top_value = max(top_value, float(np.nanmax(mean + np.nan_to_num(sd))))
            if xs.size == 1:
                ax.set_xlim(xs[0] - 0.5, xs[0] + 0.5)
        else:
            ax.text(0.5, 0.5, "no history", transform=ax.transAxes, ha="center", va="center", color="0.5")
        used = sum(any(v is not None for v in s.values()) for s in series("max_abs"))
        # a run without this task's history (absent, or left out: see the notes) is not in the curve
        ax.set_title(name if used == len(condition.runs) else f"{name} ({used} of {_seeds(len(condition.runs))})")
    axes_wsc[0].legend(handles=[
        mpl.patches.Patch(color="0.6", alpha=0.3, label="null q05–q95"),
        mpl.lines.Line2D([], [], color="0.3", marker="o", markersize=3.5, label="max|cos| (± sd shaded)"),
        mpl.lines.Line2D([], [], color="0.3", marker="o", markersize=7, linestyle="none",
                         label=f"p < {alpha:g} in ≥ half the seeds"),
    ], loc="upper left", fontsize=7)
    axes_wsc[0].set_ylabel("max |cos| (projected)")
    axes_wsc[0].set_ylim(0.0, min(1.05, max(0.5, 1.15 * top_value)))
    for ax in [ax_loss, ax_acc, *axes_wsc]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{condition.id}: {condition.label} ({_seeds(len(condition.runs))}, mean ± sd)")
    return fig


def reference_figure(conditions: Sequence[Condition]) -> Any | None:
    """Paper Fig. 2: histograms of cosines between weight rows of the same head (intra) and of unrelated heads
    (inter), pooled over the seeds of each condition; None when no run has a reference."""
    pooled = []
    for condition in conditions:
        intra = [v for run in condition.runs for v in (_get(run.summary, "reference", "intra", "values") or [])]
        inter = [v for run in condition.runs for v in (_get(run.summary, "reference", "inter", "values") or [])]
        intra = [x for x in map(_finite, intra) if x is not None]
        inter = [x for x in map(_finite, inter) if x is not None]
        if intra or inter:
            pooled.append((condition, np.asarray(intra), np.asarray(inter)))
    if not pooled:
        return None
    mpl = _mpl()
    n = len(pooled)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = mpl.figure.Figure(figsize=(4.4 * ncols, 3.3 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, squeeze=False)).ravel()
    everything = np.concatenate([np.concatenate([a, b]) for _, a, b in pooled])
    limit = max(0.2, float(np.max(np.abs(everything))) if everything.size else 1.0)
    bins = np.linspace(-limit, limit, 31)
    for ax, (condition, intra, inter) in zip(axes, pooled):
        for values, label, color in ((inter, "inter (unrelated heads)", "tab:gray"),
                                     (intra, "intra (same head)", "tab:red")):
            if values.size:
                ax.hist(values, bins=bins, density=True, alpha=0.55, color=color,
                        label=f"{label}: n={values.size}, mean {values.mean():+.2f}")
        ax.axvline(0.0, color="black", linewidth=0.8)
        # wrapped, not cut: long condition names would run into the neighbouring panel's title
        ax.set_title("\n".join(textwrap.wrap(f"{condition.id}: {condition.label}", 45)), fontsize=9)
        ax.set_xlabel("cosine between head weight rows")
        ax.set_ylabel("density")
        ax.legend(loc="upper left", fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle("Reference cosines: rows of the same head vs rows of unrelated heads")
    return fig


def k_sweep_figure(condition: Condition, tasks: Sequence[str]) -> Any | None:
    """Paper Fig. 4: max|WSC| against the number of principal components k, one box per k (over seeds) plus
    'none' (unprojected), one panel per task; None when no run of the condition has a ``k_sweep``."""
    sweeps = [s for s in (_k_sweep(run, tasks) for run in condition.runs) if s is not None]
    names = [name for name in tasks if any(name in s for s in sweeps)]
    if not names:
        return None
    mpl = _mpl()
    fig = mpl.figure.Figure(figsize=(max(6.0, 3.0 * len(names)), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True, squeeze=False)).ravel()
    top = 0.0
    for index, (ax, name) in enumerate(zip(axes, names)):
        per_k: dict[Any, list[float]] = {}
        for sweep in sweeps:
            for k, value in (sweep.get(name) or {}).items():
                per_k.setdefault(k, [])
                if value is not None:
                    per_k[k].append(value)
        ks = [k for k in _ordered_ks(per_k) if per_k[k]]
        data = [per_k[k] for k in ks]
        positions = list(range(len(ks)))
        if data:
            ax.boxplot(data, positions=positions, widths=0.6, showfliers=False,
                       medianprops={"color": f"C{index % 10}", "linewidth": 2})
            for x, values in zip(positions, data):
                ax.scatter(np.full(len(values), x), values, s=12, color="black", alpha=0.6, zorder=3)
            top = max(top, max(max(v) for v in data))
        ax.set_xticks(positions, labels=[str(k) for k in ks])
        ax.set_xlabel("principal components k")
        ax.set_title(name)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("max |cos|")
    axes[0].set_ylim(0.0, min(1.05, max(0.5, 1.1 * top)))
    fig.suptitle(f"WSC vs k, {condition.id}: {condition.label} ({_seeds(len(sweeps))})")
    return fig


def trend_figure(trend: _Trend, tasks: Sequence[str], trend_rows: Sequence[Mapping[str, Any]]) -> Any:
    """max|WSC| per task (mean ± sd over seeds) and the primary task's validation AUROC / balanced accuracy against
    the numeric factor; Spearman ρ between the factor and the mean max|WSC| in the title (and legend)."""
    mpl = _mpl()
    rho = {(r["series"], r["task"]): r["spearman_rho"] for r in trend_rows}
    styles = ["-", "--", ":", "-."]
    fig = mpl.figure.Figure(figsize=(12.0, 4.6), layout="constrained")
    ax_wsc, ax_acc = fig.subplots(1, 2, sharex=True)
    for s_index, (series, conditions) in enumerate(trend.series):
        levels = np.array([float(c.values[trend.factor]) for c in conditions])
        style = styles[s_index % len(styles)]
        suffix = f" [{series}]" if series else ""
        for t_index, name in enumerate(tasks):
            stats = [_mean_sd(run.tasks[name].get("max_abs") for run in c.runs if name in run.tasks)
                     for c in conditions]
            mean = np.array([np.nan if m is None else m for m, _, _ in stats])
            sd = np.array([np.nan if s is None else s for _, s, _ in stats])
            ax_wsc.errorbar(levels, mean, yerr=np.nan_to_num(sd), linestyle=style, marker="o", markersize=4,
                            capsize=3, color=f"C{t_index % 10}",
                            label=f"{name} (ρ={_fmt(rho.get((series or 'all', name)), '+.2f')}){suffix}")
        for key, color, label in (("val_auroc", "tab:green", "val AUROC"),
                                  ("val_balanced_accuracy", "tab:purple", "val balanced accuracy")):
            stats = [_mean_sd(_primary_accuracy(run)[key] for run in c.runs) for c in conditions]
            mean = np.array([np.nan if m is None else m for m, _, _ in stats])
            sd = np.array([np.nan if s is None else s for _, s, _ in stats])
            ax_acc.errorbar(levels, mean, yerr=np.nan_to_num(sd), linestyle=style, marker="s", markersize=4,
                            capsize=3, color=color, label=label + suffix)
    ax_wsc.set_ylabel("max |cos| (projected), mean ± sd")
    ax_wsc.set_title("WSC of the primary head")
    primary = trend.series[0][1][0].runs[0].primary
    ax_acc.set_ylabel("mean ± sd over seeds")
    ax_acc.set_title(f"{primary}: validation accuracy (last epoch)")
    for ax in (ax_wsc, ax_acc):
        ax.set_xlabel(trend.factor)
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[0]) > 6:  # many series: keep the legend off the data
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.legend(loc="best")
    if len(trend.series) == 1:
        rhos = ", ".join(f"{name} {_fmt(rho.get(('all', name)), '+.2f')}" for name in tasks)
        title = f"Spearman ρ({trend.factor}, mean max|WSC|): {rhos}"
    else:
        title = f"Spearman ρ({trend.factor}, mean max|WSC|) per task and series: see the legend"
    levels = len(trend.series[0][1])
    fig.suptitle(f"max|WSC| and accuracy vs {trend.factor} ({levels} levels)\n"
                 + "\n".join(textwrap.wrap(title, 110)))
    return fig


def conditions_figure(conditions: Sequence[Condition], tasks: Sequence[str], alpha: float) -> Any:
    """Per task, max|WSC| of every condition: mean ± sd over seeds (point and bar), single seeds (small dots), and
    the mean null 95th percentile (grey dash): a mean above the dash is beyond what unrelated labels give."""
    mpl = _mpl()
    n = max(1, len(tasks))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    width = max(4.0, 0.55 * len(conditions) + 1.5)
    fig = mpl.figure.Figure(figsize=(width * ncols, 3.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    positions = np.arange(len(conditions))
    top = 0.0
    for index, (ax, name) in enumerate(zip(axes, tasks)):
        color = f"C{index % 10}"
        for x, condition in zip(positions, conditions):
            entries = [run.tasks[name] for run in condition.runs if name in run.tasks]
            values = [v for v in (_finite(t.get("max_abs")) for t in entries) if v is not None]
            if not values:
                continue
            mean, sd, _ = _mean_sd(values)
            filled = sum(_significant(t, alpha) for t in entries) >= len(entries) / 2
            ax.errorbar([x], [mean], yerr=[sd or 0.0], marker="o", markersize=7, capsize=4, color=color,
                        markerfacecolor=color if filled else "white", linestyle="none", zorder=3)
            ax.scatter(np.full(len(values), x + 0.18), values, s=10, color="0.3", zorder=2)
            q95 = _mean_sd(_get(t, "null", "q95") for t in entries)[0]
            if q95 is not None:
                ax.plot([x - 0.3, x + 0.3], [q95, q95], color="0.45", linewidth=2, linestyle="--", zorder=1)
                top = max(top, q95)
            top = max(top, max(values), mean + (sd or 0.0))
        ax.set_xticks(positions, labels=[c.id for c in conditions])
        ax.set_title(name)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    for row in range(nrows):
        axes[row * ncols].set_ylabel("max |cos| (projected)")
    axes[0].set_ylim(0.0, min(1.05, max(0.5, 1.15 * top)))
    key = "; ".join(f"{c.id}: {c.label}" for c in conditions)
    fig.suptitle("max|WSC| by condition (filled: p < {:g} in ≥ half the seeds; dashed: null q95)\n{}".format(
        alpha, "\n".join(textwrap.wrap(key, 150))))
    return fig


# --------------------------------------------------------------------------------------------------- writing


def table_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=table.columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({key: csv_cell(row.get(key)) for key in table.columns})
    return buffer.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    """The table as a Markdown section: title, description and a pipe table (``|`` in cells escaped)."""
    headers = [_md_cell(h) for h, _ in table.display]
    lines = [f"## {table.title}", "", table.description, "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for cells in table.display_rows():
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _is_numeric_cell(text: str) -> bool:
    """Right-align numbers, ``mean ± sd``, ``value (p)``, ``(n=k)``, ``k/n`` and the missing-value dash."""
    return bool(re.fullmatch(r"[\d.eE+\-–± ()/n=]+", text)) and (any(ch.isdigit() for ch in text) or text == "–")


def table_html(table: Table) -> str:
    headers = "".join(f"<th>{html.escape(h)}</th>" for h, _ in table.display)
    body = []
    for cells in table.display_rows():
        tds = "".join(('<td class="num">' if _is_numeric_cell(c) else "<td>") + f"{html.escape(c)}</td>"
                      for c in cells)
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{headers}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _remove_stale(out_dir: Path, keep: set[Path]) -> None:
    """Drop figures/tables a previous report in the same directory wrote and this one did not."""
    if not (out_dir / "report.html").is_file():
        return
    for sub, suffixes in (("figures", {".png"}), ("tables", {".csv", ".md"})):
        for path in (out_dir / sub).glob("*"):
            if path.suffix in suffixes and path.is_file() and path.resolve() not in keep:
                path.unlink()


def _render_html(result: ReportResult, figures: Sequence[_Figure], alpha: float, notes: Sequence[str]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>WSC report: {e(result.root.name)}</title><style>{_CSS}</style></head><body>",
        "<h1>Weight Space Correlation report</h1>",
        f"<p class=\"meta\">Source: <code>{e(str(result.root))}</code><br>Generated "
        f"{e(datetime.datetime.now().isoformat(timespec='seconds'))} by <code>wsca-report</code>; "
        f"significance level α = {alpha:g}. {len(result.runs)} runs read in {len(result.conditions)} conditions, "
        f"{len(result.skipped)} skipped.</p>",
        "<h2>Runs found</h2>",
        f"<p>Factors (override keys whose values differ across conditions): "
        f"{', '.join(f'<code>{e(f)}</code>' for f in result.factors) or 'none (a single condition)'}. Seeds are "
        "replicates; <code>hydra.*</code>, <code>paths.*</code> and <code>ckpt_path</code> overrides are ignored."
        "</p>",
        "<table><thead><tr><th>id</th><th>condition</th><th>runs</th><th>seeds</th><th>overrides defining it</th>"
        "</tr></thead><tbody>",
    ]
    for c in result.conditions:
        overrides = " ".join(f"<code>{e(o)}</code>" for o in c.overrides()) or "(none)"
        parts.append(f"<tr><td>{c.id}</td><td>{e(c.label)}</td><td>{e(', '.join(r.name for r in c.runs))}</td>"
                     f"<td>{e(', '.join(str(r.seed) for r in c.runs))}</td><td>{overrides}</td></tr>")
    parts.append("</tbody></table>")
    parts.append("<h2>Skipped runs</h2>")
    if result.skipped:
        parts.append("<ul class=\"skipped\">")
        parts += [f"<li><code>{e(str(s.path))}</code>: {e(s.reason)}</li>" for s in result.skipped]
        parts.append("</ul>")
    else:
        parts.append("<p>None.</p>")
    if notes:
        parts.append("<h2>Notes</h2><p>Values or runs left out of the statistics, and missing files:</p>"
                     "<ul class=\"notes\">")
        parts += [f"<li>{e(n)}</li>" for n in notes]
        parts.append("</ul>")
    parts.append("<h2>Tables</h2>")
    for table in result.tables.values():
        parts.append(f"<h3>{e(table.title)}</h3><p>{e(table.description)} "
                     f"(<code>tables/{table.name}.csv</code>)</p>{table_html(table)}")
    parts.append("<h2>Figures</h2>")
    for figure in figures:
        data = base64.b64encode((result.out_dir / "figures" / f"{figure.name}.png").read_bytes()).decode("ascii")
        parts.append(f"<figure><h3>{e(figure.title)}</h3><img src=\"data:image/png;base64,{data}\" "
                     f"alt=\"{e(figure.title)}\"><figcaption>{e(figure.caption)} "
                     f"(<code>figures/{e(figure.name)}.png</code>)</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------- entry point


def _collect_figures(conditions: Sequence[Condition], factors: Sequence[str], tasks: Sequence[str], alpha: float,
                     trend: _Trend | None, trend_rows: Sequence[Mapping[str, Any]], notes: list[str]) -> list[_Figure]:
    figures: list[_Figure] = []
    for condition in conditions:
        heat_tasks, heat_notes = mean_heatmap_tasks(condition, tasks, alpha)
        notes += [f"{condition.id} heatmap: {n}" for n in heat_notes]
        if heat_tasks:
            primary = condition.runs[0].primary
            try:
                fig = plots.heatmap_figure(heat_tasks, primary, title=(
                    f"Mean WSC over {_seeds(len(condition.runs))}, {condition.id}: {condition.label}\n"
                    f"(header: task, significant seeds, mean max|cos|)"))
            except ValueError as err:
                notes.append(f"{condition.id}: no heatmap ({err})")
            else:
                figures.append(_Figure(
                    f"heatmap_{condition.slug}", f"Mean WSC matrix, {condition.id}: {condition.label}",
                    "Signed cosines between the primary head's class weights (rows) and the metadata probes' class "
                    "weights (columns, grouped by task), averaged element-wise over seeds (continuous metadata: bins "
                    "matched by position). Header: task, number of seeds with p < alpha, mean max|cos|.", fig))
    fig = reference_figure(conditions)
    if fig is not None:
        figures.append(_Figure("reference_histograms", "Intra- vs inter-head cosines (paper Fig. 2)",
                               "Cosines between weight rows of the same head (intra) and of unrelated heads (inter), "
                               "pooled over the seeds of each condition: the scale against which a WSC value reads "
                               "as large or small.", fig))
    for condition in conditions:
        fig = k_sweep_figure(condition, tasks)
        if fig is not None:
            figures.append(_Figure(f"k_sweep_{condition.slug}", f"WSC vs k, {condition.id}: {condition.label}",
                                   "max|WSC| of the final epoch's heads at each number of principal components k "
                                   "(boxes over seeds, dots: seeds); 'none': unprojected.", fig))
    for condition in conditions:
        figures.append(_Figure(f"history_{condition.slug}", f"Training and WSC over epochs, {condition.id}: "
                               f"{condition.label}", " ".join((history_condition_figure.__doc__ or "").split()),
                               history_condition_figure(condition, tasks, alpha)))
    if trend is not None:
        figures.append(_Figure("trend", f"WSC and accuracy vs {trend.factor}",
                               " ".join((trend_figure.__doc__ or "").split()),
                               trend_figure(trend, tasks, trend_rows)))
    if len(conditions) > 1 and (trend is None or len(factors) > 1):
        figures.append(_Figure("wsc_by_condition", "max|WSC| by condition",
                               " ".join((conditions_figure.__doc__ or "").split()),
                               conditions_figure(conditions, tasks, alpha)))
    return figures


def build_report(root: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                 alpha: float = 0.05) -> ReportResult:
    """Read every run under ``root`` and write the report to ``out_dir`` (default ``root/report``).

    Raises :class:`ReportError` when ``root`` does not exist or holds no readable run.
    """
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} does not exist or is not a directory (expected a wsca-train run directory, "
                          "a multirun directory, or a directory of those)")
    out = Path(out_dir) if out_dir is not None else root / "report"
    runs: list[RunRecord] = []
    skipped: list[SkippedRun] = []
    # progress bars on a terminal only (disable=None): a sweep of hundreds of runs takes minutes to read and draw
    for path in tqdm(find_run_dirs(root, exclude=[out]), desc="reading runs", unit="run",
                     disable=None):
        record = load_run(path, root)
        (runs if isinstance(record, RunRecord) else skipped).append(record)
    if not runs:
        why = "".join(f"\n  {s.path}: {s.reason}" for s in skipped)
        raise ReportError(f"no readable run under {root}: expected <run>/{SUMMARY_PATH.as_posix()} written by "
                          f"wsca-train, in {root} or its subdirectories" + (f"; skipped:{why}" if why else ""))

    conditions, factors = group_conditions(runs)
    runs = [run for condition in conditions for run in condition.runs]
    tasks = _task_names(runs)
    tables = {t.name: t for t in (wsc_table(conditions, factors, tasks, alpha), accuracy_table(conditions, factors),
                                  runs_table(runs, tasks))}
    sweep = k_sweep_table(conditions, factors, tasks)
    if sweep is not None:
        tables[sweep.name] = sweep
    trend = _trend_design(conditions, factors)
    trend_rows: list[dict[str, Any]] = []
    if trend is not None:
        tables["trend"] = trend_table(trend, tasks)
        trend_rows = tables["trend"].rows

    notes: list[str] = []
    import matplotlib

    with matplotlib.rc_context(_rc()):
        figures = _collect_figures(conditions, factors, tasks, alpha, trend, trend_rows, notes)
        written: list[Path] = []
        for figure in tqdm(figures, desc="drawing figures", unit="figure", disable=None):
            path = out / "figures" / f"{figure.name}.png"
            plots.save_figure(figure.fig, path)
            figure.fig = None  # free it now; the figures of a large sweep add up
            written.append(path)
    figure_paths = list(written)
    for table in tables.values():
        for suffix, text in ((".csv", table_csv(table)), (".md", table_markdown(table))):
            path = out / "tables" / f"{table.name}{suffix}"
            _write_text(path, text)
            written.append(path)
    notes = [f"{run.name}: {note}" for run in runs for note in dict.fromkeys(run.notes)] + notes
    result = ReportResult(root=root, out_dir=out, runs=runs, skipped=skipped, conditions=conditions,
                          factors=factors, tables=tables, figures=figure_paths, files=written,
                          html=out / "report.html", notes=notes)
    _remove_stale(out, {p.resolve() for p in written})
    _write_text(result.html, _render_html(result, figures, alpha, notes))
    written.append(result.html)
    return result


def format_result(result: ReportResult) -> str:
    """The few lines ``wsca-report`` prints: what was read, what was skipped and why, what was left out of the
    statistics (the notes, as on the page), where the report is."""
    lines = [f"Read {len(result.runs)} runs in {len(result.conditions)} conditions from {result.root}"
             + (f" (factors: {', '.join(result.factors)})" if result.factors else "")]
    if result.skipped:
        lines.append(f"Skipped {len(result.skipped)}:")
        lines += [f"  {s.path}: {s.reason}" for s in result.skipped]
    if result.notes:
        lines.append(f"Notes ({len(result.notes)}: values or runs left out, missing files; also in report.html):")
        lines += [f"  - {note}" for note in result.notes]
    lines.append(f"Report: {result.html} ({len(result.figures)} figures in {result.out_dir / 'figures'}, "
                 f"{len(result.tables)} tables in {result.out_dir / 'tables'})")
    return "\n".join(lines)

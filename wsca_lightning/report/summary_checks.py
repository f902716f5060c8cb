"""Summary checks: every field of a loaded ``wsc_summary.json`` that the report reads, made usable or cleared.

A number that is NaN, infinite or a string, an object of the wrong type, a history entry without an epoch: each is
cleared in place and becomes one note naming the file, the field and what leaves it out, so every table and figure
reads only numbers where it expects numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from wsca_lightning.report.records import FIX_SUMMARY, MISSING
from wsca_lightning.report.statistics import is_number


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
            fix = f"; {FIX_SUMMARY}" if fixable else ""
            out.append(f"{self.file}: field {path}{where} {problem}: {effect}{fix}")
        return out

    def number(self, node: dict[str, Any], key: str, path: str, effect: str, entry: str | None = None) -> None:
        """``node[key]`` must be a finite number or null (what the writer puts for NaN); else it is cleared."""
        value = node.get(key)
        if value is not None and not is_number(value):
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


def check_summary(summary: dict[str, Any], file: Path) -> list[str]:
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
        bad = [v for v in values if v is not None and not is_number(v)]
        if bad:
            node["values"] = [v for v in values if v is None or is_number(v)]
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
        bad = next((v for row in matrix for v in row if v is not None and not is_number(v)), MISSING)
        if bad is not MISSING:
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
        if not is_number(epoch) or epoch < 0 or float(epoch) != int(epoch):
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
            or not all(is_number(k) or isinstance(k, str) for k in ks):
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
            if value is not None and not is_number(value):
                series[index] = None
                check.flag(f"k_sweep.max_abs.{name}[i]", f"is {_json_kind(value)}, expected a number", effect,
                           str(index))

"""What a report is made of: the runs read (or skipped), their conditions, result tables, figures and the result.

Plain dataclasses and the few constants every part of the report shares; the parts that fill them are
:mod:`~wsca_lightning.report.discovery` (runs), :mod:`~wsca_lightning.report.conditions` (grouping),
:mod:`~wsca_lightning.report.tables` and :mod:`wsca_lightning.figures.comparison`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


SUMMARY_PATH = Path("wsc") / "wsc_summary.json"

NO_VALUE = "(not set)"
DELETED = "(deleted)"  # display of ``~key``; compares equal to a key the config does not set
MISSING = object()  # a config key that is absent (None is a value)


#: What to do about a summary the report cannot read in full.
FIX_SUMMARY = "fix it, or rerun the analysis (wsca-analyze on the run's checkpoint) to rewrite the file"


class ReportError(Exception):
    """The report cannot be built: the directory is missing or holds no readable run."""


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
            from wsca_lightning.report.conditions import parse_overrides  # conditions reads these records

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
        return [f"~{key}" if self.display[key] == DELETED else f"{key}={self.display[key]}" for key in self.display]


@dataclass(frozen=True)
class OverrideValue:
    """One line of ``overrides.yaml`` as Hydra's parser reads it."""

    key: str  # the key or config group, with ``@package`` when given: what conditions are grouped by
    key_or_group: str  # without the package (``hydra.*``/``paths.*`` are recognised on it)
    value: Any  # the parsed value; ``NO_VALUE`` for a deletion (``~key``); a ``Sweep`` for a sweep
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


@dataclass
class ReportFigure:
    """A figure of the report, before it is saved: its file name (without ``.png``), title and caption."""

    name: str
    title: str
    caption: str
    fig: Any

"""``wsca-report``: one HTML page, tables and figures that compare the WSC results of many runs.

Runs are grouped into *conditions* by their command-line overrides, ``seed`` (and ``hydra.*``, ``paths.*``,
``ckpt_path``) left out, so the seeds of a condition are its replicates; the override keys whose values differ
across conditions are the *factors*. Only files are read (JSON, CSV, YAML): no torch, Lightning or training code is
imported, and every field is looked up defensively, so run directories written by another version of the package
are readable. A directory that looks like a run but cannot be used is listed as skipped, with the reason; fields of
a summary that cannot be used are left out and listed in the report's notes; every statistic says how many runs it
used.

The parts, in the order a report is built:

* :mod:`~wsca_lightning.report.discovery`: find run directories and read each run;
* :mod:`~wsca_lightning.report.summary_checks`: clear and note the summary fields that cannot be used;
* :mod:`~wsca_lightning.report.conditions`: group runs by their overrides, name the factors;
* :mod:`~wsca_lightning.report.statistics`: mean and sd, Spearman's rho, the verdict's p;
* :mod:`~wsca_lightning.report.tables`: the result tables;
* :mod:`wsca_lightning.figures.comparison`: the figures (beside the run figures);
* :mod:`~wsca_lightning.report.writing`: CSV, Markdown and the HTML page;
* :mod:`~wsca_lightning.report.build`: :func:`build_report`, which runs them all, and :func:`format_result`.
"""

from wsca_lightning.report.build import build_report, format_result
from wsca_lightning.report.conditions import group_conditions, parse_overrides
from wsca_lightning.report.discovery import find_run_dirs, load_run
from wsca_lightning.report.records import (
    Condition,
    OverrideValue,
    ReportError,
    ReportResult,
    RunRecord,
    SkippedRun,
    Table,
)
from wsca_lightning.report.statistics import rankdata, spearman

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
    "format_result",
    "group_conditions",
    "load_run",
    "parse_overrides",
    "rankdata",
    "spearman",
]

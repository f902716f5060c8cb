"""``wsca-report``'s entry point: read every run under a directory, group them, write tables, figures and a page.

Input is a run directory written by ``wsca-train`` (``wsc/wsc_summary.json``, ``csv/version_*/metrics.csv``,
``.hydra/``), a Hydra multirun directory of such runs, or a directory of several multiruns. Outputs under ``out_dir``:
``report.html`` (self-contained: PNGs as data URIs, inline CSS), ``figures/*.png`` and ``tables/*.csv`` +
``tables/*.md`` (the same content; the CSVs keep mean and sd as separate numeric columns). Attribution figures a run
wrote (``wsc/attribution/<task>.png``: the callback's or ``wsca-analyze``'s ``attribution`` option) are copied in, per
run, after its condition's figures.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from wsca_lightning.figures.canvas import save_figure
from wsca_lightning.figures.single_run import heatmap_figure
from wsca_lightning.report.conditions import Trend, group_conditions, trend_design
from wsca_lightning.report.discovery import find_run_dirs, load_run
from wsca_lightning.report.records import (
    SUMMARY_PATH,
    Condition,
    ReportError,
    ReportFigure,
    ReportResult,
    RunRecord,
    SkippedRun,
)
from wsca_lightning.report.tables import (
    accuracy_table,
    k_sweep_table,
    runs_table,
    task_names,
    trend_table,
    wsc_table,
)
from wsca_lightning.report.writing import remove_stale, render_html, table_csv, table_markdown, write_text

__all__ = ["build_report", "format_result"]


def _collect_figures(conditions: Sequence[Condition], factors: Sequence[str], tasks: Sequence[str], alpha: float,
                     trend: Trend | None, trend_rows: Sequence[Mapping[str, Any]],
                     notes: list[str]) -> list[ReportFigure]:
    # imported here: the comparison figures read the report's records, so importing them at module level would be
    # circular for whoever imports wsca_lightning.figures.comparison first
    from wsca_lightning.figures.comparison import (
        conditions_figure,
        history_condition_figure,
        k_sweep_figure,
        mean_heatmap_tasks,
        reference_figure,
        seeds_text,
        trend_figure,
    )

    figures: list[ReportFigure] = []
    for condition in conditions:
        heat_tasks, heat_notes = mean_heatmap_tasks(condition, tasks, alpha)
        notes += [f"{condition.id} heatmap: {n}" for n in heat_notes]
        if heat_tasks:
            primary = condition.runs[0].primary
            try:
                fig = heatmap_figure(heat_tasks, primary, title=(
                    f"Mean WSC over {seeds_text(len(condition.runs))}, {condition.id}: {condition.label}\n"
                    f"(header: task, significant seeds, mean max|cos|)"))
            except ValueError as err:
                notes.append(f"{condition.id}: no heatmap ({err})")
            else:
                figures.append(ReportFigure(
                    f"heatmap_{condition.slug}", f"Mean WSC matrix, {condition.id}: {condition.label}",
                    "Signed cosines between the primary head's class weights (rows) and the metadata probes' class "
                    "weights (columns, grouped by task), averaged element-wise over seeds (continuous metadata: bins "
                    "matched by position). Header: task, number of seeds with p < alpha, mean max|cos|.", fig))
    fig = reference_figure(conditions)
    if fig is not None:
        figures.append(ReportFigure("reference_histograms", "Intra- vs inter-head cosines (paper Fig. 2)",
                                    "Cosines between weight rows of the same head (intra) and of unrelated heads "
                                    "(inter), pooled over the seeds of each condition: the scale against which a WSC "
                                    "value reads as large or small.", fig))
    for condition in conditions:
        fig = k_sweep_figure(condition, tasks)
        if fig is not None:
            figures.append(ReportFigure(f"k_sweep_{condition.slug}", f"WSC vs k, {condition.id}: {condition.label}",
                                   "max|WSC| of the final epoch's heads at each number of principal components k "
                                   "(boxes over seeds, dots: seeds); 'none': unprojected.", fig))
    for condition in conditions:
        figures.append(ReportFigure(f"history_{condition.slug}", f"Training and WSC over epochs, {condition.id}: "
                                      f"{condition.label}", " ".join((history_condition_figure.__doc__ or "").split()),
                                      history_condition_figure(condition, tasks, alpha)))
    figures += _attribution_figures(conditions)
    if trend is not None:
        figures.append(ReportFigure("trend", f"WSC and accuracy vs {trend.factor}",
                                      " ".join((trend_figure.__doc__ or "").split()),
                                      trend_figure(trend, tasks, trend_rows)))
    if len(conditions) > 1 and (trend is None or len(factors) > 1):
        figures.append(ReportFigure("wsc_by_condition", "max|WSC| by condition",
                                      " ".join((conditions_figure.__doc__ or "").split()),
                                      conditions_figure(conditions, tasks, alpha)))
    return figures


def _attribution_figures(conditions: Sequence[Condition]) -> list[ReportFigure]:
    """Each run's attribution figures as they are on disk (``fig`` is the PNG's path: copied, not redrawn)."""
    figures = []
    for condition in conditions:
        for run in condition.runs:
            for png in sorted((run.path / "wsc" / "attribution").glob("*.png")):
                slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{run.name}_{png.stem}")
                figures.append(ReportFigure(
                    f"attribution_{slug}", f"Which pixels carry the shared direction with {png.stem!r}, {run.name} "
                    f"({condition.id}: {condition.label})",
                    "Gradient attribution of the direction the primary head shares with this metadata task: mean "
                    "|attribution| over the attributed images of the analysis subset, their mean image, and examples "
                    "with overlays (docs/outputs.md).", png))
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
    tasks = task_names(runs)
    tables = {t.name: t for t in (wsc_table(conditions, factors, tasks, alpha), accuracy_table(conditions, factors),
                                  runs_table(runs, tasks))}
    sweep = k_sweep_table(conditions, factors, tasks)
    if sweep is not None:
        tables[sweep.name] = sweep
    trend = trend_design(conditions, factors)
    trend_rows: list[dict[str, Any]] = []
    if trend is not None:
        tables["trend"] = trend_table(trend, tasks)
        trend_rows = tables["trend"].rows

    notes: list[str] = []
    import matplotlib

    from wsca_lightning.figures.comparison import report_rc_params

    with matplotlib.rc_context(report_rc_params()):
        figures = _collect_figures(conditions, factors, tasks, alpha, trend, trend_rows, notes)
        written: list[Path] = []
        for figure in tqdm(figures, desc="drawing figures", unit="figure", disable=None):
            path = out / "figures" / f"{figure.name}.png"
            if isinstance(figure.fig, Path):  # a run's own PNG
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(figure.fig, path)
            else:
                save_figure(figure.fig, path)
            figure.fig = None  # free it now; the figures of a large sweep add up
            written.append(path)
    figure_paths = list(written)
    for table in tables.values():
        for suffix, text in ((".csv", table_csv(table)), (".md", table_markdown(table))):
            path = out / "tables" / f"{table.name}{suffix}"
            write_text(path, text)
            written.append(path)
    notes = [f"{run.name}: {note}" for run in runs for note in dict.fromkeys(run.notes)] + notes
    result = ReportResult(root=root, out_dir=out, runs=runs, skipped=skipped, conditions=conditions,
                          factors=factors, tables=tables, figures=figure_paths, files=written,
                          html=out / "report.html", notes=notes)
    remove_stale(out, {p.resolve() for p in written})
    write_text(result.html, render_html(result, figures, alpha, notes))
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

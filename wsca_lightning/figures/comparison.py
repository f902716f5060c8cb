"""The figures of ``wsca-report``: runs grouped into conditions, compared (means over seeds, curves, trends).

Per condition the mean WSC heatmap (drawn with the run heatmap of :mod:`~wsca_lightning.figures.single_run`), the
training and WSC curves over epochs and the k sweep; across conditions the reference cosines (paper Fig. 2), the
trend along a numeric factor and max|WSC| by condition. The inputs are the report's records
(:mod:`wsca_lightning.report.records`); no torch, Lightning or Hydra.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsca_lightning.figures.canvas import load_matplotlib
from wsca_lightning.report.conditions import Trend
from wsca_lightning.report.records import Condition
from wsca_lightning.report.statistics import finite, lookup, mean_sd, significant
from wsca_lightning.report.tables import fmt, ordered_ks, primary_accuracy, run_k_sweep
from wsca_lightning.summary import task_header

__all__ = [
    "conditions_figure",
    "history_condition_figure",
    "k_sweep_figure",
    "mean_heatmap_tasks",
    "reference_figure",
    "report_rc_params",
    "seeds_text",
    "trend_figure",
]


def seeds_text(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def report_rc_params() -> dict[str, Any]:
    """matplotlib settings of every report figure (``matplotlib.rc_context``)."""
    return {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
            "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12}


def mean_heatmap_tasks(condition: Condition, tasks: Sequence[str], alpha: float) -> tuple[dict[str, Any], list[str]]:
    """Per task, the element-wise mean over seeds of the signed WSC matrix, in the form
    :func:`~wsca_lightning.figures.single_run.heatmap_figure` takes, with the header of
    :func:`~wsca_lightning.summary.task_header` (task, significant seeds, mean max|cos|). Runs whose matrix shape or
    primary classes differ from the first run's are left out (noted).
    Continuous metadata are binned per run, so bin labels may differ across seeds: then bins are matched by position
    and labelled ``bin 1..n``."""
    notes: list[str] = []
    out: dict[str, Any] = {}
    rows_ref: list[str] | None = None
    for name in tasks:
        entries = [(run, run.tasks[name]) for run in condition.runs if name in run.tasks]
        matrices, cols_seen, used = [], [], []
        for run, task in entries:
            if task.get("matrix") is None:  # cleared by check_summary, which noted why
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
        n_sig = sum(significant(t, alpha) for t in used)
        mean_max = mean_sd(t.get("max_abs") for t in used)[0]
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(np.stack(matrices), axis=0) if len(matrices) > 1 else matrices[0]
        task = {"matrix": mean.tolist(), "rows": rows_ref, "cols": cols, "max_abs": mean_max, "null": None,
                "interpretable": any(t.get("interpretable") is not False for t in used)}
        out[name] = {**task, "header": task_header(name, task, significance=f"{n_sig}/{len(used)} p<{alpha:g}")}
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
        mean, sd, _ = mean_sd(series.get(epoch) for series in per_run)
        means.append(np.nan if mean is None else mean)
        sds.append(np.nan if sd is None else sd)
    return np.asarray(epochs, dtype=float), np.asarray(means), np.asarray(sds)


def history_condition_figure(condition: Condition, tasks: Sequence[str], alpha: float) -> Any:
    """Training curves of a condition, mean ± sd over seeds (shaded): the primary task's train/val loss and its
    validation AUROC / balanced accuracy (metrics.csv), and per metadata task max|WSC| at each analysed epoch with
    the permutation null's q05–q95 band (mean over seeds, grey). Filled markers: at least half the seeds have
    p < alpha on an interpretable task."""
    mpl = load_matplotlib()
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
            return [{int(e["epoch"]): lookup(e, "tasks", name, stat)
                     for e in hist if finite(e.get("epoch")) is not None} for hist in per_run]

        xs, mean, sd = _epoch_series(series("max_abs"))
        if xs.size:
            _, q05, _ = _epoch_series(series("q05"))
            xq, q95, _ = _epoch_series(series("q95"))
            if xq.size == xs.size and np.isfinite(q05).any():
                ax.fill_between(xs, q05, q95, color="0.6", alpha=0.3, linewidth=0)
                top_value = max(top_value, float(np.nanmax(q95)))
            _band(ax, xs, mean, sd, color=color)
            marked = np.zeros(xs.size, dtype=bool)  # significant in at least half the seeds
            for i, epoch in enumerate(xs):
                flags = [significant(lookup(e, "tasks", name), alpha)
                         for hist in per_run for e in hist if finite(e.get("epoch")) == epoch
                         and lookup(e, "tasks", name) is not None]
                marked[i] = bool(flags) and sum(flags) >= len(flags) / 2
            if marked.any():
                ax.scatter(xs[marked], mean[marked], color=color, s=36, zorder=3)
            top_value = max(top_value, float(np.nanmax(mean + np.nan_to_num(sd))))
            if xs.size == 1:
                ax.set_xlim(xs[0] - 0.5, xs[0] + 0.5)
        else:
            ax.text(0.5, 0.5, "no history", transform=ax.transAxes, ha="center", va="center", color="0.5")
        used = sum(any(v is not None for v in s.values()) for s in series("max_abs"))
        # a run without this task's history (absent, or left out: see the notes) is not in the curve
        ax.set_title(name if used == len(condition.runs) else f"{name} ({used} of {seeds_text(len(condition.runs))})")
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
    fig.suptitle(f"{condition.id}: {condition.label} ({seeds_text(len(condition.runs))}, mean ± sd)")
    return fig


def reference_figure(conditions: Sequence[Condition]) -> Any | None:
    """Paper Fig. 2: histograms of cosines between weight rows of the same head (intra) and of unrelated heads
    (inter), pooled over the seeds of each condition; None when no run has a reference."""
    pooled = []
    for condition in conditions:
        intra = [v for run in condition.runs for v in (lookup(run.summary, "reference", "intra", "values") or [])]
        inter = [v for run in condition.runs for v in (lookup(run.summary, "reference", "inter", "values") or [])]
        intra = [x for x in map(finite, intra) if x is not None]
        inter = [x for x in map(finite, inter) if x is not None]
        if intra or inter:
            pooled.append((condition, np.asarray(intra), np.asarray(inter)))
    if not pooled:
        return None
    mpl = load_matplotlib()
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
    sweeps = [s for s in (run_k_sweep(run, tasks) for run in condition.runs) if s is not None]
    names = [name for name in tasks if any(name in s for s in sweeps)]
    if not names:
        return None
    mpl = load_matplotlib()
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
        ks = [k for k in ordered_ks(per_k) if per_k[k]]
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
    fig.suptitle(f"WSC vs k, {condition.id}: {condition.label} ({seeds_text(len(sweeps))})")
    return fig


def trend_figure(trend: Trend, tasks: Sequence[str], trend_rows: Sequence[Mapping[str, Any]]) -> Any:
    """max|WSC| per task (mean ± sd over seeds) and the primary task's validation AUROC / balanced accuracy against
    the numeric factor; Spearman ρ between the factor and the mean max|WSC| in the title (and legend)."""
    mpl = load_matplotlib()
    rho = {(r["series"], r["task"]): r["spearman_rho"] for r in trend_rows}
    styles = ["-", "--", ":", "-."]
    fig = mpl.figure.Figure(figsize=(12.0, 4.6), layout="constrained")
    ax_wsc, ax_acc = fig.subplots(1, 2, sharex=True)
    for s_index, (series, conditions) in enumerate(trend.series):
        levels = np.array([float(c.values[trend.factor]) for c in conditions])
        style = styles[s_index % len(styles)]
        suffix = f" [{series}]" if series else ""
        for t_index, name in enumerate(tasks):
            stats = [mean_sd(run.tasks[name].get("max_abs") for run in c.runs if name in run.tasks)
                     for c in conditions]
            mean = np.array([np.nan if m is None else m for m, _, _ in stats])
            sd = np.array([np.nan if s is None else s for _, s, _ in stats])
            ax_wsc.errorbar(levels, mean, yerr=np.nan_to_num(sd), linestyle=style, marker="o", markersize=4,
                            capsize=3, color=f"C{t_index % 10}",
                            label=f"{name} (ρ={fmt(rho.get((series or 'all', name)), '+.2f')}){suffix}")
        for key, color, label in (("val_auroc", "tab:green", "val AUROC"),
                                  ("val_balanced_accuracy", "tab:purple", "val balanced accuracy")):
            stats = [mean_sd(primary_accuracy(run)[key] for run in c.runs) for c in conditions]
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
        rhos = ", ".join(f"{name} {fmt(rho.get(('all', name)), '+.2f')}" for name in tasks)
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
    mpl = load_matplotlib()
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
            values = [v for v in (finite(t.get("max_abs")) for t in entries) if v is not None]
            if not values:
                continue
            mean, sd, _ = mean_sd(values)
            filled = sum(significant(t, alpha) for t in entries) >= len(entries) / 2
            ax.errorbar([x], [mean], yerr=[sd or 0.0], marker="o", markersize=7, capsize=4, color=color,
                        markerfacecolor=color if filled else "white", linestyle="none", zorder=3)
            ax.scatter(np.full(len(values), x + 0.18), values, s=10, color="0.3", zorder=2)
            q95 = mean_sd(lookup(t, "null", "q95") for t in entries)[0]
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

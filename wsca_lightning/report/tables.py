"""The report's result tables: WSC by condition, primary-task accuracy, one row per run, the k sweep and the trend.

Each :class:`~wsca_lightning.report.records.Table` keeps numeric CSV columns (mean and sd apart) and how its
Markdown/HTML version shows them; every statistic says how many runs it used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from wsca_lightning.report.conditions import Trend
from wsca_lightning.report.records import FIX_SUMMARY, SUMMARY_PATH, Condition, RunRecord, Table
from wsca_lightning.report.statistics import finite, is_number, lookup, mean_sd, significant, spearman, task_p


def fmt(value: Any, spec: str = ".3f") -> str:
    if isinstance(value, str):
        return value
    x = finite(value)
    return "–" if x is None else format(x, spec)


def _pm(row: Mapping[str, Any], stem: str, spec: str = ".3f") -> str:
    mean, sd = row.get(f"{stem}_mean"), row.get(f"{stem}_sd")
    if finite(mean) is None:
        return "–"
    text = fmt(mean, spec) if finite(sd) is None else f"{fmt(mean, spec)} ± {fmt(sd, spec)}"
    return text + _used(row, f"{stem}_n")


def _used(row: Mapping[str, Any], count: str) -> str:
    """`` (n=k)`` when a statistic used fewer runs than the row's ``n``, so no cell claims more runs than it used."""
    used, total = row.get(count), row.get("n")
    if isinstance(used, int) and isinstance(total, int) and used < total:
        return f" (n={used})"
    return ""


def _col(key: str, spec: str = ".3f") -> Callable[[dict[str, Any]], str]:
    return lambda row: fmt(row.get(key), spec)


def _text(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: "" if row.get(key) is None else str(row.get(key))


def task_names(runs: Sequence[RunRecord]) -> list[str]:
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
                ("unprojected_max_abs", lambda t: lookup(t, "unprojected", "max_abs")),
                ("probe_auroc", lambda t: lookup(t, "probe", "auroc")),
                ("deconfounded_max_abs", lambda t: lookup(t, "deconfounded", "max_abs")),
                ("null_q95", lambda t: lookup(t, "null", "q95")),
            ):
                row[f"{stem}_mean"], row[f"{stem}_sd"], row[f"{stem}_n"] = mean_sd(getter(t) for t in entries)
            # significance and the median p over the runs whose p is usable: a missing p is neither yes nor no
            ps = [p for p in (task_p(t) for t in entries) if p is not None]
            row["p_n"] = len(ps)
            row["n_significant"] = sum(significant(t, alpha) for t in entries)
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
        ("median p", lambda r: "–" if r.get("median_p") is None else fmt(r["median_p"]) + _used(r, "p_n")),
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


def primary_accuracy(run: RunRecord) -> dict[str, Any]:
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
        accuracy = [primary_accuracy(run) for run in condition.runs]
        row: dict[str, Any] = {"condition_id": condition.id, "condition": condition.label,
                               **_factor_columns(condition, factors),
                               "primary": ", ".join(sorted({run.primary for run in condition.runs})),
                               "n": len(condition.runs)}
        for stem, metric in (("val_auroc", "auroc"), ("val_balanced_accuracy", "balanced_accuracy")):
            row[f"{stem}_mean"], row[f"{stem}_sd"], row[f"{stem}_n"] = mean_sd(a[stem] for a in accuracy)
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
                               "primary": run.primary, **primary_accuracy(run), "metrics_source": run.metrics_source}
        for name in tasks:
            task = run.tasks.get(name) or {}
            row[f"{name}_max_abs"] = finite(task.get("max_abs"))
            row[f"{name}_p"] = task_p(task)
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
        return fmt(value) if p is None else f"{fmt(value)} ({fmt(p, '.3g')})"

    return render


def run_k_sweep(run: RunRecord, tasks: Sequence[str]) -> dict[str, dict[Any, float | None]] | None:
    """``task -> {k or 'none': max|WSC|}`` of a run's summary ``k_sweep`` (None when absent or malformed)."""
    sweep = run.summary.get("k_sweep")
    if not isinstance(sweep, Mapping):
        return None
    ks, values = sweep.get("k"), sweep.get("max_abs")
    if not isinstance(ks, list) or not isinstance(values, Mapping):  # noted by check_summary
        return None
    out: dict[str, dict[Any, float | None]] = {}
    for name in tasks:
        series = values.get(name)
        if not isinstance(series, list):
            continue
        if len(series) != len(ks):
            run.notes.append(f"{run.path / SUMMARY_PATH}: field k_sweep.max_abs.{name} has {len(series)} values for "
                             f"{len(ks)} k: left out of the k sweep; {FIX_SUMMARY}")
            continue
        out[name] = {int(k) if is_number(k) else k: finite(v) for k, v in zip(ks, series)}
        out[name]["none"] = finite(lookup(run.tasks.get(name), "unprojected", "max_abs"))
    return out


def k_sweep_table(conditions: Sequence[Condition], factors: Sequence[str], tasks: Sequence[str]) -> Table | None:
    """``k_sweep``: per condition, task and number of principal components k (``none``: no projection), max|WSC| of
    the final epoch's heads, mean ± sd over seeds. None when no run has a ``k_sweep``."""
    rows = []
    for condition in conditions:
        sweeps = [s for s in (run_k_sweep(run, tasks) for run in condition.runs) if s is not None]
        for name in tasks:
            per_k: dict[Any, list[float | None]] = {}
            for sweep in sweeps:
                for k, value in (sweep.get(name) or {}).items():
                    per_k.setdefault(k, []).append(value)
            for k in ordered_ks(per_k):
                mean, sd, n = mean_sd(per_k[k])
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


def ordered_ks(keys: Iterable[Any]) -> list[Any]:
    keys = list(keys)
    return sorted((k for k in keys if is_number(k)), key=float) + [k for k in keys if not is_number(k)]


def trend_table(trend: Trend, tasks: Sequence[str]) -> Table:
    """``trend``: Spearman correlation between the numeric factor's level and the mean max|WSC| over seeds at that
    level, per task (and per combination of the other factors, if any)."""
    rows = []
    for series, conditions in trend.series:
        levels = [float(c.values[trend.factor]) for c in conditions]
        for name in tasks:
            means = [mean_sd(run.tasks[name].get("max_abs") for run in c.runs if name in run.tasks)[0]
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

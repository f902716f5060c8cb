"""The files an analysis leaves behind: ``wsc_summary.json`` entries, the per-task CSV table, atomic writes.

Used by the per-epoch callback and by the post-hoc ``wsca-analyze`` alike, so both write the same format
(documented in docs/outputs.md). Everything here is plain Python on top of :class:`WSCAnalysis`; no Lightning.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from wsca_lightning.plain import csv_cell

if TYPE_CHECKING:  # the report reads summaries without importing torch
    from wsca_lightning.wsc import WSCAnalysis

SUMMARY_FILENAME = "wsc_summary.json"
TABLE_FILENAME = "wsc_table.csv"
HEATMAP_FILENAME = "wsc_heatmap.png"

#: Columns of ``wsc_table.csv``, one row per metadata task.
TABLE_COLUMNS: tuple[str, ...] = (
    "task", "source", "max_abs", "mean_abs", "unprojected_max_abs", "z", "p", "B", "null_q95", "probe_auroc",
    "probe_auroc_ci_low", "probe_auroc_ci_high", "probe_balanced_accuracy", "interpretable", "deconfounded_max_abs",
    "deconfounded_p", "k", "reason", "test_p", "effect", "effect_ci_low", "effect_ci_high", "probe_split", "verdict",
)


def decision_p(task: Mapping[str, Any]) -> float | None:
    """The p-value a verdict reads, from a task's summary entry or history record: the shortcut test's ``p``
    (``test.p`` / ``test_p``), or the permutation null's for summaries written before the test existed."""
    test = task.get("test")
    if isinstance(test, Mapping):
        return test.get("p")
    if "test_p" in task:
        return task["test_p"]
    null = task.get("null")
    return null.get("p") if isinstance(null, Mapping) else task.get("p")


def summary_header(primary: str, requested_protocol: str, head_mode: str | None) -> dict[str, Any]:
    """The keys every ``wsc_summary.json`` starts with, whoever wrote it (the callback, ``wsca-analyze``,
    :func:`wsca_lightning.posthoc.analyze_model`): the primary task; ``protocol``, what the metadata directions
    compared were (``probe_refit``: probes refitted on the embeddings; otherwise the model's own heads, named by
    how they were trained: ``multitask``, ``probe_online``, or ``heads``/``mixed`` for a model without that
    notion); and ``head_mode``, the model's head training (``None`` for a model that does not say)."""
    return {"primary": primary, "protocol": analysis_protocol(requested_protocol, head_mode), "head_mode": head_mode}


def analysis_protocol(requested_protocol: str, head_mode: str | None) -> str:
    """What the compared metadata directions were: ``probe_refit``, or the model's heads named by how they were
    trained (``head_mode``; the requested protocol for a model that does not say)."""
    return "probe_refit" if requested_protocol == "probe_refit" else (head_mode or requested_protocol)


def analysis_entry(
    analysis: WSCAnalysis,
    primary_rows: Sequence[str],
    task_cols: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """The full record of one analysis: projection facts, every task (with row/column names) and the reference."""
    tasks: dict[str, Any] = {}
    for name, task in analysis.tasks.items():
        entry = task.to_dict()
        entry["rows"] = list(primary_rows)
        entry["cols"] = list(task_cols[name])
        if "identifiable" in entry:
            entry["identifiable"]["rows"] = _identifiable_names(primary_rows)
            entry["identifiable"]["cols"] = _identifiable_names(task_cols[name])
        tasks[name] = entry
    projection = analysis.projection
    return {
        "k": projection.k,
        "explained_variance": projection.explained_variance_ratio,
        "n_embeddings": analysis.n_fit + analysis.n_holdout,
        "n_fit": analysis.n_fit,
        "n_holdout": analysis.n_holdout,
        "embedding_dim": projection.embedding_dim,
        "settings": analysis.settings.to_dict(),
        "tasks": tasks,
        "reference": analysis.reference_dict(),
        **({"k_sweep": analysis.k_sweep} if analysis.k_sweep is not None else {}),
    }


def _identifiable_names(names: Sequence[str]) -> list[str]:
    return [f"{names[1]}-{names[0]}"] if len(names) == 2 else list(names)


def history_tasks(entry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-task scalars of one analysis entry, as kept in the history (and plotted over epochs)."""
    out: dict[str, dict[str, Any]] = {}
    for name, task in entry["tasks"].items():
        null = task.get("null") or {}
        deconfounded = task.get("deconfounded") or {}
        out[name] = {
            "max_abs": task["max_abs"],
            "mean_abs": task["mean_abs"],
            "p": null.get("p"),
            "z": null.get("z"),
            "q05": null.get("q05"),
            "q95": null.get("q95"),
            "probe_auroc": task["probe"]["auroc"],
            "interpretable": task["interpretable"],
            "deconfounded_max_abs": deconfounded.get("max_abs"),
            "deconfounded_p": deconfounded.get("p"),
            "test_p": decision_p(task),
            "effect": (task.get("test") or {}).get("effect"),
            "effect_ci": (task.get("test") or {}).get("effect_ci", [None, None]),
        }
    return out


def table_rows(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``wsc_table.csv`` rows (``TABLE_COLUMNS``) of one analysis entry."""
    rows = []
    for name, task in entry["tasks"].items():
        null = task.get("null") or {}
        deconfounded = task.get("deconfounded") or {}
        probe = task["probe"]
        test = task.get("test") or {}
        rows.append({
            "task": name,
            "source": task["source"],
            "max_abs": task["max_abs"],
            "mean_abs": task["mean_abs"],
            "unprojected_max_abs": task["unprojected"]["max_abs"],
            "z": null.get("z"),
            "p": null.get("p"),
            "B": null.get("B"),
            "null_q95": null.get("q95"),
            "probe_auroc": probe["auroc"],
            "probe_auroc_ci_low": probe["auroc_ci"][0],
            "probe_auroc_ci_high": probe["auroc_ci"][1],
            "probe_balanced_accuracy": probe["balanced_accuracy"],
            "interpretable": task["interpretable"],
            "deconfounded_max_abs": deconfounded.get("max_abs"),
            "deconfounded_p": deconfounded.get("p"),
            "k": entry["k"],
            "reason": task.get("reason") or deconfounded.get("reason"),
            "test_p": decision_p(task),
            "effect": test.get("effect"),
            "effect_ci_low": (test.get("effect_ci") or [None, None])[0],
            "effect_ci_high": (test.get("effect_ci") or [None, None])[1],
            "probe_split": probe.get("split"),
            "verdict": verdict(task),
        })
    return rows


def _atomic_write(path: str, text: str) -> None:
    """Write via a sibling ``.partial`` file and ``os.replace``: a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w", newline="") as f:
        f.write(text)
    os.replace(partial, path)


def write_json(obj: Any, path: str) -> None:
    """Atomic JSON write; NaN/inf are refused (``allow_nan=False``): the format is standard JSON."""
    _atomic_write(path, json.dumps(obj, indent=2, allow_nan=False))


def write_summary(summary: Mapping[str, Any], path: str) -> None:
    """Atomic ``wsc_summary.json`` write, stamped with the version of wsca_lightning that wrote it."""
    from wsca_lightning import __version__

    write_json({**summary, "wsca_lightning_version": __version__}, path)


def write_table(entry: Mapping[str, Any], path: str) -> None:
    """Atomic ``wsc_table.csv`` write (empty cells for missing values)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    for row in table_rows(entry):
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
    _atomic_write(path, buffer.getvalue())


def verdict(task: Mapping[str, Any], alpha: float = 0.05) -> str:
    """One word for a task: ``not interpretable``, ``significant`` (shortcut test p < alpha), ``n.s.`` or
    ``no null``."""
    if not task["interpretable"]:
        return "not interpretable"
    p = decision_p(task)
    if p is None:
        return "no null"
    return "significant" if p < alpha else "n.s."


def task_header(name: str, task: Mapping[str, Any], *, significance: str | None = None) -> str:
    """A task's header wherever its result is shown above a figure (the heatmap's column groups, the report's mean
    heatmaps), one fact a line: its name, ``significance`` when given (the report's ``2/3 p<0.05``), max |cos|, the
    verdict's p (if any), and ``not interpretable`` when the gate failed."""
    lines = [name]
    if significance is not None:
        lines.append(significance)
    max_abs = task.get("max_abs")
    if max_abs is not None:
        lines.append(f"max|cos| {float(max_abs):.2f}")
    p = decision_p(task)
    if p is not None:
        lines.append(f"p={float(p):.3g}")
    if task.get("interpretable") is False:
        lines.append("not interpretable")
    return "\n".join(lines)


def format_summary(summary: Mapping[str, Any], alpha: float = 0.05) -> str:
    """A console table of a summary: per task max |WSC|, its p and null 95th percentile, the probe's AUROC with
    its interval, the deconfounded value and the verdict."""

    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    splits = sorted({task["probe"].get("split", "subset_holdout") for task in summary["tasks"].values()})
    lines = [
        f"primary task '{summary['primary']}' ({summary.get('protocol')}), epoch {summary.get('epoch')}, "
        f"k = {summary['k']} principal components ({summary['explained_variance']:.1%} of the variance of "
        f"{summary['n_embeddings']} training embeddings); probe AUROC measured on: {', '.join(splits)}",
        f"{'metadata task':<18}{'max|WSC|':>9}{'effect [CI]':>22}{'p':>8}{'probe AUROC [CI]':>22}{'deconf.':>9}"
        "  verdict",
    ]
    for name, task in summary["tasks"].items():
        test = task.get("test") or {}
        probe = task["probe"]
        ci = probe["auroc_ci"]
        auroc = f"{num(probe['auroc'], '.3f')} [{num(ci[0], '.2f')}, {num(ci[1], '.2f')}]"
        effect_ci = test.get("effect_ci") or [None, None]
        effect = f"{num(test.get('effect'), '+.3f')} [{num(effect_ci[0], '+.2f')}, {num(effect_ci[1], '+.2f')}]"
        deconfounded = (task.get("deconfounded") or {}).get("max_abs")
        lines.append(f"{name:<18}{num(task['max_abs'], '.3f'):>9}{effect:>22}{num(decision_p(task), '.3f'):>8}"
                     f"{auroc:>22}{num(deconfounded, '.3f'):>9}  {verdict(task, alpha)}")
    lines.append(f"significant: shortcut test p < {alpha} (beyond the permutation null, the deconfounded probe's null "
                 "and metadata-blind primary heads) for an encoded task (probe AUROC interval above 0.5): the primary "
                 "head uses that metadata's directions. effect: max|WSC| minus the null's median, with its bootstrap "
                 "interval.")
    return "\n".join(lines)

"""The figures of one run: the per-epoch heatmap of head-vs-metadata cosines and the history of max |cos| and loss.

The callback draws them at epoch ends and fit end, ``wsca-analyze`` draws the heatmap; the report reuses the heatmap
for its per-condition means. No Lightning or Hydra import here: the inputs are plain mappings, so the figures can be
redrawn from a saved JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wsca_lightning.figures.canvas import load_matplotlib
from wsca_lightning.summary import decision_p, task_header

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = ["heatmap_figure", "history_figure"]

#: Colour range of the heatmap unless some |cos| is larger: probe-space cosines rarely exceed it, and a fixed
#: range keeps epochs and runs comparable by eye.
_DEFAULT_LIMIT = 0.5
#: Step to which an expanded colour range is rounded up.
_LIMIT_STEP = 0.05


def _color_limit(values: np.ndarray) -> float:
    """Symmetric colour limit: ±0.5, or the largest finite |value| rounded up to 0.05 when that is larger."""
    finite = np.abs(values[np.isfinite(values)])
    largest = float(finite.max()) if finite.size else 0.0
    if largest <= _DEFAULT_LIMIT:
        return _DEFAULT_LIMIT
    rounded = math.ceil(largest / _LIMIT_STEP - 1e-9) * _LIMIT_STEP
    return max(rounded, largest)


def heatmap_figure(
    tasks: Mapping[str, Mapping[str, Any]], primary: str, *, title: str | None = None
) -> Figure:
    """One heatmap of signed cosines: primary classes (rows) against every metadata class, grouped by task.

    ``tasks`` maps a metadata task to ``{"matrix", "rows", "cols", "interpretable", "null", "max_abs"}`` (a summary
    entry's task) and optionally ``"header"``, the text above its column group (default
    :func:`wsca_lightning.summary.task_header`); all tasks share ``rows``. Putting every task in one image with one
    colour scale makes tasks directly
    comparable. NaN cells are drawn grey.
    """
    mpl = load_matplotlib()
    if not tasks:
        raise ValueError("heatmap_figure needs at least one metadata task")

    names = list(tasks)
    rows = [str(r) for r in tasks[names[0]]["rows"]]
    blocks: list[np.ndarray] = []
    col_labels: list[str] = []
    bounds: list[tuple[int, int]] = []  # [start, stop) column range of each task
    for name in names:
        task = tasks[name]
        if [str(r) for r in task["rows"]] != rows:
            raise ValueError(f"task {name!r} has rows {list(task['rows'])}, expected {rows} (the primary classes)")
        cols = [str(c) for c in task["cols"]]
        block = np.asarray(task["matrix"], dtype=float).reshape(len(rows), len(cols))
        start = len(col_labels)
        blocks.append(block)
        col_labels.extend(cols)
        bounds.append((start, len(col_labels)))
    if not col_labels:
        raise ValueError("heatmap_figure needs at least one metadata class")
    data = np.concatenate(blocks, axis=1)
    n_rows, n_cols = data.shape
    limit = _color_limit(data)

    width = max(5.0, 1.0 + 0.55 * n_cols) + 1.5  # + colour bar and y labels
    height = max(3.0, 1.2 + 0.45 * n_rows) + 1.2  # + task headers and rotated x labels
    fig = mpl.figure.Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()

    cmap = mpl.colormaps["RdBu_r"].with_extremes(bad="0.75")  # a copy: the registered colour map is untouched
    image = ax.imshow(
        np.ma.masked_invalid(data),
        cmap=cmap,
        norm=mpl.colors.Normalize(vmin=-limit, vmax=limit),
        aspect="auto",
        interpolation="nearest",
    )

    for i in range(n_rows):
        for j in range(n_cols):
            value = data[i, j]
            if np.isfinite(value):
                text, color = f"{value:.2f}", ("white" if abs(value) > 0.6 * limit else "black")
            else:
                text, color = "n/a", "0.25"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)

    for start, _ in bounds[1:]:
        ax.axvline(start - 0.5, color="black", linewidth=1.2)
    header = mpl.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for name, (start, stop) in zip(names, bounds):
        task = tasks[name]
        ax.text(
            (start + stop - 1) / 2,
            1.02,
            task.get("header") or task_header(name, task),
            transform=header,
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.45" if task.get("interpretable") is False else "black",
            clip_on=False,
        )

    ax.set_xticks(range(n_cols), labels=col_labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n_rows), labels=rows)
    ax.set_ylabel(primary)
    ax.tick_params(length=0)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.9)
    colorbar.set_label("cos (projected)")
    fig.suptitle(title if title is not None else f"WSC: {primary} head vs metadata probes")
    return fig


def _as_float(value: Any) -> float:
    """None (no value this epoch) becomes NaN, which matplotlib leaves as a gap."""
    return float("nan") if value is None else float(value)


def _is_loss_key(key: str) -> bool:
    """``train/loss`` / ``val/loss`` style keys: a split and a loss, no per-task part."""
    parts = key.split("/")
    return len(parts) == 2 and parts[0] in ("train", "val") and parts[1].endswith("loss")


def history_figure(history: Sequence[Mapping[str, Any]], primary: str, *, alpha: float = 0.05) -> Figure:
    """Loss (and the primary's val AUROC) next to each task's max |cos| over epochs, with its permutation null.

    Seeing whether max |cos| rises above the null band as the loss falls is the point of running WSC during
    training. Filled markers: ``p < alpha``; open markers: not significant or no null. A task whose last entry is not
    interpretable is drawn dotted.
    """
    mpl = load_matplotlib()
    fig = mpl.figure.Figure(figsize=(11.0, 4.2), layout="constrained")
    ax_loss, ax_wsc = fig.subplots(1, 2, sharex=True)
    epochs = np.array([_as_float(entry.get("epoch")) for entry in history])

    # left: loss, plus the primary's validation AUROC on a twin axis
    metrics = [entry.get("metrics") or {} for entry in history]
    loss_keys = sorted({key for m in metrics for key in m if _is_loss_key(key)})
    handles = []
    for key in loss_keys:
        ys = np.array([_as_float(m.get(key)) for m in metrics])
        handles += ax_loss.plot(epochs, ys, marker="o", markersize=4, label=key)
    auroc_key = f"val/{primary}/auroc"
    if any(auroc_key in m for m in metrics):
        ax_auroc = ax_loss.twinx()
        ys = np.array([_as_float(m.get(auroc_key)) for m in metrics])
        handles += ax_auroc.plot(
            epochs, ys, linestyle="--", marker="s", markersize=4, color="tab:green", label=auroc_key
        )
        ax_auroc.set_ylabel("AUROC")
    if handles:
        ax_loss.legend(handles=handles, fontsize=8, loc="best")
    else:
        ax_loss.text(0.5, 0.5, "no loss metrics", transform=ax_loss.transAxes, ha="center", va="center", color="0.5")
    ax_loss.set_title("Loss")
    ax_loss.set_ylabel("loss")

    # right: max |cos| per task, null band q05..q95, marker fill by significance
    task_names: list[str] = []
    for entry in history:
        for name in entry.get("tasks") or {}:
            if name not in task_names:
                task_names.append(name)
    top = 0.0
    for index, name in enumerate(task_names):
        color = f"C{index % 10}"
        rows = [(entry.get("tasks") or {}).get(name) for entry in history]
        present = [r is not None for r in rows]
        rows_ = [r or {} for r in rows]
        xs = epochs[present]
        ys = np.array([_as_float(r.get("max_abs")) for r, ok in zip(rows_, present) if ok])
        ps = np.array([_as_float(decision_p(r)) for r, ok in zip(rows_, present) if ok])
        lo = np.array([_as_float(r.get("q05")) for r, ok in zip(rows_, present) if ok])
        hi = np.array([_as_float(r.get("q95")) for r, ok in zip(rows_, present) if ok])
        last = next((r for r in reversed(rows) if r is not None), {})
        dotted = last.get("interpretable") is False
        label = f"{name} (not interpretable)" if dotted else name
        ax_wsc.plot(xs, ys, linestyle=":" if dotted else "-", color=color, label=label)

        has_null = np.isfinite(lo) & np.isfinite(hi)
        if has_null.any():
            ax_wsc.fill_between(xs, lo, hi, where=has_null, color=color, alpha=0.15, linewidth=0)
            # a band has no width at a lone epoch, so also mark each epoch's null range
            ax_wsc.vlines(xs[has_null], lo[has_null], hi[has_null], color=color, alpha=0.3, linewidth=3)
            top = max(top, float(np.nanmax(hi[has_null])))
        significant = np.isfinite(ps) & (ps < alpha)
        finite = np.isfinite(ys)
        if (finite & significant).any():
            ax_wsc.scatter(xs[finite & significant], ys[finite & significant], color=color, s=30, zorder=3)
        if (finite & ~significant).any():
            ax_wsc.scatter(
                xs[finite & ~significant],
                ys[finite & ~significant],
                facecolors="none",
                edgecolors=color,
                s=30,
                zorder=3,
            )
        if finite.any():
            top = max(top, float(np.nanmax(ys)))

    if task_names:
        key_handles = [
            mpl.lines.Line2D([], [], linestyle="none", marker="o", color="0.3", label=f"p < {alpha:g}"),
            mpl.lines.Line2D(
                [], [], linestyle="none", marker="o", markerfacecolor="none", color="0.3",
                label=f"p >= {alpha:g} or no null",
            ),
        ]
        ax_wsc.legend(handles=ax_wsc.get_legend_handles_labels()[0] + key_handles, fontsize=8, loc="best")
    else:
        ax_wsc.text(0.5, 0.5, "no WSC results", transform=ax_wsc.transAxes, ha="center", va="center", color="0.5")
    ax_wsc.set_ylim(0.0, min(1.05, max(0.5, 1.1 * top)))
    ax_wsc.set_title("WSC")
    ax_wsc.set_ylabel("max |cos| (projected)")

    finite_epochs = epochs[np.isfinite(epochs)]
    if finite_epochs.size and finite_epochs.min() == finite_epochs.max():  # one epoch: avoid fractional ticks
        ax_wsc.set_xlim(finite_epochs[0] - 0.5, finite_epochs[0] + 0.5)
    for ax in (ax_loss, ax_wsc):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    fig.suptitle(f"WSC history: {primary}")
    return fig

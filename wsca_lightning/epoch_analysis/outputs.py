"""The files an analysed epoch leaves behind, and what goes to the experiment trackers.

Under the callback's directory: ``epoch_<NNNN>.npz`` matrices, ``heatmaps/epoch_<NNNN>.png`` and the latest
``wsc_heatmap.png``, ``wsc_table.csv`` and ``wsc_summary.json`` (all written atomically, so a killed run keeps its
last computed epoch), and at fit end ``wsc_over_epochs.png``. With the ``attribution`` option,
``attribution/<task>.png``
(the figure), ``.json`` (method, images, timing) and ``.npz`` (the per-image maps) per attributed task. Figures and
files reach the loggers that take them
through :mod:`wsca_lightning.tracking`. The callback decides when (global rank zero only); this module only writes.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from lightning.pytorch.loggers import Logger

from wsca_lightning.attribution import TaskAttribution
from wsca_lightning.figures import heatmap_figure, history_figure, save_figure
from wsca_lightning.figures.attribution import attribution_figure
from wsca_lightning.problems import ConfigError
from wsca_lightning.summary import (
    HEATMAP_FILENAME,
    SUMMARY_FILENAME,
    TABLE_FILENAME,
    write_json,
    write_summary,
    write_table,
)
from wsca_lightning.tracking import log_files, log_image

__all__ = ["ATTRIBUTION_DIR", "OVER_EPOCHS_FILENAME", "EpochOutputs", "check_output_paths", "write_attributions"]

OVER_EPOCHS_FILENAME = "wsc_over_epochs.png"
#: Subdirectory (of the WSC directory) of the attribution files: ``<task>.png``, ``<task>.json``, ``<task>.npz``.
ATTRIBUTION_DIR = "attribution"


def write_attributions(results: Mapping[str, TaskAttribution], directory: str, primary: str, *, examples: int,
                       context: Mapping[str, Any] | None = None, plots: bool = True) -> dict[str, str]:
    """Write each task's attribution under ``<directory>/attribution/``: ``<task>.json`` (method, images, timing,
    plus ``context``, e.g. the epoch), ``<task>.npz`` (``attributions`` ``(N, H, W)`` of the shared direction,
    ``decision_attributions`` of each image's primary decision, ``indices``, ``labels``, ``primary_labels``) and,
    with ``plots``, ``<task>.png`` (:func:`~wsca_lightning.figures.attribution.attribution_figure`). Returns the
    figures' paths by task."""
    out_dir = os.path.join(directory, ATTRIBUTION_DIR)
    os.makedirs(out_dir, exist_ok=True)
    figures = {}
    for name, result in results.items():
        base = os.path.join(out_dir, name)
        write_json({"primary": primary, **dict(context or {}), **result.to_dict()}, base + ".json")
        np.savez_compressed(base + ".npz", attributions=result.attributions.numpy().astype(np.float32),
                            decision_attributions=result.decision_attributions.numpy().astype(np.float32),
                            indices=np.asarray(result.indices), labels=result.labels.numpy(),
                            primary_labels=result.primary_labels.numpy())
        if plots:
            label_names = dict(context or {}).get("classes", {}).get(name)
            captions = [f"row {i}" + (f", {label_names[int(y)]}" if label_names and 0 <= int(y) < len(label_names)
                                      else "") for i, y in zip(result.indices, result.labels.tolist())]
            method = result.method + (f", {result.steps} steps" if result.steps else "")
            title = (f"middle: the {primary} head's class contrast most aligned with {name!r} (cosine with its span "
                     f"{result.share:.2f}); bottom: each image's own {primary} decision ({method})")
            figures[name] = base + ".png"
            save_figure(attribution_figure(result.images[:, 0].numpy(), result.attributions.numpy(),
                                           decisions=result.decision_attributions.numpy(), examples=examples,
                                           captions=captions, title=title), figures[name])
    return figures


def check_output_paths(directory: str) -> None:
    """Refuse before training (at setup, and in ``wsca-train`` before the data is built) what would fail at the
    first epoch end, after that epoch trained but before its checkpoint: an output path taken by the wrong kind
    of entry, or a directory that cannot be written. Raises :class:`ConfigError` keyed ``dirpath``."""
    problems = []
    for name in ("", "heatmaps"):
        path = os.path.join(directory, name)
        if os.path.exists(path) and not os.path.isdir(path):
            problems.append(f"{path} is a file where the WSC callback writes a directory")
    for name in (SUMMARY_FILENAME, TABLE_FILENAME, HEATMAP_FILENAME, OVER_EPOCHS_FILENAME):
        path = os.path.join(directory, name)
        if os.path.exists(path) and not os.path.isfile(path):
            problems.append(f"{path} is a directory where the WSC callback writes a file")
    existing = os.path.abspath(directory)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if os.path.isdir(existing) and not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"{existing} is not writable, so {directory} cannot be written")
    if problems:
        raise ConfigError.at("dirpath", "; ".join(problems) + ": remove or rename them, or set dirpath to another "
                                                              "directory")


class EpochOutputs:
    """Writes one run's WSC files under ``directory`` (``save_matrices``: the ``.npz`` files; ``save_plots``: the
    heatmaps and the fit-end figure)."""

    def __init__(self, directory: str, *, save_matrices: bool, save_plots: bool) -> None:
        self.directory = directory
        self.save_matrices = save_matrices
        self.save_plots = save_plots

    @property
    def summary_path(self) -> str:
        return os.path.join(self.directory, SUMMARY_FILENAME)

    @property
    def table_path(self) -> str:
        return os.path.join(self.directory, TABLE_FILENAME)

    def epoch_heatmap_path(self, epoch: int) -> str:
        return os.path.join(self.directory, "heatmaps", f"epoch_{epoch:04d}.png")

    # --- every analysed epoch (in the analysis's thread) --------------------------------------------------------
    def write_epoch(self, entry: Mapping[str, Any], primary: str, protocol: str) -> None:
        """The epoch's matrices, heatmap and table."""
        if self.save_matrices:
            self._write_matrices(entry)
        if self.save_plots:
            self._write_heatmap(entry, primary, title=f"WSC, epoch {entry['epoch']} ({protocol}, k={entry['k']})")
        write_table(entry, self.table_path)

    def _write_matrices(self, entry: Mapping[str, Any]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"k": np.asarray(entry["k"])}
        for name, task in entry["tasks"].items():
            arrays[name] = np.asarray(task["matrix"], dtype=np.float64)
            arrays[f"{name}__unprojected"] = np.asarray(task["unprojected"]["matrix"], dtype=np.float64)
            arrays[f"{name}__rows"] = np.asarray(task["rows"], dtype=str)
            arrays[f"{name}__cols"] = np.asarray(task["cols"], dtype=str)
        np.savez(os.path.join(self.directory, f"epoch_{entry['epoch']:04d}.npz"), **arrays)

    def _write_heatmap(self, entry: Mapping[str, Any], primary: str, title: str) -> None:
        epoch_png = self.epoch_heatmap_path(entry["epoch"])
        save_figure(heatmap_figure(entry["tasks"], primary, title=title), epoch_png)
        latest = os.path.join(self.directory, HEATMAP_FILENAME)
        shutil.copyfile(epoch_png, latest + ".partial")
        os.replace(latest + ".partial", latest)

    # --- on the training thread (tracking clients are not guaranteed to be thread-safe) -------------------------
    def write_attributions(self, loggers: Iterable[Logger], results: Mapping[str, TaskAttribution], primary: str, *,
                           examples: int, epoch: int, step: int, classes: Mapping[str, Sequence[str]]) -> None:
        """The attribution files of the final model (:func:`write_attributions`) and its figures to every logger
        that takes figures, as ``wsc/attribution/<task>`` (on the training thread, global rank zero)."""
        figures = write_attributions(results, self.directory, primary, examples=examples,
                                     context={"epoch": epoch, "classes": {t: list(c) for t, c in classes.items()}},
                                     plots=self.save_plots)
        for name, path in figures.items():
            log_image(loggers, f"wsc/attribution/{name}", path, epoch=epoch, step=step,
                      artifact_dir=f"wsc/{ATTRIBUTION_DIR}")

    def log_heatmap(self, loggers: Iterable[Logger], epoch: int, step: int) -> None:
        """The epoch's heatmap (as written) to every logger that takes figures, at the step of that epoch's
        scalars."""
        log_image(loggers, "wsc/heatmap", self.epoch_heatmap_path(epoch), epoch=epoch, step=step,
                  artifact_dir="wsc/heatmaps")

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_summary(summary, self.summary_path)

    def write_fit_end(self, loggers: Sequence[Logger], history: Sequence[Mapping[str, Any]], primary: str, *,
                      alpha: float, step: int, has_entry: bool) -> None:
        """At fit end: ``wsc_over_epochs.png`` (each task's WSC with its null band beside the loss curves) to the
        directory and the loggers, and the summary and table as files to the loggers that keep files."""
        if self.save_plots and history:
            over_epochs = os.path.join(self.directory, OVER_EPOCHS_FILENAME)
            save_figure(history_figure(history, primary, alpha=alpha), over_epochs)
            log_image(loggers, "wsc/over_epochs", over_epochs, epoch=history[-1]["epoch"], step=step,
                      artifact_dir="wsc")
        if has_entry:
            # the table is the last computed epoch's; a run resumed into another directory may not have written it
            files = [self.summary_path, self.table_path]
            log_files(loggers, [path for path in files if os.path.exists(path)], artifact_dir="wsc")

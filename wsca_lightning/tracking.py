"""Figures and files to whichever experiment trackers a run logs to: one place for each tracker's way of taking them.

Every Lightning logger takes scalars (``log_metrics``); figures and files each tracker takes its own way, or not at
all. The callback hands what it writes to :func:`log_image` and :func:`log_files`, which send it on per logger:

* TensorBoard: figures as images (``add_image``); it has no place for files, so they are skipped.
* MLflow: figures and files as artifacts of the logger's run, under ``artifact_dir`` (``wsc/heatmaps/...``,
  ``wsc/wsc_summary.json``), through the logger's own client, so they land wherever its tracking URI points.
* Weights & Biases: figures as ``wandb.Image`` rows of the run's history (``WandbLogger.log_image``); files copied
  into the run's own ``files/`` directory and saved there (``run.save``). Files rather than an Artifact because an
  offline run then holds them inside its directory, which ``wandb sync`` uploads later (an offline Artifact is
  staged in the user's cache instead, outside the run).
* Any other logger (CSV, a user's own): nothing; it has the scalars.

Dispatch is by logger class; nothing here imports mlflow or wandb: a logger of those kinds exists only when its
library is installed, and its own client does the work. Call these on global rank zero and on the training thread:
tracking clients are not guaranteed to be thread-safe.
"""

from __future__ import annotations

import os
import shutil
from typing import Iterable, Sequence

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger


def log_image(loggers: Iterable[Logger], tag: str, png_path: str | os.PathLike[str], *, epoch: int, step: int,
              artifact_dir: str) -> None:
    """Send the figure already written at ``png_path`` to every logger that takes figures, as ``tag``.

    ``step`` is the loggers' step of the epoch the figure shows (where that epoch's ``wsc/...`` scalars are), so
    figure and scalars line up in TensorBoard and W&B; ``epoch`` captions the W&B image. MLflow artifacts are
    indexed by their file name (the callback's names carry the epoch).
    """
    path = os.fspath(png_path)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            from matplotlib.image import imread

            image = imread(path)[..., :3]  # RGB, without the alpha channel TensorBoard does not show
            logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, path, artifact_dir)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[path], caption=[f"epoch {epoch}"], step=step)


def log_files(loggers: Iterable[Logger], paths: Sequence[str | os.PathLike[str]], artifact_dir: str) -> None:
    """Send the files at ``paths`` (already written) to every logger that keeps files, under ``artifact_dir``."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            for path in paths:
                logger.experiment.log_artifact(logger.run_id, os.fspath(path), artifact_dir)
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            target_dir = os.path.join(run.dir, artifact_dir)
            os.makedirs(target_dir, exist_ok=True)
            for path in paths:
                target = shutil.copy2(path, target_dir)
                run.save(target, base_path=run.dir, policy="now")

"""Every figure the package draws, built on matplotlib ``Figure`` objects without pyplot.

* :mod:`~wsca_lightning.figures.canvas`: the lazy matplotlib import and atomic saving (:func:`save_figure`);
* :mod:`~wsca_lightning.figures.single_run`: one run's figures, written by the callback and ``wsca-analyze``
  (:func:`heatmap_figure`, :func:`history_figure`);
* :mod:`~wsca_lightning.figures.comparison`: the figures of ``wsca-report``, comparing runs grouped into conditions.

Nothing here imports torch, Lightning or Hydra: figures are drawn from the plain summaries on disk.
"""

from wsca_lightning.figures.canvas import load_matplotlib, save_figure
from wsca_lightning.figures.single_run import heatmap_figure, history_figure

__all__ = ["heatmap_figure", "history_figure", "load_matplotlib", "save_figure"]

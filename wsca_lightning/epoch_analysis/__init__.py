"""One training epoch's WSC analysis, in the parts the callback (:mod:`wsca_lightning.callbacks.wsc`) runs:

* :mod:`~wsca_lightning.epoch_analysis.evaluator`: embed the fixed subset with the module in eval mode and run the
  analysis (:class:`EpochEvaluator`, also what ``wsca-analyze`` uses, with the embedding loops), and attribute the
  directions the primary head shares with significant tasks to pixels (:func:`attribution_tasks`);
* :mod:`~wsca_lightning.epoch_analysis.alarm`: the shortcut alarm (:class:`AlarmSettings`, :class:`ShortcutAlarm`);
* :mod:`~wsca_lightning.epoch_analysis.outputs`: the epoch's files and what reaches the loggers
  (:class:`EpochOutputs`, :func:`check_output_paths`).

The numbers themselves come from the pure core, :mod:`wsca_lightning.wsc`. ``evaluator`` and ``alarm`` import no
Lightning; ``outputs`` uses Lightning's logger classes only to hand figures to trackers.
"""

from wsca_lightning.epoch_analysis.alarm import ALARM_ACTIONS, AlarmSettings, ShortcutAlarm
from wsca_lightning.epoch_analysis.evaluator import (
    PROTOCOLS,
    EmbeddedSubset,
    EpochEvaluator,
    analysis_view,
    attribution_tasks,
    embed_batches,
    embed_dataset,
    head_classes,
    subset_batches,
)

__all__ = [
    "ALARM_ACTIONS",
    "PROTOCOLS",
    "AlarmSettings",
    "EmbeddedSubset",
    "EpochEvaluator",
    "ShortcutAlarm",
    "analysis_view",
    "attribution_tasks",
    "embed_batches",
    "embed_dataset",
    "head_classes",
    "subset_batches",
]

"""Lightning callbacks of wsca_lightning: :class:`WeightSpaceCorrelation`, the per-epoch WSC hook."""

from wsca_lightning.callbacks.wsc import WeightSpaceCorrelation
from wsca_lightning.epoch_analysis.evaluator import embed_dataset
from wsca_lightning.summary import SUMMARY_FILENAME

__all__ = ["SUMMARY_FILENAME", "WeightSpaceCorrelation", "embed_dataset"]

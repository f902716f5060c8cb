"""Lightning callbacks of wsca_lightning."""

from wsca_lightning.callbacks.wsc import SUMMARY_FILENAME, WeightSpaceCorrelation, embed_dataset

__all__ = ["SUMMARY_FILENAME", "WeightSpaceCorrelation", "embed_dataset"]

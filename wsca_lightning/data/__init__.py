"""Datamodules: the built-in synthetic ultrasound data."""

from wsca_lightning.data.datamodule import SyntheticUltrasoundDataModule
from wsca_lightning.data.synthetic import SyntheticUltrasoundDataset

__all__ = ["SyntheticUltrasoundDataModule", "SyntheticUltrasoundDataset"]

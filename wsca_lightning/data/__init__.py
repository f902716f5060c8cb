"""Datamodules: the built-in synthetic ultrasound data and a user's own images listed in a manifest."""

from wsca_lightning.data.datamodule import SyntheticUltrasoundDataModule
from wsca_lightning.data.manifest_datamodule import ManifestDataModule
from wsca_lightning.data.synthetic import SyntheticUltrasoundDataset

__all__ = ["ManifestDataModule", "SyntheticUltrasoundDataModule", "SyntheticUltrasoundDataset"]

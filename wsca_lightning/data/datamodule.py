"""LightningDataModule for the built-in synthetic cervix ultrasound data (see :mod:`wsca_lightning.data.synthetic`).

The template (config schema, validation, label spaces, ``setup``) is :class:`~wsca_lightning.data.generated.
GeneratedDataModule`; the heads are declared as in :mod:`wsca_lightning.tasks`. This module says what is particular
to the built-in data: its columns and default heads, its generation options and how a split is drawn and rendered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from wsca_lightning.data.generated import GeneratedDataModule
from wsca_lightning.data.synthetic import (
    PRETERM_CLASSES,
    REFERRAL_CLASSES,
    RISK_CLASSES,
    SYNTHETIC_COLUMNS,
    SyntheticUltrasoundDataset,
    check_synthetic_options,
    column_classes,
    sample_metadata,
    split_generator,
)
from wsca_lightning.plain import to_plain
from wsca_lightning.problems import Problem

__all__ = ["DEFAULT_METADATA", "DEFAULT_TARGET", "SyntheticUltrasoundDataModule"]

DEFAULT_TARGET: dict[str, Any] = {"column": "risk", "type": "categorical"}
DEFAULT_METADATA: dict[str, dict[str, Any]] = {
    "scanner": {"column": "scanner", "type": "categorical"},
    "hospital": {"column": "hospital", "type": "categorical"},
    "spacing": {"column": "pixel_spacing", "type": "continuous", "bins": 4, "binning": "equal_width"},
    "cervical_length": {"column": "cervical_length", "type": "continuous", "bins": 4, "binning": "equal_width"},
}


class SyntheticUltrasoundDataModule(GeneratedDataModule):
    """Train/val splits of the synthetic cervix data with a primary head and metadata heads.

    Args:
        num_train, num_val: samples per split.
        image_size: (H, W), multiples of 16.
        in_channels: 1 (image) or 8 (SA-SonoNet: image, 5 segmentation maps, spacing x and y planes).
        shortcut_strength: scanner-label association in the training split (0 independent, 1 deterministic).
        num_scanners, num_hospitals, missing_fraction, normalization, seed: see
            :class:`~wsca_lightning.data.synthetic.SyntheticUltrasoundDataset`.
        target: the primary head, ``{"column", "type", ["bins", "binning"], ["name"]}``; default ``risk``.
        metadata: ``{head name: {"column", "type", ["bins", "binning"]}}``; default :data:`DEFAULT_METADATA`;
            ``{}`` for the primary head only.
        subset: the paper's training subsets (§3.4), ``{mode: full|balanced|biased, by: <metadata head>, per_cell,
            major, minor, seed}`` (:func:`~wsca_lightning.data.splits.select_subset`): ``num_train`` is then the pool
            the cells are drawn from (its metadata is drawn, only the chosen rows are rendered) and bin edges are
            fitted on the whole pool, so full/balanced/biased runs share their label spaces. ``null`` = full. With
            ``val: {per_cell, major, minor}`` the validation split (pool ``num_val``) is subset the same way.
        batch_size, num_workers: DataLoader options.
        on_device: keep both splits on the trainer's device and cut batches there
            (:class:`~wsca_lightning.data.base.DeviceResidentDataset`; needs ``num_workers=0``): for GPU training,
            where a CPU loader would bound the step rate.

    Everything is validated in ``__init__``, before anything is rendered, and every problem is reported at once;
    :meth:`setup` draws and renders (the template: :class:`~wsca_lightning.data.generated.GeneratedDataModule`).
    """

    COLUMNS = SYNTHETIC_COLUMNS
    DEFAULT_TARGET = DEFAULT_TARGET
    DEFAULT_METADATA = DEFAULT_METADATA
    TITLE = "invalid synthetic data config"

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 500,
        image_size: Sequence[int] = (64, 80),
        in_channels: int = 1,
        shortcut_strength: float = 0.0,
        num_scanners: int = 3,
        num_hospitals: int = 4,
        missing_fraction: float = 0.0,
        normalization: str = "sononet",
        target: Mapping | None = None,
        metadata: Mapping[str, Mapping] | None = None,
        subset: Mapping | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        on_device: bool = False,
        seed: int = 0,
    ) -> None:
        image_size = to_plain(image_size, "image_size")
        # the generation options go unchanged to check_synthetic_options and to both splits' datasets
        options: dict[str, Any] = {
            "image_size": tuple(image_size) if isinstance(image_size, list) else image_size,
            "in_channels": in_channels,
            "shortcut_strength": shortcut_strength,
            "num_scanners": num_scanners,
            "num_hospitals": num_hospitals,
            "missing_fraction": missing_fraction,
            "normalization": normalization,
        }
        super().__init__(options, num_train=num_train, num_val=num_val, target=target, metadata=metadata,
                         subset=subset, batch_size=batch_size, num_workers=num_workers, seed=seed, on_device=on_device)

    def _option_problems(self, options: Mapping[str, Any]) -> list[Problem]:
        return check_synthetic_options(**options)

    def _class_counts(self, options: Mapping[str, Any], invalid: set[str]) -> dict[str, int | None]:
        return {
            "risk": len(RISK_CLASSES),
            "scanner": None if "num_scanners" in invalid else options["num_scanners"],
            "hospital": None if "num_hospitals" in invalid else options["num_hospitals"],
            "preterm": len(PRETERM_CLASSES),
            "referral": len(REFERRAL_CLASSES),
        }

    def _classes(self, column: str) -> list[str]:
        return column_classes(column, self.dataset_options["num_scanners"], self.dataset_options["num_hospitals"])

    def _sample_pool(self, split: str, n: int) -> dict[str, Tensor]:
        opts = self.dataset_options
        # only the training pool is associated; its metadata fix the label spaces before anything is rendered
        return sample_metadata(n, shortcut_strength=opts["shortcut_strength"] if split == "train" else 0.0,
                               num_scanners=opts["num_scanners"], num_hospitals=opts["num_hospitals"],
                               missing_fraction=opts["missing_fraction"], image_size=self.image_size,
                               generator=split_generator(self.seed, split))

    def _dataset(self, split: str, n: int, rows: list[int] | None) -> SyntheticUltrasoundDataset:
        return SyntheticUltrasoundDataset(split, n, **self.dataset_options, seed=self.seed, rows=rows)

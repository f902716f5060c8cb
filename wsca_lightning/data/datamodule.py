"""LightningDataModule for the built-in synthetic cervix ultrasound data (see :mod:`wsca_lightning.data.synthetic`).

The datamodule turns a small config (a primary ``target`` and a mapping of ``metadata`` heads) into task specs and
per-sample labels:

* categorical columns keep their codes (``-1`` when missing);
* ``binary`` is allowed for a categorical column with exactly 2 classes (e.g. ``scanner`` when ``num_scanners=2``);
* continuous columns are binned with :func:`~wsca_lightning.wsc.binning.fit_bin_edges` fitted on the *training*
  split only and applied to both splits with :func:`~wsca_lightning.wsc.binning.digitize` (values outside the
  training range fall into the first/last bin, NaN becomes ``-1``).

All options are validated in ``__init__``, before anything is rendered, and every problem is reported at once in
one ``ValueError`` (one line per problem, prefixed with its key path in the data config).
"""

from __future__ import annotations

import copy
from functools import partial
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from wsca_lightning.data.base import TaskDataModule, integer_problems, on_device_problems
from wsca_lightning.data.splits import check_subset_config, configured_subset
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
from wsca_lightning.plain import is_int, to_plain
from wsca_lightning.tasks import TASK_KINDS, TaskSpec
from wsca_lightning.wsc.binning import BINNING_METHODS, bin_names, digitize, fit_bin_edges

__all__ = [
    "DEFAULT_METADATA",
    "DEFAULT_TARGET",
    "SyntheticUltrasoundDataModule",
    "pool_labels",
    "split_labels",
    "subset_rows",
    "validate_task_config",
]

DEFAULT_TARGET: dict[str, Any] = {"column": "risk", "type": "categorical"}
DEFAULT_METADATA: dict[str, dict[str, Any]] = {
    "scanner": {"column": "scanner", "type": "categorical"},
    "hospital": {"column": "hospital", "type": "categorical"},
    "spacing": {"column": "pixel_spacing", "type": "continuous", "bins": 4, "binning": "equal_width"},
    "cervical_length": {"column": "cervical_length", "type": "continuous", "bins": 4, "binning": "equal_width"},
}
_HEAD_KEYS: tuple[str, ...] = ("column", "type", "bins", "binning")
_TARGET_KEYS: tuple[str, ...] = (*_HEAD_KEYS, "name")
_DEFAULT_BINS = 4
_DEFAULT_BINNING = "equal_width"


def _bad_name(name: object) -> bool:
    return not isinstance(name, str) or not name or "/" in name or "." in name


def _check_head(
    path: str, head: Any, class_counts: Mapping[str, int | None], valid_keys: tuple[str, ...],
    columns: Mapping[str, str] = SYNTHETIC_COLUMNS,
) -> tuple[list[str], dict[str, Any] | None]:
    """Validate one head config; returns (errors, normalised head with defaults filled, or None if unusable)."""
    if not isinstance(head, Mapping):
        return [f"{path}: must be a mapping with keys {', '.join(valid_keys)}, got {head!r}"], None
    errors: list[str] = []
    for key in head:
        if key not in valid_keys:
            errors.append(f"{path}.{key}: unknown key; valid keys: {', '.join(valid_keys)}")
    column = head.get("column")
    kind = head.get("type")
    bins = head.get("bins")
    binning = head.get("binning")
    column_kind: str | None = None
    if column is None:
        errors.append(f"{path}: a {'target' if path == 'target' else 'metadata head'} needs a 'column'")
    elif not isinstance(column, str) or column not in columns:
        errors.append(
            f"{path}.column: {column!r} is not a column of the built-in dataset; "
            f"available: {', '.join(columns)}"
        )
    else:
        column_kind = columns[column]
    if kind is None:
        kind = column_kind  # the column's own kind is the only sensible default
    elif kind not in TASK_KINDS:
        errors.append(f"{path}.type: must be one of {', '.join(TASK_KINDS)}, got {kind!r}")
        kind = None
    if kind is not None and column_kind is not None:
        if kind == "continuous" and column_kind != "continuous":
            errors.append(f"{path}.type: column {column!r} is {column_kind}, not continuous")
        elif kind == "categorical" and column_kind != "categorical":
            errors.append(
                f"{path}.type: column {column!r} is {column_kind}, not categorical (declare it continuous with bins)"
            )
        elif kind == "binary":
            count = class_counts.get(column)
            if column_kind != "categorical":
                errors.append(
                    f"{path}.type: column {column!r} is {column_kind}; binary needs a categorical column with "
                    "exactly 2 classes"
                )
            elif count is not None and count != 2:
                errors.append(f"{path}.type: binary needs a column with exactly 2 classes; {column!r} has {count}")
    if kind == "continuous":
        bins = _DEFAULT_BINS if bins is None else bins
        binning = _DEFAULT_BINNING if binning is None else binning
        if not is_int(bins) or bins < 2:
            errors.append(f"{path}.bins: continuous heads need bins >= 2, got {bins!r}")
        if binning not in BINNING_METHODS:
            errors.append(f"{path}.binning: must be one of {', '.join(BINNING_METHODS)}, got {binning!r}")
    elif kind is not None:
        for key, value in (("bins", bins), ("binning", binning)):
            if value is not None:
                errors.append(f"{path}.{key}: only continuous heads are binned; remove it from this {kind} head")
    if errors:
        return errors, None
    out: dict[str, Any] = {"column": column, "type": kind}
    if kind == "continuous":
        out.update(bins=bins, binning=binning)
    return errors, out


def validate_task_config(
    target: Mapping | None,
    metadata: Mapping[str, Mapping] | None,
    class_counts: Mapping[str, int | None],
    *,
    columns: Mapping[str, str] = SYNTHETIC_COLUMNS,
    default_target: Mapping[str, Any] = DEFAULT_TARGET,
    default_metadata: Mapping[str, Mapping[str, Any]] = DEFAULT_METADATA,
) -> tuple[list[str], dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """Check the target and metadata heads against a dataset's ``columns`` (name -> kind; default the synthetic
    columns, with their default target and heads).

    Returns ``(errors, target, metadata)`` with defaults filled in and everything converted to plain Python; the
    target gains its task ``name``. A head set to ``None`` is left out (Hydra merges configs and cannot delete a
    default head, so ``data.metadata.<head>=null`` is how an experiment or a command line removes one).
    ``class_counts`` maps categorical columns to their number of classes (None when unknown because the option
    defining it is itself invalid).
    """
    errors: list[str] = []
    target = copy.deepcopy(dict(default_target)) if target is None else to_plain(target, "target")
    metadata = copy.deepcopy(to_plain(default_metadata)) if metadata is None else to_plain(metadata, "metadata")

    target_errors, target_head = _check_head("target", target, class_counts, _TARGET_KEYS, columns)
    errors += target_errors
    primary_name: str | None = None
    if isinstance(target, Mapping):
        primary_name = target.get("name", target.get("column"))
        if "name" in target and _bad_name(primary_name):
            errors.append(f"target.name: must be a non-empty string without '/' or '.', got {primary_name!r}")
            primary_name = None
    if target_head is not None and primary_name is not None:
        target_head["name"] = primary_name

    heads: dict[str, dict[str, Any]] = {}
    if not isinstance(metadata, Mapping):
        errors.append(f"metadata: must be a mapping of head name -> head config, got {metadata!r}")
        metadata = {}
    for name, head in metadata.items():
        path = f"metadata.{name}"
        if head is None:  # drops a head of the defaults: data.metadata.hospital=null (configs merge, never delete)
            continue
        if _bad_name(name):
            errors.append(f"{path}: head name {name!r} must be a non-empty string without '/' or '.'")
            continue
        if name == primary_name:
            errors.append(f"{path}: head name {name!r} is already the primary task's name")
        head_errors, checked = _check_head(path, head, class_counts, _HEAD_KEYS, columns)
        errors += head_errors
        if isinstance(head, Mapping) and target_head is not None and head.get("column") == target_head["column"]:
            errors.append(
                f"{path}.column: {head.get('column')!r} is the primary target's column; a metadata head must use "
                "another column"
            )
        if checked is not None:
            heads[name] = checked
    return errors, target_head, heads


def pool_labels(
    heads: Sequence[tuple[str, Mapping[str, Any]]],
    pool: Mapping[str, Tensor],
    classes: Callable[[str], Sequence[str]],
    primary: str,
) -> tuple[list[TaskSpec], dict[str, Tensor]]:
    """Task specs and labels of a generated training pool: categorical columns keep their codes (class names from
    ``classes(column)``), continuous ones are binned with edges fitted on the whole pool, so every subset drawn from
    it (full / balanced / biased) shares the same label spaces. ``heads`` is ``[(task, head config), ...]``, primary
    first."""
    specs: list[TaskSpec] = []
    targets: dict[str, Tensor] = {}
    for name, head in heads:
        column = head["column"]
        if head["type"] == "continuous":
            try:
                edges = fit_bin_edges(pool[column], head["bins"], head["binning"])
            except ValueError as err:
                path = "target" if name == primary else f"metadata.{name}"
                raise ValueError(f"{path}: cannot bin column {column!r} on the training split: {err}") from err
            specs.append(TaskSpec(name, "continuous", tuple(bin_names(edges)), tuple(float(e) for e in edges)))
            targets[name] = digitize(pool[column], edges)
        else:
            specs.append(TaskSpec(name, head["type"], tuple(classes(column))))
            targets[name] = pool[column].to(torch.int64)
    return specs, targets


def split_labels(
    heads: Sequence[tuple[str, Mapping[str, Any]]], specs: Sequence[TaskSpec], columns: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Labels of another split (validation) in the label spaces :func:`pool_labels` fitted on the training pool."""
    out: dict[str, Tensor] = {}
    for spec, (name, head) in zip(specs, heads):
        values = columns[head["column"]]
        out[name] = (digitize(values, torch.tensor(spec.bin_edges, dtype=torch.float64))
                     if head["type"] == "continuous" else values.to(torch.int64))
    return out


def subset_rows(
    subset: Mapping[str, Any], specs: Sequence[TaskSpec], targets: Mapping[str, Tensor], part: str = "train"
) -> list[int] | None:
    """The pool rows of the configured subset of one split (:func:`~wsca_lightning.data.splits.configured_subset`;
    the primary task is ``specs[0]``), or None when the split is used whole."""
    if subset["mode"] == "full":
        return None
    by_spec = next(spec for spec in specs if spec.name == subset["by"])
    return configured_subset(subset, targets[specs[0].name].tolist(), targets[by_spec.name].tolist(), part=part,
                             primary_names=list(specs[0].class_names), by_names=list(by_spec.class_names))


class SyntheticUltrasoundDataModule(TaskDataModule):
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

    After ``__init__``: :attr:`input_shape`, :attr:`primary_task`. After :meth:`setup`: :attr:`task_specs`,
    :attr:`train_dataset`, :attr:`val_dataset` (each item's ``targets`` has one label per task).
    """

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
        super().__init__()
        image_size = to_plain(image_size, "image_size")
        if isinstance(image_size, list):
            image_size = tuple(image_size)
        # the generation options go unchanged to check_synthetic_options and to both splits' datasets
        options: dict[str, Any] = {
            "image_size": image_size,
            "in_channels": in_channels,
            "shortcut_strength": shortcut_strength,
            "num_scanners": num_scanners,
            "num_hospitals": num_hospitals,
            "missing_fraction": missing_fraction,
            "normalization": normalization,
        }
        errors = check_synthetic_options(**options)
        errors += integer_problems((("num_train", num_train, 1), ("num_val", num_val, 1), ("batch_size", batch_size, 1),
                                    ("num_workers", num_workers, 0), ("seed", seed, 0)))
        errors += on_device_problems(on_device, num_workers)
        class_counts: dict[str, int | None] = {
            "risk": len(RISK_CLASSES),
            "scanner": num_scanners if not any(e.startswith("num_scanners:") for e in errors) else None,
            "hospital": num_hospitals if not any(e.startswith("num_hospitals:") for e in errors) else None,
            "preterm": len(PRETERM_CLASSES),
            "referral": len(REFERRAL_CLASSES),
        }
        task_errors, target_head, heads = validate_task_config(target, metadata, class_counts)
        errors += task_errors
        subset = None if subset is None else to_plain(subset, "subset")
        subset_errors, subset_config = check_subset_config(subset, list(heads), seed if is_int(seed) else 0)
        errors += subset_errors
        if errors:
            raise ValueError(
                "invalid synthetic data config (" + f"{len(errors)} problem{'s' * (len(errors) > 1)}):\n  "
                + "\n  ".join(errors)
            )
        assert target_head is not None

        self.num_train = num_train
        self.num_val = num_val
        self.image_size: tuple[int, int] = (int(image_size[0]), int(image_size[1]))
        self.dataset_options: dict[str, Any] = {**options, "image_size": self.image_size}
        self.target: dict[str, Any] = target_head
        self.metadata: dict[str, dict[str, Any]] = heads
        self.subset: dict[str, Any] = subset_config
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_device = on_device
        self.seed = seed
        # Plain Python only: checkpoints load with weights_only=True.
        self.save_hyperparameters(
            to_plain(
                {
                    "num_train": num_train,
                    "num_val": num_val,
                    **self.dataset_options,
                    "target": target_head,
                    "metadata": heads,
                    "subset": subset_config,
                    "batch_size": batch_size,
                    "num_workers": num_workers,
                    "on_device": on_device,
                    "seed": seed,
                },
                "hparams",
            )
        )

        self.input_shape: tuple[int, int, int] = (int(in_channels), *self.image_size)
        self.primary_task: str = target_head["name"]

    # ----------------------------------------------------------------------------------------------------------------

    def _heads(self) -> list[tuple[str, dict[str, Any]]]:
        return [(self.primary_task, self.target), *self.metadata.items()]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return  # idempotent: render once per process
        pool_options = {key: self.dataset_options[key] for key in ("num_scanners", "num_hospitals", "missing_fraction")}
        pool_options["image_size"] = self.image_size
        # the training pool: its labels fix the label spaces, its subset is what gets rendered
        pool = sample_metadata(self.num_train, shortcut_strength=self.dataset_options["shortcut_strength"],
                               **pool_options, generator=split_generator(self.seed, "train"))
        classes = partial(column_classes, num_scanners=self.dataset_options["num_scanners"],
                          num_hospitals=self.dataset_options["num_hospitals"])
        specs, pool_targets = pool_labels(self._heads(), pool, classes, self.primary_task)
        rows = subset_rows(self.subset, specs, pool_targets)
        # validation is never associated (the dataset draws it with shortcut_strength 0)
        val_pool = sample_metadata(self.num_val, shortcut_strength=0.0, **pool_options,
                                   generator=split_generator(self.seed, "val"))
        val_targets = split_labels(self._heads(), specs, val_pool)
        val_rows = subset_rows(self.subset, specs, val_targets, part="val")
        train = SyntheticUltrasoundDataset("train", self.num_train, **self.dataset_options, seed=self.seed, rows=rows)
        val = SyntheticUltrasoundDataset("val", self.num_val, **self.dataset_options, seed=self.seed, rows=val_rows)
        for dataset, targets in ((train, pool_targets), (val, val_targets)):
            index = torch.tensor(dataset.rows, dtype=torch.int64)
            dataset.set_targets({name: value[index] for name, value in targets.items()})

        self.train_dataset, self.val_dataset = train, val
        self._set_task_specs(specs)

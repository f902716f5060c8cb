"""The template of the generated-data datamodules (built-in cervix scans, Fashion-MNIST scans): one config schema,
one validation in ``__init__``, one ``setup`` that draws the pools, fits the label spaces and renders.

A subclass says only what differs: its columns and default heads, its generation options and their checks, how it
draws a split's pool of metadata and how it renders a split. Labels:

* categorical columns keep their codes (``-1`` when missing);
* ``binary`` is allowed for a categorical column with exactly 2 classes;
* continuous columns are binned with :func:`~wsca_lightning.wsc.binning.fit_bin_edges` fitted on the whole training
  pool and applied to both splits with :func:`~wsca_lightning.wsc.binning.digitize` (values outside the training
  range fall into the first/last bin, NaN becomes ``-1``), so full / balanced / biased subsets share label spaces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from wsca_lightning.data.base import GeneratedImageDataset, TaskDataModule, on_device_problems
from wsca_lightning.data.splits import check_subset_config, configured_subset
from wsca_lightning.plain import is_int, to_plain
from wsca_lightning.problems import ConfigError, Problem, integer_problems, raise_if
from wsca_lightning.tasks import HeadConfig, TaskSpec, check_heads
from wsca_lightning.wsc.binning import bin_names, digitize, fit_bin_edges

__all__ = ["GeneratedDataModule", "pool_labels", "split_labels", "subset_rows"]


def pool_labels(
    heads: Sequence[tuple[str, HeadConfig]],
    pool: Mapping[str, Tensor],
    classes: Callable[[str], Sequence[str]],
    primary: str,
) -> tuple[list[TaskSpec], dict[str, Tensor]]:
    """Task specs and labels of a generated training pool: categorical columns keep their codes (class names from
    ``classes(column)``), continuous ones are binned with edges fitted on the whole pool, so every subset drawn from
    it (full / balanced / biased) shares the same label spaces. ``heads`` is ``[(task, head), ...]``, primary
    first."""
    specs: list[TaskSpec] = []
    targets: dict[str, Tensor] = {}
    for name, head in heads:
        column = head.column
        if head.type == "continuous":
            try:
                edges = fit_bin_edges(pool[column], head.num_bins, head.binning)  # type: ignore[arg-type]
            except ValueError as err:
                key = "target" if name == primary else f"metadata.{name}"
                raise ConfigError.at(key, f"cannot bin column {column!r} on the training split: {err}") from err
            specs.append(TaskSpec(name, "continuous", tuple(bin_names(edges)), tuple(float(e) for e in edges)))
            targets[name] = digitize(pool[column], edges)
        else:
            specs.append(TaskSpec(name, head.type, tuple(classes(column))))  # type: ignore[arg-type]
            targets[name] = pool[column].to(torch.int64)
    return specs, targets


def split_labels(
    heads: Sequence[tuple[str, HeadConfig]], specs: Sequence[TaskSpec], columns: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Labels of another split (validation) in the label spaces :func:`pool_labels` fitted on the training pool."""
    out: dict[str, Tensor] = {}
    for spec, (name, head) in zip(specs, heads):
        values = columns[head.column]
        out[name] = (digitize(values, torch.tensor(spec.bin_edges, dtype=torch.float64))
                     if head.type == "continuous" else values.to(torch.int64))
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


class GeneratedDataModule(TaskDataModule):
    """Train/val splits of a generated dataset with a primary head and metadata heads.

    Subclasses set the class attributes and implement :meth:`_option_problems`, :meth:`_class_counts`,
    :meth:`_classes`, :meth:`_sample_pool` and :meth:`_dataset`, and call ``super().__init__`` with their generation
    ``options`` (passed unchanged to their checks and, with ``image_size`` as a tuple, kept in
    :attr:`dataset_options`). ``__init__`` validates everything and reports every problem at once
    (:class:`~wsca_lightning.problems.ConfigError` titled :attr:`TITLE`); :meth:`setup` draws and renders.

    After ``__init__``: :attr:`input_shape`, :attr:`primary_task`. After :meth:`setup`: :attr:`task_specs`,
    :attr:`train_dataset`, :attr:`val_dataset` (each item's ``targets`` has one label per task).
    """

    #: every column of the dataset and its kind (``categorical`` / ``continuous``)
    COLUMNS: ClassVar[Mapping[str, str]]
    DEFAULT_TARGET: ClassVar[Mapping[str, Any]]
    DEFAULT_METADATA: ClassVar[Mapping[str, Mapping[str, Any]]]
    #: first line of the error listing the config's problems
    TITLE: ClassVar[str]

    def __init__(
        self,
        options: Mapping[str, Any],
        *,
        num_train: int,
        num_val: int,
        target: Mapping | None,
        metadata: Mapping[str, Mapping] | None,
        subset: Mapping | None,
        batch_size: int,
        num_workers: int,
        seed: int,
        on_device: bool | None = None,
        leading_hparams: Mapping[str, Any] | None = None,
    ) -> None:
        """``on_device`` ``None``: the subclass offers no such option. ``leading_hparams`` go first in the saved
        hyperparameters (a data root)."""
        super().__init__()
        problems = self._option_problems(options)
        problems += integer_problems((("num_train", num_train, 1), ("num_val", num_val, 1),
                                      ("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                      ("seed", seed, 0)))
        if on_device is not None:
            problems += on_device_problems(on_device, num_workers)
        invalid = {p.key for p in problems}
        target, metadata = self._head_configs(target, metadata)
        head_problems, target_head, primary, heads = check_heads(
            target, metadata, columns=self.COLUMNS, class_counts=self._class_counts(options, invalid))
        problems += head_problems
        if target_head is not None:
            problems += self._target_problems(target_head)
        subset = None if subset is None else to_plain(subset, "subset")
        subset_problems, subset_config = check_subset_config(subset, list(heads), seed if is_int(seed) else 0)
        problems += subset_problems
        problems += self._source_problems(options)
        raise_if(problems, self.TITLE)
        assert target_head is not None and primary is not None

        self.num_train = num_train
        self.num_val = num_val
        self.image_size: tuple[int, int] = (int(options["image_size"][0]), int(options["image_size"][1]))
        self.dataset_options: dict[str, Any] = {**options, "image_size": self.image_size}
        self.target_head = target_head
        self.metadata_heads = heads
        self.target: dict[str, Any] = {**target_head.to_dict(), "name": primary}
        self.metadata: dict[str, dict[str, Any]] = {name: head.to_dict() for name, head in heads.items()}
        self.subset: dict[str, Any] = subset_config
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_device = bool(on_device)
        self.seed = seed
        # Plain Python only: checkpoints load with weights_only=True.
        self.save_hyperparameters(to_plain({
            **(leading_hparams or {}), "num_train": num_train, "num_val": num_val, **self.dataset_options,
            "target": self.target, "metadata": self.metadata, "subset": subset_config, "batch_size": batch_size,
            "num_workers": num_workers, **({} if on_device is None else {"on_device": on_device}), "seed": seed,
        }, "hparams"))
        self.input_shape: tuple[int, int, int] = (int(options.get("in_channels", 1)), *self.image_size)
        self.primary_task: str = primary

    def _head_configs(self, target: Any, metadata: Any) -> tuple[Any, Any]:
        """The configured heads as plain Python, the dataset's defaults where none are given."""
        target = copy.deepcopy(dict(self.DEFAULT_TARGET)) if target is None else to_plain(target, "target")
        metadata = (copy.deepcopy(to_plain(self.DEFAULT_METADATA)) if metadata is None
                    else to_plain(metadata, "metadata"))
        return target, metadata

    # --- what a subclass says ----------------------------------------------------------------------------------------
    def _option_problems(self, options: Mapping[str, Any]) -> list[Problem]:
        """Problems of the generation options."""
        raise NotImplementedError

    def _class_counts(self, options: Mapping[str, Any], invalid: set[str]) -> dict[str, int | None]:
        """Classes per categorical column (``None`` when unknown because the option defining it, a key in
        ``invalid``, is itself invalid)."""
        raise NotImplementedError

    def _target_problems(self, target: HeadConfig) -> list[Problem]:
        """Problems of the target beyond the schema's (e.g. a dataset with one possible primary column)."""
        return []

    def _source_problems(self, options: Mapping[str, Any]) -> list[Problem]:
        """Cheap checks of the data source (a root folder's files exist); reading it belongs to :meth:`setup`."""
        return []

    def _classes(self, column: str) -> list[str]:
        """Class names, in code order, of a categorical column."""
        raise NotImplementedError

    def _sample_pool(self, split: str, n: int) -> dict[str, Tensor]:
        """The metadata of a split's pool of ``n`` rows (the shortcut in ``train`` only)."""
        raise NotImplementedError

    def _dataset(self, split: str, n: int, rows: list[int] | None) -> GeneratedImageDataset:
        """A split of the pool of ``n``, rendered for the chosen ``rows`` (all with ``None``)."""
        raise NotImplementedError

    # --- the template ------------------------------------------------------------------------------------------------
    def _heads(self) -> list[tuple[str, HeadConfig]]:
        return [(self.primary_task, self.target_head), *self.metadata_heads.items()]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return  # idempotent: render once per process
        # the training pool: its labels fix the label spaces, its subset is what gets rendered
        pool = self._sample_pool("train", self.num_train)
        specs, pool_targets = pool_labels(self._heads(), pool, self._classes, self.primary_task)
        rows = subset_rows(self.subset, specs, pool_targets)
        val_pool = self._sample_pool("val", self.num_val)  # validation is never associated
        val_targets = split_labels(self._heads(), specs, val_pool)
        val_rows = subset_rows(self.subset, specs, val_targets, part="val")
        train = self._dataset("train", self.num_train, rows)
        val = self._dataset("val", self.num_val, val_rows)
        for dataset, targets in ((train, pool_targets), (val, val_targets)):
            index = torch.tensor(dataset.rows, dtype=torch.int64)  # type: ignore[attr-defined]
            dataset.set_targets({name: value[index] for name, value in targets.items()})
        self.train_dataset, self.val_dataset = train, val
        self._set_task_specs(specs)

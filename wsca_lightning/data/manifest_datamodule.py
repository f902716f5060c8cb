"""LightningDataModule for a user's own images listed in a CSV/TSV manifest (``data=manifest``).

Lightning's contract, kept: ``__init__`` validates the configuration only (head specs, subset, sizes, fractions);
:meth:`~ManifestDataModule.prepare_data` runs the full data check once (the table,
:func:`~wsca_lightning.data.manifest.validate_manifest` with every image decoded when ``check_images``, the splits --
patient-grouped, no patient in two splits --, the label spaces -- fitted on the *whole* training split, so
``full``/``balanced``/``biased`` runs share them -- and the training subset); :meth:`~ManifestDataModule.setup`
builds the datasets from that check, or repeats it without decoding any image where ``prepare_data`` did not run
(another rank). Every problem is reported at once in one :class:`~wsca_lightning.problems.ConfigError`, each keyed by
its config key (``manifest: /data/m.csv: ...``, ``target.classes: ...``) so that ``wsca-train`` can name
``data.<key>``.

SA-SonoNet input (``channels``): per-row segmentation probability maps (a ``.npy`` of ``(num_maps, H, W)`` or one PNG
per map) and pixel-spacing columns turned into constant planes (rescaled for the resize), stacked after the image;
geometric augmentation moves image and maps together, intensity augmentation and normalisation touch the image
only. ``on_degenerate: drop`` removes metadata heads that are empty or constant in the training split (with a
warning) instead of failing.

Nothing is ever written under ``root``.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from wsca_lightning.data.base import TaskDataModule, labelled_item
from wsca_lightning.data.manifest import (
    ManifestError,
    ManifestTable,
    add_dicom_columns,
    column_problem,
    encode_labels,
    folded_label,
    image_path,
    is_dicom,
    is_inside,
    one_line,
    parse_float,
    parse_splits,
    problem_line,
    read_grayscale,
    read_manifest,
    single_class_val_problem,
    validate_manifest,
)
from wsca_lightning.data.splits import (
    carve_validation,
    check_group_disjoint,
    check_subset_config,
    configured_subset,
    group_kfold,
    group_split,
)
from wsca_lightning.data.transforms import NORMALIZATIONS, normalize_image
from wsca_lightning.plain import is_int, is_number, to_plain
from wsca_lightning.problems import ConfigError, Problem, integer_problems, raise_if, switch_problems
from wsca_lightning.tasks import HeadConfig, TaskSpec, check_heads

__all__ = ["ImageLoadError", "ManifestDataModule", "ManifestImageDataset", "load_image"]

DEFAULT_TARGET: dict[str, Any] = {"column": "label", "type": "categorical"}
_GAMMA_RANGE = (0.8, 1.25)
_CHANNEL_KEYS: tuple[str, ...] = ("segmentation", "spacing_columns")
_SEGMENTATION_KEYS: tuple[str, ...] = ("column", "num_maps", "pattern")
ON_DEGENERATE: tuple[str, ...] = ("error", "drop")


def default_task_name(column: str) -> str:
    """``"Plane"`` -> ``"plane"``, ``"US Machine"`` -> ``"us_machine"``."""
    return re.sub(r"[^0-9a-z]+", "_", column.lower()).strip("_") or "target"


def load_image(path: str, image_size: Sequence[int]) -> Tensor:
    """A ``(1, H, W)`` float image in [0, 1] (:func:`read_grayscale`), resized (antialiased) to ``image_size``."""
    return _load_image(path, image_size)[0]


def _load_image(path: str, image_size: Sequence[int]) -> tuple[Tensor, tuple[int, int]]:
    """:func:`load_image` and the image's original ``(H, W)``."""
    from torchvision.transforms.v2 import functional as F

    image = read_grayscale(path)
    original = (int(image.shape[-2]), int(image.shape[-1]))
    image = F.resize(image, [int(image_size[0]), int(image_size[1])], antialias=True)
    return image.clamp_(0.0, 1.0), original


def read_segmentation(source: str | Sequence[str]) -> Tensor:
    """Segmentation maps ``(K, H, W)`` float32 at their stored size: a ``.npy`` file holding a float array
    ``(K, H, W)`` (``source`` a path) or one grayscale PNG per map (``source`` a list of paths, each scaled to [0, 1]
    by :func:`read_grayscale`)."""
    import numpy as np

    if isinstance(source, str):
        array = np.load(source, allow_pickle=False)
        real = np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)
        if array.ndim != 3 or not real:
            raise ValueError(f"expected a real (num_maps, H, W) array, got shape {tuple(array.shape)} "
                             f"dtype {array.dtype}")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return torch.cat([read_grayscale(p) for p in source], dim=0)


def segmentation_source(root: str, cell: str, pattern: str, num_maps: int) -> str | list[str]:
    """The ``.npy`` path or the per-map PNG paths of one segmentation cell (``{}`` in ``pattern`` = the cell,
    ``{map}`` in the result = the map index 0..num_maps-1)."""
    relative = pattern.replace("{}", cell)
    if "{map}" in relative:
        return [os.path.realpath(os.path.join(root, relative.replace("{map}", str(k)))) for k in range(num_maps)]
    return os.path.realpath(os.path.join(root, relative))


class ImageLoadError(RuntimeError):
    """An image (or segmentation) file that fails to load during training; the message names the file, its manifest
    line and column."""


class ManifestImageDataset(Dataset):
    """Images of some manifest rows with one label per task; items are ``{"image", "targets", "id", "index"}``
    like the synthetic dataset's (labels are 0-dim int64 tensors, ``-1`` = missing).

    With SA-SonoNet channels the input is ``(1 + K + S, H, W)``: the normalised image, ``K`` segmentation maps
    (``segmentation``: per row a ``.npy`` path or a list of per-map PNG paths; resized like the image, values in
    [0, 1]) and ``S`` constant spacing planes (``spacing``: per row the mm-per-pixel values of the original image,
    ``[x, y]`` for two columns; each plane holds the spacing after resizing, ``x * W_orig / W`` and
    ``y * H_orig / H``; a single column is treated as x). Augmentation: flip and rotation are applied jointly to the
    image and the maps; brightness/contrast/gamma and normalisation to the image only; spacing planes never.

    A file that cannot be loaded raises :class:`ImageLoadError` (:class:`FileNotFoundError` when it is gone) naming
    the path and, given ``manifest`` and ``lines`` (each row's line in it), the manifest line and column.
    """

    def __init__(self, paths: Sequence[str], ids: Sequence[str], targets: Mapping[str, Tensor], *,
                 image_size: Sequence[int], normalization: str, augment: bool,
                 segmentation: Sequence[str | Sequence[str]] | None = None,
                 spacing: Sequence[Sequence[float]] | None = None, cache: bool = False,
                 manifest: str | None = None, lines: Sequence[int] | None = None, image_column: str = "image",
                 segmentation_column: str | None = None,
                 _decoded: dict[int, tuple[Tensor, tuple[int, int], Tensor | None]] | None = None) -> None:
        self.paths = list(paths)
        self.ids = list(ids)
        self._targets = {name: t.to(torch.int64) for name, t in targets.items()}
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.normalization = normalization
        self.augment = augment
        self.segmentation = None if segmentation is None else list(segmentation)
        self.spacing = None if spacing is None else [tuple(float(v) for v in row) for row in spacing]
        self.cache = cache
        self.manifest = manifest
        self.lines = None if lines is None else [int(n) for n in lines]
        self.image_column = image_column
        self.segmentation_column = segmentation_column
        # decoded, resized image and maps per row (before augmentation); shared with without_augmentation()
        self._decoded: dict[int, tuple[Tensor, tuple[int, int], Tensor | None]] = {} if _decoded is None else _decoded
        self._geometric = self._intensity = None
        if augment:
            from torchvision.transforms import v2

            # one call on the stacked (image + maps) tensor: the same flip / angle for every channel
            self._geometric = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(25)])
            self._intensity = v2.ColorJitter(brightness=0.2, contrast=0.2)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def targets(self) -> dict[str, Tensor]:
        return dict(self._targets)

    def _load_error(self, i: int, what: str, source: str | Sequence[str], column: str | None,
                    error: Exception) -> Exception:
        """The error for row ``i``'s unloadable file, naming the file, its manifest line and column and what to do
        (a :class:`FileNotFoundError` again when the file is gone, else :class:`ImageLoadError`)."""
        shown = source if isinstance(source, str) else ", ".join(source)
        failure = f"cannot load {what} {shown!r} ({type(error).__name__}: {one_line(error)})"
        todo = ("replace or repair the file, or remove its row; data.check_images=true finds every such file before "
                "training")
        if self.manifest is not None and self.lines is not None:
            message = problem_line(self.manifest, failure, todo, [self.lines[i]], column)
        else:
            message = f"{failure}: {todo}"
        return FileNotFoundError(message) if isinstance(error, FileNotFoundError) else ImageLoadError(message)

    def _decode(self, i: int) -> tuple[Tensor, tuple[int, int], Tensor | None]:
        """Row ``i``'s resized image, its original ``(H, W)`` and resized maps; kept in memory with ``cache``."""
        if i in self._decoded:
            return self._decoded[i]
        from torchvision.transforms.v2 import functional as F

        try:
            image, size = _load_image(self.paths[i], self.image_size)
        except Exception as e:  # noqa: BLE001 -- a decoder's own message rarely names the file, never the row
            raise self._load_error(i, "image", self.paths[i], self.image_column, e) from e
        maps = None
        if self.segmentation is not None:
            try:
                maps = read_segmentation(self.segmentation[i])
            except Exception as e:  # noqa: BLE001 -- as for the image
                raise self._load_error(i, "segmentation maps", self.segmentation[i], self.segmentation_column,
                                       e) from e
            maps = F.resize(maps, list(self.image_size), antialias=True)
            maps = maps.clamp_(0.0, 1.0)
        if self.cache:
            self._decoded[i] = (image, size, maps)
        return image, size, maps

    def input(self, i: int) -> Tensor:
        from torchvision.transforms.v2 import functional as F

        image, (h0, w0), maps = self._decode(i)
        if self._geometric is not None:
            stacked = image if maps is None else torch.cat([image, maps], dim=0)
            stacked = self._geometric(stacked)
            image, maps = stacked[:1], (None if maps is None else stacked[1:])
            image = self._intensity(image)
            low, high = _GAMMA_RANGE
            gamma = float(torch.empty(()).uniform_(low, high))  # global RNG: seeded per worker by Lightning
            image = F.adjust_gamma(image.clamp(0.0, 1.0), gamma)
        parts = [normalize_image(image, self.normalization)]
        if maps is not None:
            parts.append(maps)
        if self.spacing is not None:
            h, w = self.image_size
            scales = (w0 / w, h0 / h)
            parts += [torch.full((1, h, w), value * scales[min(k, 1)], dtype=torch.float32)
                      for k, value in enumerate(self.spacing[i])]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            i += len(self)
        return labelled_item(self.input(i), self._targets, self.ids, i)

    def without_augmentation(self) -> "ManifestImageDataset":
        """The same rows, unaugmented: what the WSC callback embeds (see ``WeightSpaceCorrelation``)."""
        if not self.augment:
            return self
        return ManifestImageDataset(self.paths, self.ids, self._targets, image_size=self.image_size,
                                    normalization=self.normalization, augment=False,
                                    segmentation=self.segmentation, spacing=self.spacing, cache=self.cache,
                                    manifest=self.manifest, lines=self.lines, image_column=self.image_column,
                                    segmentation_column=self.segmentation_column, _decoded=self._decoded)


class ManifestDataModule(TaskDataModule):
    """Train/val(/test) splits of the images listed in a manifest, with a primary head and metadata heads.

    Args:
        manifest: the CSV/TSV file (one row per image). root: the folder image paths are relative to.
        image_column, image_pattern: the column naming each image and the path pattern (``{}`` = the cell).
        delimiter: ``None`` = detect from the header.
        target: ``{"column", "type": binary|categorical, ["classes"], ["name"]}``; ``classes`` keeps only rows with
            those values, in this label order. ``name`` defaults to the column lowercased (``Plane`` -> ``plane``).
        metadata: ``{head name: {"column", "type", ["bins", "binning", "classes"]}}``.
        group_column: patient id (no patient in two splits); ``None`` = every row its own group.
        split_column, split_values: an official split (values mapped by ``split_values`` first); without val rows a
            grouped ``val_fraction`` of train becomes val. Without a split column: a grouped, stratified split.
        fold, num_folds: k-fold cross-validation over the non-test rows (``fold`` = the val fold).
        subset: ``{mode: full|balanced|biased, by: <metadata head>, per_cell, major, minor, seed, val}`` on train;
            with ``val: {per_cell, major, minor}`` also on the validation split (paper: one test split per
            sub-dataset), else validation is used whole.
        image_size, in_channels, normalization, augment, batch_size, num_workers, seed.
        check_images: read every image once before training: files that cannot be decoded, multi-frame files and
            the same bytes under two names in different groups (see
            :func:`~wsca_lightning.data.manifest.validate_manifest`) are refused up front.
            ``false`` skips this (and so the duplicate check); a bad file then fails in the loader, naming its line.
        channels: SA-SonoNet's extra input channels, ``{segmentation, spacing_columns}`` (both ``None`` = the image
            only). ``segmentation``: ``{column, num_maps: 5, pattern: "{}"}``; the cell formatted into ``pattern``
            (relative to root, inside it) is a ``.npy`` float array ``(num_maps, H, W)`` in [0, 1] of the image's
            size, or a path containing ``{map}`` (replaced by 0..num_maps-1) of one 8/16-bit grayscale PNG per map.
            ``spacing_columns``: ``[x, y]`` (or ``[x]``) columns holding mm per pixel of the original image; each
            becomes a constant plane of the spacing after resizing (``x * W_orig / W``, ``y * H_orig / H``).
        dicom_columns: ``{new column: DICOM keyword}`` (optionally indexed, ``PixelSpacing[1]``; needs the ``dicom``
            extra): before validation each row gets the value from its image's DICOM header as a string cell (``""``
            when absent or not DICOM), usable in ``target``/``metadata``/``channels.spacing_columns`` like any column.
        cache_images: keep every decoded, resized image (and maps) in memory after its first read, before
            augmentation (``4 * H * W`` bytes per image and channel; per DataLoader worker process): for small
            datasets whose decoding would otherwise be repeated every epoch.
            Images themselves may be DICOM (``.dcm``/``.dicom`` or the ``DICM`` magic) without this option.
            Channel order: image, maps, spacing planes; ``in_channels`` must be ``1 + num_maps + len(spacing_columns)``.
        on_degenerate: ``error`` | ``drop``: a metadata head whose column is empty or has a single class (in the
            training split) fails the run, or is dropped with a warning.
    """

    def __init__(
        self,
        manifest: str,
        root: str,
        image_column: str = "image",
        image_pattern: str = "{}",
        delimiter: str | None = None,
        target: Mapping | None = None,
        metadata: Mapping[str, Mapping] | None = None,
        group_column: str | None = None,
        split_column: str | None = None,
        split_values: Mapping[str, str] | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        fold: int | None = None,
        num_folds: int = 5,
        subset: Mapping | None = None,
        image_size: Sequence[int] = (224, 288),
        in_channels: int = 1,
        channels: Mapping | None = None,
        on_degenerate: str = "error",
        normalization: str = "sononet",
        augment: bool = True,
        check_images: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        dicom_columns: Mapping[str, str] | None = None,
        cache_images: bool = False,
    ) -> None:
        super().__init__()
        problems: list[Problem] = []

        def plain(value: Any, key: str) -> Any:
            try:
                return to_plain(value, key)
            except ValueError as err:  # its message names the nested key
                problems.append(Problem("", str(err)))
                return None

        target = copy.deepcopy(DEFAULT_TARGET) if target is None else plain(target, "target")
        metadata = {} if metadata is None else plain(metadata, "metadata")
        split_values = None if split_values is None else plain(split_values, "split_values")
        subset = None if subset is None else plain(subset, "subset")
        image_size = plain(image_size, "image_size")
        channels = None if channels is None else plain(channels, "channels")
        dicom_columns = None if dicom_columns is None else plain(dicom_columns, "dicom_columns")

        option_problems, split_values, image_size = _option_problems(
            manifest=manifest, root=root, image_column=image_column, image_pattern=image_pattern,
            group_column=group_column, split_column=split_column, split_values=split_values, image_size=image_size,
            on_degenerate=on_degenerate, normalization=normalization, augment=augment, check_images=check_images,
            cache_images=cache_images, batch_size=batch_size, num_workers=num_workers, seed=seed,
            num_folds=num_folds, val_fraction=val_fraction, test_fraction=test_fraction, fold=fold)
        problems += option_problems
        segmentation, spacing_columns, channel_problems = _channel_config(channels)
        problems += channel_problems
        problems += _in_channel_problems(in_channels, segmentation, spacing_columns, bool(channel_problems))
        head_problems, target_spec, primary, heads = check_heads(target, metadata, default_name=default_task_name)
        problems += head_problems
        subset_problems, subset_cfg = check_subset_config(subset, list(metadata or {}), seed)
        problems += subset_problems
        raise_if(problems, TITLE)
        assert target_spec is not None and primary is not None and image_size is not None

        self.manifest = manifest
        self.root = root
        self.delimiter = delimiter
        self.image_column: str = image_column
        self.image_pattern = image_pattern
        self.target_spec = target_spec
        self.configured_metadata_specs = heads
        self.group_column = group_column
        self.split_column = split_column
        self.split_values = split_values
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.fold, self.num_folds = fold, num_folds
        self.subset = subset_cfg
        self.image_size: tuple[int, int] = (int(image_size[0]), int(image_size[1]))
        self.segmentation, self.spacing_columns = segmentation, spacing_columns
        self.channels = {"segmentation": segmentation, "spacing_columns": spacing_columns or None}
        self.on_degenerate = on_degenerate
        self.normalization = normalization
        self.augment = augment
        self.check_images = check_images
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.dicom_columns = dicom_columns
        self.cache_images = cache_images
        self.save_hyperparameters(to_plain({
            "manifest": manifest, "root": root, "image_column": image_column, "image_pattern": image_pattern,
            "delimiter": delimiter, "target": target, "metadata": metadata, "group_column": group_column,
            "split_column": split_column, "split_values": split_values, "val_fraction": val_fraction,
            "test_fraction": test_fraction, "fold": fold, "num_folds": num_folds, "subset": subset_cfg,
            "image_size": list(self.image_size), "in_channels": in_channels, "channels": self.channels,
            "on_degenerate": on_degenerate, "normalization": normalization,
            "augment": augment, "check_images": check_images, "batch_size": batch_size,
            "num_workers": num_workers, "seed": seed, "dicom_columns": dicom_columns,
            "cache_images": cache_images}, "hparams"))
        self.input_shape: tuple[int, int, int] = (int(in_channels), *self.image_size)
        self.primary_task: str = primary
        #: the checked table, splits and labels; set by prepare_data (decoding every image) or setup (not)
        self._data: _ManifestData | None = None
        #: prepare_data ran in this process or in the one this datamodule was pickled from (ddp_spawn)
        self._prepared = False

    # --- Lightning's hooks -------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """The full data check, once: reads the table and, with ``check_images``, decodes, hashes and counts the
        frames of every image (and segmentation map); every problem is raised at once as a ConfigError."""
        if self._prepared:
            return
        self._data = self._load(decode=self.check_images)
        self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        """The table, splits and datasets; reuses :meth:`prepare_data`'s check, else checks the table without
        decoding any image (a rank that did not prepare the data)."""
        if self.train_dataset is not None:
            return  # idempotent
        if self._data is None:
            self._data = self._load(decode=False)
        self._install(self._data)
        self.train_dataset = self._dataset(self.train_indices, self.augment)
        self.val_dataset = self._dataset(self.val_indices, False)
        self.test_dataset = self._dataset(self.test_indices, False)
        self._set_task_specs(self._data.specs)

    # --- the data check, step by step --------------------------------------------------------------------------------

    def _load(self, decode: bool) -> "_ManifestData":
        table, class_problems = self._read_table()
        dropped = self._check_table(table, class_problems, decode)
        splits = self._split(table)
        specs, labels, dropped = self._encode(table, splits, dropped)
        train_rows = [i for i, s in enumerate(splits) if s == "train"]
        val_rows = [i for i, s in enumerate(splits) if s == "val"]
        selected, val_selected = self._subset(specs, labels, train_rows, val_rows)
        return _ManifestData(table=table, splits=list(splits), train_rows=train_rows, selected=selected,
                             val_selected=val_selected, test_rows=[i for i, s in enumerate(splits) if s == "test"],
                             specs=specs, labels=labels, dropped=dropped)

    def _read_table(self) -> tuple[ManifestTable, list[Problem]]:
        """The manifest, with its DICOM columns added and only the rows of the target's listed classes kept, and
        the problems of those classes (a listed class that never occurs, or occurs spelled another way)."""
        try:
            table = read_manifest(self.manifest, self.delimiter)
        except ManifestError as err:
            raise ConfigError(_under_default(err.problems, "manifest"), TITLE) from None
        if self.dicom_columns is not None:
            table, dicom_problems = add_dicom_columns(table, self.dicom_columns, root=self.root,
                                                      image_column=self.image_column,
                                                      image_pattern=self.image_pattern)
            raise_if(dicom_problems, TITLE)
        if self.target_spec.column in table.header and self.target_spec.classes is not None:
            return _keep_classes(table, self.target_spec)
        return table, []

    def _check_table(self, table: ManifestTable, class_problems: list[Problem], decode: bool) -> dict[str, str]:
        """Every problem of the table's content (images and maps decoded only with ``decode``); returns the
        degenerate metadata heads that ``on_degenerate: drop`` sets aside (head -> why)."""
        dropped: dict[str, str] = {}
        found = validate_manifest(
            table, root=self.root, image_column=self.image_column, image_pattern=self.image_pattern,
            target=self.target_spec, metadata=self.configured_metadata_specs, group_column=self.group_column,
            split_column=self.split_column, split_values=self.split_values, check_images=decode,
            degenerate=dropped if self.on_degenerate == "drop" else None)
        problems = [*class_problems, *_under_default(found, "manifest")]
        problems += _channel_problems(table, self.root, self.image_column, self.image_pattern, self.segmentation,
                                      self.spacing_columns, decode)
        raise_if(problems, TITLE)
        return dropped

    def _split(self, table: ManifestTable) -> list[str]:
        """Train/val/test of every row, patient-grouped, checked for leaks and for usable train and val splits."""
        target = self.target_spec
        cells = table.column(target.column)
        vocabulary = list(target.classes) if target.classes is not None else sorted(set(cells))
        codes = [vocabulary.index(c) for c in cells]  # provisional, for stratification only
        groups = table.column(self.group_column) if self.group_column is not None else None
        default = "split_column" if self.split_column is not None else "val_fraction"
        try:
            splits = self._splits(table, codes, groups, self.split_column, self.split_values, self.val_fraction,
                                  self.test_fraction, self.fold, self.num_folds, self.seed)
        except ConfigError as err:
            raise ConfigError(_under_default(err.problems, default), TITLE) from None
        except ValueError as err:
            raise ConfigError(Problem(default, str(err)), TITLE) from None
        raise_if([Problem("group_column", p) for p in check_group_disjoint(splits, groups)], TITLE)
        problems: list[Problem] = []
        train_rows = [i for i, s in enumerate(splits) if s == "train"]
        if not train_rows:
            problems.append(Problem("split_column", "no row is in the train split"))
        if "val" not in splits:
            problems.append(Problem("val_fraction", "no row is in the val split (raise val_fraction or mark val rows)"))
        else:  # a val split the table gives was checked with the table; this catches a drawn one
            single = single_class_val_problem(
                table, target.column, splits, classes=target.classes,
                todo="the val split was drawn from few groups: raise val_fraction (or lower num_folds) so it holds "
                     "more classes, or give a split column with val rows")
            if single is not None:
                problems.append(Problem("val_fraction", single))
        if target.classes is not None and train_rows:
            in_train = {cells[i] for i in train_rows}
            absent = [c for c in target.classes if c not in in_train]
            if absent:
                problems.append(Problem("target.classes", f"{absent} never occur in the train split of {table.path}; "
                                                          "remove them from classes or change the split"))
        raise_if(problems, TITLE)
        return splits

    def _encode(self, table: ManifestTable, splits: Sequence[str], dropped: dict[str, str]
                ) -> tuple[list[TaskSpec], dict[str, list[int]], dict[str, str]]:
        """Every head's label space fitted on the whole training split, and the labels of every row."""
        train_rows = [i for i, s in enumerate(splits) if s == "train"]
        problems: list[Problem] = []
        specs: list[TaskSpec] = []
        labels: dict[str, list[int]] = {}
        drop = self.on_degenerate == "drop"
        for name, spec, key, strict in [(self.primary_task, self.target_spec, "target", True),
                                        *((h, s, f"metadata.{h}", False)
                                          for h, s in self.configured_metadata_specs.items())]:
            if name in dropped:
                continue
            try:
                task, values = encode_labels(table, spec, name=name, fit_rows=train_rows, strict=strict)
            except ConfigError as err:
                if not strict and drop:
                    dropped[name] = err.problems[0].message
                    continue
                problems += [p.under(key) for p in err.problems]
                continue
            if not strict and drop:
                present = {values[i] for i in train_rows if values[i] >= 0}
                if len(present) < 2:
                    dropped[name] = (f"column {spec.column!r} has no values in the training split" if not present
                                     else f"column {spec.column!r} has a single class "
                                          f"{task.class_names[next(iter(present))]!r} in the training split")
                    continue
            specs.append(task)
            labels[name] = values
        for name, reason in dropped.items():
            warnings.warn(f"data.metadata.{name}: metadata head {name!r} dropped (on_degenerate=drop): {reason}",
                          UserWarning, stacklevel=3)
        if self.subset["mode"] != "full" and self.subset.get("by") in dropped:
            problems.append(Problem("subset.by", f"metadata head {self.subset['by']!r} was dropped as degenerate "
                                                 f"({dropped[self.subset['by']]}); choose another head"))
        raise_if(problems, TITLE)
        return specs, labels, dropped

    def _subset(self, specs: Sequence[TaskSpec], labels: Mapping[str, list[int]], train_rows: list[int],
                val_rows: list[int]) -> tuple[list[int], list[int]]:
        """The rows of the configured training (and validation) subset; the whole splits for ``mode: full``."""
        selected, val_selected = train_rows, val_rows
        if self.subset["mode"] == "full":
            return selected, val_selected
        by_spec = next(s for s in specs if s.name == self.subset["by"])
        for part, part_rows in (("train", train_rows), ("val", val_rows)):
            try:
                chosen = configured_subset(
                    self.subset, [labels[self.primary_task][i] for i in part_rows],
                    [labels[by_spec.name][i] for i in part_rows], part=part,
                    primary_names=list(specs[0].class_names), by_names=list(by_spec.class_names))
            except ConfigError as err:
                raise ConfigError(err.problems, TITLE) from None
            if chosen is not None and part == "train":
                selected = [part_rows[k] for k in chosen]
            elif chosen is not None:
                val_selected = [part_rows[k] for k in chosen]
        return selected, val_selected

    def _install(self, data: "_ManifestData") -> None:
        """The checked data as the attributes the datasets (and users) read."""
        table = data.table
        self.table: ManifestTable = table
        self.splits: list[str] = data.splits
        self.full_train_indices: list[int] = data.train_rows
        self.train_indices: list[int] = data.selected
        self.val_indices: list[int] = data.val_selected
        self.test_indices: list[int] = data.test_rows
        self.labels: dict[str, list[int]] = data.labels
        self.dropped_heads: dict[str, str] = data.dropped
        self.metadata_specs = {h: s for h, s in self.configured_metadata_specs.items() if h not in data.dropped}
        self.paths: list[str] = [image_path(self.root, c, self.image_pattern) for c in table.column(self.image_column)]
        self.ids: list[str] = table.column(self.image_column)
        seg = self.segmentation
        self.segmentation_sources: list[str | list[str]] | None = None if seg is None else [
            segmentation_source(self.root, c, seg["pattern"], seg["num_maps"]) for c in table.column(seg["column"])]
        self.spacing_values: list[tuple[float, ...]] | None = None if not self.spacing_columns else [
            tuple(float(row[c]) for c in self.spacing_columns) for row in table.rows]

    @staticmethod
    def _splits(table: ManifestTable, codes: list[int], groups: list[str] | None, split_column: str | None,
                split_values: Mapping[str, str] | None, val_fraction: float, test_fraction: float,
                fold: int | None, num_folds: int, seed: int) -> list[str]:
        n = len(codes)
        if split_column is not None:
            official = [s or "" for s in parse_splits(table, split_column, split_values)]
            if fold is not None:
                return group_kfold(codes, groups, num_folds=num_folds, fold=fold, seed=seed,
                                   test=[s == "test" for s in official])
            if "val" in official:
                return official
            if val_fraction <= 0:
                raise ConfigError.at("val_fraction", f"the split column {split_column!r} has no val rows; "
                                                     "val_fraction must be > 0 to carve a val split from train")
            return carve_validation(official, codes, groups, val_fraction=val_fraction, seed=seed)
        if fold is None:
            return group_split(codes, groups, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        test = [False] * n
        if test_fraction > 0:
            test = [s == "test" for s in group_split(codes, groups, val_fraction=0.0, test_fraction=test_fraction,
                                                     seed=seed)]
        return group_kfold(codes, groups, num_folds=num_folds, fold=fold, seed=seed, test=test)

    def _dataset(self, rows: Sequence[int], augment: bool) -> ManifestImageDataset:
        targets = {name: torch.tensor([values[i] for i in rows], dtype=torch.int64)
                   for name, values in self.labels.items()}
        seg = self.segmentation_sources
        spacing = self.spacing_values
        return ManifestImageDataset([self.paths[i] for i in rows], [self.ids[i] for i in rows], targets,
                                    image_size=self.image_size, normalization=self.normalization, augment=augment,
                                    segmentation=None if seg is None else [seg[i] for i in rows],
                                    spacing=None if spacing is None else [spacing[i] for i in rows],
                                    cache=self.cache_images,
                                    manifest=self.table.path, lines=[self.table.line_numbers[i] for i in rows],
                                    image_column=self.image_column,
                                    segmentation_column=None if self.channels["segmentation"] is None
                                    else self.channels["segmentation"]["column"])


# --------------------------------------------------------------------------------------------------------- helpers


TITLE = "invalid manifest data config"


@dataclass
class _ManifestData:
    """What the data check of a manifest found: the table, the rows of each split and the labels of every head."""

    table: ManifestTable
    splits: list[str]
    train_rows: list[int]  # the whole training split (label spaces are fitted on it)
    selected: list[int]  # the training rows of the configured subset
    val_selected: list[int]
    test_rows: list[int]
    specs: list[TaskSpec]
    labels: dict[str, list[int]]
    dropped: dict[str, str]  # degenerate metadata heads dropped (on_degenerate: drop) -> why


def _under_default(problems: Sequence[Problem], key: str) -> list[Problem]:
    """Problems as the datamodule reports them: a keyless one (about the file's content) under ``key``."""
    return [p if p.key else p.under(key) for p in problems]


def _option_problems(*, manifest: Any, root: Any, image_column: Any, image_pattern: Any, group_column: Any,
                     split_column: Any, split_values: Any, image_size: Any, on_degenerate: Any, normalization: Any,
                     augment: Any, check_images: Any, cache_images: Any, batch_size: Any, num_workers: Any,
                     seed: Any, num_folds: Any, val_fraction: Any, test_fraction: Any,
                     fold: Any) -> tuple[list[Problem], dict[str, str] | None, Any]:
    """Problems of the plain options, and ``split_values`` (as strings) and ``image_size`` (``None`` when
    unusable)."""
    problems: list[Problem] = []
    for key, value in (("manifest", manifest), ("root", root)):
        if not isinstance(value, str) or not value:
            problems.append(Problem(key, f"must be a path, got {value!r}"))
    for key, value in (("image_column", image_column), ("image_pattern", image_pattern)):
        if not isinstance(value, str) or not value:
            problems.append(Problem(key, f"must be a non-empty string, got {value!r}"))
    for key, value in (("group_column", group_column), ("split_column", split_column)):
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(Problem(key, f"must be a column name or null, got {value!r}"))
    if split_values is not None and not isinstance(split_values, Mapping):
        problems.append(Problem("split_values", "must be a mapping of cell value -> train/val/test, got "
                                                f"{split_values!r}"))
        split_values = None
    if split_values is not None:
        split_values = {str(k): str(v) for k, v in split_values.items()}
        if split_column is None:
            problems.append(Problem("split_values", "only used with split_column; set split_column or remove it"))
    if not isinstance(image_size, Sequence) or len(image_size) != 2 or not all(
            is_int(s) and s > 0 and s % 16 == 0 for s in image_size):
        problems.append(Problem("image_size", f"must be [H, W], positive multiples of 16, got {image_size!r}"))
        image_size = None
    if on_degenerate not in ON_DEGENERATE:
        problems.append(Problem("on_degenerate", f"must be one of {', '.join(ON_DEGENERATE)}, got {on_degenerate!r}"))
    if normalization not in NORMALIZATIONS:
        problems.append(Problem("normalization", f"must be one of {', '.join(NORMALIZATIONS)}, got "
                                                 f"{normalization!r}"))
    problems += switch_problems((("augment", augment), ("check_images", check_images),
                                 ("cache_images", cache_images)))
    problems += integer_problems((("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("seed", seed, 0),
                                  ("num_folds", num_folds, 2)))
    fractions_ok = True
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not is_number(value) or not 0 <= value < 1:
            problems.append(Problem(key, f"must be a number in [0, 1), got {value!r}"))
            fractions_ok = False
    if fractions_ok and val_fraction + test_fraction >= 1:
        problems.append(Problem("val_fraction", f"val_fraction + test_fraction must be < 1, got {val_fraction} + "
                                                f"{test_fraction}"))
    if fold is not None:
        if not is_int(fold) or fold < 0 or (is_int(num_folds) and fold >= num_folds):
            problems.append(Problem("fold", f"must be null or an integer in [0, num_folds={num_folds}), got {fold!r}"))
    elif fractions_ok and split_column is None and val_fraction == 0:
        problems.append(Problem("val_fraction", "must be > 0 without split_column or fold (the val split comes from "
                                                "it)"))
    return problems, split_values, image_size


def _in_channel_problems(in_channels: Any, segmentation: Mapping[str, Any] | None, spacing_columns: Sequence[str],
                         channels_invalid: bool) -> list[Problem]:
    """``in_channels`` against the image plus the channels ``channels`` adds."""
    if not is_int(in_channels) or in_channels < 1:
        return [Problem("in_channels", f"must be an integer >= 1, got {in_channels!r}")]
    if channels_invalid:
        return []
    num_maps = 0 if segmentation is None else segmentation["num_maps"]
    expected = 1 + num_maps + len(spacing_columns)
    if in_channels == expected:
        return []
    if expected == 1:
        return [Problem("in_channels", "manifest data gives 1-channel images unless channels.segmentation / "
                                       f"channels.spacing_columns add SA-SonoNet channels; expected 1, got "
                                       f"{in_channels}")]
    return [Problem("in_channels", f"expected {expected} (1 image + {num_maps} segmentation maps + "
                                   f"{len(spacing_columns)} spacing planes from channels), got {in_channels}")]


def _keep_classes(table: ManifestTable, spec: HeadConfig) -> tuple[ManifestTable, list[Problem]]:
    """Only the rows whose target is one of ``spec.classes`` (line numbers kept); a listed class that never occurs
    is a ``target.classes`` problem."""
    assert spec.classes is not None
    keep = [k for k, row in enumerate(table.rows) if row.get(spec.column, "") in spec.classes]
    present = {table.rows[k][spec.column] for k in keep}
    values = sorted({c for c in table.column(spec.column) if c})
    problems = []
    for c in spec.classes:
        if c not in present:
            close = difflib.get_close_matches(c, values, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            shown = ", ".join(repr(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
            problems.append(Problem("target.classes", f"{c!r} never occurs in column {spec.column!r} of "
                                                      f"{table.path}; {hint}values: {shown}"))
    # a listed class spelled another way ('Malignant' for 'malignant') would silently lose its rows
    folded = {folded_label(c): c for c in spec.classes}
    respelled: dict[str, list[int]] = {}
    for k, row in enumerate(table.rows):
        value = row.get(spec.column, "")
        if value and value not in spec.classes and folded_label(value) in folded:
            respelled.setdefault(value, []).append(table.line_numbers[k])
    for value, lines in respelled.items():
        problems.append(Problem("target.classes", problem_line(
            table.path, f"{value!r} is the listed class {folded[folded_label(value)]!r} spelled differently",
            column=spec.column, lines=lines,
            todo="rows outside target.classes are left out, so these would be lost: write the class one way in "
                 "the table")))
    filtered = ManifestTable(path=table.path, delimiter=table.delimiter, header=table.header,
                             rows=tuple(table.rows[k] for k in keep),
                             line_numbers=tuple(table.line_numbers[k] for k in keep))
    return filtered, problems


def _channel_config(channels: Any) -> tuple[dict[str, Any] | None, list[str], list[Problem]]:
    """``(segmentation config with defaults or None, spacing columns, problems)`` of the ``channels`` option."""
    problems: list[Problem] = []
    if channels is None:
        return None, [], problems
    if not isinstance(channels, Mapping):
        return None, [], [Problem("channels", f"must be a mapping with keys {', '.join(_CHANNEL_KEYS)}, got "
                                              f"{channels!r}")]
    problems += [Problem(f"channels.{k}", f"unknown key; valid keys: {', '.join(_CHANNEL_KEYS)}")
                 for k in channels if k not in _CHANNEL_KEYS]
    segmentation = None
    seg = channels.get("segmentation")
    if seg is not None:
        if not isinstance(seg, Mapping):
            problems.append(Problem("channels.segmentation", "must be null or a mapping {column, num_maps, "
                                                             f"pattern}}, got {seg!r}"))
        else:
            problems += [Problem(f"channels.segmentation.{k}", f"unknown key; valid keys: "
                                                               f"{', '.join(_SEGMENTATION_KEYS)}")
                         for k in seg if k not in _SEGMENTATION_KEYS]
            segmentation = {"num_maps": 5, "pattern": "{}", **seg}
            if not isinstance(segmentation.get("column"), str) or not segmentation.get("column"):
                problems.append(Problem("channels.segmentation.column", "must be the column naming each image's "
                                                                        f"maps, got {segmentation.get('column')!r}"))
            if not is_int(segmentation["num_maps"]) or segmentation["num_maps"] < 1:
                problems.append(Problem("channels.segmentation.num_maps", "must be an integer >= 1, got "
                                                                          f"{segmentation['num_maps']!r}"))
            pattern = segmentation["pattern"]
            if not isinstance(pattern, str) or "{}" not in pattern:
                problems.append(Problem("channels.segmentation.pattern", "must be a string containing '{}' (the "
                                                                         f"cell), got {pattern!r}"))
    spacing = channels.get("spacing_columns")
    columns: list[str] = []
    if spacing is not None:
        if (isinstance(spacing, (str, bytes)) or not isinstance(spacing, Sequence) or not 1 <= len(spacing) <= 2
                or not all(isinstance(c, str) and c for c in spacing) or len(set(spacing)) != len(spacing)):
            problems.append(Problem("channels.spacing_columns", "must be null or a list of 1 or 2 distinct column "
                                                                f"names ([x, y]: mm per pixel along width, height), "
                                                                f"got {spacing!r}"))
        else:
            columns = list(spacing)
    return segmentation, columns, problems


def _image_hw(path: str) -> tuple[int, int] | None:
    """``(H, W)`` of an image file (from the header for Pillow formats), ``None`` if unreadable."""
    try:
        if is_dicom(path):
            return tuple(read_grayscale(path).shape[1:])  # type: ignore[return-value]
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except Exception:  # noqa: BLE001 -- the image checks report it
        return None


def _channel_problems(table: ManifestTable, root: str, image_column: str, image_pattern: str,
                      segmentation: Mapping[str, Any] | None, spacing_columns: Sequence[str],
                      check_images: bool) -> list[Problem]:
    """Problems of the segmentation and spacing cells, one line per kind, each naming the lines and the column.
    Files are opened (maps decoded: count, size, range) only with ``check_images``."""
    file = table.path
    problems: list[Problem] = []
    lines = table.line_numbers
    known = set(table.header)
    for col in spacing_columns:
        key = "channels.spacing_columns"
        if col not in known:
            problems.append(Problem(key, column_problem(table, key, col)))
            continue
        cells = table.column(col)
        missing = [ln for ln, c in zip(lines, cells) if not c]
        bad = [(ln, c) for ln, c in zip(lines, cells) if c and ((v := parse_float(c)) is None or v <= 0)]
        if missing:
            problems.append(Problem(key, problem_line(
                file, "pixel spacing missing", "fill in the spacing (mm per pixel) or remove the row", missing, col)))
        if bad:
            problems.append(Problem(key, problem_line(
                file, f"pixel spacing is not a positive number (e.g. {bad[0][1]!r})",
                "write the spacing in mm per pixel as a number > 0", [ln for ln, _ in bad], col)))
    if segmentation is None:
        return problems
    key = "channels.segmentation"
    col, pattern, num_maps = segmentation["column"], segmentation["pattern"], int(segmentation["num_maps"])
    if col not in known:
        return problems + [Problem(f"{key}.column", column_problem(table, f"{key}.column", col))]
    root_real = os.path.realpath(os.fspath(root))
    if not os.path.isdir(root_real):
        return problems  # reported for the images
    kinds: dict[str, list[int]] = {}
    examples: dict[str, str] = {}

    def note(kind: str, line: int, example: str) -> None:
        kinds.setdefault(kind, []).append(line)
        examples.setdefault(kind, example)

    has_images = image_column in known and "{}" in image_pattern
    # with check_images every row's maps are decoded before training: minutes for a large manifest, so a bar on a
    # terminal (disable=None: silent in logs)
    rows = tqdm(zip(table.rows, lines, table.column(col)), desc="checking segmentation maps", total=len(lines),
                unit="row", disable=None if check_images else True)
    for row, ln, cell in rows:
        if not cell:
            note("missing", ln, "")
            continue
        relative = pattern.replace("{}", cell)
        source = segmentation_source(root_real, cell, pattern, num_maps)
        files = [source] if isinstance(source, str) else source
        if not all(is_inside(f, root_real) for f in files):
            note("outside", ln, relative)
            continue
        if isinstance(source, str) and not source.lower().endswith(".npy"):
            note("format", ln, relative)
            continue
        absent = [f for f in files if not os.path.isfile(f)]
        if absent:
            note("absent", ln, os.path.relpath(absent[0], root_real))
            continue
        if not check_images:
            continue
        try:
            maps = read_segmentation(source)
        except Exception as e:  # noqa: BLE001 -- any failure means the loader would fail on this file
            note("unloadable", ln, f"{relative!r}: {(str(e).strip().splitlines() or [type(e).__name__])[0][:120]}")
            continue
        if maps.shape[0] != num_maps:
            note("count", ln, f"{relative!r} has {maps.shape[0]}")
            continue
        if has_images and row.get(image_column):
            hw = _image_hw(image_path(root_real, row[image_column], image_pattern))
            if hw is not None and tuple(maps.shape[-2:]) != hw:
                note("size", ln, f"{relative!r} is {tuple(maps.shape[-2:])}, its image {hw}")
                continue
        if not bool(torch.isfinite(maps).all()) or float(maps.min()) < 0 or float(maps.max()) > 1:
            note("range", ln, f"{relative!r}: min {float(maps.min()):.3g}, max {float(maps.max()):.3g}")
    texts = {
        "missing": ("segmentation missing", "fill in the segmentation of every row"),
        "outside": ("segmentation path leaves the data root, refused (e.g. {})", "keep the maps under root"),
        "format": ("segmentation is neither a .npy file nor a path with '{{map}}' (e.g. {})",
                   "give a .npy file of shape (num_maps, H, W) or one PNG per map via '{map}' in the path/pattern"),
        "absent": (f"segmentation file not found under {root!r} (e.g. {{}})",
                   f"check root, the cell values and channels.segmentation.pattern (now {pattern!r})"),
        "unloadable": ("segmentation cannot be loaded ({})", "replace it with a float .npy array or valid PNGs"),
        "count": (f"wrong number of segmentation maps, expected {num_maps} (e.g. {{}})",
                  "store num_maps maps per image or change channels.segmentation.num_maps"),
        "size": ("segmentation size differs from its image (e.g. {})", "store the maps at the image's size"),
        "range": ("segmentation values outside [0, 1] ({})", "store probabilities in [0, 1]"),
    }
    for kind, (what, todo) in texts.items():
        if kind in kinds:
            what = what.format(repr(examples[kind])) if kind in ("outside", "format", "absent") else (
                what.format(examples[kind]) if "{}" in what else what)
            problems.append(Problem(key, problem_line(file, what, todo, kinds[kind], col)))
    return problems

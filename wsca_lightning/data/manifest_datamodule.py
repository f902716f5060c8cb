"""LightningDataModule for a user's own images listed in a CSV/TSV manifest (``data=manifest``).

Everything that can be wrong with a config or a manifest is found in ``__init__``, before any training: the config
(head specs, subset, sizes, fractions), the table (:func:`~wsca_lightning.data.manifest.validate_manifest`, images
decoded when ``check_images``), the splits (patient-grouped, no patient in two splits), the label spaces (fitted on
the *whole* training split, so ``full``/``balanced``/``biased`` runs share them) and the training subset. Every
problem is reported at once in one ``ValueError``, one line per problem, each starting with its config key
(``manifest: /data/m.csv: ...``, ``target.classes: ...``) so that ``wsca-train`` can name ``data.<key>``.

Nothing is ever written under ``root``.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from wsca_lightning.data.base import TaskDataModule, labelled_item
from wsca_lightning.data.manifest import (
    ColumnSpec,
    ManifestError,
    ManifestTable,
    encode_labels,
    image_path,
    parse_splits,
    read_grayscale,
    read_manifest,
    validate_manifest,
)
from wsca_lightning.data.splits import (
    SUBSET_MODES,
    carve_validation,
    check_group_disjoint,
    group_kfold,
    group_split,
    select_subset,
)
from wsca_lightning.data.transforms import NORMALIZATIONS, normalize_image
from wsca_lightning.plain import is_int, to_plain
from wsca_lightning.tasks import TaskSpec

__all__ = ["ManifestDataModule", "ManifestImageDataset", "load_image"]

DEFAULT_TARGET: dict[str, Any] = {"column": "label", "type": "categorical"}
_SUBSET_KEYS: tuple[str, ...] = ("mode", "by", "per_cell", "major", "minor", "seed")
_GAMMA_RANGE = (0.8, 1.25)


def _bad_name(name: object) -> bool:
    return not isinstance(name, str) or not name or "/" in name or "." in name


def default_task_name(column: str) -> str:
    """``"Plane"`` -> ``"plane"``, ``"US Machine"`` -> ``"us_machine"``."""
    return re.sub(r"[^0-9a-z]+", "_", column.lower()).strip("_") or "target"


def load_image(path: str, image_size: Sequence[int]) -> Tensor:
    """A ``(1, H, W)`` float image in [0, 1] (:func:`read_grayscale`), resized (antialiased) to ``image_size``."""
    from torchvision.transforms.v2 import functional as F

    image = F.resize(read_grayscale(path), [int(image_size[0]), int(image_size[1])], antialias=True)
    return image.clamp_(0.0, 1.0)


class ManifestImageDataset(Dataset):
    """Images of some manifest rows with one label per task; items are ``{"image", "targets", "id", "index"}``
    like the synthetic dataset's (labels are 0-dim int64 tensors, ``-1`` = missing)."""

    def __init__(self, paths: Sequence[str], ids: Sequence[str], targets: Mapping[str, Tensor], *,
                 image_size: Sequence[int], normalization: str, augment: bool) -> None:
        self.paths = list(paths)
        self.ids = list(ids)
        self._targets = {name: t.to(torch.int64) for name, t in targets.items()}
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.normalization = normalization
        self.augment = augment
        self._augmentation = None
        if augment:
            from torchvision.transforms import v2

            self._augmentation = v2.Compose([
                v2.RandomHorizontalFlip(),
                v2.RandomRotation(25),
                v2.ColorJitter(brightness=0.2, contrast=0.2),
            ])

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def targets(self) -> dict[str, Tensor]:
        return dict(self._targets)

    def input(self, i: int) -> Tensor:
        image = load_image(self.paths[i], self.image_size)
        if self._augmentation is not None:
            from torchvision.transforms.v2 import functional as F

            image = self._augmentation(image)
            low, high = _GAMMA_RANGE
            gamma = float(torch.empty(()).uniform_(low, high))  # global RNG: seeded per worker by Lightning
            image = F.adjust_gamma(image.clamp(0.0, 1.0), gamma)
        return normalize_image(image, self.normalization)

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
                                    normalization=self.normalization, augment=False)


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
        subset: ``{mode: full|balanced|biased, by: <metadata head>, per_cell, major, minor, seed}`` on train only.
        image_size, in_channels, normalization, augment, check_images, batch_size, num_workers, seed.
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
        normalization: str = "sononet",
        augment: bool = True,
        check_images: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        problems: list[str] = []

        def plain(value: Any, key: str) -> Any:
            try:
                return to_plain(value, key)
            except ValueError as err:
                problems.append(str(err))
                return None

        target = copy.deepcopy(DEFAULT_TARGET) if target is None else plain(target, "target")
        metadata = {} if metadata is None else plain(metadata, "metadata")
        split_values = None if split_values is None else plain(split_values, "split_values")
        subset = None if subset is None else plain(subset, "subset")
        image_size = plain(image_size, "image_size")

        # ------------------------------------------------------------------------------------------- plain options
        for key, value in (("manifest", manifest), ("root", root)):
            if not isinstance(value, str) or not value:
                problems.append(f"{key}: must be a path, got {value!r}")
        for key, value in (("image_column", image_column), ("image_pattern", image_pattern)):
            if not isinstance(value, str) or not value:
                problems.append(f"{key}: must be a non-empty string, got {value!r}")
        for key, value in (("group_column", group_column), ("split_column", split_column)):
            if value is not None and (not isinstance(value, str) or not value):
                problems.append(f"{key}: must be a column name or null, got {value!r}")
        if split_values is not None and not isinstance(split_values, Mapping):
            problems.append(f"split_values: must be a mapping of cell value -> train/val/test, got {split_values!r}")
            split_values = None
        if split_values is not None:
            split_values = {str(k): str(v) for k, v in split_values.items()}
            if split_column is None:
                problems.append("split_values: only used with split_column; set split_column or remove it")
        if not isinstance(image_size, Sequence) or len(image_size) != 2 or not all(
                is_int(s) and s > 0 and s % 16 == 0 for s in image_size):
            problems.append(f"image_size: must be [H, W], positive multiples of 16, got {image_size!r}")
            image_size = None
        if not is_int(in_channels) or in_channels < 1:
            problems.append(f"in_channels: must be an integer >= 1, got {in_channels!r}")
        elif in_channels != 1:
            problems.append("in_channels: manifest data gives 1-channel images; SA-SonoNet channels (segmentation, "
                            f"spacing) are not supported yet (got {in_channels})")
        if normalization not in NORMALIZATIONS:
            problems.append(f"normalization: must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
        for key, value in (("augment", augment), ("check_images", check_images)):
            if not isinstance(value, bool):
                problems.append(f"{key}: must be true or false, got {value!r}")
        for key, value, minimum in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                    ("seed", seed, 0), ("num_folds", num_folds, 2)):
            if not is_int(value) or value < minimum:
                problems.append(f"{key}: must be an integer >= {minimum}, got {value!r}")
        fractions_ok = True
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                problems.append(f"{key}: must be a number in [0, 1), got {value!r}")
                fractions_ok = False
        if fractions_ok and val_fraction + test_fraction >= 1:
            problems.append(f"val_fraction: val_fraction + test_fraction must be < 1, got {val_fraction} + "
                            f"{test_fraction}")
        if fold is not None:
            if not is_int(fold) or fold < 0 or (is_int(num_folds) and fold >= num_folds):
                problems.append(f"fold: must be null or an integer in [0, num_folds={num_folds}), got {fold!r}")
        elif fractions_ok and split_column is None and val_fraction == 0:
            problems.append("val_fraction: must be > 0 without split_column or fold (the val split comes from it)")

        # ------------------------------------------------------------------------------------------- heads
        target_spec: ColumnSpec | None = None
        primary: str | None = None
        if not isinstance(target, Mapping):
            problems.append(f"target: must be a mapping with keys column, type, classes, name, got {target!r}")
        else:
            fields = {k: v for k, v in target.items() if k != "name"}
            try:
                target_spec = ColumnSpec.from_mapping("target", fields)
            except ValueError as err:
                problems += str(err).splitlines()
            if target_spec is not None and target_spec.type not in ("binary", "categorical"):
                problems.append(f"target.type: must be binary or categorical, got {target_spec.type!r}")
                target_spec = None
            if "name" in target:
                primary = target["name"]
                if _bad_name(primary):
                    problems.append(f"target.name: must be a non-empty string without '/' or '.', got {primary!r}")
                    primary = None
            elif isinstance(target.get("column"), str):
                primary = default_task_name(target["column"])
        heads: dict[str, ColumnSpec] = {}
        if not isinstance(metadata, Mapping):
            problems.append(f"metadata: must be a mapping of head name -> head config, got {metadata!r}")
            metadata = {}
        for name, head in metadata.items():
            if _bad_name(name):
                problems.append(f"metadata.{name}: head name {name!r} must be a non-empty string without '/' or '.'")
                continue
            if name == primary:
                problems.append(f"metadata.{name}: head name {name!r} is already the primary task's name")
            try:
                heads[name] = ColumnSpec.from_mapping(f"metadata.{name}", head)
            except ValueError as err:
                problems += str(err).splitlines()
                continue
            if target_spec is not None and heads[name].column == target_spec.column:
                problems.append(f"metadata.{name}.column: {heads[name].column!r} is the target's column; a metadata "
                                "head must use another column")

        # ------------------------------------------------------------------------------------------- subset
        subset_cfg: dict[str, Any] = {"mode": "full"}
        if subset is not None:
            if not isinstance(subset, Mapping):
                problems.append(f"subset: must be a mapping with keys {', '.join(_SUBSET_KEYS)}, got {subset!r}")
            else:
                problems += [f"subset.{k}: unknown key; valid keys: {', '.join(_SUBSET_KEYS)}"
                             for k in subset if k not in _SUBSET_KEYS]
                subset_cfg = {"mode": "full", "per_cell": 300, "major": 700, "minor": 150, "seed": seed,
                              **{k: v for k, v in subset.items() if k in _SUBSET_KEYS}}
                mode = subset_cfg["mode"]
                if mode not in SUBSET_MODES:
                    problems.append(f"subset.mode: must be one of {', '.join(SUBSET_MODES)}, got {mode!r}")
                elif mode != "full":
                    by = subset_cfg.get("by")
                    if by not in metadata:
                        problems.append(f"subset.by: {mode} subsets need a metadata head name; got {by!r}, "
                                        f"heads: {', '.join(map(str, metadata)) or 'none'}")
                for key in ("per_cell", "major", "minor", "seed"):
                    if not is_int(subset_cfg[key]) or subset_cfg[key] < 0:
                        problems.append(f"subset.{key}: must be an integer >= 0, got {subset_cfg[key]!r}")
        if problems:
            raise ValueError(_message(problems))
        assert target_spec is not None and primary is not None and image_size is not None

        # ------------------------------------------------------------------------------------------- the table
        try:
            table = read_manifest(manifest, delimiter)
        except ManifestError as err:
            raise ValueError(_message([f"manifest: {p}" for p in err.problems])) from None
        if target_spec.column in table.header and target_spec.classes is not None:
            table, class_problems = _keep_classes(table, target_spec)
            problems += class_problems
        problems += [_keyed(p, table.path) for p in validate_manifest(
            table, root=root, image_column=image_column, image_pattern=image_pattern, target=target_spec,
            metadata=heads, group_column=group_column, split_column=split_column, split_values=split_values,
            check_images=check_images)]
        if problems:
            raise ValueError(_message(problems))

        # ------------------------------------------------------------------------------------------- splits
        n = len(table.rows)
        cells = table.column(target_spec.column)
        vocabulary = list(target_spec.classes) if target_spec.classes is not None else sorted(set(cells))
        codes = [vocabulary.index(c) for c in cells]  # provisional, for stratification only
        groups = table.column(group_column) if group_column is not None else None
        try:
            splits = self._splits(table, codes, groups, split_column, split_values, val_fraction, test_fraction,
                                  fold, num_folds, seed)
        except ValueError as err:
            default = "split_column" if split_column is not None else "val_fraction"
            raise ValueError(_message([_keyed(p, table.path, default) for p in str(err).splitlines()])) from None
        leaks = check_group_disjoint(splits, groups)
        if leaks:
            raise ValueError(_message([f"group_column: {p}" for p in leaks]))
        train_rows = [i for i in range(n) if splits[i] == "train"]
        val_rows = [i for i in range(n) if splits[i] == "val"]
        test_rows = [i for i in range(n) if splits[i] == "test"]
        if not train_rows:
            problems.append("split_column: no row is in the train split")
        if not val_rows:
            problems.append("val_fraction: no row is in the val split (raise val_fraction or mark val rows)")
        if target_spec.classes is not None and train_rows:
            in_train = {cells[i] for i in train_rows}
            absent = [c for c in target_spec.classes if c not in in_train]
            if absent:
                problems.append(f"target.classes: {absent} never occur in the train split of {table.path}; remove "
                                "them from classes or change the split")
        if problems:
            raise ValueError(_message(problems))

        # ------------------------------------------------------------------------------------------- labels
        specs: list[TaskSpec] = []
        labels: dict[str, list[int]] = {}
        for name, spec, key, strict in [(primary, target_spec, "target", True),
                                        *((h, s, f"metadata.{h}", False) for h, s in heads.items())]:
            try:
                task, values = encode_labels(table, spec, name=name, fit_rows=train_rows, strict=strict)
            except ValueError as err:
                problems += [f"{key}: {line}" for line in str(err).splitlines()]
                continue
            specs.append(task)
            labels[name] = values
        if problems:
            raise ValueError(_message(problems))

        # ------------------------------------------------------------------------------------------- subset
        selected = train_rows
        if subset_cfg["mode"] != "full":
            by = subset_cfg["by"]
            by_spec = next(s for s in specs if s.name == by)
            try:
                chosen = select_subset(
                    [labels[primary][i] for i in train_rows], [labels[by][i] for i in train_rows],
                    mode=subset_cfg["mode"], per_cell=subset_cfg["per_cell"], major=subset_cfg["major"],
                    minor=subset_cfg["minor"], seed=subset_cfg["seed"], primary_names=list(specs[0].class_names),
                    by_names=list(by_spec.class_names))
            except ValueError as err:
                raise ValueError(_message([line.rstrip(":") for line in str(err).splitlines()])) from None
            selected = [train_rows[k] for k in chosen]

        self.manifest = manifest
        self.root = root
        self.table: ManifestTable = table
        self.image_size: tuple[int, int] = (int(image_size[0]), int(image_size[1]))
        self.normalization = normalization
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.target_spec = target_spec
        self.metadata_specs = heads
        self.subset = subset_cfg
        self.splits: list[str] = list(splits)
        self.full_train_indices: list[int] = train_rows
        self.train_indices: list[int] = selected
        self.val_indices: list[int] = val_rows
        self.test_indices: list[int] = test_rows
        self.labels: dict[str, list[int]] = labels
        self.paths: list[str] = [image_path(root, c, image_pattern) for c in table.column(image_column)]
        self.ids: list[str] = table.column(image_column)
        self._specs = specs
        self.save_hyperparameters(to_plain({
            "manifest": manifest, "root": root, "image_column": image_column, "image_pattern": image_pattern,
            "delimiter": delimiter, "target": target, "metadata": metadata, "group_column": group_column,
            "split_column": split_column, "split_values": split_values, "val_fraction": val_fraction,
            "test_fraction": test_fraction, "fold": fold, "num_folds": num_folds, "subset": subset_cfg,
            "image_size": list(self.image_size), "in_channels": in_channels, "normalization": normalization,
            "augment": augment, "check_images": check_images, "batch_size": batch_size,
            "num_workers": num_workers, "seed": seed}, "hparams"))

        self.input_shape: tuple[int, int, int] = (int(in_channels), *self.image_size)
        self.primary_task: str = primary

    # ----------------------------------------------------------------------------------------------------------------

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
                raise ValueError(f"val_fraction: the split column {split_column!r} has no val rows; val_fraction "
                                 "must be > 0 to carve a val split from train")
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
        return ManifestImageDataset([self.paths[i] for i in rows], [self.ids[i] for i in rows], targets,
                                    image_size=self.image_size, normalization=self.normalization, augment=augment)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return  # idempotent
        self.train_dataset = self._dataset(self.train_indices, self.augment)
        self.val_dataset = self._dataset(self.val_indices, False)
        self.test_dataset = self._dataset(self.test_indices, False)
        self._set_task_specs(self._specs)


# --------------------------------------------------------------------------------------------------------- helpers


def _message(problems: Sequence[str]) -> str:
    count = len(problems)
    return f"invalid manifest data config ({count} problem{'s' * (count > 1)}):\n  " + "\n  ".join(problems)


_ROLE = re.compile(r"^(image_column|target\.column|metadata\.[^ ]+\.column|group_column|split_column) refers to ")


def _keyed(problem: str, file: str, default: str = "manifest") -> str:
    """A problem line starting with its config key: lines about the file get ``manifest: `` (or the role whose
    column is missing); lines already starting with a key (``target: ...``, ``split_values: ...``) stay."""
    if problem.startswith(f"{file}: "):
        rest = problem[len(file) + 2:]
        role = _ROLE.match(rest)
        if role:
            return f"{role.group(1)}: {file}: {rest}"
        return f"{default}: {problem}"
    if re.match(r"^[A-Za-z_][\w./]*: ", problem):
        return problem
    return f"{default}: {problem}"


def _keep_classes(table: ManifestTable, spec: ColumnSpec) -> tuple[ManifestTable, list[str]]:
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
            problems.append(f"target.classes: {c!r} never occurs in column {spec.column!r} of {table.path}; "
                            f"{hint}values: {shown}")
    filtered = ManifestTable(path=table.path, delimiter=table.delimiter, header=table.header,
                             rows=tuple(table.rows[k] for k in keep),
                             line_numbers=tuple(table.line_numbers[k] for k in keep))
    return filtered, problems

"""What every wsca_lightning datamodule shares: task specs that a resumed run must re-derive, seeded loaders, and the
item format ``{"image", "targets", "id", "index"}`` that :class:`~wsca_lightning.models.MultiHeadModule` reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wsca_lightning.plain import is_int
from wsca_lightning.problems import Problem, switch_problems
from wsca_lightning.tasks import TaskSpec, spec_differences

__all__ = [
    "DeviceResidentDataset",
    "GeneratedImageDataset",
    "TaskDataModule",
    "keep_batch",
    "labelled_item",
    "on_device_problems",
    "split_problems",
]


def labelled_item(image: Tensor, targets: Mapping[str, Tensor], ids: Sequence[Any], i: int) -> dict[str, Any]:
    """Item ``i`` of a labelled image dataset: the image, one label per task (``-1`` = missing), its id and index."""
    return {"image": image, "targets": {name: value[i] for name, value in targets.items()}, "id": ids[i], "index": i}


def split_problems(split: Any, splits: Sequence[str], n: Any, seed: Any, rows: Sequence[int] | None) -> list[Problem]:
    """Problems of a generated split's ``split`` name, ``seed`` and chosen pool ``rows`` (of ``n``)."""
    problems = []
    if split not in splits:
        problems.append(Problem("split", f"must be one of {', '.join(splits)}, got {split!r}"))
    if not is_int(seed) or seed < 0:
        problems.append(Problem("seed", f"must be a non-negative integer, got {seed!r}"))
    if rows is not None and is_int(n):
        rows = [int(r) for r in rows]
        if not rows or sorted(set(rows)) != rows or rows[0] < 0 or rows[-1] >= n:
            problems.append(Problem("rows", f"must be a non-empty increasing list of distinct rows in [0, {n}), got "
                                            f"{len(rows)} rows"))
    return problems


class GeneratedImageDataset(Dataset):
    """Base of the in-memory generated datasets (built-in cervix scans, Fashion-MNIST scans): ``ids``, the per-task
    labels the datamodule installs with :meth:`set_targets`, and items built from :meth:`input`."""

    ids: list[str]
    _targets: dict[str, Tensor]

    def input(self, i: int) -> Tensor:
        """The model input of sample ``i``, ``(C, H, W)`` float32."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def set_targets(self, targets: Mapping[str, Tensor]) -> None:
        """Install the per-task labels (int64, shape (n,), ``-1`` = missing) that items will carry."""
        n = len(self)
        checked: dict[str, Tensor] = {}
        for name, value in targets.items():
            if value.shape != (n,) or value.dtype != torch.int64:
                raise ValueError(
                    f"target {name!r}: expected int64 of shape ({n},), got {value.dtype} {tuple(value.shape)}"
                )
            checked[name] = value.cpu()
        self._targets = checked

    @property
    def targets(self) -> dict[str, Tensor]:
        return dict(self._targets)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            i += len(self)
        return labelled_item(self.input(i), self._targets, self.ids, i)


def on_device_problems(on_device: Any, num_workers: Any) -> list[Problem]:
    """Problems of the ``on_device`` option (:class:`DeviceResidentDataset`): a bool, and no loader workers."""
    if not isinstance(on_device, bool):
        return switch_problems([("on_device", on_device)])
    if on_device and num_workers != 0:
        return [Problem("on_device", "batches are cut on the device by the training process; set num_workers: 0 "
                                     f"(got {num_workers!r})")]
    return []


def keep_batch(batch: Any) -> Any:
    """The collate function of a dataset that returns whole batches (``__getitems__``): nothing left to do."""
    return batch


class DeviceResidentDataset(Dataset):
    """A generated split copied once to the training device; a batch is one gather there.

    The DataLoader asks ``__getitems__`` for a whole batch (one indexing of device tensors), so no per-image Python,
    no collation and no host-to-device copy happen per step: the loader cannot fall behind a GPU. Memory on the
    device: ``n x C x H x W x 4`` bytes (2.6 GB for 10,000 images at 224x288) per process.
    """

    def __init__(self, dataset: GeneratedImageDataset, device: torch.device | str, chunk: int = 1024) -> None:
        n = len(dataset)
        first = dataset.input(0)
        self.device = torch.device(device)
        self.inputs = torch.empty((n, *first.shape), dtype=first.dtype, device=self.device)
        for start in range(0, n, chunk):  # host memory: one chunk at a time
            stop = min(n, start + chunk)
            self.inputs[start:stop] = torch.stack([dataset.input(i) for i in range(start, stop)]).to(self.device)
        self.targets = {name: value.to(self.device) for name, value in dataset.targets.items()}
        self.ids = list(dataset.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return labelled_item(self.inputs[int(i)], self.targets, self.ids, int(i))

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        index = torch.as_tensor(list(indices), dtype=torch.int64).to(self.device, non_blocking=True)
        return {
            "image": self.inputs[index],
            "targets": {name: value[index] for name, value in self.targets.items()},
            "id": [self.ids[int(i)] for i in indices],
            "index": index,
        }


class TaskDataModule(L.LightningDataModule):
    """Base of the datamodules: subclasses set ``batch_size``, ``num_workers``, ``seed`` and, in ``setup``, the
    datasets and then :meth:`_set_task_specs`.

    The task specs (class names, bin edges fitted on the training split) are saved in checkpoints; a resumed run
    whose config derives different ones is refused, because its heads would be silently relabelled.
    """

    batch_size: int
    num_workers: int
    seed: int
    #: serve generated splits from the trainer's device (:class:`DeviceResidentDataset`); set by subclasses
    on_device: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self._task_specs: list[TaskSpec] | None = None
        self._loaded_specs: list[dict[str, Any]] | None = None
        self._resident: dict[int, DeviceResidentDataset] = {}

    @property
    def task_specs(self) -> list[TaskSpec]:
        """Primary spec first, then metadata specs in config order (available after :meth:`setup`)."""
        if self._task_specs is None:
            raise RuntimeError("task_specs are available after setup() (continuous bins are fitted on the data)")
        return list(self._task_specs)

    def _set_task_specs(self, specs: Sequence[TaskSpec]) -> None:
        self._task_specs = list(specs)
        if self._loaded_specs is not None:
            self._check_loaded_specs()

    # --- loaders -------------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup() before train_dataloader()")
        # A fresh seeded generator: the shuffle order is reproducible and still differs between epochs.
        return self._loader(self.train_dataset, shuffle=True, generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            raise RuntimeError("call setup() before val_dataloader()")
        return self._loader(self.val_dataset, shuffle=False, generator=None)

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            raise RuntimeError("this datamodule has no test split (or setup() has not run)")
        return self._loader(self.test_dataset, shuffle=False, generator=None)

    def _loader(self, dataset: Dataset, *, shuffle: bool, generator: torch.Generator | None) -> DataLoader:
        if self.on_device and self.trainer is not None and isinstance(dataset, GeneratedImageDataset):
            device = self.trainer.strategy.root_device
            resident = self._resident.get(id(dataset))
            if resident is None or resident.device != device:
                resident = self._resident[id(dataset)] = DeviceResidentDataset(dataset, device)
            return DataLoader(resident, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                              num_workers=0, collate_fn=keep_batch, drop_last=False)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0, pin_memory=False,
                          drop_last=False)

    # --- checkpoint state: plain Python (checkpoints load with weights_only=True) --------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"task_specs": [...]}`` in plain Python (empty list before setup)."""
        return {"task_specs": [spec.to_dict() for spec in self._task_specs or []]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Record a checkpoint's task specs and check that this config re-derives the same ones."""
        self._loaded_specs = [dict(s) for s in state_dict.get("task_specs", [])]
        if self._task_specs is not None:
            self._check_loaded_specs()

    def _check_loaded_specs(self) -> None:
        assert self._loaded_specs is not None and self._task_specs is not None
        if not self._loaded_specs:
            return
        problems = spec_differences(self._loaded_specs, [spec.to_dict() for spec in self._task_specs],
                                    allow_extra=False)
        if problems:
            raise ValueError(
                "the checkpoint's task specs differ from the ones this data config derives; resume with the data "
                "config the checkpoint was trained with:\n  " + "\n  ".join(problems)
            )

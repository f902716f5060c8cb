"""What every wsca_lightning datamodule shares: task specs that a resumed run must re-derive, seeded loaders, and the
item format ``{"image", "targets", "id", "index"}`` that :class:`~wsca_lightning.models.MultiHeadModule` reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wsca_lightning.tasks import TaskSpec, spec_differences

__all__ = ["GeneratedImageDataset", "TaskDataModule", "integer_problems", "labelled_item"]


def labelled_item(image: Tensor, targets: Mapping[str, Tensor], ids: Sequence[Any], i: int) -> dict[str, Any]:
    """Item ``i`` of a labelled image dataset: the image, one label per task (``-1`` = missing), its id and index."""
    return {"image": image, "targets": {name: value[i] for name, value in targets.items()}, "id": ids[i], "index": i}


def integer_problems(limits: Sequence[tuple[str, Any, int]]) -> list[str]:
    """``"<key>: must be an integer >= <minimum>, got ..."`` for each ``(key, value, minimum)`` that fails."""
    return [f"{key}: must be an integer >= {minimum}, got {value!r}" for key, value, minimum in limits
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum]


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


class TaskDataModule(L.LightningDataModule):
    """Base of the datamodules: subclasses set ``batch_size``, ``num_workers``, ``seed`` and, in ``setup``, the
    datasets and then :meth:`_set_task_specs`.

    The task specs (class names, bin edges fitted on the training split) are saved in checkpoints; a resumed run
    whose config derives different ones is refused, because its heads would be silently relabelled.
    """

    batch_size: int
    num_workers: int
    seed: int

    def __init__(self) -> None:
        super().__init__()
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self._task_specs: list[TaskSpec] | None = None
        self._loaded_specs: list[dict[str, Any]] | None = None

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

"""The ``WeightSpaceCorrelation`` callback: WSC of the primary head against metadata heads at every epoch end.

At the end of every training epoch (never in the sanity check) it

1. embeds a fixed, seeded subset of the training dataset with the module in eval mode, without gradients;
2. fits the PCA projection on those embeddings (``k = min(d, N - 1, max(k_min, k_var))``, method.md §3);
3. correlates the primary head with each metadata head (:func:`wsca_lightning.wsc.compute_wsc`);
4. logs ``wsc/<task>/max_abs``, ``wsc/<task>/mean_abs``, ``wsc/k`` and ``wsc/explained_variance`` with
   ``log_dict`` (same ``metrics.csv`` row as the epoch's training losses);
5. writes the epoch's matrices to ``<dirpath>/epoch_<NNNN>.npz`` (global rank zero only).

After each computed epoch and at fit end it (re)writes ``<dirpath>/wsc_summary.json`` (format in the README).
The per-epoch history is plain Python and is saved in checkpoints, so a resumed run continues it without gaps or duplicates -- provided checkpoints are
taken at the end of the training epoch (``ModelCheckpoint(save_on_train_epoch_end=True)``, as in our configs);
a checkpoint taken at validation end precedes this callback's work for that epoch, and ``setup`` warns about it.

Any LightningModule works if it implements :class:`wsca_lightning.interface.SupportsWSC`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from wsca_lightning.interface import HeadWeights, SupportsWSC
from wsca_lightning.plain import is_int
from wsca_lightning.wsc import WSCResult, compute_wsc

SUMMARY_FILENAME = "wsc_summary.json"


def embed_dataset(
    module: SupportsWSC,
    dataset: Dataset,
    indices: Sequence[int],
    *,
    batch_size: int,
    collate_fn: Any = None,
    to_device: Any = None,
) -> Tensor:
    """Embeddings (``(len(indices), d)``) of ``dataset[indices]`` with the module in eval mode, no gradients.

    The module's train/eval state is restored afterwards. ``to_device`` moves a collated batch to the module's
    device (the trainer's strategy does it inside the callback).
    """
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=collate_fn)
    was_training = module.training
    module.eval()
    chunks: list[Tensor] = []
    try:
        with torch.inference_mode():
            for batch in loader:
                if to_device is not None:
                    batch = to_device(batch)
                chunks.append(module.wsc_embed(batch).float())
    finally:
        module.train(was_training)
    return torch.cat(chunks)


class WeightSpaceCorrelation(Callback):
    """Per-epoch Weight Space Correlation between the primary head and metadata heads.

    Args:
        tasks: metadata heads to correlate with the primary head (default: every head but the primary one).
        subset_size: training samples embedded for the projection (a fixed, seeded subset; all if the set is smaller).
        k_min: floor on the number of principal components (paper: 50).
        var_threshold: explained-variance fraction the kept components must reach (paper: 0.99).
        batch_size: batch size of the embedding pass.
        every_n_epochs: compute every n-th epoch (the last epoch is always computed).
        seed: seed of the subset draw.
        dirpath: where matrices and the summary go (default ``<trainer.default_root_dir>/wsc``).
        save_matrices: write the per-epoch ``.npz`` files.
    """

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        subset_size: int = 512,
        k_min: int = 50,
        var_threshold: float = 0.99,
        batch_size: int = 128,
        every_n_epochs: int = 1,
        seed: int = 0,
        dirpath: str | None = None,
        save_matrices: bool = True,
    ) -> None:
        problems = []
        if tasks is not None and (isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks)):
            problems.append(f"tasks: a list of head names or null, got {tasks!r}")
        for key, value, low in (("subset_size", subset_size, 2), ("k_min", k_min, 1), ("batch_size", batch_size, 1),
                                ("every_n_epochs", every_n_epochs, 1)):
            if not is_int(value) or value < low:
                problems.append(f"{key}: must be an integer >= {low}, got {value!r}")
        if not isinstance(var_threshold, (int, float)) or not 0.0 < var_threshold <= 1.0:
            problems.append(f"var_threshold: must be in (0, 1], got {var_threshold!r}")
        if problems:
            raise ValueError("\n".join(problems))
        self.tasks = list(tasks) if tasks is not None else None
        self.subset_size = subset_size
        self.k_min = k_min
        self.var_threshold = float(var_threshold)
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.dirpath = dirpath
        self.save_matrices = save_matrices
        self.history: list[dict[str, Any]] = []
        self._resolved_dir: str | None = None
        self._protocol: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(tasks=self.tasks, k_min=self.k_min, var_threshold=self.var_threshold)

    # --- checks --------------------------------------------------------------------------------------------------
    def check_module(self, pl_module: Any) -> list[str]:
        """Validate the module against this callback's settings; returns the metadata tasks to correlate."""
        if not isinstance(pl_module, SupportsWSC):
            raise TypeError(
                f"{type(pl_module).__name__} does not implement the WSC interface (wsc_primary_task, wsc_embed, "
                "wsc_head_weights); see wsca_lightning.interface"
            )
        heads = pl_module.wsc_head_weights()
        primary = pl_module.wsc_primary_task
        if primary not in heads:
            raise ValueError(f"wsc_primary_task {primary!r} is not among the module's heads {sorted(heads)}")
        available = [name for name in heads if name != primary]
        if self.tasks is None:
            return available
        unknown = [t for t in self.tasks if t not in available]
        if unknown:
            raise ValueError(
                f"tasks: unknown metadata head(s) {unknown}; the module's metadata heads are {available}"
                + (f" ({primary!r} is the primary head)" if primary in unknown else "")
            )
        return list(self.tasks)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.check_module(pl_module)
        protocol = getattr(pl_module, "wsc_protocol", None)
        self._protocol = None if protocol is None else str(protocol)
        self._resolved_dir = self.dirpath or os.path.join(trainer.default_root_dir, "wsc")
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and not cb._should_save_on_train_epoch_end(trainer):
                rank_zero_warn(
                    "A ModelCheckpoint saves at validation end, before WeightSpaceCorrelation runs at the training "
                    "epoch end: its checkpoints miss that epoch's WSC entry, and a resumed run would show a gap. "
                    "Set ModelCheckpoint(save_on_train_epoch_end=True)."
                )

    # --- the per-epoch computation -------------------------------------------------------------------------------
    def subset_indices(self, dataset_size: int) -> list[int]:
        """The fixed subset: the first ``subset_size`` of a seeded permutation, sorted."""
        generator = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(dataset_size, generator=generator)[: min(self.subset_size, dataset_size)]
        return sorted(perm.tolist())

    def evaluate(
        self, pl_module: SupportsWSC, dataset: Dataset, *, collate_fn: Any = None, to_device: Any = None
    ) -> tuple[WSCResult, dict[str, HeadWeights], list[str]]:
        """Embed the subset of ``dataset`` and compute WSC for this callback's tasks (usable outside a Trainer)."""
        tasks = self.check_module(pl_module)
        embeddings = embed_dataset(pl_module, dataset, self.subset_indices(len(dataset)),
                                   batch_size=self.batch_size, collate_fn=collate_fn, to_device=to_device)
        heads = pl_module.wsc_head_weights()
        primary = heads[pl_module.wsc_primary_task].weight
        result = compute_wsc(embeddings, primary, {t: heads[t].weight for t in tasks},
                             k_min=self.k_min, var_threshold=self.var_threshold)
        return result, heads, tasks

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        is_last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs != 0 and not is_last:
            return
        start = time.perf_counter()
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"WeightSpaceCorrelation embeds the dataset of a single training DataLoader; got "
                f"{type(loader).__name__}. Use evaluate() with the dataset to analyse directly."
            )
        result, heads, tasks = self.evaluate(
            pl_module,
            loader.dataset,
            collate_fn=loader.collate_fn,
            to_device=lambda batch: trainer.strategy.batch_to_device(batch, pl_module.device),
        )
        primary = pl_module.wsc_primary_task
        logged: dict[str, float] = {"wsc/k": float(result.projection.k),
                                    "wsc/explained_variance": result.projection.explained_variance_ratio}
        entry_tasks: dict[str, Any] = {}
        for name in tasks:
            corr = result.tasks[name]
            logged[f"wsc/{name}/max_abs"] = corr.summary.max_abs
            logged[f"wsc/{name}/mean_abs"] = corr.summary.mean_abs
            entry_tasks[name] = {
                "max_abs": corr.summary.max_abs,
                "mean_abs": corr.summary.mean_abs,
                "matrix": corr.matrix.tolist(),
                "rows": list(heads[primary].row_names),
                "cols": list(heads[name].row_names),
                "unprojected": {**corr.unprojected_summary.to_dict(), "matrix": corr.unprojected.tolist()},
            }
        pl_module.log_dict(logged, on_step=False, on_epoch=True)
        entry = {
            "epoch": epoch,
            "global_step": trainer.global_step,
            "k": result.projection.k,
            "explained_variance": result.projection.explained_variance_ratio,
            "n_embeddings": min(self.subset_size, len(loader.dataset)),
            "embedding_dim": result.projection.embedding_dim,
            "tasks": entry_tasks,
        }
        if trainer.is_global_zero and self.save_matrices:
            self._write_matrices(entry)
        entry["seconds"] = time.perf_counter() - start
        # a resumed run re-enters at the checkpoint's epoch: entries from a rolled-back timeline are dropped
        self.history = [h for h in self.history if h["epoch"] < epoch] + [entry]
        # rewritten every epoch, so a run that is killed still leaves a summary of its last computed epoch
        self._write_summary(trainer, pl_module)

    def _write_matrices(self, entry: Mapping[str, Any]) -> None:
        os.makedirs(self._directory, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"k": np.asarray(entry["k"])}
        for name, task in entry["tasks"].items():
            arrays[name] = np.asarray(task["matrix"], dtype=np.float64)
            arrays[f"{name}__unprojected"] = np.asarray(task["unprojected"]["matrix"], dtype=np.float64)
            arrays[f"{name}__rows"] = np.asarray(task["rows"], dtype=str)
            arrays[f"{name}__cols"] = np.asarray(task["cols"], dtype=str)
        np.savez(os.path.join(self._directory, f"epoch_{entry['epoch']:04d}.npz"), **arrays)

    @property
    def _directory(self) -> str:
        if self._resolved_dir is None:
            raise RuntimeError("WeightSpaceCorrelation has no output directory before setup()")
        return self._resolved_dir

    # --- fit end ------------------------------------------------------------------------------------------------
    def summary(self, primary: str) -> dict[str, Any]:
        """``wsc_summary.json`` content: the last computed epoch in full, plus the scalar history."""
        last = self.history[-1]
        return {
            "primary": primary,
            "epoch": last["epoch"],
            "k": last["k"],
            "protocol": self._protocol,
            "explained_variance": last["explained_variance"],
            "n_embeddings": last["n_embeddings"],
            "embedding_dim": last["embedding_dim"],
            "tasks": last["tasks"],
            "history": [
                {
                    "epoch": h["epoch"],
                    "k": h["k"],
                    "seconds": h["seconds"],
                    "tasks": {n: {"max_abs": t["max_abs"], "mean_abs": t["mean_abs"]} for n, t in h["tasks"].items()},
                }
                for h in self.history
            ],
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_summary(trainer, pl_module)

    def _write_summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history or not trainer.is_global_zero:
            return
        os.makedirs(self._directory, exist_ok=True)
        partial = self.summary_path + ".partial"
        with open(partial, "w") as f:
            json.dump(self.summary(pl_module.wsc_primary_task), f, indent=2)
        os.replace(partial, self.summary_path)  # atomic: a reader never sees half a file

    @property
    def summary_path(self) -> str:
        return os.path.join(self._directory, SUMMARY_FILENAME)

    # --- checkpointing: plain Python only (checkpoints load with weights_only=True) ------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

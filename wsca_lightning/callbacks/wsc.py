"""The ``WeightSpaceCorrelation`` callback: WSC of the primary head against metadata heads at every epoch end.

At the end of every training epoch (never in the sanity check) it

1. embeds a fixed, seeded subset of the training dataset with the module in eval mode, without gradients, and
   reads that subset's labels (from ``dataset.without_augmentation()`` when the dataset offers it), and a fixed
   draw of the validation data (:meth:`WeightSpaceCorrelation.holdout_indices`), where the encodability gate is
   measured because the backbone never trained on it;
2. runs the engine (:func:`wsca_lightning.wsc.analyze_embeddings`): PCA projection, linear probes
   with a permutation null, the encodability gate, the deconfounded probe and the shortcut test (its ``p`` and an
   effect size with a bootstrap interval);
3. logs ``wsc/<task>/{max_abs, mean_abs, p, z, probe_auroc, interpretable, deconfounded_max_abs, test_p,
   effect}``, ``wsc/k`` and ``wsc/explained_variance`` with ``log_dict`` (same ``metrics.csv`` row as the epoch's
   training losses);
4. updates the shortcut alarm (``alarm``): a watched task counts an epoch when it is interpretable and significant
   (the shortcut test's ``p < alpha``); ``patience`` consecutive such epochs warn or stop training, with the same
   decision on every process;
5. writes (global rank zero only) ``epoch_<NNNN>.npz`` matrices, ``heatmaps/epoch_<NNNN>.png`` and the latest
   ``wsc_heatmap.png``, ``wsc_table.csv`` and ``wsc_summary.json`` (atomically, so a killed run keeps its last
   computed epoch), and the heatmap to every logger that takes figures (:mod:`wsca_lightning.tracking`: TensorBoard,
   MLflow, W&B), with the summary and table as files at fit end where the logger keeps files. At fit end it draws
   ``wsc_over_epochs.png``: each task's WSC with its null band beside the loss curves;
6. with ``attribution`` (off by default: it costs a backward pass per image, or ``steps`` with integrated
   gradients), at fit end, on global rank zero: for every significant task of the last analysed epoch, when that
   epoch is the final model's, the pixels that carry the direction the primary head shares with the task
   (:mod:`wsca_lightning.attribution`) over the first images of the analysis subset, written to
   ``attribution/<task>.{png,json,npz}`` and the figure to the loggers.

Under DDP (any number of processes and nodes) each rank embeds a contiguous shard of the subset and the shards are
gathered in order; the analysis runs on global rank zero and its plain-Python result is broadcast, so every rank
logs the same keys and values and the result equals a single process's; an exception on one rank is raised on all
of them (:mod:`wsca_lightning.callbacks.distributed`).

Protocols: ``heads`` compares the module's own metadata heads (trained ``multitask`` or ``probe_online``, the module's
``wsc_protocol``); ``probe_refit`` compares the probes refitted on the cached embeddings every epoch (the paper's probe
protocol, per epoch; pair it with ``head_mode=probe_online`` so metadata never shapes the backbone).

The history (and the alarm's counters) are plain Python saved in checkpoints, so a resumed run continues them
without gaps or duplicates -- provided checkpoints are taken at the end of the training epoch
(``ModelCheckpoint(save_on_train_epoch_end=True)``, as in our configs); ``setup`` warns otherwise.

The callback is the Lightning hook; the work is done by the parts of :mod:`wsca_lightning.epoch_analysis`: the
evaluator embeds the subset and runs the analysis (``evaluator``, shared with ``wsca-analyze``), the shortcut alarm
counts significant epochs, and the outputs write the files. This module decides when each runs, on which rank, in
the background or inline, and what a checkpoint carries.

Any LightningModule works: one that implements :class:`wsca_lightning.interface.SupportsWSC`, or any other, read by
attribute paths (``head="model.fc"``, metadata from a table joined on sample ids or a callable on the batch:
:mod:`wsca_lightning.attach`).

The analysis runs at every ``every_n_epochs``-th epoch end and at the last one, which is the epoch that reaches
``max_epochs`` or ``max_steps`` (``max_epochs=-1`` with ``max_steps``: epochs are still counted).
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset

from wsca_lightning.attach import BatchKey, MetadataFn
from wsca_lightning.attribution import AttributionSettings
from wsca_lightning.callbacks.distributed import gather_shards, own_shard, run_on_every_rank, run_on_rank_zero
from wsca_lightning.epoch_analysis.alarm import AlarmSettings, ShortcutAlarm
from wsca_lightning.epoch_analysis.evaluator import (
    EmbeddedSubset,
    EpochEvaluator,
    analysis_view,
    attribution_tasks,
    embed_dataset,
    head_classes,
)
from wsca_lightning.epoch_analysis.outputs import EpochOutputs, check_output_paths
from wsca_lightning.interface import HeadWeights
from wsca_lightning.plain import is_int
from wsca_lightning.problems import ConfigError, Problem, integer_problems, raise_if, switch_problems
from wsca_lightning.summary import analysis_protocol, history_tasks, summary_header
from wsca_lightning.wsc import AnalysisSettings, WSCAnalysis
from wsca_lightning.wsc.shared_direction import SharedDirection

__all__ = ["PendingAnalysis", "WeightSpaceCorrelation"]

#: The analysis's defaults, which the constructor's arguments take (conf/callbacks/wsc.yaml mirrors them).
_ANALYSIS = AnalysisSettings()


@dataclass
class PendingAnalysis:
    """One computed epoch between its embedding pass and its entry in the history: everything the analysis reads,
    frozen at the epoch's end (the heads are copied, the module trains on), in plain tensors and Python so that a
    checkpoint taken while it runs carries it and a resumed run recomputes it (:meth:`to_state`)."""

    epoch: int
    step: int  # the loggers' step of the epoch's end: the analysis's values are logged there
    global_step: int
    primary: str
    tasks: list[str]
    heads: dict[str, HeadWeights]
    task_classes: dict[str, list[str]]  # every analysed task's class names
    subset: EmbeddedSubset
    holdout: EmbeddedSubset | None
    metrics: dict[str, float]  # the epoch's losses and primary metrics, for the history
    embed_seconds: float

    def cpu(self) -> "PendingAnalysis":
        """A copy with every tensor on the CPU (the background analysis runs there, off the training device)."""
        return replace(self, subset=self.subset.cpu(), holdout=None if self.holdout is None else self.holdout.cpu(),
                       heads={name: HeadWeights(h.weight.cpu(), h.row_names) for name, h in self.heads.items()})

    def to_state(self) -> dict[str, Any]:
        def embedded(value: EmbeddedSubset | None) -> dict[str, Any] | None:
            return None if value is None else {"embeddings": value.embeddings, "targets": dict(value.targets)}

        on_cpu = self.cpu()
        return {
            "epoch": self.epoch, "step": self.step, "global_step": self.global_step, "primary": self.primary,
            "tasks": list(self.tasks), "metrics": dict(self.metrics), "embed_seconds": self.embed_seconds,
            "task_classes": {name: list(names) for name, names in self.task_classes.items()},
            "heads": {name: {"weight": h.weight, "row_names": list(h.row_names)} for name, h in on_cpu.heads.items()},
            "subset": embedded(on_cpu.subset), "holdout": embedded(on_cpu.holdout),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "PendingAnalysis":
        def embedded(value: Mapping[str, Any] | None) -> EmbeddedSubset | None:
            return None if value is None else EmbeddedSubset(value["embeddings"], dict(value["targets"]))

        subset = embedded(state["subset"])
        assert subset is not None
        heads = {name: HeadWeights(h["weight"], tuple(h["row_names"])) for name, h in state["heads"].items()}
        return cls(
            epoch=int(state["epoch"]), step=int(state["step"]), global_step=int(state["global_step"]),
            primary=str(state["primary"]), tasks=list(state["tasks"]), metrics=dict(state["metrics"]),
            embed_seconds=float(state["embed_seconds"]),
            heads=heads, subset=subset, holdout=embedded(state["holdout"]),
            # checkpoints of version 0.1 carry no class names: their tasks all had heads
            task_classes={name: list(names) for name, names in state.get("task_classes", {}).items()}
            or head_classes(heads, list(state["tasks"])),
        )


def _epoch_end_step(trainer: L.Trainer) -> int:
    """The step at which Lightning logs this epoch's epoch-end metrics (one below the count of stepped batches)."""
    stepped = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
    return max(0, int(stepped) - 1)


def _is_last_epoch(trainer: L.Trainer) -> bool:
    """Whether the epoch ending now is the fit's last by ``max_epochs`` or ``max_steps`` (-1 / None: no limit). Other
    ends (``max_time``, early stopping) are not known in advance; fit end waits for their analysis."""
    by_epochs = trainer.max_epochs is not None and trainer.max_epochs >= 0 and \
        trainer.current_epoch + 1 >= trainer.max_epochs
    by_steps = trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps
    return by_epochs or by_steps


def _start_worker_thread(num_threads: int) -> None:
    # torch's intra-op thread count is per thread (OpenMP): the trainer's threads keep their own setting
    torch.set_num_threads(num_threads)


def _metric_value(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


class WeightSpaceCorrelation(Callback):
    """Per-epoch Weight Space Correlation with significance, probe quality, pictures and a shortcut alarm.

    Args:
        tasks: metadata heads to analyse (default: every head but the primary one).
        protocol: ``heads`` (the module's trained metadata heads) or ``probe_refit`` (probes refitted each epoch).
        subset_size: training samples embedded (a fixed, seeded subset; all if the set is smaller). A share
            ``holdout_fraction`` of it measures probe quality; the rest fits the probes.
        batch_size: batch size of the embedding pass.
        every_n_epochs: compute every n-th epoch (the last epoch is always computed).
        k_min, var_threshold, num_permutations, stop_after_exceedances, holdout_fraction, l2, max_iter, tol,
            num_bootstrap, ci_level, auroc_floor, deconfound, seed, k_values, decision: the analysis
            (:class:`wsca_lightning.wsc.AnalysisSettings`); ``seed`` also draws the subset; ``k_values`` adds max
            |WSC| at those projection sizes (``k_sweep`` in the summary, the paper's Fig. 4); ``decision`` forms the
            verdict's p (``calibrated``, the default, or the old ``permutation``).
        alarm: ``{"tasks": [...], "action": "warn"|"stop", "alpha": 0.05, "patience": 3}`` (:class:`AlarmSettings`).
        attribution: ``None`` (off, the default) or ``{"method": "integrated_gradients"|"gradient_x_input",
            "steps": 32, "max_images": 64, "examples": 4, "tasks": None, "batch_size": 64}``
            (:class:`~wsca_lightning.attribution.AttributionSettings`): at fit end, which pixels carry the direction
            the primary head shares with each significant task (``tasks``: these instead, whatever their verdict;
            significant: verdict p < ``alarm.alpha``), over the first ``max_images`` images of the analysis subset.
        dirpath: where files go (default ``<trainer.default_root_dir>/wsc``).
        save_matrices: write the per-epoch ``.npz`` files.
        save_plots: write heatmaps and the fit-end plot (needs matplotlib, the ``plots`` extra).
        async_analysis: run the analysis and its files in a background thread while the next epoch trains (the
            default); training waits only for the embedding pass. See "Asynchronous analysis" below.
        analysis_threads: torch threads of that background thread (default: 1 when the module trains on the CPU,
            so the trainer keeps its cores, else the process's torch thread count).
        head: read an unmodified module (no WSC interface) by attribute paths: the primary head's path, e.g.
            ``"model.fc"`` (:class:`~wsca_lightning.attach.AttributeView`). The options below need it.
        embedding: path of the module whose output is the embedding (default: the head's input).
        metadata: the metadata of a module read by paths: a CSV path, ``{path, id_column, columns, delimiter}``
            (:class:`~wsca_lightning.data.metadata_table.MetadataTable`: read now, so its problems come before
            training) or a callable ``batch -> {task: integer labels}``.
        metadata_heads: ``{task: path}`` of metadata heads the module has (for ``protocol="heads"``).
        input_key, label_key, id_key: batch entries (dict keys or tuple positions) of the input, the primary labels
            and the sample ids (default ``image``/0, ``label``/1, ``id``/2); a table's id column defaults to
            ``id_key``.
        class_names: the primary head's class names (default ``"0"``, ``"1"``...).

    Asynchronous analysis: the embedding pass runs at the epoch's end, as in the paper, with the heads copied; the
    analysis runs on the CPU in one background thread. Its values are logged against the epoch they belong to (that
    epoch's step, with its ``epoch`` column in ``metrics.csv``), and the alarm acts as soon as a result arrives
    (single process: at the next training batch's end; under DDP: at the next epoch end, where every rank receives
    it) and at the latest at the next epoch end, which waits for it; fit end waits for the last one (the epoch that
    ``max_epochs`` makes the last is analysed inline: nothing is left to train beside it). A failure in
    the analysis is raised in the training process (on every rank) when its result is collected. A checkpoint
    taken while an analysis runs carries its inputs, and a run resumed from it recomputes that epoch first, so the
    history has no gap or duplicate. Results also enter ``trainer.callback_metrics`` when they arrive, so a monitor
    on ``wsc/...`` (``EarlyStopping``, ``ModelCheckpoint``) reads the latest analysed epoch's values, which are a
    computed epoch behind when the monitor runs at an epoch's end. With ``async_analysis=False`` everything happens
    inside the epoch-end hook, in the epoch's own row of ``metrics.csv``.
    """

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        protocol: str = "heads",
        subset_size: int = 512,
        batch_size: int = 128,
        every_n_epochs: int = 1,
        k_min: int = _ANALYSIS.k_min,
        var_threshold: float = _ANALYSIS.var_threshold,
        num_permutations: int = _ANALYSIS.num_permutations,
        stop_after_exceedances: int = _ANALYSIS.stop_after_exceedances,
        holdout_fraction: float = _ANALYSIS.holdout_fraction,
        l2: float = _ANALYSIS.l2,
        max_iter: int = _ANALYSIS.max_iter,
        tol: float = _ANALYSIS.tol,
        num_bootstrap: int = _ANALYSIS.num_bootstrap,
        ci_level: float = _ANALYSIS.ci_level,
        auroc_floor: float = _ANALYSIS.auroc_floor,
        deconfound: bool = _ANALYSIS.deconfound,
        seed: int = _ANALYSIS.seed,
        k_values: Sequence[int] = _ANALYSIS.k_values,
        decision: str = _ANALYSIS.decision,
        alarm: Mapping[str, Any] | None = None,
        attribution: Mapping[str, Any] | None = None,
        dirpath: str | None = None,
        save_matrices: bool = True,
        save_plots: bool = True,
        async_analysis: bool = True,
        analysis_threads: int | None = None,
        head: str | None = None,
        embedding: str | None = None,
        metadata: str | os.PathLike | Mapping[str, Any] | MetadataFn | None = None,
        metadata_heads: Mapping[str, str] | None = None,
        input_key: BatchKey | None = None,
        label_key: BatchKey | None = None,
        id_key: BatchKey | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        problems: list[Problem] = []
        settings = AnalysisSettings(
            k_min=k_min, var_threshold=var_threshold, num_permutations=num_permutations,
            stop_after_exceedances=stop_after_exceedances,
            holdout_fraction=holdout_fraction, l2=l2, max_iter=max_iter, tol=tol, num_bootstrap=num_bootstrap,
            ci_level=ci_level, auroc_floor=auroc_floor, deconfound=deconfound, seed=seed,
            k_values=tuple(k_values) if isinstance(k_values, Sequence) and not isinstance(k_values, str) else k_values,
            decision=decision,
        )
        evaluator = None
        try:
            evaluator = EpochEvaluator(
                tasks=tasks, protocol=protocol, subset_size=subset_size, batch_size=batch_size, settings=settings,
                head=head, embedding=embedding, metadata=metadata, metadata_heads=metadata_heads,
                input_key=input_key, label_key=label_key, id_key=id_key, class_names=class_names)
        except ConfigError as err:
            problems += err.problems
        problems += integer_problems([("every_n_epochs", every_n_epochs, 1)])
        problems += switch_problems([("async_analysis", async_analysis)])
        if analysis_threads is not None and (not is_int(analysis_threads) or analysis_threads < 1):
            problems.append(Problem("analysis_threads", f"must be an integer >= 1 or null, got {analysis_threads!r}"))
        try:
            self.alarm = AlarmSettings.from_mapping(alarm)
            problems += self.alarm.problems()
        except ConfigError as err:
            problems += err.problems
            self.alarm = AlarmSettings()
        try:
            self.attribution = AttributionSettings.from_mapping(attribution)
        except ConfigError as err:
            problems += err.problems
            self.attribution = None
        if self.alarm.tasks and num_permutations == 0:
            problems.append(Problem("alarm.tasks", "the alarm reads p-values; set num_permutations >= 2 (e.g. 100)"))
        if tasks is not None and not isinstance(tasks, str):
            for key, named in self._named_tasks().items():
                outside = [t for t in named if t not in tasks]
                if outside:
                    problems.append(Problem(key, f"{outside} are not among tasks {list(tasks)}"))
        raise_if(problems)
        assert evaluator is not None
        #: embeds the subset and runs the analysis; ``wsca-analyze`` uses it without a Trainer
        self.evaluator = evaluator
        self.settings = settings
        self.tasks = evaluator.tasks
        self.protocol = protocol
        self.subset_size = subset_size
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.dirpath = dirpath
        self.save_matrices = save_matrices
        self.save_plots = save_plots
        self.async_analysis = async_analysis
        self.analysis_threads = analysis_threads
        self.history: list[dict[str, Any]] = []
        self.last_entry: dict[str, Any] | None = None
        self._alarm = ShortcutAlarm(self.alarm)
        self._outputs: EpochOutputs | None = None  # known at setup, where the directory is agreed across ranks
        self._module_protocol: str | None = None
        self._warned_no_validation = False
        self._pending: PendingAnalysis | None = None  # computed epoch whose result is not in the history yet
        self._job: Future | None = None  # its analysis in the background thread (global rank zero only)
        self._executor: ThreadPoolExecutor | None = None
        # for the fit-end attribution: the last analysed epoch's shared directions (set in the analysis's thread,
        # read after fit end collected it) and the last epoch trained (whose weights the module holds at fit end)
        self._directions: tuple[int, dict[str, SharedDirection]] | None = None
        self._trained_epoch: int | None = None

    def _named_tasks(self) -> dict[str, Sequence[str]]:
        """Other settings that name metadata tasks, by key (checked like ``tasks``)."""
        named: dict[str, Sequence[str]] = {"alarm.tasks": self.alarm.tasks}
        if self.attribution is not None and self.attribution.tasks is not None:
            named["attribution.tasks"] = self.attribution.tasks
        return named

    @property
    def state_key(self) -> str:
        return self._generate_state_key(tasks=self.tasks, protocol=self.protocol, k_min=self.settings.k_min,
                                        var_threshold=self.settings.var_threshold)

    @property
    def alarm_counts(self) -> dict[str, int]:
        """Per watched task, the consecutive computed epochs it has been interpretable and significant."""
        return self._alarm.counts

    @property
    def alarm_epoch(self) -> int | None:
        """The first epoch at which the alarm went off (None: it has not)."""
        return self._alarm.first_epoch

    # --- checks --------------------------------------------------------------------------------------------------
    def check_module(self, pl_module: Any) -> list[str]:
        """Validate the module against this callback's settings; returns the metadata tasks to analyse. Raises
        :class:`~wsca_lightning.problems.ConfigError` keyed ``tasks``, ``alarm.tasks`` or ``protocol`` (or unkeyed:
        the module as a whole), or ``TypeError`` for a module without the WSC interface."""
        return self.evaluator.check_module(pl_module, named=self._named_tasks())

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.check_module(pl_module)
        protocol = getattr(self.evaluator.reader(pl_module), "wsc_protocol", None)
        self._module_protocol = None if protocol is None else str(protocol)
        # every rank writes (or logs) under rank 0's directory, as ModelCheckpoint agrees its dirpath
        directory = trainer.strategy.broadcast(self.output_dir(trainer), src=0)
        self._outputs = EpochOutputs(directory, save_matrices=self.save_matrices, save_plots=self.save_plots)
        run_on_rank_zero(trainer, lambda: self.check_output_paths(directory), "checking the output directory")
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and not cb._should_save_on_train_epoch_end(trainer):
                rank_zero_warn(
                    "A ModelCheckpoint saves at validation end, before WeightSpaceCorrelation runs at the training "
                    "epoch end: its checkpoints miss that epoch's WSC entry, and a resumed run would show a gap. "
                    "Set ModelCheckpoint(save_on_train_epoch_end=True)."
                )

    @property
    def protocol_name(self) -> str:
        """What the observed metadata directions are: ``probe_refit``, or the module's head mode for ``heads``."""
        return analysis_protocol(self.protocol, self._module_protocol)

    def evaluate(
        self,
        pl_module: Any,
        dataset: Dataset,
        *,
        holdout_dataset: Dataset | None = None,
        collate_fn: Any = None,
        to_device: Any = None,
        progress: bool = False,
    ) -> tuple[WSCAnalysis, dict[str, Any]]:
        """Embed this callback's subset of ``dataset`` and analyse it outside a Trainer
        (:meth:`EpochEvaluator.evaluate <wsca_lightning.epoch_analysis.EpochEvaluator.evaluate>`)."""
        return self.evaluator.evaluate(pl_module, dataset, holdout_dataset=holdout_dataset, collate_fn=collate_fn,
                                       to_device=to_device, progress=progress)

    # --- the epoch-end hook --------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # the previous computed epoch's result first (waiting for it if needed), so results arrive in epoch order
        self._collect(trainer, pl_module)
        epoch = trainer.current_epoch
        self._trained_epoch = epoch
        is_last = _is_last_epoch(trainer)
        if (epoch + 1) % self.every_n_epochs != 0 and not is_last:
            return
        start = time.perf_counter()
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"WeightSpaceCorrelation embeds the dataset of a single training DataLoader; got "
                f"{type(loader).__name__}. Use evaluate() with the dataset to analyse directly."
            )
        # Under DDP every rank embeds one contiguous shard of the subset and the shards are gathered; the analysis
        # runs once, on global rank zero, and its (plain Python) result is broadcast, so every rank logs the same
        # keys and values. A failure on any rank is raised on every rank (callbacks/distributed.py).
        dataset = analysis_view(loader.dataset)
        subset = self._embed_subset(trainer, pl_module, dataset, loader.collate_fn,
                                    self.evaluator.subset_indices(len(dataset)))
        holdout = None
        val_loader = self._validation_loader(trainer)
        if val_loader is not None:
            val_dataset = analysis_view(val_loader.dataset)
            holdout = self._embed_subset(trainer, pl_module, val_dataset, val_loader.collate_fn,
                                         self.evaluator.holdout_indices(len(val_dataset)))
        elif not self._warned_no_validation:
            self._warned_no_validation = True
            rank_zero_warn(
                "WeightSpaceCorrelation found no validation DataLoader: the encodability gate is measured on the "
                "held-out part of the training subset, which a backbone that memorised a column through its head "
                "passes. Give the Trainer validation data (val_dataloaders or a datamodule's val_dataloader)."
            )
        reader = self.evaluator.reader(pl_module)
        primary = reader.wsc_primary_task
        tasks, classes = self.evaluator.tasks_and_classes(pl_module)
        pending = PendingAnalysis(
            epoch=epoch,
            step=_epoch_end_step(trainer),
            global_step=trainer.global_step,
            primary=primary,
            tasks=tasks,
            task_classes=classes,
            heads={name: HeadWeights(h.weight.detach().clone(), tuple(h.row_names))
                   for name, h in reader.wsc_head_weights().items()},
            subset=subset,
            holdout=holdout,
            metrics=self._epoch_metrics(trainer, primary),
            embed_seconds=time.perf_counter() - start,
        )
        # the last epoch runs inline: no training is left to overlap with, and its checkpoint then holds its entry
        self._start(trainer, pl_module, pending, inline=not self.async_analysis or is_last, in_epoch_end=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # one process: a finished analysis is taken in at once (its alarm acts now); under DDP every rank must take
        # it in together, which happens at the next epoch end
        if trainer.world_size == 1 and self._job is not None and self._job.done():
            self._collect(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the subset's labels are known before the first step (the training loader exists from here on)
        loader = trainer.train_dataloader
        if isinstance(loader, DataLoader):
            self.evaluator.check_subset_labels(pl_module, loader.dataset, loader.collate_fn)
        if self._pending is not None:  # restored from a checkpoint taken while its analysis ran: recompute it
            pending, self._pending = self._pending, None
            self._start(trainer, pl_module, pending, inline=not self.async_analysis, in_epoch_end=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._collect(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # training failed: the analysis already running still completes its epoch's files and the summary (on this
        # process alone: the other ranks may be gone, so no collective step and no alarm action)
        pending, job = self._pending, self._job
        self._pending = self._job = None
        if pending is not None and job is not None:
            try:
                entry, timing = job.result()
            except Exception as err:  # the training error is the one to raise; this one is reported beside it
                rank_zero_warn(f"WeightSpaceCorrelation: the analysis of epoch {pending.epoch} failed too: "
                               f"{type(err).__name__}: {err}")
            else:
                self._finish(trainer, pl_module, pending, entry, {**timing, "waited": 0.0}, synchronous=False,
                             collective=False)
        self._shutdown_worker()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._shutdown_worker()

    # --- the analysis, in the background or inline ----------------------------------------------------------------
    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, pending: PendingAnalysis, *, inline: bool,
               in_epoch_end: bool) -> None:
        """Analyse ``pending`` inline (logged with ``log_dict`` when inside the epoch-end hook, else straight to the
        loggers) or in the background thread."""
        if not inline:
            self._submit(trainer, pl_module, pending)
            return
        entry, timing = run_on_rank_zero(trainer, lambda: self._run_analysis(pending), "the analysis")
        self._finish(trainer, pl_module, pending, entry, timing, synchronous=in_epoch_end)

    def _submit(self, trainer: L.Trainer, pl_module: L.LightningModule, pending: PendingAnalysis) -> None:
        """Start ``pending``'s analysis in the background thread (global rank zero; on the CPU)."""
        self._pending = pending
        if not trainer.is_global_zero:
            return
        if self._executor is None:
            threads = self.analysis_threads or (1 if pl_module.device.type == "cpu" else torch.get_num_threads())
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsc-analysis",
                                                initializer=_start_worker_thread, initargs=(threads,))
        self._job = self._executor.submit(self._run_analysis, pending.cpu())

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take the background analysis's result (waiting for it) into the history, the loggers and the alarm
        (every rank together)."""
        pending = self._pending
        if pending is None:
            return
        start = time.perf_counter()

        def result() -> tuple[dict[str, Any], dict[str, float]]:
            if self._job is None:  # cannot happen on rank zero: a pending epoch there always has its job
                raise RuntimeError(f"the analysis of epoch {pending.epoch} was never started")
            return self._job.result()

        try:
            entry, timing = run_on_rank_zero(trainer, result, f"the analysis of epoch {pending.epoch}")
        finally:
            self._pending, self._job = None, None
        timing["waited"] = time.perf_counter() - start
        self._finish(trainer, pl_module, pending, entry, timing, synchronous=False)

    def _run_analysis(self, pending: PendingAnalysis) -> tuple[dict[str, Any], dict[str, float]]:
        """The analysis and the epoch's files (global rank zero): the summary entry and how long each took."""
        start = time.perf_counter()
        analysis, entry = self.evaluator.analyze_heads(pending.heads, pending.primary, pending.tasks, pending.subset,
                                                       pending.holdout, task_classes=pending.task_classes)
        entry = {"epoch": pending.epoch, "global_step": pending.global_step, **entry}
        if self.attribution is not None:  # one SVD per task: kept for every analysed epoch, used at fit end
            tasks = attribution_tasks(entry, self.attribution, self.alarm.alpha)
            self._directions = (pending.epoch, self.evaluator.shared_directions(
                analysis, pending.heads[pending.primary].weight, tasks))
        analysed = time.perf_counter()
        self._files.write_epoch(entry, pending.primary, self.protocol_name)
        return entry, {"analysis": analysed - start, "files": time.perf_counter() - analysed}

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, pending: PendingAnalysis,
                entry: dict[str, Any], timing: Mapping[str, float], *, synchronous: bool,
                collective: bool = True) -> None:
        """Log an analysed epoch, add it to the history, advance the alarm and rewrite the summary (``collective``:
        every rank takes part, else this process alone, without acting on the alarm)."""
        epoch = pending.epoch
        logged = self._logged(entry)
        if synchronous:  # inside the epoch-end hook: the epoch's own row, and trainer.callback_metrics
            pl_module.log_dict(logged, on_step=False, on_epoch=True)
        else:
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics({**logged, "epoch": epoch}, step=pending.step)
            # monitors (EarlyStopping, ModelCheckpoint, the progress bar) read the latest values from here
            trainer.callback_metrics.update({key: torch.tensor(value) for key, value in logged.items()})
        if self.alarm.tasks:  # the watched tasks' verdict p on Lightning's progress bar (TQDM and rich read it here)
            trainer.progress_bar_metrics.update({key: logged[key] for t in self.alarm.tasks
                                                 if (key := f"wsc/{t}/test_p") in logged})
        if trainer.is_global_zero and self.save_plots:
            self._files.log_heatmap(trainer.loggers, epoch, pending.step)
        fired = self._alarm.update(entry)
        parts = {"embed": pending.embed_seconds, **timing}
        # what training waited for: the embedding pass, and the analysis itself when it ran inline
        blocking = pending.embed_seconds + parts.get("waited", parts["analysis"] + parts["files"])
        record = {
            "epoch": epoch,
            "k": entry["k"],
            "metrics": pending.metrics,
            "tasks": history_tasks(entry),
            "alarm_counts": dict(self.alarm_counts),
            "seconds": blocking,
            "seconds_parts": parts,
        }
        # a resumed run re-enters at the checkpoint's epoch: entries from a rolled-back timeline are dropped
        self.history = [h for h in self.history if h["epoch"] < epoch] + [record]
        self.last_entry = entry
        if not collective:
            self._write_summary(trainer, pl_module)
            return
        self._act_on_alarm(trainer, fired, epoch)
        # rewritten every epoch, so a run that is killed still leaves a summary of its last computed epoch
        run_on_rank_zero(trainer, lambda: self._write_summary(trainer, pl_module), "writing the summary")

    def _act_on_alarm(self, trainer: L.Trainer, fired: list[str], epoch: int) -> None:
        # every rank computed the same p-values; the reduction makes the decision identical even if one differs
        decision = trainer.strategy.reduce_boolean_decision(bool(fired), all=False)
        if not decision:
            return
        message = self._alarm.went_off(epoch, fired, self.summary_path)
        if self.alarm.action == "stop":
            trainer.should_stop = True
            rank_zero_warn(message + " Stopping training (alarm.action=stop).")
        else:
            rank_zero_warn(message)

    def _shutdown_worker(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._job = None

    @staticmethod
    def _validation_loader(trainer: L.Trainer) -> DataLoader | None:
        """The (first) validation DataLoader, also before the first validation run; None when there is none (or
        validation is switched off with ``limit_val_batches=0``)."""
        if trainer.limit_val_batches == 0:
            return None
        loaders = trainer.val_dataloaders
        if loaders is None:  # not loaded yet (no sanity check, validation later): ask its owner
            owner = next((o for o in (trainer.datamodule, trainer.lightning_module)
                          if o is not None and is_overridden("val_dataloader", o)), None)
            loaders = owner.val_dataloader() if owner is not None else None
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if not isinstance(loaders, DataLoader) or len(loaders.dataset) < 2:  # type: ignore[arg-type]
            return None
        return loaders

    def _embed_subset(
        self, trainer: L.Trainer, pl_module: L.LightningModule, dataset: Dataset, collate_fn: Any,
        indices: list[int],
    ) -> EmbeddedSubset:
        """Embeddings and labels of ``dataset[indices]``, each rank embedding its own shard of whole embedding
        batches (:func:`own_shard`; a rank without one embeds a placeholder image that the gather drops)."""
        shard = own_shard(indices, trainer.global_rank, trainer.world_size, self.batch_size) or indices[:1]
        local = run_on_every_rank(
            trainer,
            lambda: embed_dataset(
                pl_module, dataset, shard, batch_size=self.batch_size, collate_fn=collate_fn,
                to_device=lambda batch: trainer.strategy.batch_to_device(batch, pl_module.device),
                reader=self.evaluator.reader(pl_module),
            ),
            "the embedding pass",
        )
        device = local.embeddings.device
        return EmbeddedSubset(
            gather_shards(trainer, local.embeddings, len(indices), self.batch_size),
            {name: gather_shards(trainer, labels.to(device), len(indices), self.batch_size)
             for name, labels in local.targets.items()},
        )

    @staticmethod
    def _logged(entry: Mapping[str, Any]) -> dict[str, float]:
        logged: dict[str, float] = {"wsc/k": float(entry["k"]), "wsc/explained_variance": entry["explained_variance"]}
        for name, values in history_tasks(entry).items():
            for key in ("max_abs", "mean_abs", "p", "z", "probe_auroc", "deconfounded_max_abs", "test_p", "effect"):
                if values[key] is not None:
                    logged[f"wsc/{name}/{key}"] = float(values[key])
            logged[f"wsc/{name}/interpretable"] = float(values["interpretable"])
        return logged

    @staticmethod
    def _epoch_metrics(trainer: L.Trainer, primary: str) -> dict[str, float]:
        """The epoch's overall losses and the primary task's metrics, for the fit-end plot."""
        pattern = re.compile(rf"^(train|val)/(loss|{re.escape(primary)}/.+)$")
        out = {}
        for key, value in trainer.callback_metrics.items():
            if pattern.match(key) and (v := _metric_value(value)) is not None:
                out[key] = v
        return dict(sorted(out.items()))

    # --- files ---------------------------------------------------------------------------------------------------
    def output_dir(self, trainer: L.Trainer) -> str:
        """Where this callback writes for ``trainer``: ``dirpath``, or ``<trainer.default_root_dir>/wsc``."""
        return self.dirpath or os.path.join(trainer.default_root_dir, "wsc")

    @staticmethod
    def check_output_paths(directory: str) -> None:
        """:func:`wsca_lightning.epoch_analysis.outputs.check_output_paths`: raises ``ConfigError`` keyed
        ``dirpath``."""
        check_output_paths(directory)

    @property
    def _files(self) -> EpochOutputs:
        if self._outputs is None:
            raise RuntimeError("WeightSpaceCorrelation has no output directory before setup()")
        return self._outputs

    @property
    def summary_path(self) -> str:
        return self._files.summary_path

    def summary(self, primary: str) -> dict[str, Any]:
        """``wsc_summary.json`` content: the last computed epoch in full, the alarm, and the scalar history."""
        if self.last_entry is None:
            raise RuntimeError("no epoch has been analysed yet")
        return {
            **summary_header(primary, self.protocol, self._module_protocol),
            **self.last_entry,
            "alarm": self._alarm.summary(),
            "history": self.history,
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_on_rank_zero(trainer, lambda: self._write_fit_end_files(trainer, pl_module), "writing the fit-end files")

    def _write_fit_end_files(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_summary(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        self._files.write_fit_end(trainer.loggers, self.history, self.evaluator.reader(pl_module).wsc_primary_task,
                                  alpha=self.alarm.alpha, step=_epoch_end_step(trainer),
                                  has_entry=self.last_entry is not None)
        self._write_attributions(trainer, pl_module)

    def _write_attributions(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The fit-end attribution (global rank zero): the last analysed epoch's shared directions, attributed on
        the final model, which must be that epoch's (a run stopped between analysed epochs is skipped, said)."""
        if self.attribution is None or self._directions is None:
            return
        epoch, directions = self._directions
        if epoch != self._trained_epoch:
            rank_zero_warn(f"WeightSpaceCorrelation: no attribution: the last analysed epoch ({epoch}) is not the "
                           f"final model's ({self._trained_epoch}); analyse the last checkpoint with wsca-analyze.")
            return
        loader = trainer.train_dataloader
        if not directions or not isinstance(loader, DataLoader):
            return
        results = self.evaluator.attribute(
            pl_module, loader.dataset, directions, self.attribution, collate_fn=loader.collate_fn,
            to_device=lambda batch: trainer.strategy.batch_to_device(batch, pl_module.device))
        classes = self.evaluator.tasks_and_classes(pl_module)[1]
        self._files.write_attributions(trainer.loggers, results, self.evaluator.reader(pl_module).wsc_primary_task,
                                       examples=self.attribution.examples, epoch=epoch,
                                       step=_epoch_end_step(trainer), classes=classes)

    def _write_summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_entry is None or not trainer.is_global_zero:
            return
        self._files.write_summary(self.summary(self.evaluator.reader(pl_module).wsc_primary_task))

    # --- checkpointing: plain Python only (checkpoints load with weights_only=True) ------------------------------
    def state_dict(self) -> dict[str, Any]:
        # an epoch still being analysed travels as its inputs: a run resumed from here recomputes it
        return {"history": self.history, "last_entry": self.last_entry, "alarm_counts": dict(self.alarm_counts),
                "alarm_epoch": self.alarm_epoch,
                "pending": None if self._pending is None else self._pending.to_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.last_entry = state_dict.get("last_entry")
        self._alarm.restore(state_dict.get("alarm_counts", {}), state_dict.get("alarm_epoch"))
        pending = state_dict.get("pending")
        self._pending = None if pending is None else PendingAnalysis.from_state(pending)

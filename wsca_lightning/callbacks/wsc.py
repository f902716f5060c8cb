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
   ``wsc_over_epochs.png``: each task's WSC with its null band beside the loss curves.

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

Any LightningModule works: one that implements :class:`wsca_lightning.interface.SupportsWSC`, or any other, read by
attribute paths (``head="model.fc"``, metadata from a table joined on sample ids or a callable on the batch:
:mod:`wsca_lightning.attach`).

The analysis runs at every ``every_n_epochs``-th epoch end and at the last one, which is the epoch that reaches
``max_epochs`` or ``max_steps`` (``max_epochs=-1`` with ``max_steps``: epochs are still counted).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from wsca_lightning.callbacks.distributed import gather_shards, own_shard, run_on_every_rank, run_on_rank_zero
from wsca_lightning.attach import AttributeView, BatchKey, MetadataFn
from wsca_lightning.data.metadata_table import MetadataTable
from wsca_lightning.interface import HeadWeights, SupportsWSC
from wsca_lightning.plain import is_int, to_plain
from wsca_lightning.summary import (
    HEATMAP_FILENAME,
    SUMMARY_FILENAME,
    TABLE_FILENAME,
    analysis_entry,
    decision_p,
    history_tasks,
    write_summary,
    write_table,
)
from wsca_lightning.tracking import log_files, log_image
from wsca_lightning.wsc import AnalysisSettings, WSCAnalysis, analyze_embeddings, split_subset

PROTOCOLS: tuple[str, ...] = ("heads", "probe_refit")
ALARM_ACTIONS: tuple[str, ...] = ("warn", "stop")
OVER_EPOCHS_FILENAME = "wsc_over_epochs.png"


@dataclass(frozen=True)
class AlarmSettings:
    """The shortcut alarm: ``tasks`` the primary head must not use, and what to do when one of them is interpretable
    and significant (``p < alpha``) for ``patience`` consecutive computed epochs (``warn`` or ``stop``)."""

    tasks: tuple[str, ...] = ()
    action: str = "warn"
    alpha: float = 0.05
    patience: int = 3

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | None) -> "AlarmSettings":
        value = dict(to_plain(value or {}, "alarm"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"alarm.{unknown[0]}: unknown key; valid keys: {', '.join(sorted(known))}")
        tasks = value.get("tasks", ())
        if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks or ()):
            raise ValueError(f"alarm.tasks: a list of metadata head names, got {tasks!r}")
        return cls(**{**value, "tasks": tuple(tasks or ())})

    def problems(self) -> list[str]:
        out = []
        if self.action not in ALARM_ACTIONS:
            out.append(f"alarm.action: must be one of {', '.join(ALARM_ACTIONS)}, got {self.action!r}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not 0.0 < self.alpha < 1.0:
            out.append(f"alarm.alpha: must be in (0, 1), got {self.alpha!r}")
        if not is_int(self.patience) or self.patience < 1:
            out.append(f"alarm.patience: must be an integer >= 1, got {self.patience!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "action": self.action, "alpha": self.alpha, "patience": self.patience}


@dataclass
class EmbeddedSubset:
    """Embeddings ``(N, d)`` of the fixed subset and every task's labels ``(N,)`` (int64, ``-1`` = missing)."""

    embeddings: Tensor
    targets: dict[str, Tensor] = field(default_factory=dict)

    def cpu(self) -> "EmbeddedSubset":
        return EmbeddedSubset(self.embeddings.cpu(), {name: labels.cpu() for name, labels in self.targets.items()})


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


def embed_batches(
    module: torch.nn.Module,
    batches: Iterable[Any],
    embed: Callable[[Any], Tensor],
    targets: Callable[[Any], Mapping[str, Any]],
) -> EmbeddedSubset:
    """``embed(batch)`` and ``targets(batch)`` of every batch with ``module`` in eval mode and no gradients.

    The module's train/eval state is restored afterwards, also when a batch fails. Embeddings are float32;
    labels int64 (``-1`` = missing).
    """
    was_training = module.training
    module.eval()
    chunks: list[Tensor] = []
    labels: dict[str, list[Tensor]] = {}
    try:
        with torch.inference_mode():
            for batch in batches:
                chunks.append(embed(batch).float())
                for name, values in targets(batch).items():
                    labels.setdefault(name, []).append(torch.as_tensor(values).to(torch.int64))
    finally:
        module.train(was_training)
    if not chunks:
        raise ValueError("batches is empty: nothing to embed")
    return EmbeddedSubset(torch.cat(chunks), {name: torch.cat(parts) for name, parts in labels.items()})


def embed_dataset(
    module: Any,
    dataset: Dataset,
    indices: Sequence[int],
    *,
    batch_size: int,
    collate_fn: Any = None,
    to_device: Callable[[Any], Any] | None = None,
    reader: SupportsWSC | None = None,
    progress: str | None = None,
) -> EmbeddedSubset:
    """Embeddings and labels of ``dataset[indices]`` through ``wsc_embed`` / ``wsc_targets`` of ``reader`` (default
    the module itself; an :class:`~wsca_lightning.attach.AttributeView` of it for an unmodified module), with the
    module in eval mode (:func:`embed_batches`). ``to_device`` moves a collated batch to the module's device (the
    trainer's strategy does it inside the callback). ``progress``: a progress bar with this label on a terminal.
    """
    reader = module if reader is None else reader
    batches: Iterable[Any] = subset_batches(dataset, indices, batch_size=batch_size, collate_fn=collate_fn)
    if progress is not None:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, unit="batch", disable=None)  # silent when not a terminal
    if to_device is not None:
        batches = (to_device(batch) for batch in batches)
    return embed_batches(module, batches, reader.wsc_embed, reader.wsc_targets)


def subset_batches(dataset: Dataset, indices: Sequence[int], *, batch_size: int, collate_fn: Any = None) -> DataLoader:
    """``dataset[indices]`` in order, in batches, in this process (no loader workers)."""
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=0,
                      collate_fn=collate_fn)


def analysis_view(dataset: Dataset) -> Dataset:
    """The dataset as the analysis should see it: ``dataset.without_augmentation()`` when the dataset offers it.

    WSC describes the embedding of the training images themselves; random flips and intensity jitter would add
    noise to the projection and the probes (and differ from epoch to epoch).
    """
    view = getattr(dataset, "without_augmentation", None)
    return view() if callable(view) else dataset


def _attach_settings(
    *, head: Any, embedding: Any, metadata: Any, metadata_heads: Any, input_key: Any, label_key: Any, id_key: Any,
    class_names: Any,
) -> tuple[MetadataTable | MetadataFn | None, list[str]]:
    """The metadata source of a module read by attribute paths (a table is read now, so its problems come before
    training), and every problem of those settings."""
    problems = []
    given = [key for key, value in (("embedding", embedding), ("metadata", metadata),
                                    ("metadata_heads", metadata_heads), ("input_key", input_key),
                                    ("label_key", label_key), ("id_key", id_key), ("class_names", class_names))
             if value is not None]
    if head is None:
        if given:
            problems.append(f"head: {', '.join(given)} read an unmodified module by attribute paths; set head to "
                            "the primary head's path (e.g. 'model.fc'), or leave them unset for a module with the "
                            "WSC interface")
        return None, problems
    for key, value in (("head", head), ("embedding", embedding)):
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"{key}: an attribute path such as 'model.fc', got {value!r}")
    for key, value in (("input_key", input_key), ("label_key", label_key), ("id_key", id_key)):
        if value is not None and not isinstance(value, str) and not is_int(value):
            problems.append(f"{key}: a batch key (name) or position (integer), got {value!r}")
    if metadata_heads is not None and (not isinstance(metadata_heads, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata_heads.items())):
        problems.append(f"metadata_heads: a mapping {{task: attribute path}}, got {metadata_heads!r}")
    if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, Sequence)):
        problems.append(f"class_names: a list of the primary head's class names, got {class_names!r}")
    if metadata is None:
        problems.append("metadata: give the metadata table (a CSV path, or {path, id_column, columns, delimiter}) "
                        "or a callable on the batch returning {task: labels}")
        return None, problems
    if callable(metadata):
        return metadata, problems
    try:
        table = MetadataTable.from_spec(metadata, default_id_column=id_key if isinstance(id_key, str) else "id")
    except ValueError as err:  # ManifestError included: one line per problem, naming the file
        problems += [f"metadata: {line}" for line in str(err).splitlines()]
        return None, problems
    return table, problems


def head_classes(heads: Mapping[str, HeadWeights], tasks: Sequence[str]) -> dict[str, list[str]]:
    """Class names of tasks read from their heads (a one-row binary head: ``["0", "1"]``)."""
    return {t: list(heads[t].row_names) if heads[t].weight.shape[0] >= 2 else ["0", "1"] for t in tasks if t in heads}


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
        k_min: int = 50,
        var_threshold: float = 0.99,
        num_permutations: int = 100,
        stop_after_exceedances: int = 10,
        holdout_fraction: float = 0.25,
        l2: float = 1e-2,
        max_iter: int = 200,
        tol: float = 1e-5,
        num_bootstrap: int = 200,
        ci_level: float = 0.95,
        auroc_floor: float = 0.5,
        deconfound: bool = True,
        seed: int = 0,
        k_values: Sequence[int] = (),
        decision: str = "calibrated",
        alarm: Mapping[str, Any] | None = None,
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
        problems = []
        if tasks is not None and (isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks)):
            problems.append(f"tasks: a list of head names or null, got {tasks!r}")
        if protocol not in PROTOCOLS:
            problems.append(f"protocol: must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        for key, value, low in (("subset_size", subset_size, 4), ("batch_size", batch_size, 1),
                                ("every_n_epochs", every_n_epochs, 1)):
            if not is_int(value) or value < low:
                problems.append(f"{key}: must be an integer >= {low}, got {value!r}")
        if not isinstance(async_analysis, bool):
            problems.append(f"async_analysis: must be true or false, got {async_analysis!r}")
        if analysis_threads is not None and (not is_int(analysis_threads) or analysis_threads < 1):
            problems.append(f"analysis_threads: must be an integer >= 1 or null, got {analysis_threads!r}")
        self.settings = AnalysisSettings(
            k_min=k_min, var_threshold=var_threshold, num_permutations=num_permutations,
            stop_after_exceedances=stop_after_exceedances,
            holdout_fraction=holdout_fraction, l2=l2, max_iter=max_iter, tol=tol, num_bootstrap=num_bootstrap,
            ci_level=ci_level, auroc_floor=auroc_floor, deconfound=deconfound, seed=seed,
            k_values=tuple(k_values) if isinstance(k_values, Sequence) and not isinstance(k_values, str) else k_values,
            decision=decision,
        )
        problems += self.settings.problems()
        if not problems:
            try:
                split_subset(subset_size, holdout_fraction, seed)
            except ValueError as err:
                problems.append(f"subset_size/holdout_fraction: {err}")
        try:
            self.alarm = AlarmSettings.from_mapping(alarm)
            problems += self.alarm.problems()
        except (TypeError, ValueError) as err:
            problems.append(str(err))
            self.alarm = AlarmSettings()
        if self.alarm.tasks and num_permutations == 0:
            problems.append("alarm.tasks: the alarm reads p-values; set num_permutations >= 2 (e.g. 100)")
        if tasks is not None and not isinstance(tasks, str):
            outside = [t for t in self.alarm.tasks if t not in tasks]
            if outside:
                problems.append(f"alarm.tasks: {outside} are not among tasks {list(tasks)}")
        self._metadata, attach_problems = _attach_settings(
            head=head, embedding=embedding, metadata=metadata, metadata_heads=metadata_heads, input_key=input_key,
            label_key=label_key, id_key=id_key, class_names=class_names)
        problems += attach_problems
        if head is not None and protocol == "heads" and not metadata_heads and not attach_problems:
            problems.append("protocol: 'heads' compares the module's metadata heads, and metadata_heads names none; "
                            "set protocol: probe_refit (a probe per metadata task, refitted every epoch: the paper's "
                            "probe protocol) or name the module's metadata heads in metadata_heads")
        if problems:
            raise ValueError("\n".join(problems))
        self.tasks = list(tasks) if tasks is not None else None
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
        self.head, self.embedding, self.metadata_heads = head, embedding, dict(metadata_heads or {})
        self.input_key, self.label_key, self.id_key = input_key, label_key, id_key
        self.class_names = None if class_names is None else list(class_names)
        self._view: AttributeView | None = None
        self.history: list[dict[str, Any]] = []
        self.alarm_counts: dict[str, int] = {t: 0 for t in self.alarm.tasks}
        self.alarm_epoch: int | None = None  # first epoch at which the alarm went off
        self.last_entry: dict[str, Any] | None = None
        self._resolved_dir: str | None = None
        self._module_protocol: str | None = None
        self._warned_no_validation = False
        self._pending: PendingAnalysis | None = None  # computed epoch whose result is not in the history yet
        self._job: Future | None = None  # its analysis in the background thread (global rank zero only)
        self._executor: ThreadPoolExecutor | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(tasks=self.tasks, protocol=self.protocol, k_min=self.settings.k_min,
                                        var_threshold=self.settings.var_threshold)

    # --- checks --------------------------------------------------------------------------------------------------
    def reader(self, pl_module: Any) -> SupportsWSC:
        """What the callback reads the module through: the module itself (the WSC interface), or, when ``head`` is
        set, an :class:`~wsca_lightning.attach.AttributeView` of it."""
        if self.head is None:
            return pl_module
        if self._view is None or self._view.module is not pl_module:
            self._view = AttributeView(
                pl_module, head=self.head, embedding=self.embedding, metadata=self._metadata,
                metadata_heads=self.metadata_heads, input_key=self.input_key, label_key=self.label_key,
                id_key=self.id_key, class_names=self.class_names)
        return self._view

    def fit_metadata(self, pl_module: Any, batches: Iterable[Any]) -> None:
        """Fit the label spaces of metadata that does not come from the module (a table's vocabularies and bins,
        a callable's classes) on the analysed training subset's batches; nothing to do for the WSC interface."""
        reader = self.reader(pl_module)
        if isinstance(reader, AttributeView):
            reader.fit(batches)

    def check_module(self, pl_module: Any) -> list[str]:
        """Validate the module against this callback's settings; returns the metadata tasks to analyse."""
        return self._tasks_and_classes(pl_module)[0]

    def _tasks_and_classes(self, pl_module: Any) -> tuple[list[str], dict[str, list[str]]]:
        """The metadata tasks to analyse and every task's class names (from its head, else from the metadata)."""
        reader = self.reader(pl_module)
        if not isinstance(reader, SupportsWSC):
            missing = [m for m in ("wsc_primary_task", "wsc_embed", "wsc_head_weights", "wsc_targets")
                       if not hasattr(pl_module, m)]
            raise TypeError(
                f"{type(pl_module).__name__} does not implement the WSC interface (missing: {', '.join(missing)}); "
                "name its head by attribute path instead (WeightSpaceCorrelation(head='model.fc', metadata=...)), "
                "or see wsca_lightning.interface"
            )
        heads = reader.wsc_head_weights()
        primary = reader.wsc_primary_task
        if primary not in heads:
            raise ValueError(f"wsc_primary_task {primary!r} is not among the module's heads {sorted(heads)}")
        classes = head_classes(heads, [name for name in heads if name != primary])
        task_classes = getattr(reader, "wsc_task_classes", None)  # classes of tasks without a head (optional)
        if isinstance(reader, AttributeView) and not reader.fitted:
            if isinstance(reader.metadata, MetadataTable):
                classes.update({t: [] for t in reader.metadata.tasks if t not in heads})  # classes after the fit
        elif callable(task_classes):
            classes.update({t: list(c) for t, c in task_classes().items() if t not in heads})
        available = [name for name in classes if name != primary]
        chosen = available if self.tasks is None else list(self.tasks)
        if isinstance(reader, AttributeView) and not available and not reader.metadata_head_paths:
            return chosen, classes  # a metadata callable's tasks are known once it has seen the training subset
        what = "metadata task(s)" if isinstance(reader, AttributeView) else "metadata head(s)"
        for key, names in (("tasks", chosen), ("alarm.tasks", self.alarm.tasks)):
            unknown = [t for t in names if t not in available]
            if unknown:
                raise ValueError(
                    f"{key}: unknown {what} {unknown}; the module's {what} are {available}"
                    + (f" ({primary!r} is the primary head)" if primary in unknown else "")
                )
        if not chosen:
            raise ValueError(f"the module has no metadata head besides the primary {primary!r}: nothing to analyse")
        without_head = [t for t in chosen if t not in heads]
        if self.protocol == "heads" and without_head:
            raise ValueError(f"protocol: 'heads' compares metadata heads, and {without_head} have none; set "
                             "protocol: probe_refit, or name their heads in metadata_heads")
        return chosen, {t: classes[t] for t in chosen}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.check_module(pl_module)
        protocol = getattr(self.reader(pl_module), "wsc_protocol", None)
        self._module_protocol = None if protocol is None else str(protocol)
        # every rank writes (or logs) under rank 0's directory, as ModelCheckpoint agrees its dirpath
        self._resolved_dir = trainer.strategy.broadcast(self.output_dir(trainer), src=0)
        run_on_rank_zero(trainer, lambda: self.check_output_paths(self._directory), "checking the output directory")
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and not cb._should_save_on_train_epoch_end(trainer):
                rank_zero_warn(
                    "A ModelCheckpoint saves at validation end, before WeightSpaceCorrelation runs at the training "
                    "epoch end: its checkpoints miss that epoch's WSC entry, and a resumed run would show a gap. "
                    "Set ModelCheckpoint(save_on_train_epoch_end=True)."
                )

    def _check_subset_labels(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the subset's labels are known before the first step (the training loader exists from here on): a task no
        # probe can be fit on fails now, not at the end of the first epoch
        loader = trainer.train_dataloader if isinstance(trainer.train_dataloader, DataLoader) else None
        if loader is None:
            return
        dataset = analysis_view(loader.dataset)
        subset = subset_batches(dataset, self.subset_indices(len(dataset)), batch_size=self.batch_size,
                                collate_fn=loader.collate_fn)
        self.fit_metadata(pl_module, subset)
        reader = self.reader(pl_module)
        labels: dict[str, list[Tensor]] = {}
        for batch in subset:
            for name, values in reader.wsc_targets(batch).items():
                labels.setdefault(name, []).append(torch.as_tensor(values).to(torch.int64).cpu())
        self.check_labels({name: torch.cat(parts) for name, parts in labels.items()}, self.check_module(pl_module),
                          primary=reader.wsc_primary_task)

    def check_labels(self, targets: Mapping[str, Tensor], tasks: Sequence[str], primary: str | None = None) -> None:
        """Every task (and the primary) must have labels, and every metadata task at least 2 classes in the fit part
        of the subset (else no probe exists)."""
        problems = []
        if primary is not None and primary not in targets:
            problems.append(f"{primary}: wsc_targets(batch) gives no labels for the primary task")
        n = len(next(iter(targets.values()))) if targets else 0
        fit_idx, _ = split_subset(n, self.settings.holdout_fraction, self.seed) if n >= 4 else (torch.arange(n), None)
        for name in tasks:
            if name not in targets:
                problems.append(f"{name}: wsc_targets(batch) gives no labels for this task")
                continue
            y = targets[name][fit_idx]
            classes = torch.unique(y[y >= 0])
            if classes.numel() < 2:
                problems.append(
                    f"{name}: {classes.numel()} class(es) among the {int((y >= 0).sum())} labelled rows of the WSC "
                    f"subset's fit part ({len(fit_idx)} rows); a probe needs 2. Raise subset_size or leave the task "
                    "out of tasks"
                )
        if problems:
            raise ValueError("WeightSpaceCorrelation cannot analyse these tasks:\n" + "\n".join(problems))

    @property
    def protocol_name(self) -> str:
        """What the observed metadata directions are: ``probe_refit``, or the module's head mode for ``heads``."""
        if self.protocol == "probe_refit":
            return "probe_refit"
        return self._module_protocol or "heads"

    # --- the analysis --------------------------------------------------------------------------------------------
    def subset_indices(self, dataset_size: int) -> list[int]:
        """The fixed subset: the first ``subset_size`` of a seeded permutation, sorted."""
        generator = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(dataset_size, generator=generator)[: min(self.subset_size, dataset_size)]
        return sorted(perm.tolist())

    def holdout_indices(self, dataset_size: int) -> list[int]:
        """The fixed rows of the validation data that measure the encodability gate: as many as the subset holds
        out (``round(subset_size * holdout_fraction)``), a seeded draw, sorted."""
        size = int(round(self.subset_size * self.settings.holdout_fraction))
        generator = torch.Generator().manual_seed(self.seed + 1)
        return sorted(torch.randperm(dataset_size, generator=generator)[: min(size, dataset_size)].tolist())

    def analyze(
        self, pl_module: SupportsWSC, subset: EmbeddedSubset, holdout: EmbeddedSubset | None = None
    ) -> tuple[WSCAnalysis, dict[str, Any]]:
        """Run the engine on an embedded subset; returns the analysis and its summary entry (plain Python).

        ``holdout``: embeddings and labels of data the backbone did not train on (the validation data), where the
        encodability gate measures each probe; without it the gate uses the subset's held-out part.
        """
        tasks, classes = self._tasks_and_classes(pl_module)
        reader = self.reader(pl_module)
        return self.analyze_heads(reader.wsc_head_weights(), reader.wsc_primary_task, tasks, subset, holdout,
                                  task_classes=classes)

    def analyze_heads(
        self,
        heads: Mapping[str, HeadWeights],
        primary: str,
        tasks: Sequence[str],
        subset: EmbeddedSubset,
        holdout: EmbeddedSubset | None = None,
        task_classes: Mapping[str, Sequence[str]] | None = None,
    ) -> tuple[WSCAnalysis, dict[str, Any]]:
        """:meth:`analyze` on given head weights (e.g. copied at an epoch's end) instead of a module's.

        ``task_classes``: class names of every task (needed for tasks without a head; default from the heads).
        """
        missing = [t for t in [primary, *tasks] if t not in subset.targets]
        if missing:
            raise ValueError(f"wsc_targets(batch) returned no labels for {missing}; it gave {sorted(subset.targets)}")
        cols = {**head_classes(heads, tasks), **{t: list(c) for t, c in (task_classes or {}).items()}}
        num_classes = {t: len(cols[t]) for t in tasks}
        analysis = analyze_embeddings(
            subset.embeddings,
            heads[primary].weight,
            {t: subset.targets[t] for t in tasks},
            num_classes,
            head_weights={t: heads[t].weight for t in tasks} if self.protocol == "heads" else None,
            primary_labels=subset.targets[primary],
            class_names={**cols, "__primary__": list(heads[primary].row_names)},
            settings=self.settings,
            holdout_embeddings=None if holdout is None else holdout.embeddings,
            holdout_labels=None if holdout is None else {t: holdout.targets[t] for t in tasks},
        )
        entry = analysis_entry(analysis, list(heads[primary].row_names), cols)
        stalled = [t for t, task in analysis.tasks.items() if not task.probe.converged]
        if stalled:
            rank_zero_warn(
                f"WSC probes for {stalled} did not converge within max_iter={self.settings.max_iter} L-BFGS "
                f"iterations (gradient above tol={self.settings.tol:g}); their values are approximate. Raise the "
                "callback's max_iter or l2."
            )
        return analysis, entry

    def evaluate(
        self,
        pl_module: SupportsWSC,
        dataset: Dataset,
        *,
        holdout_dataset: Dataset | None = None,
        collate_fn: Any = None,
        to_device: Any = None,
        progress: bool = False,
    ) -> tuple[WSCAnalysis, dict[str, Any]]:
        """Embed this callback's subset of ``dataset`` and analyse it (usable outside a Trainer, e.g. post hoc).

        ``holdout_dataset``: data the backbone did not train on (e.g. the validation split), where the encodability
        gate is measured (:meth:`holdout_indices` of it); without it the gate uses the subset's held-out part.
        ``progress``: progress bars for the embedding passes (on a terminal).
        """
        self.check_module(pl_module)
        dataset = analysis_view(dataset)
        indices = self.subset_indices(len(dataset))
        self.fit_metadata(pl_module, subset_batches(dataset, indices, batch_size=self.batch_size,
                                                    collate_fn=collate_fn))
        reader = self.reader(pl_module)
        subset = embed_dataset(pl_module, dataset, indices, batch_size=self.batch_size, collate_fn=collate_fn,
                               to_device=to_device, reader=reader,
                               progress="embedding the training subset" if progress else None)
        holdout = None
        if holdout_dataset is not None:
            holdout_dataset = analysis_view(holdout_dataset)
            holdout = embed_dataset(pl_module, holdout_dataset, self.holdout_indices(len(holdout_dataset)),
                                    batch_size=self.batch_size, collate_fn=collate_fn, to_device=to_device,
                                    reader=reader, progress="embedding the holdout" if progress else None)
        return self.analyze(pl_module, subset, holdout)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # the previous computed epoch's result first (waiting for it if needed), so results arrive in epoch order
        self._collect(trainer, pl_module)
        epoch = trainer.current_epoch
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
        subset = self._embed_subset(trainer, pl_module, dataset, loader.collate_fn, self.subset_indices(len(dataset)))
        holdout = None
        val_loader = self._validation_loader(trainer)
        if val_loader is not None:
            val_dataset = analysis_view(val_loader.dataset)
            holdout = self._embed_subset(trainer, pl_module, val_dataset, val_loader.collate_fn,
                                         self.holdout_indices(len(val_dataset)))
        elif not self._warned_no_validation:
            self._warned_no_validation = True
            rank_zero_warn(
                "WeightSpaceCorrelation found no validation DataLoader: the encodability gate is measured on the "
                "held-out part of the training subset, which a backbone that memorised a column through its head "
                "passes. Give the Trainer validation data (val_dataloaders or a datamodule's val_dataloader)."
            )
        reader = self.reader(pl_module)
        primary = reader.wsc_primary_task
        tasks, classes = self._tasks_and_classes(pl_module)
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
        self._check_subset_labels(trainer, pl_module)
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
        entry = self.analyze_heads(pending.heads, pending.primary, pending.tasks, pending.subset, pending.holdout,
                                   task_classes=pending.task_classes)[1]
        entry = {"epoch": pending.epoch, "global_step": pending.global_step, **entry}
        analysed = time.perf_counter()
        self._write_epoch_files(entry, pending.primary)
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
            self._log_heatmap(trainer, epoch, pending.step)
        fired = self._update_alarm(entry, epoch)
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
                reader=self.reader(pl_module),
            ),
            "the embedding pass",
        )
        device = local.embeddings.device
        return EmbeddedSubset(
            gather_shards(trainer, local.embeddings, len(indices), self.batch_size),
            {name: gather_shards(trainer, labels.to(device), len(indices), self.batch_size)
             for name, labels in local.targets.items()},
        )

    def _write_epoch_files(self, entry: Mapping[str, Any], primary: str) -> None:
        if self.save_matrices:
            self._write_matrices(entry)
        if self.save_plots:
            self._write_heatmap(entry, primary)
        write_table(entry, os.path.join(self._directory, TABLE_FILENAME))

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

    # --- the shortcut alarm --------------------------------------------------------------------------------------
    def _update_alarm(self, entry: Mapping[str, Any], epoch: int) -> list[str]:
        """Advance the consecutive-significance counters; returns the tasks at or past ``patience``."""
        for name in self.alarm.tasks:
            task = entry["tasks"][name]
            p = decision_p(task)
            hit = task["interpretable"] and p is not None and p < self.alarm.alpha
            self.alarm_counts[name] = self.alarm_counts.get(name, 0) + 1 if hit else 0
        return [t for t in self.alarm.tasks if self.alarm_counts[t] >= self.alarm.patience]

    def _act_on_alarm(self, trainer: L.Trainer, fired: list[str], epoch: int) -> None:
        # every rank computed the same p-values; the reduction makes the decision identical even if one differs
        decision = trainer.strategy.reduce_boolean_decision(bool(fired), all=False)
        if not decision:
            return
        if self.alarm_epoch is None:
            self.alarm_epoch = epoch
        names = fired or list(self.alarm.tasks)
        message = (
            f"WSC shortcut alarm at epoch {epoch}: the primary head aligns with {names} beyond the shortcut test's "
            f"nulls (p < {self.alarm.alpha}) for at least {self.alarm.patience} consecutive epoch(s) (now "
            f"{ {t: self.alarm_counts[t] for t in names} }), and the metadata is encoded (probe AUROC above chance). "
            f"See {self.summary_path}."
        )
        if self.alarm.action == "stop":
            trainer.should_stop = True
            rank_zero_warn(message + " Stopping training (alarm.action=stop).")
        else:
            rank_zero_warn(message)

    # --- files ---------------------------------------------------------------------------------------------------
    def _write_matrices(self, entry: Mapping[str, Any]) -> None:
        os.makedirs(self._directory, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"k": np.asarray(entry["k"])}
        for name, task in entry["tasks"].items():
            arrays[name] = np.asarray(task["matrix"], dtype=np.float64)
            arrays[f"{name}__unprojected"] = np.asarray(task["unprojected"]["matrix"], dtype=np.float64)
            arrays[f"{name}__rows"] = np.asarray(task["rows"], dtype=str)
            arrays[f"{name}__cols"] = np.asarray(task["cols"], dtype=str)
        np.savez(os.path.join(self._directory, f"epoch_{entry['epoch']:04d}.npz"), **arrays)

    def _write_heatmap(self, entry: Mapping[str, Any], primary: str) -> None:
        from wsca_lightning.plots import heatmap_figure, save_figure

        fig = heatmap_figure(entry["tasks"], primary,
                             title=f"WSC, epoch {entry['epoch']} ({self.protocol_name}, k={entry['k']})")
        epoch_png = os.path.join(self._directory, "heatmaps", f"epoch_{entry['epoch']:04d}.png")
        save_figure(fig, epoch_png)
        latest = os.path.join(self._directory, HEATMAP_FILENAME)
        shutil.copyfile(epoch_png, latest + ".partial")
        os.replace(latest + ".partial", latest)

    def _log_heatmap(self, trainer: L.Trainer, epoch: int, step: int) -> None:
        """The epoch's heatmap (as written) to every logger that takes figures (:mod:`wsca_lightning.tracking`), at
        the step of that epoch's scalars."""
        log_image(trainer.loggers, "wsc/heatmap", os.path.join(self._directory, "heatmaps", f"epoch_{epoch:04d}.png"),
                  epoch=epoch, step=step, artifact_dir="wsc/heatmaps")

    def output_dir(self, trainer: L.Trainer) -> str:
        """Where this callback writes for ``trainer``: ``dirpath``, or ``<trainer.default_root_dir>/wsc``."""
        return self.dirpath or os.path.join(trainer.default_root_dir, "wsc")

    @staticmethod
    def check_output_paths(directory: str) -> None:
        """Refuse before training (at setup, and in ``wsca-train`` before the data is built) what would fail at the
        first epoch end, after that epoch trained but before its checkpoint: an output path taken by the wrong kind
        of entry, or a directory that cannot be written."""
        problems = []
        for name in ("", "heatmaps"):
            path = os.path.join(directory, name)
            if os.path.exists(path) and not os.path.isdir(path):
                problems.append(f"{path} is a file where the WSC callback writes a directory")
        for name in (SUMMARY_FILENAME, TABLE_FILENAME, HEATMAP_FILENAME, OVER_EPOCHS_FILENAME):
            path = os.path.join(directory, name)
            if os.path.exists(path) and not os.path.isfile(path):
                problems.append(f"{path} is a directory where the WSC callback writes a file")
        existing = os.path.abspath(directory)
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if os.path.isdir(existing) and not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"{existing} is not writable, so {directory} cannot be written")
        if problems:
            raise ValueError("dirpath: " + "; ".join(problems) + ": remove or rename them, or set dirpath to "
                             "another directory")

    @property
    def _directory(self) -> str:
        if self._resolved_dir is None:
            raise RuntimeError("WeightSpaceCorrelation has no output directory before setup()")
        return self._resolved_dir

    # --- fit end ------------------------------------------------------------------------------------------------
    def summary(self, primary: str) -> dict[str, Any]:
        """``wsc_summary.json`` content: the last computed epoch in full, the alarm, and the scalar history."""
        if self.last_entry is None:
            raise RuntimeError("no epoch has been analysed yet")
        return {
            "primary": primary,
            "protocol": self.protocol_name,
            "head_mode": self._module_protocol,
            **self.last_entry,
            "alarm": {**self.alarm.to_dict(), "counts": dict(self.alarm_counts), "first_epoch": self.alarm_epoch},
            "history": self.history,
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_on_rank_zero(trainer, lambda: self._write_fit_end_files(trainer, pl_module), "writing the fit-end files")

    def _write_fit_end_files(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_summary(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        if self.save_plots and self.history:
            from wsca_lightning.plots import history_figure, save_figure

            fig = history_figure(self.history, self.reader(pl_module).wsc_primary_task, alpha=self.alarm.alpha)
            over_epochs = os.path.join(self._directory, OVER_EPOCHS_FILENAME)
            save_figure(fig, over_epochs)
            log_image(trainer.loggers, "wsc/over_epochs", over_epochs, epoch=self.history[-1]["epoch"],
                      step=_epoch_end_step(trainer), artifact_dir="wsc")
        if self.last_entry is not None:
            # the table is the last computed epoch's; a run resumed into another directory may not have written it
            files = [self.summary_path, os.path.join(self._directory, TABLE_FILENAME)]
            log_files(trainer.loggers, [path for path in files if os.path.exists(path)], artifact_dir="wsc")

    def _write_summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_entry is None or not trainer.is_global_zero:
            return
        write_summary(self.summary(self.reader(pl_module).wsc_primary_task), self.summary_path)

    @property
    def summary_path(self) -> str:
        return os.path.join(self._directory, SUMMARY_FILENAME)

    # --- checkpointing: plain Python only (checkpoints load with weights_only=True) ------------------------------
    def state_dict(self) -> dict[str, Any]:
        # an epoch still being analysed travels as its inputs: a run resumed from here recomputes it
        return {"history": self.history, "last_entry": self.last_entry, "alarm_counts": dict(self.alarm_counts),
                "alarm_epoch": self.alarm_epoch,
                "pending": None if self._pending is None else self._pending.to_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.last_entry = state_dict.get("last_entry")
        saved = state_dict.get("alarm_counts", {})
        self.alarm_counts = {t: int(saved.get(t, 0)) for t in self.alarm.tasks}
        self.alarm_epoch = state_dict.get("alarm_epoch")
        pending = state_dict.get("pending")
        self._pending = None if pending is None else PendingAnalysis.from_state(pending)

"""The evaluator: one analysis of a model at one point of training (embed the fixed subset, run the engine).

:class:`EpochEvaluator` holds what is analysed (the metadata tasks, the protocol, the fixed seeded subset, the
:class:`~wsca_lightning.wsc.AnalysisSettings`) and how the module is read (its WSC interface, or attribute paths:
:mod:`wsca_lightning.attach`). It checks a module against those settings, embeds a dataset's subset with the module
in eval mode, and turns the engine's result into a summary entry. The training callback calls it at epoch ends (and
shards the embedding pass across ranks itself); ``wsca-analyze`` calls it on a checkpoint. No Lightning here.

The embedding loops (:func:`embed_batches`, :func:`embed_dataset`, :func:`subset_batches`, :func:`analysis_view`)
live here too: :mod:`wsca_lightning.posthoc` embeds any backbone with :func:`embed_batches`.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from wsca_lightning.attach import AttributeView, BatchKey, MetadataFn, batch_entry, metadata_source
from wsca_lightning.attribution import (
    AttributionSettings,
    TaskAttribution,
    attribute,
    attribute_decisions,
    shared_score,
)
from wsca_lightning.data.metadata_table import MetadataTable
from wsca_lightning.interface import HeadWeights, SupportsWSC
from wsca_lightning.problems import ConfigError, Problem, integer_problems, raise_if
from wsca_lightning.summary import analysis_entry, verdict
from wsca_lightning.wsc import AnalysisSettings, WSCAnalysis, analyze_embeddings, split_subset
from wsca_lightning.wsc.shared_direction import SharedDirection, decision_rows, shared_direction

__all__ = [
    "PROTOCOLS",
    "EmbeddedSubset",
    "EpochEvaluator",
    "analysis_view",
    "attribution_tasks",
    "embed_batches",
    "embed_dataset",
    "head_classes",
    "subset_batches",
]

PROTOCOLS: tuple[str, ...] = ("heads", "probe_refit")


@dataclass
class EmbeddedSubset:
    """Embeddings ``(N, d)`` of the fixed subset and every task's labels ``(N,)`` (int64, ``-1`` = missing)."""

    embeddings: Tensor
    targets: dict[str, Tensor] = field(default_factory=dict)

    def cpu(self) -> "EmbeddedSubset":
        return EmbeddedSubset(self.embeddings.cpu(), {name: labels.cpu() for name, labels in self.targets.items()})


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


def head_classes(heads: Mapping[str, HeadWeights], tasks: Sequence[str]) -> dict[str, list[str]]:
    """Class names of tasks read from their heads (a one-row binary head: ``["0", "1"]``)."""
    return {t: list(heads[t].row_names) if heads[t].weight.shape[0] >= 2 else ["0", "1"] for t in tasks if t in heads}


def attribution_tasks(entry: Mapping[str, Any], settings: AttributionSettings, alpha: float = 0.05) -> list[str]:
    """The tasks of an analysis entry whose shared direction is attributed: ``settings.tasks`` when given (whatever
    their verdict), else every task whose verdict is ``significant`` at ``alpha``."""
    if settings.tasks is not None:
        return [t for t in settings.tasks if t in entry["tasks"]]
    return [name for name, task in entry["tasks"].items() if verdict(task, alpha) == "significant"]


class EpochEvaluator:
    """What one analysis embeds and compares, and the steps that do it (module docstring).

    Args (the callback's, which documents them and holds their defaults):
        tasks: metadata heads to analyse (default: every head but the primary one).
        protocol: ``heads`` (the module's trained metadata heads) or ``probe_refit`` (probes refitted each time).
        subset_size: training samples embedded (a fixed subset drawn with ``settings.seed``; all if the set is
            smaller).
        batch_size: batch size of the embedding pass.
        settings: the analysis (:class:`~wsca_lightning.wsc.AnalysisSettings`).
        head, embedding, metadata, metadata_heads, input_key, label_key, id_key, class_names: read an unmodified
            module by attribute paths (:func:`wsca_lightning.attach.metadata_source`, the callback's arguments).

    Raises :class:`~wsca_lightning.problems.ConfigError` with every problem of these settings, keyed by argument.
    """

    def __init__(
        self,
        *,
        tasks: Sequence[str] | None,
        protocol: str,
        subset_size: int,
        batch_size: int,
        settings: AnalysisSettings,
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
        if tasks is not None and (isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks)):
            problems.append(Problem("tasks", f"a list of head names or null, got {tasks!r}"))
        if protocol not in PROTOCOLS:
            problems.append(Problem("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"))
        problems += integer_problems([("subset_size", subset_size, 4), ("batch_size", batch_size, 1)])
        problems += settings.problems()
        if not problems:
            try:
                split_subset(subset_size, settings.holdout_fraction, settings.seed)
            except ValueError as err:
                problems.append(Problem("subset_size/holdout_fraction", str(err)))
        self._metadata, attach_problems = metadata_source(
            head=head, embedding=embedding, metadata=metadata, metadata_heads=metadata_heads, input_key=input_key,
            label_key=label_key, id_key=id_key, class_names=class_names)
        problems += attach_problems
        if head is not None and protocol == "heads" and not metadata_heads and not attach_problems:
            problems.append(Problem("protocol", "'heads' compares the module's metadata heads, and metadata_heads "
                                                "names none; set protocol: probe_refit (a probe per metadata task, "
                                                "refitted every epoch: the paper's probe protocol) or name the "
                                                "module's metadata heads in metadata_heads"))
        raise_if(problems)
        self.tasks = list(tasks) if tasks is not None else None
        self.protocol = protocol
        self.subset_size = subset_size
        self.batch_size = batch_size
        self.settings = settings
        self.head, self.embedding, self.metadata_heads = head, embedding, dict(metadata_heads or {})
        self.input_key, self.label_key, self.id_key = input_key, label_key, id_key
        self.class_names = None if class_names is None else list(class_names)
        self._view: AttributeView | None = None

    # --- reading the module --------------------------------------------------------------------------------------
    def reader(self, module: Any) -> SupportsWSC:
        """What the module is read through: the module itself (the WSC interface), or, when ``head`` is set, an
        :class:`~wsca_lightning.attach.AttributeView` of it."""
        if self.head is None:
            return module
        if self._view is None or self._view.module is not module:
            self._view = AttributeView(
                module, head=self.head, embedding=self.embedding, metadata=self._metadata,
                metadata_heads=self.metadata_heads, input_key=self.input_key, label_key=self.label_key,
                id_key=self.id_key, class_names=self.class_names)
        return self._view

    def fit_metadata(self, module: Any, batches: Iterable[Any]) -> None:
        """Fit the label spaces of metadata that does not come from the module (a table's vocabularies and bins,
        a callable's classes) on the analysed training subset's batches; nothing to do for the WSC interface."""
        reader = self.reader(module)
        if isinstance(reader, AttributeView):
            reader.fit(batches)

    def tasks_and_classes(
        self, module: Any, named: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[list[str], dict[str, list[str]]]:
        """The metadata tasks to analyse and every task's class names (from its head, else from the metadata).

        ``named``: other settings that name tasks (``{"alarm.tasks": [...]}``), checked like ``tasks``. A module
        without the interface raises ``TypeError``; a module that does not fit these settings raises
        :class:`ConfigError` (keyed ``tasks``, ``protocol``, a key of ``named``, or unkeyed).
        """
        reader = self.reader(module)
        if not isinstance(reader, SupportsWSC):
            missing = [m for m in ("wsc_primary_task", "wsc_embed", "wsc_head_weights", "wsc_targets")
                       if not hasattr(module, m)]
            raise TypeError(
                f"{type(module).__name__} does not implement the WSC interface (missing: {', '.join(missing)}); "
                "name its head by attribute path instead (WeightSpaceCorrelation(head='model.fc', metadata=...)), "
                "or see wsca_lightning.interface"
            )
        heads = reader.wsc_head_weights()
        primary = reader.wsc_primary_task
        if primary not in heads:
            raise ConfigError(Problem("", f"wsc_primary_task {primary!r} is not among the module's heads "
                                          f"{sorted(heads)}"))
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
        for key, names in (("tasks", chosen), *(named or {}).items()):
            unknown = [t for t in names if t not in available]
            if unknown:
                raise ConfigError.at(key, f"unknown {what} {unknown}; the module's {what} are {available}"
                                     + (f" ({primary!r} is the primary head)" if primary in unknown else ""))
        if not chosen:
            raise ConfigError(Problem("", f"the module has no metadata head besides the primary {primary!r}: nothing "
                                          "to analyse"))
        without_head = [t for t in chosen if t not in heads]
        if self.protocol == "heads" and without_head:
            raise ConfigError.at("protocol", f"'heads' compares metadata heads, and {without_head} have none; set "
                                             "protocol: probe_refit, or name their heads in metadata_heads")
        return chosen, {t: classes[t] for t in chosen}

    def check_module(self, module: Any, named: Mapping[str, Sequence[str]] | None = None) -> list[str]:
        """Validate the module against these settings; returns the metadata tasks to analyse."""
        return self.tasks_and_classes(module, named)[0]

    def check_labels(self, targets: Mapping[str, Tensor], tasks: Sequence[str], primary: str | None = None) -> None:
        """Every task (and the primary) must have labels, and every metadata task at least 2 classes in the fit part
        of the subset (else no probe exists)."""
        problems = []
        if primary is not None and primary not in targets:
            problems.append(Problem(primary, "wsc_targets(batch) gives no labels for the primary task"))
        n = len(next(iter(targets.values()))) if targets else 0
        fit_idx, _ = (split_subset(n, self.settings.holdout_fraction, self.settings.seed) if n >= 4
                      else (torch.arange(n), None))
        for name in tasks:
            if name not in targets:
                problems.append(Problem(name, "wsc_targets(batch) gives no labels for this task"))
                continue
            y = targets[name][fit_idx]
            classes = torch.unique(y[y >= 0])
            if classes.numel() < 2:
                problems.append(Problem(name, (
                    f"{classes.numel()} class(es) among the {int((y >= 0).sum())} labelled rows of the WSC "
                    f"subset's fit part ({len(fit_idx)} rows); a probe needs 2. Raise subset_size or leave the task "
                    "out of tasks")))
        if problems:
            # keyed by task name, not by a config key: a ValueError with the callback's title, not a ConfigError
            raise ValueError("WeightSpaceCorrelation cannot analyse these tasks:\n"
                             + "\n".join(str(p) for p in problems))

    def check_subset_labels(self, module: Any, dataset: Dataset, collate_fn: Any = None) -> None:
        """Fit the metadata on the training subset of ``dataset`` and check its labels (:meth:`check_labels`):
        a task no probe can be fit on fails before the first training step, not at the end of the first epoch."""
        dataset = analysis_view(dataset)
        subset = subset_batches(dataset, self.subset_indices(len(dataset)), batch_size=self.batch_size,
                                collate_fn=collate_fn)
        self.fit_metadata(module, subset)
        reader = self.reader(module)
        labels: dict[str, list[Tensor]] = {}
        for batch in subset:
            for name, values in reader.wsc_targets(batch).items():
                labels.setdefault(name, []).append(torch.as_tensor(values).to(torch.int64).cpu())
        self.check_labels({name: torch.cat(parts) for name, parts in labels.items()}, self.check_module(module),
                          primary=reader.wsc_primary_task)

    # --- the fixed rows ------------------------------------------------------------------------------------------
    def subset_indices(self, dataset_size: int) -> list[int]:
        """The fixed subset: the first ``subset_size`` of a seeded permutation, sorted."""
        generator = torch.Generator().manual_seed(self.settings.seed)
        perm = torch.randperm(dataset_size, generator=generator)[: min(self.subset_size, dataset_size)]
        return sorted(perm.tolist())

    def holdout_indices(self, dataset_size: int) -> list[int]:
        """The fixed rows of the validation data that measure the encodability gate: as many as the subset holds
        out (``round(subset_size * holdout_fraction)``), a seeded draw, sorted."""
        size = int(round(self.subset_size * self.settings.holdout_fraction))
        generator = torch.Generator().manual_seed(self.settings.seed + 1)
        return sorted(torch.randperm(dataset_size, generator=generator)[: min(size, dataset_size)].tolist())

    # --- the analysis --------------------------------------------------------------------------------------------
    def analyze(
        self, module: Any, subset: EmbeddedSubset, holdout: EmbeddedSubset | None = None
    ) -> tuple[WSCAnalysis, dict[str, Any]]:
        """Run the engine on an embedded subset; returns the analysis and its summary entry (plain Python).

        ``holdout``: embeddings and labels of data the backbone did not train on (the validation data), where the
        encodability gate measures each probe; without it the gate uses the subset's held-out part.
        """
        tasks, classes = self.tasks_and_classes(module)
        reader = self.reader(module)
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
            # the analysis runs in one process (global rank zero under DDP), so a plain warning is said once
            warnings.warn(
                f"WSC probes for {stalled} did not converge within max_iter={self.settings.max_iter} L-BFGS "
                f"iterations (gradient above tol={self.settings.tol:g}); their values are approximate. Raise the "
                "callback's max_iter or l2.", UserWarning, stacklevel=2,
            )
        return analysis, entry

    def evaluate(
        self,
        module: Any,
        dataset: Dataset,
        *,
        holdout_dataset: Dataset | None = None,
        collate_fn: Any = None,
        to_device: Any = None,
        progress: bool = False,
    ) -> tuple[WSCAnalysis, dict[str, Any]]:
        """Embed the subset of ``dataset`` and analyse it (outside a Trainer, e.g. post hoc).

        ``holdout_dataset``: data the backbone did not train on (e.g. the validation split), where the encodability
        gate is measured (:meth:`holdout_indices` of it); without it the gate uses the subset's held-out part.
        ``progress``: progress bars for the embedding passes (on a terminal).
        """
        self.check_module(module)
        dataset = analysis_view(dataset)
        indices = self.subset_indices(len(dataset))
        self.fit_metadata(module, subset_batches(dataset, indices, batch_size=self.batch_size, collate_fn=collate_fn))
        reader = self.reader(module)
        subset = embed_dataset(module, dataset, indices, batch_size=self.batch_size, collate_fn=collate_fn,
                               to_device=to_device, reader=reader,
                               progress="embedding the training subset" if progress else None)
        holdout = None
        if holdout_dataset is not None:
            holdout_dataset = analysis_view(holdout_dataset)
            holdout = embed_dataset(module, holdout_dataset, self.holdout_indices(len(holdout_dataset)),
                                    batch_size=self.batch_size, collate_fn=collate_fn, to_device=to_device,
                                    reader=reader, progress="embedding the holdout" if progress else None)
        return self.analyze(module, subset, holdout)

    # --- which pixels carry a shared direction -------------------------------------------------------------------
    @staticmethod
    def shared_directions(analysis: WSCAnalysis, primary_weight: Tensor,
                          tasks: Sequence[str]) -> dict[str, SharedDirection]:
        """The direction the primary head (``primary_weight``, ``(C_p, d)``, the weights the analysis compared)
        shares with each of ``tasks``' compared heads, in the analysis's projection
        (:func:`~wsca_lightning.wsc.shared_direction.shared_direction`); tasks that share nothing are left out."""
        primary_k = analysis.projection.project_weights(primary_weight)
        out = {}
        for name in tasks:
            direction = shared_direction(primary_k, analysis.tasks[name].observed_weight,
                                         analysis.projection.components)
            if direction is not None:
                out[name] = direction
        return out

    def attribute(
        self,
        module: Any,
        dataset: Dataset,
        directions: Mapping[str, SharedDirection],
        settings: AttributionSettings,
        *,
        collate_fn: Any = None,
        to_device: Callable[[Any], Any] | None = None,
        progress: bool = False,
    ) -> dict[str, TaskAttribution]:
        """Attribute each shared direction ``s(x) = u . z(x)`` to the pixels of the first ``settings.max_images``
        images of the analysis subset of ``dataset`` (:mod:`wsca_lightning.attribution`), with the module in eval
        mode and its parameters' gradients untouched (restored to its train/eval state afterwards); and, once for all
        tasks, each of those images' own primary decision, for comparison
        (:func:`~wsca_lightning.attribution.attribute_decisions`).

        The batch's input entry (``input_key``) is replaced by the attributed images, so ``wsc_embed`` must compute
        the embedding from that entry (the built-in module and modules read by attribute paths do). ``progress``: a
        progress bar over the attributed batches (on a terminal): integrated gradients takes ``steps`` backward
        passes per image and map."""
        out: dict[str, TaskAttribution] = {}
        if not directions:
            return out
        dataset = analysis_view(dataset)
        indices = self.subset_indices(len(dataset))[: settings.max_images]
        reader = self.reader(module)
        batches = list(subset_batches(dataset, indices, batch_size=self.batch_size, collate_fn=collate_fn))
        if to_device is not None:
            batches = [to_device(batch) for batch in batches]
        was_training = module.training
        module.eval()
        primary = reader.wsc_primary_task
        rows = decision_rows(reader.wsc_head_weights()[primary].weight.detach().to(torch.float64))
        inputs = [torch.as_tensor(batch_entry(batch, self.input_key, "input")).detach().float() for batch in batches]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            steps = f", {settings.steps} steps" if settings.method == "integrated_gradients" else ""
            bar = tqdm(total=len(batches) * (1 + len(directions)), unit="batch", disable=None,
                       desc=f"attributing ({settings.method}{steps}): decisions, {', '.join(directions)}")

        def advance(result: Tensor) -> Tensor:
            if bar is not None:
                bar.update()
            return result

        try:
            start = time.perf_counter()
            targets = [reader.wsc_targets(batch) for batch in batches]  # once per batch, for the primary and every task
            primary_batches = [torch.as_tensor(t[primary]).to(torch.int64) for t in targets]
            decisions = torch.cat([
                advance(attribute_decisions(reader.wsc_embed, batch, x, y, rows, settings.method, steps=settings.steps,
                                            batch_size=settings.batch_size, input_key=self.input_key).cpu())
                for batch, x, y in zip(batches, inputs, primary_batches)])
            decision_seconds = time.perf_counter() - start
            images = torch.cat([x.cpu() for x in inputs])
            primary_labels = torch.cat([y.cpu() for y in primary_batches])
            for name, direction in directions.items():
                start = time.perf_counter()
                scores = [shared_score(reader.wsc_embed, batch, direction.direction, self.input_key)
                          for batch in batches]
                maps = [advance(attribute(score, x, settings.method, steps=settings.steps,
                                          batch_size=settings.batch_size).cpu())
                        for score, x in zip(scores, inputs)]
                labels = [torch.as_tensor(t[name]).to(torch.int64).cpu() for t in targets]
                out[name] = TaskAttribution(
                    task=name, method=settings.method,
                    steps=settings.steps if settings.method == "integrated_gradients" else None,
                    indices=list(indices), images=images, attributions=torch.cat(maps), labels=torch.cat(labels),
                    decision_attributions=decisions, primary_labels=primary_labels, strength=direction.strength,
                    share=direction.share, seconds=time.perf_counter() - start, decision_seconds=decision_seconds)
        finally:
            module.train(was_training)
            if bar is not None:
                bar.close()
        return out

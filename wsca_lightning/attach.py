"""Reading an unmodified LightningModule by attribute paths: the WSC interface without subclassing.

:class:`AttributeView` gives the WSC callback what :class:`~wsca_lightning.interface.SupportsWSC` asks for, from a
classifier that knows nothing of this package:

* the primary head is a module with a 2-D ``weight`` (``nn.Linear``) named by its attribute path (``"model.fc"``,
  ``"classifier.1"``: :meth:`torch.nn.Module.get_submodule`);
* the embedding is that head's input, captured with a forward pre-hook while the module runs its own ``forward`` on
  the batch's input, or the output of another named module (``embedding="model.avgpool"``), flattened to ``(B, d)``;
* the primary labels come from the batch (``label_key``), the metadata labels from a table joined on the batch's
  sample ids (:class:`~wsca_lightning.data.metadata_table.MetadataTable`) or from a callable on the batch;
* metadata heads the module already has may be named too (``metadata_heads={"scanner": "scanner_fc"}``), for the
  ``heads`` protocol; without them use ``probe_refit``, whose metadata directions are probes refitted every epoch.

Batches are a sequence (``(image, label, id)``: keys 0, 1, 2 by default) or a mapping (``"image"``, ``"label"``,
``"id"`` by default); any key may be set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wsca_lightning.data.metadata_table import MetadataTable, sample_ids
from wsca_lightning.interface import HeadWeights
from wsca_lightning.plain import is_int
from wsca_lightning.problems import ConfigError, Problem, raise_if

__all__ = ["AttributeView", "BatchKey", "MetadataFn", "batch_entry", "metadata_source"]

BatchKey = str | int
#: ``metadata(batch) -> {task: integer labels (B,), -1 = missing}``.
MetadataFn = Callable[[Any], Mapping[str, Any]]
_DEFAULT_KEYS = {"input": (0, "image"), "label": (1, "label"), "id": (2, "id")}


def batch_entry(batch: Any, key: BatchKey | None, role: str) -> Any:
    """``batch[key]`` (``key`` None: the role's default for a sequence or a mapping batch), or a ``KeyError`` saying
    which ``<role>_key`` to set."""
    if key is None:
        key = _DEFAULT_KEYS[role][1 if isinstance(batch, Mapping) else 0]
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError):
        shape = (f"a mapping with keys {sorted(map(str, batch))}" if isinstance(batch, Mapping)
                 else f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, Sequence) else ""))
        raise KeyError(f"{role}_key: the batch has no entry {key!r} (it is {shape}); set {role}_key to the key or "
                       "position of the batch entry holding it") from None


class AttributeView:
    """The WSC interface of ``module`` read through attribute paths (module docstring).

    Args:
        module: the LightningModule (or any ``nn.Module`` whose ``forward`` takes the batch's input).
        head: attribute path of the primary head (2-D ``weight``: ``(C, d)``).
        embedding: attribute path of the module whose output is the embedding; default the head's input.
        metadata: a :class:`MetadataTable` (ids from ``id_key``) or a callable on the batch.
        metadata_heads: ``{task: attribute path}`` of metadata heads the module has.
        input_key, label_key, id_key: where a batch holds the input, the primary labels and the sample ids.
        class_names: the primary head's class names (default ``"0"``, ``"1"``, ...).
        primary: the primary task's name in keys and files (default ``label_key`` when it is a name, else
            ``"label"``).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        head: str,
        embedding: str | None = None,
        metadata: MetadataTable | MetadataFn | None = None,
        metadata_heads: Mapping[str, str] | None = None,
        input_key: BatchKey | None = None,
        label_key: BatchKey | None = None,
        id_key: BatchKey | None = None,
        class_names: Sequence[str] | None = None,
        primary: str | None = None,
    ) -> None:
        self.module = module
        self.head_path = head
        self.embedding_path = embedding
        self.metadata = metadata
        self.metadata_head_paths = dict(metadata_heads or {})
        self.input_key, self.label_key, self.id_key = input_key, label_key, id_key
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        self.wsc_primary_task = primary or (label_key if isinstance(label_key, str) else "label")
        self.wsc_protocol = "heads" if self.metadata_head_paths else None
        self._callable_classes: dict[str, int] = {}  # a metadata callable's class count per task, from the fit
        self.fitted = False
        raise_if(self.problems())

    # --- checks --------------------------------------------------------------------------------------------------
    def _submodule(self, key: str, path: str) -> nn.Module:
        try:
            return self.module.get_submodule(path)
        except AttributeError:
            pass
        # say what exists where the path stops resolving, and which layers could be heads
        parts = path.split(".")
        prefix = next(p for p in (".".join(parts[:n]) for n in range(len(parts) - 1, -1, -1))
                      if _has_submodule(self.module, p))
        children = [f"{prefix}.{name}" if prefix else name
                    for name, _ in self.module.get_submodule(prefix).named_children()]
        linear = [name for name, m in self.module.named_modules()
                  if isinstance(getattr(m, "weight", None), Tensor) and m.weight.ndim == 2]
        raise ConfigError.at(key, f"{type(self.module).__name__} has no submodule {path!r}; "
                                  f"{repr(prefix) if prefix else 'the module'} has {children[:20]}; its linear "
                                  f"layers are {linear[:20]}")

    def _weight(self, key: str, path: str) -> Tensor:
        weight = getattr(self._submodule(key, path), "weight", None)
        if not isinstance(weight, Tensor) or weight.ndim != 2:
            shape = None if not isinstance(weight, Tensor) else tuple(weight.shape)
            raise ConfigError.at(key, f"{path!r} is not a linear head (a module with a 2-D weight (classes, d); its "
                                      f"weight is {shape}); name the final nn.Linear")
        return weight

    def problems(self) -> list[Problem]:
        """Every path that does not resolve, and head shapes that disagree."""
        problems: list[Problem] = []
        for key, path in [("head", self.head_path), *((f"metadata_heads.{t}", p)
                                                      for t, p in self.metadata_head_paths.items())]:
            try:
                self._weight(key, path)
            except ConfigError as err:
                problems += err.problems
        if self.embedding_path is not None:
            try:
                self._submodule("embedding", self.embedding_path)
            except ConfigError as err:
                problems += err.problems
        if not problems:
            rows, d = self._weight("head", self.head_path).shape
            if self.class_names is not None and len(self.class_names) != rows:
                problems.append(Problem("class_names", f"{len(self.class_names)} names for the {rows} rows of head "
                                                       f"{self.head_path!r}"))
            for task, path in self.metadata_head_paths.items():
                inputs = self._weight(task, path).shape[1]
                if inputs != d:
                    problems.append(Problem(f"metadata_heads.{task}", f"{path!r} takes {inputs} inputs, the primary "
                                                                      f"head {d}; both must read the same embedding"))
        if self.metadata is None:
            problems.append(Problem("metadata", "give a metadata table (CSV path) or a callable on the batch"))
        elif isinstance(self.metadata, MetadataTable):
            unknown = [t for t in self.metadata_head_paths if t not in self.metadata.tasks]
            if unknown:
                problems.append(Problem("metadata_heads", f"{unknown} are not columns of the metadata table "
                                                          f"({self.metadata.tasks})"))
        return problems

    # --- fitting the metadata label spaces on the training subset ------------------------------------------------
    def fit(self, batches: Iterable[Any]) -> None:
        """Fit the metadata label spaces on the analysed training samples' batches (the table's vocabularies and
        bins, or a callable's class counts)."""
        if isinstance(self.metadata, MetadataTable):
            self.metadata.fit([i for batch in batches for i in sample_ids(batch_entry(batch, self.id_key, "id"))])
        else:
            # a task with a head has the head's classes; otherwise as many as the largest label says
            counts = {task: self._weight(task, path).shape[0] for task, path in self.metadata_head_paths.items()}
            for batch in batches:
                for task, values in self._call_metadata(batch).items():
                    top = int(values.max()) if values.numel() else -1
                    counts[task] = max(counts.get(task, 0), top + 1)
            self._callable_classes = counts
        self.fitted = True

    def _call_metadata(self, batch: Any) -> dict[str, Tensor]:
        assert callable(self.metadata) and not isinstance(self.metadata, MetadataTable)
        out = self.metadata(batch)
        if not isinstance(out, Mapping):
            raise TypeError(f"metadata(batch) must return {{task: integer labels}}, got {type(out).__name__}")
        labels = {}
        for task, values in out.items():
            tensor = torch.as_tensor(values)
            if tensor.is_floating_point() or tensor.ndim != 1:
                raise TypeError(f"metadata(batch)[{task!r}]: integer class labels of shape (B,) (-1 = missing), "
                                f"got {tensor.dtype} of shape {tuple(tensor.shape)}")
            labels[str(task)] = tensor.to(torch.int64).cpu()
        return labels

    def wsc_task_classes(self) -> dict[str, list[str]]:
        """Class names of every metadata task (from the table's fitted label spaces, or a callable's labels)."""
        if not self.fitted:
            raise RuntimeError("the metadata label spaces are fitted on the training subset (fit) before any analysis")
        if isinstance(self.metadata, MetadataTable):
            return {t: list(spec.class_names) for t, spec in self.metadata.task_specs.items()}
        return {t: [str(k) for k in range(max(2, n))] for t, n in self._callable_classes.items()}

    # --- the interface -------------------------------------------------------------------------------------------
    def wsc_head_weights(self) -> dict[str, HeadWeights]:
        weight = self._weight("head", self.head_path)
        heads = {self.wsc_primary_task: HeadWeights(
            weight, self.class_names or tuple(str(k) for k in range(weight.shape[0])))}
        classes = self.wsc_task_classes() if self.metadata_head_paths and self.fitted else {}
        for task, path in self.metadata_head_paths.items():
            w = self._weight(f"metadata_heads.{task}", path)
            if w.shape[0] < 2:  # one logit: a binary head
                heads[task] = HeadWeights(w, ("1",))
                continue
            names = classes.get(task, [str(k) for k in range(w.shape[0])])  # numbered until the metadata is fitted
            if len(names) != w.shape[0]:
                raise ConfigError.at(f"metadata_heads.{task}", f"{path!r} has {w.shape[0]} rows but the metadata "
                                                               f"gives {len(names)} classes ({names})")
            heads[task] = HeadWeights(w, tuple(names))
        return heads

    def wsc_embed(self, batch: Any) -> Tensor:
        captured: list[Tensor] = []
        if self.embedding_path is None:
            def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
                captured.append(args[0])
            handle = self._submodule("head", self.head_path).register_forward_pre_hook(pre_hook)
        else:
            def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
                captured.append(output)
            handle = self._submodule("embedding", self.embedding_path).register_forward_hook(hook)
        try:
            self.module(batch_entry(batch, self.input_key, "input"))
        finally:
            handle.remove()
        if not captured or not isinstance(captured[-1], Tensor):
            where = self.embedding_path or self.head_path
            raise RuntimeError(f"the module's forward did not run {where!r} on the batch's input, so no embedding "
                               "was captured; name the layer the forward uses (head / embedding)")
        z = captured[-1]
        return z.reshape(z.shape[0], -1)

    def wsc_targets(self, batch: Any) -> dict[str, Tensor]:
        labels = torch.as_tensor(batch_entry(batch, self.label_key, "label")).reshape(-1).to(torch.int64)
        out = {self.wsc_primary_task: labels}
        if isinstance(self.metadata, MetadataTable):
            out.update(self.metadata.labels(batch_entry(batch, self.id_key, "id")))
        else:
            for task, values in self._call_metadata(batch).items():
                known = self._callable_classes.get(task)
                # a class the training subset never showed has no probe column: missing
                out[task] = values if known is None else torch.where(values < known, values, -1)
        return out


def metadata_source(
    *, head: Any, embedding: Any, metadata: Any, metadata_heads: Any, input_key: Any, label_key: Any, id_key: Any,
    class_names: Any,
) -> tuple[MetadataTable | MetadataFn | None, list[Problem]]:
    """Check the settings that read an unmodified module by attribute paths (the callback's ``head``, ``metadata``
    ...) and return the metadata source (a table is read now, so its problems come before training) with every
    problem of those settings. ``head`` None: the module has the WSC interface, and the other settings must be
    unset."""
    problems: list[Problem] = []
    given = [key for key, value in (("embedding", embedding), ("metadata", metadata),
                                    ("metadata_heads", metadata_heads), ("input_key", input_key),
                                    ("label_key", label_key), ("id_key", id_key), ("class_names", class_names))
             if value is not None]
    if head is None:
        if given:
            problems.append(Problem("head", f"{', '.join(given)} read an unmodified module by attribute paths; set "
                                            "head to the primary head's path (e.g. 'model.fc'), or leave them unset "
                                            "for a module with the WSC interface"))
        return None, problems
    for key, value in (("head", head), ("embedding", embedding)):
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(Problem(key, f"an attribute path such as 'model.fc', got {value!r}"))
    for key, value in (("input_key", input_key), ("label_key", label_key), ("id_key", id_key)):
        if value is not None and not isinstance(value, str) and not is_int(value):
            problems.append(Problem(key, f"a batch key (name) or position (integer), got {value!r}"))
    if metadata_heads is not None and (not isinstance(metadata_heads, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata_heads.items())):
        problems.append(Problem("metadata_heads", f"a mapping {{task: attribute path}}, got {metadata_heads!r}"))
    if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, Sequence)):
        problems.append(Problem("class_names", f"a list of the primary head's class names, got {class_names!r}"))
    if metadata is None:
        problems.append(Problem("metadata", "give the metadata table (a CSV path, or {path, id_column, columns, "
                                            "delimiter}) or a callable on the batch returning {task: labels}"))
        return None, problems
    if callable(metadata):
        return metadata, problems
    try:
        table = MetadataTable.from_spec(metadata, default_id_column=id_key if isinstance(id_key, str) else "id")
    except ConfigError as err:  # ManifestError: the table's own problems, each naming the file
        problems += [Problem("metadata", str(p)) for p in err.problems]
        return None, problems
    except ValueError as err:  # not a path or a table mapping
        problems.append(Problem("metadata", str(err)))
        return None, problems
    return table, problems


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


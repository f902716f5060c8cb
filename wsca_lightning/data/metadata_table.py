"""A metadata spreadsheet keyed by sample id: labels for the WSC callback on a module that has no metadata heads.

The user's table has one row per sample, a column of ids that the training batches carry (``id_key``), and one column
per metadata field. Columns are declared as every metadata head is (:class:`~wsca_lightning.tasks.HeadConfig`, a
table's head); when no columns are declared, every other column is a task, continuous when every filled cell is a
number and it has more than :data:`MAX_INFERRED_CATEGORIES` distinct values (then 4 equal-width bins), categorical
otherwise. The vocabularies and bin edges are fitted on the rows of the training samples the callback analyses (never
on validation rows), exactly as :func:`~wsca_lightning.data.manifest.encode_labels` does for a manifest.

Only reads the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from wsca_lightning.data.manifest import (
    ManifestError,
    column_problem,
    encode_labels,
    parse_float,
    problem_line,
    read_manifest,
    spelling_problem,
)
from wsca_lightning.problems import ConfigError, Problem
from wsca_lightning.tasks import HeadConfig, TaskSpec, is_task_name

__all__ = ["MAX_INFERRED_CATEGORIES", "MetadataTable", "TABLE_FIELDS", "sample_ids"]

#: A numeric column with more distinct values than this is inferred continuous (binned), else categorical.
MAX_INFERRED_CATEGORIES = 10
#: The keys of a table given as a mapping (:meth:`MetadataTable.from_spec`).
TABLE_FIELDS: tuple[str, ...] = ("path", "id_column", "columns", "delimiter")
_SHOWN = 5


def sample_ids(values: Any) -> list[str]:
    """A batch's sample ids as strings (a list of strings or numbers, or a 1-D tensor of integers)."""
    if isinstance(values, Tensor):
        values = values.reshape(-1).tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"sample ids must be a list or a 1-D tensor, one per sample; got {type(values).__name__}")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class MetadataTable:
    """Metadata labels looked up by sample id.

    Args:
        path: the CSV/TSV file (delimiter detected from the header unless given).
        id_column: the column holding the ids the batches carry (compared as text: ``7`` matches ``"7"``).
        columns: ``{task: HeadConfig or its mapping}``; default every other column, types inferred (module docstring).
        delimiter: the file's delimiter, if detection is not wanted.

    Raises :class:`~wsca_lightning.data.manifest.ManifestError` (one line per problem, naming the file, lines and
    columns) for an unreadable file, an unknown column, missing or repeated ids, a class spelled two ways
    (``'Malignant'`` beside ``'malignant'``) and two columns that would become the same task.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        id_column: str,
        columns: Mapping[str, Any] | None = None,
        delimiter: str | None = None,
    ) -> None:
        table = read_manifest(path, delimiter)
        file = table.path
        problems: list[str | Problem] = []
        if id_column not in table.header:
            raise ManifestError([column_problem(table, "id_key", id_column)])
        ids = table.column(id_column)
        empty = [ln for ln, value in zip(table.line_numbers, ids) if not value]
        if empty:
            problems.append(problem_line(file, "empty id", "give every row the id its sample carries", empty,
                                         id_column))
        seen: dict[str, int] = {}
        repeated: list[int] = []
        for line, value in zip(table.line_numbers, ids):
            if value and value in seen:
                repeated.append(line)
            seen.setdefault(value, line)
        if repeated:
            problems.append(problem_line(file, "repeated id (each sample needs one row)", "merge or remove the rows",
                                         repeated, id_column))
        specs: dict[str, HeadConfig] = {}
        if columns is None:
            for name in table.header:
                if name != id_column and name.strip():
                    spec = _inferred_spec(table.column(name), name)
                    task = _task_name(name)
                    if spec is None:
                        problems.append(problem_line(
                            file, "most rows hold a value of their own (an identifier, not a metadata field?)",
                            "declare the tasks with metadata_columns to leave such columns out", column=name))
                    elif task in specs:  # 'site id' and 'site_id' both become task 'site_id': never drop one silently
                        problems.append(problem_line(
                            file, f"columns {specs[task].column!r} and {name!r} both become task {task!r}",
                            "rename one of them, or declare the tasks with metadata_columns", column=name))
                    else:
                        specs[task] = spec
        else:
            if not isinstance(columns, Mapping):
                raise ManifestError([Problem("metadata_columns", f"must be a mapping {{task: {{column, type, ...}}}}, "
                                                                 f"got {columns!r}")])
            for name, value in columns.items():
                try:
                    specs[str(name)] = value if isinstance(value, HeadConfig) else HeadConfig.from_mapping(
                        f"metadata_columns.{name}", value)
                except ConfigError as err:
                    problems += err.problems
            for name, spec in specs.items():
                if not is_task_name(name):
                    problems.append(Problem(f"metadata_columns.{name}", f"task name {name!r} must be non-empty, "
                                                                        "without '/' or '.'"))
                if spec.column not in table.header:
                    problems.append(column_problem(table, f"metadata_columns.{name}.column", spec.column))
                elif spec.column == id_column:
                    problems.append(Problem(f"metadata_columns.{name}.column", f"{spec.column!r} is the id column"))
        for name, spec in specs.items():
            if spec.type != "continuous" and spec.classes is None and spec.column in table.header:
                spelled = spelling_problem(table, spec.column, role=f"task {name!r}",
                                           classes_key=f"metadata_columns.{name}.classes")
                if spelled is not None:
                    problems.append(spelled)
        if not specs and not problems:
            problems.append(f"{file}: no metadata column besides the id column {id_column!r}: nothing to analyse")
        if problems:
            raise ManifestError(problems)
        self.path = file
        self.id_column = id_column
        self.specs = specs
        self._table = table
        self._row = {value: i for i, value in enumerate(ids) if value}
        self._labels: dict[str, list[int]] = {}
        self.task_specs: dict[str, TaskSpec] = {}

    @classmethod
    def from_spec(cls, spec: str | os.PathLike | Mapping[str, Any], default_id_column: str) -> "MetadataTable":
        """A table from a config value: a path, or a mapping of :data:`TABLE_FIELDS` (``path`` required;
        ``id_column`` defaults to ``default_id_column``). Raises ``ValueError`` for any other value."""
        fields = {"path": spec} if isinstance(spec, (str, os.PathLike)) else spec
        if not isinstance(fields, Mapping) or "path" not in fields or any(k not in TABLE_FIELDS for k in fields):
            raise ValueError(f"a CSV path, a mapping with keys {', '.join(TABLE_FIELDS)} (path required) or a "
                             f"callable, got {spec!r}")
        return cls(fields["path"], fields.get("id_column") or default_id_column, fields.get("columns"),
                   fields.get("delimiter"))

    @property
    def tasks(self) -> list[str]:
        """The metadata tasks, in table order."""
        return list(self.specs)

    @property
    def fitted(self) -> bool:
        return bool(self.task_specs)

    def rows_of(self, ids: Iterable[Any], *, role: str) -> list[int]:
        """The table rows of these ids; raises ``ValueError`` naming the ids that have no row (``role`` says whose
        ids they are, e.g. "the training subset")."""
        ids = list(ids)
        missing = [i for i in ids if i not in self._row]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:_SHOWN]) + (
                f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else "")
            raise ValueError(
                f"{self.path}: {len(missing)} of the {len(ids)} ids of {role} have no row (ids {shown}) "
                f"[column {self.id_column!r}]: add a row per sample (empty cells count as missing metadata), or "
                f"check that id_key names the batch entry holding these ids (table ids look like "
                f"{next(iter(self._row), '')!r})"
            )
        return [self._row[i] for i in ids]

    def fit(self, training_ids: Iterable[Any]) -> None:
        """Fit every column's vocabulary / bin edges on the rows of ``training_ids`` (the analysed training
        samples); refitting replaces the previous fit."""
        rows = sorted(set(self.rows_of(sample_ids(list(training_ids)), role="the training subset")))
        labels, specs = {}, {}
        for name, spec in self.specs.items():
            specs[name], labels[name] = encode_labels(self._table, spec, name=name, fit_rows=rows)
        self.task_specs, self._labels = specs, labels

    def labels(self, ids: Any, *, role: str = "a batch") -> dict[str, Tensor]:
        """Integer labels (``-1`` = missing) of every task for a batch's ids."""
        if not self.fitted:
            raise RuntimeError("MetadataTable.fit() must run before labels()")
        rows = self.rows_of(sample_ids(ids), role=role)
        return {name: torch.tensor([values[r] for r in rows], dtype=torch.int64)
                for name, values in self._labels.items()}


def _task_name(column: str) -> str:
    """A column name as a task name (no '/' or '.', which would break metric keys)."""
    return column.strip().replace("/", "_").replace(".", "_").replace(" ", "_")


def _inferred_spec(cells: Sequence[str], column: str) -> HeadConfig | None:
    """Continuous or categorical by the rule of the module docstring; None for a text column with more distinct
    values than half its filled cells (and than MAX_INFERRED_CATEGORIES), which is no grouping of samples."""
    filled = [c for c in cells if c]
    numbers = [parse_float(c) for c in filled]
    if filled and all(v is not None for v in numbers) and len(set(numbers)) > MAX_INFERRED_CATEGORIES:
        return HeadConfig(column=column, type="continuous")
    if len(set(filled)) > max(MAX_INFERRED_CATEGORIES, len(filled) // 2):
        return None
    return HeadConfig(column=column, type="categorical")

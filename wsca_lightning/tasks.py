"""Where a head is declared: the metadata-head schema every datamodule and the metadata table read, and the label
space each head ends up with.

A task is one classification head: the primary (clinical) task or a metadata task. A config declares it as a
:class:`HeadConfig` (``{column, type, bins, binning, classes}``, and ``name`` for the target), checked by
:func:`check_head` / :func:`check_heads`; the datamodule fits it on its training split into a :class:`TaskSpec`, the
label space the module receives. Continuous metadata are binned into classes before they reach a head, so every head
is a classifier and every spec has class names.

Two kinds of data declare heads here: generated data, whose columns are fixed and known (``columns``: name -> kind),
and tables (a manifest, a metadata spreadsheet), whose columns are whatever the file's header holds (``columns``
``None``: existence is checked against the file, and ``classes`` may pick and order the values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Any, Literal, Mapping, Sequence

from wsca_lightning.plain import is_int
from wsca_lightning.problems import Problem, raise_if
from wsca_lightning.wsc.binning import BINNING_METHODS, IGNORE_INDEX

TaskKind = Literal["binary", "categorical", "continuous"]
TASK_KINDS: tuple[str, ...] = ("binary", "categorical", "continuous")
#: Bins of a continuous head that does not say.
DEFAULT_BINS = 4
DEFAULT_BINNING = "equal_width"
#: The keys of a head's config (tables also accept ``classes``; the target also ``name``).
HEAD_KEYS: tuple[str, ...] = ("column", "type", "bins", "binning")
TABLE_HEAD_KEYS: tuple[str, ...] = (*HEAD_KEYS, "classes")

__all__ = [
    "DEFAULT_BINNING",
    "DEFAULT_BINS",
    "HEAD_KEYS",
    "HeadConfig",
    "IGNORE_INDEX",
    "TABLE_HEAD_KEYS",
    "TASK_KINDS",
    "TaskKind",
    "TaskSpec",
    "check_head",
    "check_heads",
    "is_task_name",
    "spec_differences",
]


def is_task_name(name: object) -> bool:
    """A task name is part of metric keys (``val/<name>/auroc``): a non-empty string without '/' or '.'."""
    return isinstance(name, str) and bool(name) and "/" not in name and "." not in name


@dataclass(frozen=True)
class HeadConfig:
    """One head read from one column, e.g. ``{column: px_spacing, type: continuous, bins: 6, binning: quantile}``.

    ``classes`` (binary/categorical heads of a table only) keeps only these values, in this order, which also fixes
    the label order so that a model's heads mean the same thing on every dataset. Continuous heads get ``bins``
    (default :data:`DEFAULT_BINS`) bins fitted with ``binning`` on the training split.
    """

    column: str
    type: str = "categorical"
    bins: int | None = None
    binning: str = DEFAULT_BINNING
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        raise_if(_value_problems("" if not isinstance(self.column, str) else self.column, self.column, self.type,
                                 self.bins, self.binning, self.classes, self.binning != DEFAULT_BINNING))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c).strip() for c in self.classes))

    @property
    def num_bins(self) -> int:
        """Bins of a continuous head (``bins`` or :data:`DEFAULT_BINS`)."""
        return DEFAULT_BINS if self.bins is None else int(self.bins)

    @classmethod
    def from_mapping(cls, key: str, value: Any) -> "HeadConfig":
        """A table's head from its config mapping; raises :class:`ConfigError` with every problem keyed from
        ``key`` (unknown keys and bad values all at once, so a config is fixed in one go)."""
        problems, head = check_head(key, value)
        raise_if(problems)
        assert head is not None
        return head

    def to_dict(self) -> dict[str, Any]:
        """The plain-Python config of a generated dataset's head: ``column`` and ``type``, and ``bins`` and
        ``binning`` when continuous (what its datamodule saves in the hyperparameters)."""
        out: dict[str, Any] = {"column": self.column, "type": self.type}
        if self.type == "continuous":
            out.update(bins=self.num_bins, binning=self.binning)
        return out


def _value_problems(key: str, column: Any, kind: Any, bins: Any, binning: Any, classes: Any,
                    binning_given: bool) -> list[Problem]:
    """Problems of a table head's values (the column itself is checked against the file later)."""
    def at(sub: str) -> str:
        return f"{key}.{sub}" if key else sub

    problems: list[Problem] = []
    if not isinstance(column, str) or not column:
        problems.append(Problem(at("column"), f"must be a non-empty column name, got {column!r}"))
    if kind not in TASK_KINDS:
        problems.append(Problem(at("type"), f"must be one of {', '.join(TASK_KINDS)}, got {kind!r}"))
        return problems
    problems += _binning_problems(at, kind, bins, binning, binning_given)
    if kind == "continuous":
        if classes is not None:
            problems.append(Problem(at("classes"), "a continuous head gets its classes from its bins; remove "
                                                   "'classes'"))
        return problems
    if classes is not None:
        problems += _class_list_problems(at("classes"), kind, classes)
    return problems


def _binning_problems(at: Any, kind: str, bins: Any, binning: Any, binning_given: bool) -> list[Problem]:
    """``bins``/``binning`` of a head of this ``kind``: valid for a continuous head, absent for any other."""
    if kind == "continuous":
        problems = []
        if bins is not None and (not is_int(bins) or bins < 2):
            problems.append(Problem(at("bins"), f"continuous heads need bins >= 2, got {bins!r}"))
        if binning not in BINNING_METHODS:
            problems.append(Problem(at("binning"), f"must be one of {', '.join(BINNING_METHODS)}, got {binning!r}"))
        return problems
    return [Problem(at(name), f"only continuous heads are binned; remove it from this {kind} head")
            for name, given in (("bins", bins is not None), ("binning", binning_given)) if given]


def _class_list_problems(key: str, kind: str, classes: Any) -> list[Problem]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        return [Problem(key, f"must be a list of class values, got {classes!r}")]
    bad = [c for c in classes if not (isinstance(c, str) or is_int(c))]
    names = [str(c).strip() for c in classes]
    if bad:
        return [Problem(key, f"class values must be strings or integers, got {bad!r}")]
    if any(not n for n in names):
        return [Problem(key, "class values must be non-empty")]
    if len(set(names)) != len(names):
        return [Problem(key, f"repeated class values in {names}")]
    if kind == "binary" and len(names) != 2:
        return [Problem(key, f"a binary head needs exactly 2 classes, got {names}")]
    if len(names) < 2:
        return [Problem(key, f"a head needs at least 2 classes, got {names}")]
    return []


def check_head(
    key: str, value: Any, *, columns: Mapping[str, str] | None = None,
    class_counts: Mapping[str, int | None] | None = None, is_target: bool = False,
) -> tuple[list[Problem], HeadConfig | None]:
    """Check one head's config; returns ``(problems, the head with defaults filled, or None if unusable)``.

    ``key`` is the head's config key (``target``, ``metadata.scanner``). ``columns`` (name -> kind) are a generated
    dataset's columns: the column must be one of them, ``type`` defaults to its kind and ``binary`` needs a
    categorical column of exactly 2 classes (``class_counts``; ``None`` = unknown). Without ``columns`` the head is
    a table's: ``type`` defaults to categorical and ``classes`` may be given. A target may carry ``name``, checked
    by :func:`check_heads`.
    """
    generated = columns is not None
    valid = HEAD_KEYS if generated else TABLE_HEAD_KEYS
    shown = (*valid, "name") if generated and is_target else valid
    if not isinstance(value, Mapping):
        return [Problem(key, f"must be a mapping with keys {', '.join(shown)}, got {value!r}")], None
    problems = [Problem(f"{key}.{k}", f"unknown key; valid keys: {', '.join(shown)}")
                for k in value if k not in shown and not (is_target and k == "name")]
    if generated:
        assert columns is not None
        more, head = _generated_head(key, value, columns, class_counts or {}, is_target)
        return problems + more, (head if not problems else None)
    if "column" not in value:
        problems.append(Problem(key, "a head needs a 'column'"))
    kind = value.get("type", "categorical")
    binning_given = value.get("binning") is not None
    binning = value.get("binning") or DEFAULT_BINNING
    classes = value.get("classes")
    problems += [p for p in _value_problems(key, value.get("column"), kind, value.get("bins"), binning, classes,
                                            binning_given)
                 if "column" in value or p.key != f"{key}.column"]
    if problems:
        return problems, None
    return [], HeadConfig(column=value["column"], type=kind, bins=value.get("bins"), binning=binning,
                          classes=None if classes is None else tuple(str(c).strip() for c in classes))


def _generated_head(key: str, value: Mapping[str, Any], columns: Mapping[str, str],
                    class_counts: Mapping[str, int | None], is_target: bool) -> tuple[list[Problem], HeadConfig | None]:
    """The checks of a head over a generated dataset's known ``columns``."""
    problems: list[Problem] = []
    column, kind = value.get("column"), value.get("type")
    column_kind: str | None = None
    if column is None:
        problems.append(Problem(key, f"a {'target' if is_target else 'metadata head'} needs a 'column'"))
    elif not isinstance(column, str) or column not in columns:
        problems.append(Problem(f"{key}.column", f"{column!r} is not a column of the built-in dataset; available: "
                                                 f"{', '.join(columns)}"))
    else:
        column_kind = columns[column]
    if kind is None:
        kind = column_kind  # the column's own kind is the only sensible default
    elif kind not in TASK_KINDS:
        problems.append(Problem(f"{key}.type", f"must be one of {', '.join(TASK_KINDS)}, got {kind!r}"))
        kind = None
    if kind is not None and column_kind is not None:
        if kind == "continuous" and column_kind != "continuous":
            problems.append(Problem(f"{key}.type", f"column {column!r} is {column_kind}, not continuous"))
        elif kind == "categorical" and column_kind != "categorical":
            problems.append(Problem(f"{key}.type", f"column {column!r} is {column_kind}, not categorical (declare it "
                                                   "continuous with bins)"))
        elif kind == "binary":
            count = class_counts.get(column)
            if column_kind != "categorical":
                problems.append(Problem(f"{key}.type", f"column {column!r} is {column_kind}; binary needs a "
                                                       "categorical column with exactly 2 classes"))
            elif count is not None and count != 2:
                problems.append(Problem(f"{key}.type", f"binary needs a column with exactly 2 classes; {column!r} "
                                                       f"has {count}"))
    bins, binning = value.get("bins"), value.get("binning")
    if kind == "continuous":
        bins = DEFAULT_BINS if bins is None else bins
        binning = DEFAULT_BINNING if binning is None else binning
        # a generated head spells its bins out; `bins: null` means the default, as in a table
        problems += _binning_problems(lambda sub: f"{key}.{sub}", kind, bins, binning, True)
    elif kind is not None:
        problems += _binning_problems(lambda sub: f"{key}.{sub}", kind, bins, binning, binning is not None)
    if problems or kind is None:
        return problems, None
    return [], HeadConfig(column=column, type=kind, bins=bins if kind == "continuous" else None,
                          binning=binning if kind == "continuous" else DEFAULT_BINNING)


def check_heads(
    target: Any, metadata: Any, *, columns: Mapping[str, str] | None = None,
    class_counts: Mapping[str, int | None] | None = None, default_name: Any = None,
) -> tuple[list[Problem], HeadConfig | None, str | None, dict[str, HeadConfig]]:
    """Check a datamodule's ``target`` and ``metadata`` heads together (``columns``: as for :func:`check_head`).

    Returns ``(problems, target head, primary task name, {metadata head name: head})``; unusable heads are left
    out. The primary task is named by the target's ``name``, else ``default_name(column)`` (default: the column).
    A metadata head set to ``None`` is left out for generated data (Hydra merges configs and cannot delete a
    default head, so ``data.metadata.<head>=null`` is how an experiment removes one). A table's target must be
    binary or categorical.
    """
    generated = columns is not None
    problems: list[Problem] = []
    head: HeadConfig | None = None
    primary: str | None = None
    if not generated and not isinstance(target, Mapping):
        problems.append(Problem("target", f"must be a mapping with keys column, type, classes, name, got {target!r}"))
    else:
        fields = dict(target) if isinstance(target, Mapping) else target
        if not generated:
            fields.pop("name", None)
        found, head = check_head("target", fields, columns=columns, class_counts=class_counts, is_target=True)
        problems += found
        if head is not None and not generated and head.type not in ("binary", "categorical"):
            problems.append(Problem("target.type", f"must be binary or categorical, got {head.type!r}"))
            head = None
        if isinstance(target, Mapping):
            if "name" in target:
                primary = target["name"]
                if not is_task_name(primary):
                    problems.append(Problem("target.name", "must be a non-empty string without '/' or '.', got "
                                                           f"{primary!r}"))
                    primary = None
            elif isinstance(target.get("column"), str):
                primary = target["column"] if default_name is None else default_name(target["column"])
    heads: dict[str, HeadConfig] = {}
    if not isinstance(metadata, Mapping):
        problems.append(Problem("metadata", f"must be a mapping of head name -> head config, got {metadata!r}"))
        metadata = {}
    for name, value in metadata.items():
        key = f"metadata.{name}"
        if value is None and generated:
            continue
        if not is_task_name(name):
            problems.append(Problem(key, f"head name {name!r} must be a non-empty string without '/' or '.'"))
            continue
        if name == primary:
            problems.append(Problem(key, f"head name {name!r} is already the primary task's name"))
        found, checked = check_head(key, value, columns=columns, class_counts=class_counts)
        problems += found
        column = value.get("column") if isinstance(value, Mapping) else None
        if head is not None and column is not None and column == head.column and (generated or checked is not None):
            problems.append(Problem(f"{key}.column", f"{column!r} is the {'primary ' * generated}target's column; a "
                                                     "metadata head must use another column"))
        if checked is not None:
            heads[name] = checked
    return problems, head, primary, heads


@dataclass(frozen=True)
class TaskSpec:
    """One head's label space: what a :class:`HeadConfig` becomes once fitted on the training split, and what the
    module builds its head from.

    Attributes:
        name: task name, used in metric keys (``val/<name>/auroc``) and WSC keys (``wsc/<name>/max_abs``).
        kind: ``binary`` (2 classes), ``categorical`` or ``continuous`` (binned; ``bin_edges`` then holds the
            ``num_classes + 1`` edges fitted on the training split).
        class_names: one name per class, in label order.
        bin_edges: bin edges for continuous tasks, empty otherwise.
    """

    name: str
    kind: TaskKind
    class_names: tuple[str, ...]
    bin_edges: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: type must be one of {TASK_KINDS}, got {self.kind!r}")
        if not is_task_name(self.name):
            raise ValueError(f"task name {self.name!r} must be non-empty and contain no '/' or '.'")
        if len(self.class_names) < 2:
            raise ValueError(f"task {self.name!r} needs at least 2 classes, got {list(self.class_names)}")
        if self.kind == "binary" and len(self.class_names) != 2:
            raise ValueError(f"binary task {self.name!r} needs exactly 2 classes, got {list(self.class_names)}")
        if self.kind == "continuous" and len(self.bin_edges) != len(self.class_names) + 1:
            raise ValueError(
                f"continuous task {self.name!r}: {len(self.class_names)} classes need "
                f"{len(self.class_names) + 1} bin edges, got {len(self.bin_edges)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, safe for ``save_hyperparameters`` and ``torch.load(weights_only=True)``."""
        return {
            "name": self.name,
            "kind": self.kind,
            "class_names": list(self.class_names),
            "bin_edges": [float(e) for e in self.bin_edges],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TaskSpec":
        return cls(
            name=str(d["name"]),
            kind=d["kind"],
            class_names=tuple(str(c) for c in d["class_names"]),
            bin_edges=tuple(float(e) for e in d.get("bin_edges", ())),
        )


def spec_differences(
    expected: Sequence[Mapping[str, Any]], actual: Sequence[Mapping[str, Any]], *, allow_extra: bool = True
) -> list[str]:
    """Every way ``actual`` task specs (dicts) fail to reproduce ``expected`` ones, one line per problem.

    A model's heads are tied to its label spaces: a different class order, vocabulary or bin edge would silently
    relabel a head. ``actual`` may hold extra tasks when ``allow_extra``; bin edges compare with a relative tolerance
    of 1e-9.
    """
    have = {str(s["name"]): s for s in actual}
    problems = []
    for spec in expected:
        name = str(spec["name"])
        other = have.get(name)
        if other is None:
            problems.append(f"{name}: the model has this head but the data defines no such task "
                            f"(data tasks: {', '.join(have) or 'none'})")
            continue
        if spec.get("kind") != other.get("kind"):
            problems.append(f"{name}: type {other.get('kind')!r} in the data, {spec.get('kind')!r} in the model")
        if list(spec.get("class_names", [])) != list(other.get("class_names", [])):
            problems.append(f"{name}: classes {list(other.get('class_names', []))} in the data, "
                            f"{list(spec.get('class_names', []))} in the model")
        edges, other_edges = list(spec.get("bin_edges", [])), list(other.get("bin_edges", []))
        if len(edges) != len(other_edges) or not all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(edges, other_edges)
        ):
            problems.append(f"{name}: bin edges {other_edges} in the data, {edges} in the model")
    if not allow_extra:
        known = {str(s["name"]) for s in expected}
        problems += [f"{name}: the data defines this task but the model has no such head" for name in have
                     if name not in known]
    return problems

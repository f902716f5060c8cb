"""Task specifications shared by the datamodules (which produce labels) and the module (which builds heads).

A task is one classification head: the primary (clinical) task or a metadata task. Continuous metadata are binned
into classes before they reach a head, so every head is a classifier and every spec has class names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Any, Literal, Mapping, Sequence

from wsca_lightning.wsc.binning import IGNORE_INDEX

TaskKind = Literal["binary", "categorical", "continuous"]
TASK_KINDS: tuple[str, ...] = ("binary", "categorical", "continuous")

__all__ = ["IGNORE_INDEX", "TASK_KINDS", "TaskKind", "TaskSpec", "spec_differences"]


@dataclass(frozen=True)
class TaskSpec:
    """One head's label space.

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
        if "/" in self.name or "." in self.name or not self.name:
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

"""Patient-grouped, target-stratified splits and the paper's balanced / biased training subsets.

Pure functions over plain sequences (labels as class indices with ``-1`` = missing, groups as hashable patient ids
or ``None`` = every row its own group), so a manifest datamodule can build its splits without touching images.

Why grouped: images of one patient are correlated; a patient in both train and val/test leaks and inflates the
scores. Why stratified: small validation sets drawn at random can miss a class; dealing whole patients by their
label histograms (:func:`_deal`) keeps every part's class mix close to the whole's, also when a patient has images
of several classes. Everything random uses ``torch.Generator(seed)``, so a seed fixes the
split on every machine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import torch

from wsca_lightning.problems import ConfigError, Problem, integer_problems

SPLIT_NAMES = ("train", "val", "test")
SUBSET_MODES = ("full", "balanced", "biased")
SUBSET_KEYS = ("mode", "by", "per_cell", "major", "minor", "seed", "val")
SUBSET_CELL_KEYS = ("per_cell", "major", "minor")
#: The paper's cell sizes (§3.4): 300 per cell balanced; 700 from the own scanner and 150 from each other biased.
SUBSET_DEFAULTS = {"mode": "full", "per_cell": 300, "major": 700, "minor": 150, "val": None}
_MAX_LISTED = 5

__all__ = [
    "SPLIT_NAMES",
    "SUBSET_DEFAULTS",
    "SUBSET_KEYS",
    "SUBSET_MODES",
    "carve_validation",
    "cell_counts",
    "check_group_disjoint",
    "check_subset_config",
    "configured_subset",
    "group_kfold",
    "group_split",
    "select_subset",
    "split_from_column",
]


# --------------------------------------------------------------------------------------------------- helpers


def _summarise(items: list[str], what: str) -> list[str]:
    """The first few ``items`` and an "and N more" line, so an error on a 100k-row manifest stays readable."""
    lines = items[:_MAX_LISTED]
    if len(items) > _MAX_LISTED:
        lines.append(f"... and {len(items) - _MAX_LISTED} more {what}")
    return lines


def _group_rows(n: int, groups: Sequence[Hashable] | None, name: str = "groups") -> dict[Hashable, list[int]]:
    """Group id -> its row indices, in order of first appearance (a stable order makes the shuffle reproducible)."""
    if groups is None:
        return {i: [i] for i in range(n)}
    if len(groups) != n:
        raise ValueError(f"{name}: has {len(groups)} entries but there are {n} rows")
    rows: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        rows.setdefault(g, []).append(i)
    return rows


def _histogram(targets: Sequence[int], rows: list[int]) -> dict[int, int]:
    """A group's label histogram ``class -> rows`` (missing labels, -1, are a class of their own, so that groups
    without labels are spread like the others)."""
    return dict(Counter(int(targets[i]) if int(targets[i]) >= 0 else -1 for i in rows))


def _peakedness(histogram: Mapping[int, int], num_classes: int) -> float:
    """The standard deviation of a group's label counts over all ``num_classes`` classes: large for big groups of one
    class, which are the hardest to place and so go first (the order scikit-learn's ``StratifiedGroupKFold`` uses)."""
    total = sum(histogram.values())
    squares = sum(k * k for k in histogram.values())
    return max(squares / num_classes - (total / num_classes) ** 2, 0.0) ** 0.5


def _deal(
    targets: Sequence[int],
    group_rows: dict[Hashable, list[int]],
    fractions: Sequence[float],
    generator: torch.Generator,
) -> dict[Hashable, int]:
    """Group -> part index, a label-histogram greedy so that every class (and the row total) is shared out like
    ``fractions``, also when a patient holds images of several classes.

    A patient's images cannot be dealt by one label (dealing by the majority label missed the per-class shares of
    mixed-label patients by 1.5 points on average, 7 at worst; this greedy by 0.05 and 0.2), so each group carries
    its label histogram. Groups are shuffled with ``generator``
    (the seed picks among equally good splits), then stably ordered by :func:`_peakedness`, largest first. Each goes
    to the part that, with it added, least increases the spread of the per-class fill ratios
    ``count[part, class] / (fraction[part] * total[class])`` -- their standard deviation over parts weighted by the
    fractions, summed over the classes and the row total -- so a 10 % part is filled at the same pace as a 70 % one.
    Near-ties go to the part filled least relative to its fraction, then to the lowest index; parts with fraction 0
    never receive a group.
    """
    live = [p for p, f in enumerate(fractions) if f > 0]
    groups = list(group_rows)
    histograms = [_histogram(targets, group_rows[g]) for g in groups]
    totals: Counter[int] = Counter()
    for h in histograms:
        totals.update(h)
    num_rows = sum(totals.values())
    order = torch.randperm(len(groups), generator=generator).tolist()
    order.sort(key=lambda k: -_peakedness(histograms[k], max(len(totals), 1)))  # stable: ties keep the shuffle
    # per class (and None = the row total): rows placed in each part, and the fill ratios' weighted sums
    placed: dict[int | None, list[int]] = {c: [0] * len(fractions) for c in [*totals, None]}
    first: dict[int | None, float] = dict.fromkeys(placed, 0.0)  # sum_p f_p r_p = share of the class placed so far
    second: dict[int | None, float] = dict.fromkeys(placed, 0.0)  # sum_p f_p r_p^2
    size = {None: num_rows, **totals}
    out: dict[Hashable, int] = {}
    for k in order:
        counts: dict[int | None, int] = {**histograms[k], None: sum(histograms[k].values())}
        best: tuple[float, float, int] | None = None
        for p in live:
            cost = 0.0
            for c, h in counts.items():
                t = size[c]
                # adding h rows of class c to part p raises sum_p f_p r_p^2 by h (2 placed + h) / (t^2 f_p)
                s2 = second[c] + h * (2 * placed[c][p] + h) / (t * t * fractions[p])
                s1 = first[c] + h / t
                before = max(second[c] - first[c] ** 2, 0.0) ** 0.5
                cost += max(s2 - s1 * s1, 0.0) ** 0.5 - before
            fill = placed[None][p] / fractions[p]
            if best is None or cost < best[0] - 1e-12 * max(1.0, abs(best[0])) or (
                    abs(cost - best[0]) <= 1e-12 * max(1.0, abs(best[0])) and fill < best[1]):
                best = (cost, fill, p)
        assert best is not None
        part = best[2]
        for c, h in counts.items():
            t = size[c]
            second[c] += h * (2 * placed[c][part] + h) / (t * t * fractions[part])
            first[c] += h / t
            placed[c][part] += h
        out[groups[k]] = part
    return out


def _check_targets(targets: Sequence[int], n: int | None = None) -> None:
    if n is not None and len(targets) != n:
        raise ValueError(f"targets: has {len(targets)} entries but there are {n} rows")


# --------------------------------------------------------------------------------------------------- splits


def group_split(
    targets: Sequence[int],
    groups: Sequence[Hashable] | None,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
) -> list[str]:
    """One of ``"train"/"val"/"test"`` per row, with no patient in two parts and every class spread like the whole.

    ``val_fraction`` / ``test_fraction`` are shares of rows (images), not of patients: groups are whole, so the
    realised shares are close to, not exactly, the request.
    """
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise ValueError(
            "val_fraction/test_fraction: must be >= 0 with val_fraction + test_fraction < 1, "
            f"got val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    n = len(targets)
    group_rows = _group_rows(n, groups)
    fractions = (1.0 - val_fraction - test_fraction, float(val_fraction), float(test_fraction))
    wanted = [p for p, f in enumerate(fractions) if f > 0]
    generator = torch.Generator().manual_seed(seed)
    parts = _deal(targets, group_rows, fractions, generator)
    filled = Counter(parts.values())
    keys = ("train share (1 - val_fraction - test_fraction)", "val_fraction", "test_fraction")
    empty = [f"{keys[p]}={fractions[p]:g}" for p in wanted if filled[p] == 0]
    if empty:
        # keyless: the caller knows which of its options set these fractions
        raise ConfigError(Problem("", f"{', '.join(empty)}: gets no group: only {len(group_rows)} groups (patients) "
                                      f"to split into {len(wanted)} parts; lower the fraction (or set it to 0) or "
                                      "provide more groups"))
    split = [""] * n
    for g, rows in group_rows.items():
        for i in rows:
            split[i] = SPLIT_NAMES[parts[g]]
    return split


def group_kfold(
    targets: Sequence[int],
    groups: Sequence[Hashable] | None,
    *,
    num_folds: int,
    fold: int,
    seed: int = 0,
    test: Sequence[bool] | None = None,
) -> list[str]:
    """Fold ``fold`` of a patient-grouped, stratified k-fold: its groups are ``"val"``, the others ``"train"``.

    Rows flagged in ``test`` stay ``"test"`` and take no part in the folds. The deal depends only on ``seed`` (not
    on ``fold``), so folds ``0 .. num_folds-1`` of one seed partition the non-test groups.
    A group with rows on both sides of ``test`` is not detected here; :func:`check_group_disjoint` reports it.
    """
    if not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds: must be an integer >= 2, got {num_folds!r}")
    if not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ValueError(f"fold: must be in [0, {num_folds}) for num_folds={num_folds}, got {fold!r}")
    n = len(targets)
    if test is not None and len(test) != n:
        raise ValueError(f"test: has {len(test)} entries but there are {n} rows")
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups: has {len(groups)} entries but there are {n} rows")
    pool = [i for i in range(n) if test is None or not test[i]]
    sub_groups = None if groups is None else [groups[i] for i in pool]
    sub_targets = [targets[i] for i in pool]
    group_rows = _group_rows(len(pool), sub_groups)
    if len(group_rows) < num_folds:
        raise ConfigError.at("num_folds", f"{num_folds} folds need at least {num_folds} groups (patients) outside "
                                          f"test, got {len(group_rows)}")
    generator = torch.Generator().manual_seed(seed)
    parts = _deal(sub_targets, group_rows, [1.0 / num_folds] * num_folds, generator)
    split = ["test"] * n
    for g, rows in group_rows.items():
        for r in rows:
            split[pool[r]] = "val" if parts[g] == fold else "train"
    return split


def split_name(raw: object, mapping: Mapping[str, str] | None = None) -> str | None:
    """One split cell as ``train``/``val``/``test`` (``" Train"`` -> ``"train"``; ``mapping`` first, e.g.
    ``{"1": "train", "0": "test"}`` for FETAL_PLANES_DB's ``Train`` flag; case-insensitive), or None if it is none."""
    value = str(raw).strip().lower()
    for key, name in (mapping or {}).items():
        if str(key).strip().lower() == value:
            value = str(name).strip().lower()
            break
    return value if value in SPLIT_NAMES else None


def split_from_column(values: Sequence[object], *, mapping: Mapping[str, str] | None = None) -> list[str]:
    """Normalise a user's split column with :func:`split_name` and reject anything else up front, with the rows to
    fix."""
    out: list[str] = []
    bad: list[int] = []
    for i, raw in enumerate(values):
        v = split_name(raw, mapping)
        if v is None:
            bad.append(i)
            v = str(raw)
        out.append(v)
    if bad:
        distinct = sorted({str(values[i]) for i in bad})
        shown = ", ".join(repr(v) for v in distinct[:_MAX_LISTED]) + (" ..." if len(distinct) > _MAX_LISTED else "")
        hint = "; pass a mapping (e.g. {'1': 'train', '0': 'test'})" if mapping is None else ""
        rows = _summarise([f"row {i}: {values[i]!r}" for i in bad], "rows")
        raise ValueError(
            f"split: {len(bad)} rows are not one of {', '.join(SPLIT_NAMES)} (values {shown}){hint}:\n  "
            + "\n  ".join(rows)
        )
    return out


def carve_validation(
    split: Sequence[str],
    targets: Sequence[int],
    groups: Sequence[Hashable] | None,
    *,
    val_fraction: float,
    seed: int = 0,
) -> list[str]:
    """Move a patient-grouped, stratified ``val_fraction`` of the train rows to ``"val"``; test rows are untouched.

    For official splits that only have train/test (FETAL_PLANES_DB): model selection must not peek at test.
    """
    n = len(split)
    _check_targets(targets, n)
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups: has {len(groups)} entries but there are {n} rows")
    unknown = sorted({s for s in split if s not in SPLIT_NAMES})
    if unknown:
        raise ValueError(f"split: values {unknown} are not one of {', '.join(SPLIT_NAMES)}")
    if "val" in split:
        raise ConfigError.at("split", "already has val rows; carve_validation is for train/test-only splits")
    train = [i for i, s in enumerate(split) if s == "train"]
    if not train:
        raise ConfigError.at("split", "has no train rows to carve a validation set from")
    sub = group_split(
        [targets[i] for i in train],
        None if groups is None else [groups[i] for i in train],
        val_fraction=val_fraction,
        test_fraction=0.0,
        seed=seed,
    )
    out = list(split)
    for i, s in zip(train, sub):
        out[i] = s
    return out


def groups_in_several_parts(
    split: Sequence[str | None], groups: Sequence[Hashable | None]
) -> dict[Hashable, list[str]]:
    """Every group found in two or more parts (a patient leak) -> its parts in train/val/test order; rows whose
    group or part is None/empty are ignored."""
    if len(groups) != len(split):
        raise ValueError(f"groups: has {len(groups)} entries but split has {len(split)}")
    parts: dict[Hashable, set[str]] = {}
    for g, s in zip(groups, split):
        if g not in (None, "") and s is not None:
            parts.setdefault(g, set()).add(s)
    order = {name: k for k, name in enumerate(SPLIT_NAMES)}
    return {g: sorted(ps, key=lambda p: (order.get(p, len(order)), p)) for g, ps in parts.items() if len(ps) > 1}


def check_group_disjoint(split: Sequence[str], groups: Sequence[Hashable] | None) -> list[str]:
    """Problems, one line each (empty = fine): every group found in two or more parts, i.e. a patient leak."""
    if groups is None:
        return []
    problems = [f"group {g!r} is in {', '.join(names[:-1])} and {names[-1]}"
                for g, names in groups_in_several_parts(split, groups).items()]
    return _summarise(problems, "groups in several parts")


# --------------------------------------------------------------------------------------------------- subsets


def cell_counts(primary: Sequence[int], by: Sequence[int], indices: Sequence[int]) -> dict[tuple[int, int], int]:
    """``(primary class, by class) -> number of the selected rows`` (only non-empty cells), to verify a subset."""
    counts = Counter((int(primary[i]), int(by[i])) for i in indices)
    return dict(sorted(counts.items()))


def _num_classes(labels: Sequence[int], names: Sequence[str] | None, key: str) -> int:
    top = max((int(v) for v in labels), default=-1)
    if names is None:
        return top + 1
    if top >= len(names):
        raise ValueError(f"{key}: label {top} has no name ({len(names)} names given)")
    return len(names)


def check_subset_config(subset: object, heads: Sequence[str], seed: int) -> tuple[list[Problem], dict]:
    """Validate a datamodule's ``subset`` option against its metadata ``heads``.

    Returns ``(problems, config)``: the problems keyed ``subset.<key>``, and the config with the paper's
    defaults (:data:`SUBSET_DEFAULTS`) and the data seed filled in; ``None`` means ``{"mode": "full"}``.
    ``val`` is ``None`` (the validation split is left as it is: an unassociated draw) or ``{per_cell, major, minor}``:
    the validation split is subset the same way with these cell sizes, like the paper, where each sub-dataset has
    its own test split, so validation accuracy is measured under the training distribution.
    """
    config: dict = {**SUBSET_DEFAULTS, "seed": seed}
    if subset is None:
        return [], config
    if not isinstance(subset, Mapping):
        return [Problem("subset", f"must be a mapping with keys {', '.join(SUBSET_KEYS)}, got {subset!r}")], config
    problems = [Problem(f"subset.{k}", f"unknown key; valid keys: {', '.join(SUBSET_KEYS)}")
                for k in subset if k not in SUBSET_KEYS]
    config.update({k: v for k, v in subset.items() if k in SUBSET_KEYS})
    mode = config["mode"]
    if mode not in SUBSET_MODES:
        problems.append(Problem("subset.mode", f"must be one of {', '.join(SUBSET_MODES)}, got {mode!r}"))
    elif mode != "full" and config.get("by") not in heads:
        problems.append(Problem("subset.by", f"{mode} subsets need a metadata head name; got {config.get('by')!r}, "
                                             f"heads: {', '.join(map(str, heads)) or 'none'}"))
    problems += integer_problems([(f"subset.{key}", config[key], 0) for key in (*SUBSET_CELL_KEYS, "seed")])
    val = config["val"]
    if val is not None:
        if not isinstance(val, Mapping):
            problems.append(Problem("subset.val", "must be null or a mapping with keys "
                                                  f"{', '.join(SUBSET_CELL_KEYS)}, got {val!r}"))
        else:
            problems += [Problem(f"subset.val.{k}", f"unknown key; valid keys: {', '.join(SUBSET_CELL_KEYS)}")
                         for k in val if k not in SUBSET_CELL_KEYS]
            config["val"] = {**{k: config[k] for k in SUBSET_CELL_KEYS}, **dict(val)}
            problems += integer_problems([(f"subset.val.{key}", config["val"][key], 0) for key in SUBSET_CELL_KEYS])
    return problems, config


def configured_subset(
    subset: Mapping,
    primary: Sequence[int],
    by: Sequence[int],
    *,
    part: str = "train",
    primary_names: Sequence[str] | None = None,
    by_names: Sequence[str] | None = None,
) -> list[int] | None:
    """The rows :func:`select_subset` picks for one split under a :func:`check_subset_config` config, or ``None``
    when that split is used whole (``mode: full``; for ``part="val"`` also when ``val`` is null). The validation
    subset uses the ``val`` cell sizes and another seed than the training one."""
    if subset["mode"] == "full" or (part == "val" and subset.get("val") is None):
        return None
    cells = subset["val"] if part == "val" else subset
    return select_subset(primary, by, mode=subset["mode"], per_cell=cells["per_cell"], major=cells["major"],
                         minor=cells["minor"], seed=subset["seed"] + (part == "val"), primary_names=primary_names,
                         by_names=by_names, key="subset.val" if part == "val" else "subset")


def select_subset(
    primary: Sequence[int],
    by: Sequence[int],
    *,
    mode: str,
    per_cell: int = 300,
    major: int = 700,
    minor: int = 150,
    seed: int = 0,
    primary_names: Sequence[str] | None = None,
    by_names: Sequence[str] | None = None,
    key: str = "subset",
) -> list[int]:
    """Sorted row indices of the paper's training subset (paper §3.4); ``key`` is the config key of the cell sizes
    (``subset``, or ``subset.val`` for the validation split's), named by the problems.

    ``full``: every row. ``balanced``: exactly ``per_cell`` rows from every (primary class, by class) cell, so
    ``by`` carries no information about ``primary``. ``biased``: primary class ``i`` takes ``major`` rows from its
    own by-class ``i mod C_by`` and ``minor`` from each other one, planting a shortcut. Rows missing either label
    (-1) are never picked in balanced/biased. An impossible request names every short cell at once.
    """
    if mode not in SUBSET_MODES:
        raise ConfigError.at(f"{key}.mode", f"must be one of {', '.join(SUBSET_MODES)}, got {mode!r}")
    n = len(primary)
    if len(by) != n:
        raise ValueError(f"subset: primary has {n} labels but by has {len(by)}")
    if mode == "full":
        return list(range(n))
    for cell_key, v in (("per_cell", per_cell), ("major", major), ("minor", minor)):
        if not isinstance(v, int) or v < 0:
            raise ConfigError.at(f"{key}.{cell_key}", f"must be an integer >= 0, got {v!r}")
    c_p = _num_classes(primary, primary_names, "subset.primary_names")
    c_b = _num_classes(by, by_names, "subset.by_names")
    cells: dict[tuple[int, int], list[int]] = {(i, j): [] for i in range(c_p) for j in range(c_b)}
    for r in range(n):
        p, b = int(primary[r]), int(by[r])
        if p >= 0 and b >= 0:
            cells[(p, b)].append(r)

    def need(i: int, j: int) -> tuple[int, str]:
        if mode == "balanced":
            return per_cell, "per_cell"
        return (major, "major") if j == i % c_b else (minor, "minor")

    def name(names: Sequence[str] | None, k: int) -> str:
        return repr(names[k]) if names is not None else str(k)

    short = []
    for (i, j), rows in cells.items():
        want, cell_key = need(i, j)
        if len(rows) < want:
            short.append(Problem(key, f"cell primary={name(primary_names, i)} x by={name(by_names, j)} has "
                                      f"{len(rows)} images, {mode} needs {want} (lower {key}.{cell_key})"))
    if short:
        raise ConfigError([Problem(key, f"{len(short)} of {len(cells)} cells are too small for mode={mode}"),
                           *short])
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for (i, j), rows in cells.items():
        want, _ = need(i, j)
        perm = torch.randperm(len(rows), generator=generator)[:want].tolist()
        chosen.extend(rows[k] for k in perm)
    return sorted(chosen)

"""Patient-grouped stratified splits, k-fold, split columns, and the paper's balanced / biased subsets."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsca_lightning.data.splits import (
    SPLIT_NAMES,
    carve_validation,
    cell_counts,
    check_group_disjoint,
    group_kfold,
    group_split,
    select_subset,
    split_from_column,
)

FETAL_MAPPING = {"1": "train", "0": "test"}


def realistic(seed: int = 0, patients: int = 300, classes: int = 4) -> tuple[list[int], list[str]]:
    """~1,200 rows: 300 patients with 2-6 images each, mostly one class per patient, a few missing labels."""
    rng = random.Random(seed)
    targets: list[int] = []
    groups: list[str] = []
    for p in range(patients):
        own = rng.randrange(classes)
        for _ in range(rng.randint(2, 6)):
            r = rng.random()
            targets.append(-1 if r < 0.02 else own if r < 0.9 else rng.randrange(classes))
            groups.append(f"p{p}")
    return targets, groups


def mixed_patients(seed: int, patients: int = 900) -> tuple[list[int], list[str]]:
    """~6,300 rows like FETAL_PLANES_DB: each patient has 2-12 images of 1-4 of 6 imbalanced classes (planes)."""
    rng = random.Random(seed)
    weights = [3092, 4213, 1626, 1718, 711, 1040]  # FETAL_PLANES_DB's images per plane
    targets: list[int] = []
    groups: list[str] = []
    for p in range(patients):
        own = rng.choices(range(6), weights=weights, k=rng.randint(1, 4))
        for _ in range(rng.randint(2, 12)):
            targets.append(rng.choice(own))
            groups.append(f"p{p}")
    return targets, groups


def shares(split: list[str], rows: list[int] | None = None) -> dict[str, float]:
    rows = list(range(len(split))) if rows is None else rows
    c = Counter(split[i] for i in rows)
    return {name: c[name] / len(rows) for name in SPLIT_NAMES}


# ------------------------------------------------------------------------------------------------- group_split


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-1, 3), st.integers(0, 15)), min_size=1, max_size=80),
    val_fraction=st.floats(0, 0.45),
    test_fraction=st.floats(0, 0.45),
    seed=st.integers(0, 2**31 - 1),
)
def test_group_split_never_splits_a_group(data, val_fraction, test_fraction, seed):
    targets = [t for t, _ in data]
    groups = [f"g{g}" for _, g in data]
    try:
        split = group_split(targets, groups, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    except ValueError as err:  # too few groups for a nonzero fraction: must say so, naming the fraction
        assert "fraction" in str(err) and "groups" in str(err)
        return
    assert len(split) == len(targets)
    assert set(split) <= set(SPLIT_NAMES)
    assert check_group_disjoint(split, groups) == []
    assert "train" in split
    assert ("val" in split) == (val_fraction > 0)
    assert ("test" in split) == (test_fraction > 0)


def test_group_split_realised_fractions_and_strata():
    targets, groups = realistic()
    assert len(targets) > 1000
    split = group_split(targets, groups, val_fraction=0.15, test_fraction=0.2, seed=0)
    assert check_group_disjoint(split, groups) == []
    want = {"train": 0.65, "val": 0.15, "test": 0.2}
    got = shares(split)
    for name in SPLIT_NAMES:
        assert abs(got[name] - want[name]) <= 0.03, (name, got)
    for c in range(4):
        rows = [i for i, t in enumerate(targets) if t == c]
        got_c = shares(split, rows)
        for name in SPLIT_NAMES:
            assert abs(got_c[name] - want[name]) <= 0.05, (c, name, got_c)


def test_mixed_label_patients_every_class_shared_out_within_half_a_point():
    # patients holding several classes cannot be dealt by one label; the majority-label deal missed per-class
    # shares by 1.5 points on average and up to 7 (measured on 10 seeds of this data); the histogram greedy by 0.2
    for seed in (0, 1):
        targets, groups = mixed_patients(seed)
        split = group_split(targets, groups, val_fraction=0.2, test_fraction=0.2, seed=seed)
        assert check_group_disjoint(split, groups) == []
        want = {"train": 0.6, "val": 0.2, "test": 0.2}
        for c in range(6):
            got = shares(split, [i for i, t in enumerate(targets) if t == c])
            assert got == pytest.approx(want, abs=0.005), (seed, c, got)
    folds = [group_kfold(targets, groups, num_folds=5, fold=f, seed=1) for f in range(5)]
    for c in range(6):
        rows = [i for i, t in enumerate(targets) if t == c]
        assert all(abs(shares(split, rows)["val"] - 0.2) <= 0.005 for split in folds), c


def test_group_split_deterministic_and_seed_dependent():
    targets, groups = realistic()
    a = group_split(targets, groups, val_fraction=0.1, test_fraction=0.1, seed=3)
    b = group_split(targets, groups, val_fraction=0.1, test_fraction=0.1, seed=3)
    c = group_split(targets, groups, val_fraction=0.1, test_fraction=0.1, seed=4)
    assert a == b
    assert a != c


def test_group_split_row_level_without_groups():
    targets = [i % 3 for i in range(600)]
    split = group_split(targets, None, val_fraction=0.2, test_fraction=0.1, seed=0)
    got = shares(split)
    assert got == pytest.approx({"train": 0.7, "val": 0.2, "test": 0.1}, abs=0.01)
    for c in range(3):
        assert shares(split, [i for i in range(600) if targets[i] == c]) == pytest.approx(
            {"train": 0.7, "val": 0.2, "test": 0.1}, abs=0.01
        )


def test_group_split_zero_fractions_and_all_missing_targets():
    targets = [-1] * 50
    split = group_split(targets, None, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert "test" not in split and Counter(split)["val"] == 10


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.5, 0.5), (0.7, 0.4), (float("nan"), 0.1)])
def test_group_split_rejects_bad_fractions(val, test):
    with pytest.raises(ValueError, match="val_fraction/test_fraction"):
        group_split([0, 1, 0, 1], None, val_fraction=val, test_fraction=test)


def test_group_split_too_few_groups_names_fraction_and_count():
    with pytest.raises(ValueError, match=r"^test_fraction=0.3: gets no group: only 2 groups"):
        group_split([0, 0, 1, 1], ["a", "a", "b", "b"], val_fraction=0.3, test_fraction=0.3)
    with pytest.raises(ValueError, match=r"^train share .*=0.4, val_fraction=0.3, test_fraction=0.3: .*only 0 groups"):
        group_split([], None, val_fraction=0.3, test_fraction=0.3)
    # enough groups in total, but a tiny fraction whose share is under half a group: still named, not silent
    with pytest.raises(ValueError, match=r"^test_fraction=0.001: gets no group: only 10 groups"):
        group_split([0] * 20, [f"g{i // 2}" for i in range(20)], val_fraction=0.3, test_fraction=0.001)


def test_group_split_length_mismatch():
    with pytest.raises(ValueError, match="groups"):
        group_split([0, 1, 2], ["a"], val_fraction=0.1, test_fraction=0.1)


# ------------------------------------------------------------------------------------------------- group_kfold


def test_group_kfold_each_group_val_exactly_once_and_test_untouched():
    targets, groups = realistic(seed=1)
    test = [int(g[1:]) % 5 == 0 for g in groups]  # whole patients held out
    k = 5
    folds = [group_kfold(targets, groups, num_folds=k, fold=f, seed=7, test=test) for f in range(k)]
    val_count: Counter[str] = Counter()
    for split in folds:
        assert check_group_disjoint(split, groups) == []
        assert [s == "test" for s in split] == test
        val_count.update({groups[i] for i, s in enumerate(split) if s == "val"})
        pool = [i for i in range(len(split)) if not test[i]]
        assert abs(shares(split, pool)["val"] - 1 / k) <= 0.03
    assert set(val_count) == {g for g, t in zip(groups, test) if not t}
    assert set(val_count.values()) == {1}


def test_group_kfold_deterministic_and_row_level():
    targets = [i % 2 for i in range(30)]
    a = group_kfold(targets, None, num_folds=3, fold=1, seed=0)
    assert a == group_kfold(targets, None, num_folds=3, fold=1, seed=0)
    assert Counter(a) == {"train": 20, "val": 10}


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(num_folds=1, fold=0), "num_folds"),
        (dict(num_folds=3, fold=3), "fold"),
        (dict(num_folds=3, fold=-1), "fold"),
        (dict(num_folds=5, fold=0), "num_folds"),  # only 4 groups
    ],
)
def test_group_kfold_errors(kwargs, key):
    with pytest.raises(ValueError, match=rf"^{key}:"):
        group_kfold([0, 1, 0, 1, 0, 1, 0, 1], list("aabbccdd"), **kwargs)


# ------------------------------------------------------------------------------------------------- split columns


def test_split_from_column_fetal_planes_mapping():
    assert split_from_column(["1", " 0", "1 ", "Train", "VAL"], mapping=FETAL_MAPPING) == [
        "train",
        "test",
        "train",
        "train",
        "val",
    ]
    assert split_from_column([1, 0], mapping=FETAL_MAPPING) == ["train", "test"]


def test_split_from_column_lists_bad_values_and_rows():
    values = ["train", "2", "x", "test"] + ["?"] * 6
    with pytest.raises(ValueError) as err:
        split_from_column(values, mapping=FETAL_MAPPING)
    msg = str(err.value)
    assert "8 rows" in msg and "'2'" in msg and "'x'" in msg and "'?'" in msg
    assert "row 1: '2'" in msg and "row 2: 'x'" in msg
    assert "and 3 more" in msg
    assert "row 0" not in msg and "row 3" not in msg


def test_carve_validation_moves_only_train_rows_and_keeps_groups_whole():
    targets, groups = realistic(seed=2)
    official = ["test" if int(g[1:]) % 4 == 0 else "train" for g in groups]
    split = carve_validation(official, targets, groups, val_fraction=0.2, seed=0)
    assert check_group_disjoint(split, groups) == []
    for before, after in zip(official, split):
        assert after == before or (before == "train" and after == "val")
    train_rows = [i for i, s in enumerate(official) if s == "train"]
    assert abs(shares(split, train_rows)["val"] - 0.2) <= 0.03
    assert split == carve_validation(official, targets, groups, val_fraction=0.2, seed=0)


def test_carve_validation_rejects_existing_val():
    with pytest.raises(ValueError, match="val"):
        carve_validation(["train", "val", "test"], [0, 1, 0], None, val_fraction=0.2)


def test_check_group_disjoint_reports_leaks():
    split = ["train", "val", "train", "test", "val", "test"]
    groups = ["p12", "p12", "a", "a", "b", "b"]
    assert check_group_disjoint(split, groups) == [
        "group 'p12' is in train and val",
        "group 'a' is in train and test",
        "group 'b' is in val and test",
    ]
    many = check_group_disjoint(["train", "val", "test"] * 8, [f"g{i // 3}" for i in range(24)])
    assert many[0] == "group 'g0' is in train, val and test"
    assert len(many) == 6 and many[-1].startswith("... and 3 more")
    assert check_group_disjoint(split, None) == []


# ------------------------------------------------------------------------------------------------- subsets


def subset_data(rows_per_cell: int = 40, c_p: int = 3, c_b: int = 2) -> tuple[list[int], list[int]]:
    primary, by = [], []
    for i in range(c_p):
        for j in range(c_b):
            primary += [i] * rows_per_cell
            by += [j] * rows_per_cell
    # rows with a missing label: never picked
    primary += [-1, 0, -1]
    by += [0, -1, -1]
    rng = random.Random(0)
    order = list(range(len(primary)))
    rng.shuffle(order)
    return [primary[k] for k in order], [by[k] for k in order]


def test_select_subset_full_returns_everything():
    primary, by = subset_data()
    assert select_subset(primary, by, mode="full") == list(range(len(primary)))


def test_select_subset_balanced_exact_cells():
    primary, by = subset_data()
    idx = select_subset(primary, by, mode="balanced", per_cell=25, seed=1)
    assert idx == sorted(set(idx))
    assert cell_counts(primary, by, idx) == {(i, j): 25 for i in range(3) for j in range(2)}
    assert idx == select_subset(primary, by, mode="balanced", per_cell=25, seed=1)
    assert idx != select_subset(primary, by, mode="balanced", per_cell=25, seed=2)


def test_select_subset_biased_major_minor():
    primary, by = subset_data(rows_per_cell=40, c_p=3, c_b=2)
    idx = select_subset(primary, by, mode="biased", major=30, minor=10, seed=0)
    # own by-class of primary i is i mod 2
    assert cell_counts(primary, by, idx) == {(0, 0): 30, (0, 1): 10, (1, 0): 10, (1, 1): 30, (2, 0): 30, (2, 1): 10}


def test_select_subset_lists_every_short_cell_with_names():
    primary = [0] * 5 + [0] * 2 + [1] * 5 + [1] * 1
    by = [0] * 5 + [1] * 2 + [0] * 5 + [1] * 1
    with pytest.raises(ValueError) as err:
        select_subset(primary, by, mode="balanced", per_cell=3, primary_names=["brain", "femur"], by_names=["Aloka", "Voluson"])
    msg = str(err.value)
    assert "cell primary='brain' x by='Voluson' has 2 images, balanced needs 3 (lower subset.per_cell)" in msg
    assert "cell primary='femur' x by='Voluson' has 1 images, balanced needs 3 (lower subset.per_cell)" in msg
    assert "Aloka" not in msg
    with pytest.raises(ValueError) as err:
        select_subset(primary, by, mode="biased", major=5, minor=2)
    msg = str(err.value)
    assert "cell primary=1 x by=1 has 1 images, biased needs 5 (lower subset.major)" in msg
    assert "primary=1 x by=0" not in msg  # 5 >= minor 2
    assert "primary=0" not in msg


def test_select_subset_empty_class_is_a_short_cell():
    with pytest.raises(ValueError, match=r"primary='c' x by=0 has 0 images"):
        select_subset([0, 1], [0, 0], mode="balanced", per_cell=1, primary_names=["a", "b", "c"])


def test_select_subset_bad_mode():
    with pytest.raises(ValueError, match=r"^subset\.mode:"):
        select_subset([0], [0], mode="skewed")

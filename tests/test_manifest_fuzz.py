"""Fuzz: random manifest tables (odd cells, encodings, quoting, delimiters, broken rows) go through the manifest reader,
the validator, the label encoder and the metadata table, and either load to a consistent result or fail with a
problem that names the file -- never with another exception (a user must always learn which file to fix)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wsca_lightning.problems import Problem
from wsca_lightning.tasks import HeadConfig
from wsca_lightning.data.manifest import (
    ManifestError,
    encode_labels,
    parse_splits,
    read_manifest,
    validate_manifest,
)
from wsca_lightning.data.metadata_table import MetadataTable
from wsca_lightning.data.splits import groups_in_several_parts
from wsca_lightning.wsc.binning import IGNORE_INDEX

COLUMNS = ("image", "label", "scanner", "spacing", "patient", "split")
GOOD_IMAGES = [f"{c}.png" for c in "abcdefgh"] + ["sub/i.png", "j16.png"]
# characters that break naive CSV handling: delimiters, quotes, line breaks, BOM, non-ASCII digits and spaces
ODD = ',;\t"\'\n\r \ufeff\u2028\u00a0\u200b\u00e9\u00b2\u0661xX1.-'
junk = st.text(alphabet=ODD, max_size=6)
# per column: the values of a valid table, then odd values a user's spreadsheet holds
VALID = {
    "image": GOOD_IMAGES,
    "label": ["benign", "malignant"],
    "scanner": ["S1", "S2", "site10", "site2"],
    "spacing": ["0.5", "1", "2.25", "-3", "7e-3"],
    "split": ["train", "train", "val", "test", "Train", " TEST "],
}
ODD_CELLS = {
    "image": ["bad.png", "missing.png", "../escape.png", "/etc/passwd", "", " a.png ", "sub", "sub/../a.png",
              "a\x00.png", "a.png", "\u00e9.png"],
    "label": ["Malignant", "malignant ", "MALIGNANT", "malig\u200bnant", "", "nan", "unsure", "1", "\u00b2", "1\u00b2"],
    "scanner": ["s1", " S2", "", "S\u00b2", "\u00b2", "S\ufeff1", "site\u0661"],
    "spacing": ["1e308", "-1e308", "1e309", "5e-324", "nan", "NaN", "inf", "-inf", "0,5", "1_000", "abc", "",
                "\u0661\u0662", "0x10"],
    "patient": ["", "P1", "p1 ", "\x00"],
    "split": ["x", "", "1", "\u00b2", "val\u200b"],
}


def odd_cell(name: str) -> st.SearchStrategy[str]:
    """An odd value for column ``name``: a known pitfall, random junk, or (spacing) any float's repr."""
    options = [st.sampled_from(ODD_CELLS[name])] if name in ODD_CELLS else []
    if name == "spacing":
        options.append(st.floats(allow_nan=True, allow_infinity=True).map(repr))
    return st.one_of(*options, junk)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real images, written once: a valid manifest must pass the decoding check."""
    root = tmp_path_factory.mktemp("fuzz") / "data"
    (root / "sub").mkdir(parents=True)
    for k, name in enumerate(GOOD_IMAGES[:-1]):
        Image.fromarray(np.full((6, 5), 20 * k, dtype=np.uint8)).save(root / name)
    Image.fromarray(np.array([[0, 40000], [65535, 7]], dtype=np.uint16)).save(root / "j16.png")
    (root / "bad.png").write_bytes(b"\x89PNG not really")
    (root.parent / "escape.png").write_bytes((root / "a.png").read_bytes())
    return root


@st.composite
def manifests(draw: st.DrawFn) -> tuple[bytes, str | None, dict]:
    """``(file bytes, delimiter passed to the reader or None, config)``: half the tables are valid but for a few
    odd cells (so validation passes often enough for the consistency checks to run), half are wild; then junk
    headers, quoting, line ends, encodings and truncation."""
    header = list(draw(st.permutations(COLUMNS)))
    wild = draw(st.booleans())
    if wild:
        header = header[: draw(st.integers(len(header) - 1, len(header)))]  # sometimes a column is missing
        if draw(st.booleans()):
            header.append(draw(st.sampled_from(["notes", "", "label", "Label", " split", "x,y", '"q"', "id"])))
    odd = draw(st.sampled_from([30, 10, 2] if wild else [0, 0, 0, 2, 10]))  # per cent of odd cells
    n = draw(st.integers(0, len(GOOD_IMAGES)))
    images = draw(st.permutations(GOOD_IMAGES))[:n]
    rows = []
    for k in range(n):
        split = draw(st.sampled_from(VALID["split"]))
        valid = {"image": images[k], "patient": f"{split.strip().lower()}{k % 3}"}  # no patient in two splits
        valid.update({name: draw(st.sampled_from(VALID[name])) for name in ("label", "scanner", "spacing")})
        valid["split"] = split
        rows.append([draw(odd_cell(name.strip())) if name not in valid or draw(st.integers(0, 99)) < odd
                     else valid[name] for name in header])
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    quoting = draw(st.sampled_from(["minimal", "minimal", "all", "raw"]))
    terminator = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    if quoting == "raw":  # no quoting at all: cells holding the delimiter or a quote make ragged rows
        text = terminator.join(delimiter.join(r) for r in [header, *rows]) + terminator
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=delimiter, lineterminator=terminator,
                            quoting=csv.QUOTE_ALL if quoting == "all" else csv.QUOTE_MINIMAL)
        writer.writerows([header, *rows])
        text = buffer.getvalue()
    if draw(st.integers(0, 4)) == 0:
        text = text.replace(terminator, terminator * 2, draw(st.integers(1, 3)))  # blank lines
    encoding = draw(st.sampled_from(["utf-8"] * 8 + ["utf-8-sig", "latin-1", "utf-16", "utf-16-le"]))
    raw = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 30)) == 30 and raw:  # (not 0: the examples hypothesis draws first are all zeros)
        raw = raw[: draw(st.integers(0, len(raw)))]  # a truncated file (an unclosed quote, half a row)
    config = {
        "target": HeadConfig("label", draw(st.sampled_from(["binary", "categorical"])),
                             classes=draw(st.sampled_from([None, None, ("benign", "malignant")]))),
        "metadata": {"scanner": HeadConfig("scanner"),
                     "spacing": HeadConfig("spacing", "continuous", bins=2,
                                           binning=draw(st.sampled_from(["equal_width", "quantile"])))},
        "group_column": draw(st.sampled_from(["patient", None])),
        "split_column": draw(st.sampled_from(["split", "split", None])),
        "table_columns": draw(st.sampled_from([None, {"site": {"column": "scanner"},
                                                      "mm": {"column": "spacing", "type": "continuous"}}])),
    }
    return raw, draw(st.sampled_from([None, delimiter])), config


def named(error: Exception, file: str) -> None:
    """The error is one of ours and says which file to fix."""
    assert isinstance(error, (ManifestError, ValueError)), repr(error)
    assert file in str(error), str(error)


def check_reader_result(table, file: str) -> None:
    assert len(table.rows) == len(table.line_numbers)
    assert all(b > a for a, b in zip(table.line_numbers, table.line_numbers[1:]))
    assert all(ln >= 2 for ln in table.line_numbers)
    named_columns = {h for h in table.header if h.strip()}
    for row in table.rows:
        assert set(row) == named_columns
        assert all(cell == cell.strip() for cell in row.values())


def check_valid_table(table, config: dict) -> None:
    """A table that validates clean encodes without error into labels that mean what the table says."""
    target: HeadConfig = config["target"]
    splits = parse_splits(table, config["split_column"]) if config["split_column"] else [None] * len(table.rows)
    fit = [i for i, s in enumerate(splits) if s == "train"] if config["split_column"] else list(range(len(splits)))
    task, labels = encode_labels(table, target, name="y", fit_rows=fit, strict=True)
    cells = table.column(target.column)
    assert all(0 <= lab < task.num_classes for lab in labels)
    assert all(task.class_names[lab] == cell for lab, cell in zip(labels, cells))  # no class is merged or split
    if target.classes is None:
        assert task.num_classes == len(set(cells))  # no spelling variant became a class of its own
    val = {lab for lab, s in zip(labels, splits) if s == "val"}
    assert len(val) != 1  # a val split, if any, holds at least two classes
    if config["group_column"] and config["split_column"]:
        assert groups_in_several_parts(splits, table.column(config["group_column"])) == {}
    for name, spec in config["metadata"].items():
        meta, values = encode_labels(table, spec, name=name, fit_rows=fit)
        assert len(values) == len(table.rows)
        assert all(v == IGNORE_INDEX or 0 <= v < meta.num_classes for v in values)
        check_edges(meta)


def check_edges(task) -> None:
    """Bin edges that bin: finite and increasing (else every value lands in one bin, or none)."""
    edges = task.bin_edges
    assert all(math.isfinite(e) for e in edges) and all(b > a for a, b in zip(edges, edges[1:])), edges


def check_metadata_table(path: Path, columns: dict | None) -> None:
    file = str(path)
    try:
        meta = MetadataTable(path, "image", columns)
    except Exception as error:  # noqa: BLE001 -- the assertion is on which exception it is
        named(error, file)
        return
    ids = list(meta._row)
    try:
        meta.fit(ids)
    except Exception as error:  # noqa: BLE001
        named(error, file)
        return
    labels = meta.labels(ids)
    for task in meta.task_specs.values():
        check_edges(task)
    for name, values in labels.items():
        assert values.shape == (len(ids),)
        assert bool(((values == IGNORE_INDEX) | ((values >= 0) & (values < meta.task_specs[name].num_classes))).all())


@settings(max_examples=400, deadline=5000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=manifests())
def test_any_manifest_loads_consistently_or_fails_naming_the_file(case, data_root: Path) -> None:
    raw, delimiter, config = case
    path = data_root.parent / "tables" / "m.csv"  # beside, never inside, the data folder
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(raw)
    file = str(path)

    check_metadata_table(path, config["table_columns"])
    try:
        table = read_manifest(path, delimiter)
    except Exception as error:  # noqa: BLE001 -- the assertion is on which exception it is
        named(error, file)
        assert all(p.message.startswith(f"{file}: ") for p in error.problems)  # type: ignore[attr-defined]
        return
    check_reader_result(table, file)

    try:
        problems = validate_manifest(table, root=data_root, image_column="image", target=config["target"],
                                     metadata=config["metadata"], group_column=config["group_column"],
                                     split_column=config["split_column"])
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"validate_manifest raised instead of returning problems: {error!r}")
    assert all(isinstance(p, Problem) and p.message.startswith(f"{file}: ") for p in problems), problems
    if not problems:
        check_valid_table(table, config)

    # the encoder alone (as the metadata table uses it), with no validation before it
    for name, spec in [("y", config["target"]), *config["metadata"].items()]:
        if spec.column in table.header:
            try:
                encode_labels(table, spec, name=name, fit_rows=range(len(table.rows)))
            except Exception as error:  # noqa: BLE001
                named(error, file)

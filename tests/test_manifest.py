"""Manifest table layer: parsing, one-pass validation with file/line/column in every message, train-only encoding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from wsca_lightning.tasks import HeadConfig
from wsca_lightning.data.manifest import (
    ManifestError,
    encode_labels,
    parse_splits,
    read_manifest,
    single_class_val_problem,
    validate_manifest,
)
from wsca_lightning.wsc.binning import IGNORE_INDEX, fit_bin_edges

HEADER = ["image", "label", "scanner", "spacing", "patient", "split"]
ROWS = [  # line 2 .. line 9
    ["a.png", "benign", "S1", "0.5", "p1", "train"],
    ["b.png", "malignant", "S2", "0.7", "p2", "train"],
    ["c.png", "benign", "S1", "", "p3", "train"],
    ["d.png", "malignant", "S2", "1.0", "p4", "train"],
    ["e.png", "benign", "S1", "0.6", "p5", "val"],
    ["f.png", "malignant", "S2", "0.8", "p6", "val"],
    ["g.png", "benign", "S1", "0.3", "p7", "test"],
    ["h.png", "malignant", "S2", "1.2", "p8", "test"],
]
TARGET = HeadConfig("label", "binary")
METADATA = {"scanner": HeadConfig("scanner"), "spacing": HeadConfig("spacing", "continuous", bins=2)}


def png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(torch.full((8, 8), value, dtype=torch.uint8).numpy()).save(path)


def write(path: Path, header, rows, delimiter: str = ",", bom: bool = False) -> Path:
    text = "\n".join(delimiter.join(r) for r in [header, *rows]) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for k, row in enumerate(ROWS):
        png(data / row[0], value=k)  # distinct images: identical bytes under two names is a problem of its own
    return data


def check(table, root, **kw):
    options = dict(root=root, target=TARGET, metadata=METADATA, group_column="patient", split_column="split")
    options.update(kw)
    return [str(p) for p in validate_manifest(table, **options)]


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_valid_manifest_parses_and_validates_clean(root: Path, tmp_path: Path, delimiter: str) -> None:
    path = write(tmp_path / "m.csv", HEADER, ROWS, delimiter, bom=True)
    before = listing(root)
    table = read_manifest(path)
    assert table.delimiter == delimiter
    assert table.header == tuple(HEADER)  # the BOM is not part of the first name
    assert table.line_numbers == tuple(range(2, 10))
    assert table.rows[2]["spacing"] == "" and table.rows[0]["image"] == "a.png"
    assert check(table, root) == []
    assert listing(root) == before  # nothing written into the data folder


def test_explicit_delimiter_quotes_blank_lines_and_crlf(root: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b'image,label\r\n"a.png","x, y"\r\n\r\n b.png , z \r\n')
    table = read_manifest(path, delimiter=",")
    assert table.rows == ({"image": "a.png", "label": "x, y"}, {"image": "b.png", "label": "z"})
    assert table.line_numbers == (2, 4)


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="nope.csv: file not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("  \n\n")
    with pytest.raises(ManifestError, match="empty.csv: the file is empty"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "nohead.csv").write_text("\na,b\n1,2\n")
    with pytest.raises(ManifestError, match=r"nohead.csv: no header \(line 1 is blank\) \(line 1\)"):
        read_manifest(tmp_path / "nohead.csv")
    (tmp_path / "latin.csv").write_bytes(b"a,b\n1,\xe9\n")
    with pytest.raises(ManifestError, match=r"latin.csv: not UTF-8 text \(line 2\)"):
        read_manifest(tmp_path / "latin.csv")


def test_ragged_rows_and_duplicate_header_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", ["image", "label", "label"],
                 [["a", "1", "2"], ["b", "1"], ["c", "1", "2", "3"], ["d"], ["e", "1", "2", ""]])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 3, problems
    assert any("r.csv: repeated column name(s) 'label' in the header (line 1)" in p for p in problems)
    assert any("r.csv: 1 row(s) with more cells than the 3 header columns (delimiter ',') (line 4)" in p
               for p in problems)
    assert any("r.csv: 2 row(s) with fewer cells than the 3 header columns (delimiter ',') (lines 3, 5)" in p
               for p in problems)  # line 6's trailing empty cell is tolerated


def test_unknown_columns_listed_with_hints(root: Path, tmp_path: Path) -> None:
    table = read_manifest(write(tmp_path / "m.csv", HEADER, ROWS))
    problems = check(table, root, image_column="img", target=HeadConfig("Label", "binary"),
                     metadata={"site": HeadConfig("hospital")}, group_column=None, split_column=None)
    assert len(problems) == 3, problems
    text = "\n".join(problems)
    assert "m.csv: image_column refers to a column that is not in the header [column 'img']: did you mean " \
           "'image'? available columns: 'image', 'label', 'scanner', 'spacing', 'patient', 'split'" in text
    assert "m.csv: target.column refers to a column that is not in the header [column 'Label']: the header has " \
           "'label' (differs in spaces or case); use exactly 'label'" in text
    assert "metadata.site.column refers to a column that is not in the header [column 'hospital']" in text


def test_image_problems(root: Path, tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS]
    rows[0][0] = ""                      # line 2: missing
    rows[1][0] = "../outside.png"        # line 3: escapes root
    rows[2][0] = str(tmp_path / "x.png")  # line 4: absolute, outside root
    rows[3][0] = "missing.png"           # line 5: absent
    rows[4][0] = "bad.png"               # line 6: undecodable
    rows[5][0] = "g.png"                 # line 7: duplicate of line 8
    png(tmp_path / "outside.png")
    png(tmp_path / "x.png")
    (root / "bad.png").write_bytes(b"not an image")
    table = read_manifest(write(tmp_path / "m.csv", HEADER, rows))
    problems = check(table, root)
    text = "\n".join(problems)
    assert "m.csv: image path missing (line 2) [column 'image']: fill in the image" in text
    assert "image path leaves the data root" in text and "(lines 3, 4) [column 'image']: image paths must point " \
                                                         "inside root" in text
    assert "image file not found under" in text and "(e.g. 'missing.png') (line 5) [column 'image']" in text
    assert "image cannot be decoded" in text and "(line 6) [column 'image']" in text
    assert "the same image is listed more than once (line 8 repeats 7) [column 'image']" in text
    assert len(problems) == 5, problems
    # without decoding, the corrupt file passes (existence only)
    assert not any("decoded" in p for p in check(table, root, check_images=False))


def test_target_problems(root: Path, tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS]
    rows[1][1] = ""  # line 3
    rows[4][1] = "unsure"  # line 6: a third class for a binary target
    table = read_manifest(write(tmp_path / "m.csv", HEADER, rows))
    text = "\n".join(check(table, root))
    assert "m.csv: target missing (line 3) [column 'label']: fill in the label" in text
    assert "m.csv: target: binary needs exactly 2 classes, found 3 ('benign', 'malignant', 'unsure') " \
           "[column 'label']" in text
    # restricting the classes turns the extra value into a row error
    text = "\n".join(check(table, root, target=HeadConfig("label", "binary", classes=("benign", "malignant"))))
    assert "m.csv: target value(s) 'unsure' not in classes ['benign', 'malignant'] (line 6) [column 'label']" in text
    # categorical: a class only outside train is flagged
    text = "\n".join(check(table, root, target=HeadConfig("label")))
    assert "target class(es) 'unsure' never occur in the train split (line 6) [column 'label']" in text
    # continuous target refused
    problems = check(table, root, target=HeadConfig("spacing", "continuous"), metadata={})
    assert any(p.startswith("target: type must be binary or categorical") for p in problems)


def test_metadata_problems(root: Path, tmp_path: Path) -> None:
    header = [*HEADER, "empty", "const", "site"]
    rows = [[*r, "", "same", "H1"] for r in ROWS]
    rows[1][3] = "abc"     # line 3
    rows[5][3] = "0,75"    # line 7 (decimal comma)
    table = read_manifest(write(tmp_path / "m.csv", header, rows, ";"))
    metadata = {**METADATA, "empty": HeadConfig("empty"), "const": HeadConfig("const"),
                "site": HeadConfig("site", "continuous")}
    problems = check(table, root, metadata=metadata)
    text = "\n".join(problems)
    assert "m.csv: metadata head 'spacing': not a number ('0,75', 'abc') (decimal commas such as '0,75'? write " \
           "'0.75') (lines 3, 7) [column 'spacing']: write a number, or leave the cell empty" in text
    assert "m.csv: metadata head 'empty': the column has no values [column 'empty']" in text
    assert "m.csv: metadata head 'const': a single class 'same' [column 'const']" in text
    assert "m.csv: metadata head 'site': the column has no values [column 'site']" in text  # 'H1' is no number
    assert "not a number ('H1') (lines 2, 3, 4, 5, 6 and 3 more) [column 'site']" in text
    assert len(problems) == 5, problems


def test_duplicates_splits_and_groups(root: Path, tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS]
    rows[2][5] = "Training"   # line 4
    rows[3][5] = ""           # line 5
    rows[4][4] = "p1"         # line 6: p1 in train (line 2) and val
    rows[6][4] = ""           # line 8: group missing
    rows[7][5] = " TEST "     # case/space-insensitive -> fine
    table = read_manifest(write(tmp_path / "m.csv", HEADER, rows))
    problems = check(table, root)
    text = "\n".join(problems)
    assert "m.csv: split missing (line 5) [column 'split']" in text
    assert "m.csv: unknown split value(s) 'Training' (line 4) [column 'split']: use train, val, test" in text
    assert "m.csv: group missing (line 8) [column 'patient']" in text
    assert "m.csv: 1 group(s) in more than one split: 'p1' (train, val) [column 'patient']" in text
    assert len(problems) == 4, problems
    assert parse_splits(table, "split") == ["train", "train", None, None, "val", "val", "test", "test"]


def test_many_problems_in_one_call_and_line_cap(root: Path, tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS] + [[f"z{i}.png", "benign", "S1", "x", f"q{i}", "train"] for i in range(10)]
    rows[0][1] = ""
    table = read_manifest(write(tmp_path / "m.csv", HEADER, rows))
    problems = check(table, root)
    text = "\n".join(problems)
    assert "image file not found" in text and "(lines 10, 11, 12, 13, 14 and 5 more) [column 'image']" in text
    assert "not a number ('x') (lines 10, 11, 12, 13, 14 and 5 more) [column 'spacing']" in text
    assert "target missing (line 2)" in text
    assert all(p.startswith(str(tmp_path / "m.csv") + ": ") for p in problems)


def test_fetal_planes_style(tmp_path: Path) -> None:
    root = tmp_path / "FETAL_PLANES_ZENODO"
    header = ["Image_name", "Patient_num", "Plane", "Brain_plane", "Operator", "US_Machine", "Train "]
    rows = []
    for i in range(8):
        name = f"Patient{i // 2:05d}_Plane{i % 3}_1_of_2"
        png(root / "Images" / f"{name}.png", i)
        rows.append([name, str(i // 2), ["Fetal brain", "Fetal abdomen", "Other"][i % 3], "Not A Brain",
                     f"Op. {i % 2}", ["Voluson E6", "Aloka"][i % 2], "1" if i < 6 else "0"])
    path = write(root / "FETAL_PLANES_DB_data.csv", header, rows, ";")
    before = listing(root)
    table = read_manifest(path)
    assert table.delimiter == ";" and table.header[-1] == "Train "
    options = dict(root=root, image_column="Image_name", image_pattern="Images/{}.png",
                   target=HeadConfig("Plane"), metadata={"machine": HeadConfig("US_Machine", "binary"),
                                                         "operator": HeadConfig("Operator")},
                   group_column="Patient_num", split_values={"1": "train", "0": "test"})
    assert validate_manifest(table, split_column="Train ", **options) == []
    problems = [str(p) for p in validate_manifest(table, split_column="Train", **options)]
    assert len(problems) == 1
    assert "split_column refers to a column that is not in the header [column 'Train']: the header has 'Train ' " \
           "(differs in spaces or case); use exactly 'Train '" in problems[0]
    # without split_values the 1/0 cells are unknown splits
    options["split_values"] = None
    problems = [str(p) for p in validate_manifest(table, split_column="Train ", **options)]
    assert any("unknown split value(s) '0', '1' (lines 2, 3, 4, 5, 6 and 3 more) [column 'Train ']" in p
               for p in problems)
    assert listing(root) == before


def test_encode_labels_fits_on_train_rows_only(root: Path, tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS]
    rows[6][2] = "S3"  # scanner S3 only in a test row (index 6)
    table = read_manifest(write(tmp_path / "m.csv", HEADER, rows))
    fit = [i for i, s in enumerate(parse_splits(table, "split")) if s == "train"]
    assert fit == [0, 1, 2, 3]

    spec, labels = encode_labels(table, HeadConfig("scanner"), name="scanner", fit_rows=fit)
    assert spec.kind == "categorical" and spec.class_names == ("S1", "S2")
    assert labels == [0, 1, 0, 1, 0, 1, IGNORE_INDEX, 1]
    with pytest.raises(ValueError, match=r"scanner: value\(s\) not among the classes \['S1', 'S2'\] \(line 8\)"):
        encode_labels(table, HeadConfig("scanner"), name="scanner", fit_rows=fit, strict=True)

    spec, labels = encode_labels(table, HeadConfig("spacing", "continuous", bins=2), name="spacing", fit_rows=fit)
    expected = fit_bin_edges(torch.tensor([0.5, 0.7, float("nan"), 1.0], dtype=torch.float64), 2)
    assert spec.bin_edges == tuple(expected.tolist()) == (0.5, 0.75, 1.0)  # train rows only (test has 0.3, 1.2)
    assert spec.class_names == ("[0.5, 0.75)", "[0.75, 1]")
    assert labels == [0, 0, IGNORE_INDEX, 1, 0, 1, 0, 1]  # outside the train range -> first / last bin

    spec, labels = encode_labels(table, HeadConfig("label", "binary", classes=("malignant", "benign")),
                                 name="label", fit_rows=fit, strict=True)
    assert spec.class_names == ("malignant", "benign") and labels[:2] == [1, 0]


def test_natural_class_order(tmp_path: Path) -> None:
    table = read_manifest(write(tmp_path / "m.csv", ["image", "site"],
                                [[f"{i}.png", s] for i, s in enumerate(["site10", "site2", "site1", ""])]))
    spec, labels = encode_labels(table, HeadConfig("site"), name="site", fit_rows=range(4))
    assert spec.class_names == ("site1", "site2", "site10") and labels == [2, 1, 0, IGNORE_INDEX]


def test_column_spec_from_mapping() -> None:
    spec = HeadConfig.from_mapping("metadata.spacing", {"column": "px_spacing", "type": "continuous", "bins": 6,
                                                        "binning": "quantile"})
    assert spec == HeadConfig("px_spacing", "continuous", 6, "quantile") and spec.num_bins == 6
    assert HeadConfig.from_mapping("target", {"column": "y", "classes": [0, 1]}).classes == ("0", "1")
    with pytest.raises(ValueError) as info:
        HeadConfig.from_mapping("metadata.site", {"colum": "x", "type": "categorical", "bins": 3,
                                                  "binning": "quantile"})
    lines = str(info.value).splitlines()
    assert "metadata.site.colum: unknown key; valid keys: column, type, bins, binning, classes" in lines
    assert "metadata.site: a head needs a 'column'" in lines
    assert "metadata.site.bins: only continuous heads are binned; remove it from this categorical head" in lines
    assert "metadata.site.binning: only continuous heads are binned; remove it from this categorical head" in lines
    with pytest.raises(ValueError, match=r"target.type: must be one of binary, categorical, continuous"):
        HeadConfig.from_mapping("target", {"column": "y", "type": "ordinal"})
    with pytest.raises(ValueError, match=r"m.classes: a binary head needs exactly 2 classes"):
        HeadConfig.from_mapping("m", {"column": "y", "type": "binary", "classes": ["a", "b", "c"]})
    with pytest.raises(ValueError, match=r"bins: continuous heads need bins >= 2"):
        HeadConfig("x", "continuous", bins=1)


def test_excel_artefacts_and_config_problems(root: Path, tmp_path: Path) -> None:
    # trailing delimiter -> an unnamed, empty column; an all-empty row (";;;") is skipped
    path = tmp_path / "x.csv"
    path.write_text("image;label;\na.png;benign;\n;;\nb.png;malignant;\n")
    table = read_manifest(path)
    assert table.rows == ({"image": "a.png", "label": "benign"}, {"image": "b.png", "label": "malignant"})
    assert table.line_numbers == (2, 4)
    path.write_text("image;label;\na.png;benign;oops\n")
    with pytest.raises(ManifestError, match=r"cells under a column with no name \(column\(s\) 3\) \(line 2\)"):
        read_manifest(path)
    table = read_manifest(write(tmp_path / "h.csv", ["image", "label"], []))
    problems = [str(p) for p in validate_manifest(table, root=tmp_path / "nowhere", target=TARGET,
                                 metadata={"bad.name": HeadConfig("label")}, image_pattern="img.png")]
    text = "\n".join(problems)
    assert "h.csv: image_pattern 'img.png' must contain '{}'" in text
    assert "metadata.bad.name: head name 'bad.name' must be a non-empty string" in text
    assert "metadata.bad.name.column: 'label' is the target's column" in text
    assert "h.csv: no data rows under the header" in text
    table = read_manifest(write(tmp_path / "m.csv", HEADER, ROWS))
    problems = check(table, tmp_path / "nowhere", split_values={"1": "training"})
    assert any("data root" in p and "is not a directory" in p for p in problems)
    assert any(p.startswith("split_values: values must be one of train, val, test") for p in problems)


def test_read_grayscale_scales_8_and_16_bit_png_tiff_and_colour_to_unit_range(tmp_path):
    import numpy as np
    from PIL import Image

    from wsca_lightning.data.manifest import read_grayscale

    ramp16 = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "a16.png")
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(tmp_path / "a8.tif")
    Image.fromarray(np.full((2, 2, 3), 255, dtype=np.uint8)).save(tmp_path / "rgb.jpg", quality=100)
    sixteen = read_grayscale(str(tmp_path / "a16.png"))
    assert sixteen.shape == (1, 1, 3) and sixteen.dtype == torch.float32
    assert sixteen[0, 0].tolist() == pytest.approx([0.0, 32768 / 65535, 1.0])
    assert read_grayscale(str(tmp_path / "a8.tif"))[0, 0].tolist() == [0.0, 1.0]
    assert float(read_grayscale(str(tmp_path / "rgb.jpg")).min()) > 0.98


def test_one_class_spelled_two_ways_is_refused_naming_values_and_lines(root: Path, tmp_path: Path) -> None:
    from wsca_lightning.data.metadata_table import MetadataTable

    rows = [list(r) for r in ROWS]
    rows[3][1] = "Malignant"   # line 5 (train)
    rows[7][1] = "malignant "  # line 9: a trailing space is stripped, so it is the same class
    rows[4][2] = "s1"          # line 6: metadata scanner 'S1' written in lower case
    path = write(tmp_path / "m.csv", HEADER, rows)
    table = read_manifest(path)
    problems = check(table, root)
    text = "\n".join(problems)
    assert "m.csv: target: the same class written in different ways (case, spacing or invisible characters): " \
           "'malignant' (lines 3, 7, 9) vs 'Malignant' (line 5) [column 'label']: each spelling would become a class " \
           "of its own; write every class one way in the table (e.g. 'malignant' everywhere), or list the classes " \
           "explicitly with target.classes" in text
    assert "metadata head 'scanner': the same class written in different ways (case, spacing or invisible " \
           "characters): 'S1' (lines 2, 4, 8) vs 's1' (line 6) [column 'scanner']" in text
    assert "metadata.scanner.classes" in text
    assert "binary needs exactly 2 classes" not in text  # the count of 3 is a symptom of the spelling: not reported
    assert len(problems) == 2, problems
    # the encoder refuses on its own too (the metadata table calls it without the validator)
    with pytest.raises(ValueError, match=r"m.csv: y: the same class written in different ways .*'Malignant' "
                                         r"\(line 5\)"):
        encode_labels(table, HeadConfig("label"), name="y", fit_rows=range(8))
    # listing the classes is the documented way out: the other spelling is outside them, and said to be a respelling
    listed = HeadConfig("label", "binary", classes=("benign", "malignant"))
    text = "\n".join(check(table, root, target=listed, metadata={}))
    assert "target value(s) 'Malignant' not in classes ['benign', 'malignant'] ('Malignant' is 'malignant' spelled " \
           "differently) (line 5) [column 'label']" in text
    task, labels = encode_labels(table, listed, name="y", fit_rows=range(8))
    assert task.class_names == ("benign", "malignant") and labels[3] == IGNORE_INDEX and labels[7] == 1
    # the metadata table refuses at construction, before any training
    with pytest.raises(ManifestError, match=r"task 'label': the same class written in different ways"):
        MetadataTable(path, "image")


def test_trailing_spaces_and_invisible_characters_in_labels(root: Path, tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS]
    rows[1][1] = "malignant "  # stripped by the reader: one class, nothing to report
    table = read_manifest(write(tmp_path / "m.csv", HEADER, rows))
    assert check(table, root) == []
    task, _ = encode_labels(table, TARGET, name="y", fit_rows=range(8))
    assert task.class_names == ("benign", "malignant")
    rows[1][1] = "malignant\u200b"  # a zero-width space (pasted from a web page) is not whitespace
    table = read_manifest(write(tmp_path / "m.csv", HEADER, rows))
    assert any("the same class written in different ways" in p and "'malignant\\u200b' (line 3)" in p
               for p in check(table, root))


def test_single_class_validation_split_is_refused_up_front(root: Path, tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS]
    rows[5][1] = "benign"  # line 7: both val rows (lines 6, 7) are benign
    table = read_manifest(write(tmp_path / "m.csv", HEADER, rows))
    problems = check(table, root)
    assert problems == [
        f"{tmp_path / 'm.csv'}: target: a single class 'benign' in the val split (lines 6, 7) [column 'label']: "
        "validation needs at least 2 classes (with one, val AUROC is nan); mark rows of other classes val too (split "
        "column 'split'), or mark no row val and set val_fraction to carve a stratified val split from train"]
    # no val rows at all: nothing to refuse (the datamodule carves a stratified val split from train)
    rows = [[*r[:5], "train" if r[5] == "val" else r[5]] for r in rows]
    assert check(table := read_manifest(write(tmp_path / "m.csv", HEADER, rows)), root) == []
    assert "val" not in parse_splits(table, "split")
    # the same check on a drawn split (what a datamodule calls after carving val), with its own advice
    drawn = ["train", "val", "train", "val", "train", "train", "test", "test"]  # lines 3, 5: both malignant
    assert single_class_val_problem(table, "label", drawn, todo="raise val_fraction") == (
        f"{tmp_path / 'm.csv'}: target: a single class 'malignant' in the val split (lines 3, 5) [column 'label']: "
        "validation needs at least 2 classes (with one, val AUROC is nan); raise val_fraction")
    assert single_class_val_problem(table, "label", ["val"] * 8, todo="-") is None
    # values outside the listed classes do not count as a second class
    assert single_class_val_problem(table, "label", drawn[:2] + ["val"] + drawn[3:], todo="-",
                                    classes=("malignant", "other")) is not None


def test_utf16_and_nul_characters_are_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "u16.csv").write_bytes("image,label\na.png,x\n".encode("utf-16"))  # Excel's "Unicode Text"
    with pytest.raises(ManifestError, match=r"u16.csv: UTF-16 text, not UTF-8 \(line 1\): save the spreadsheet as "
                                            r"'CSV UTF-8'"):
        read_manifest(tmp_path / "u16.csv")
    # NUL in a cell used to reach os.path.realpath and crash validation with "embedded null byte", naming no file
    (tmp_path / "nul.csv").write_bytes(b"image,label\na.png,x\nb\x00.png,y\n")
    with pytest.raises(ManifestError, match=r"nul.csv: NUL characters in the text .* \(line 3\): save the "
                                            r"spreadsheet as 'CSV UTF-8'"):
        read_manifest(tmp_path / "nul.csv")


@pytest.mark.parametrize("values, spec, reason", [
    (["1e308", "-1e308", "0", "5"], HeadConfig("spacing", "continuous", bins=2),
     r"values -1e\+308 \.\. 1e\+308 give unusable bin edges"),  # the span overflows: inf/nan edges
    (["1", "1", "1", "2"], HeadConfig("spacing", "continuous", bins=2, binning="quantile"),
     r"quantile binning into 2 bins gives repeated edges"),
])
def test_unbinnable_column_is_refused_by_the_validator_and_the_encoder(root: Path, tmp_path: Path, values, spec,
                                                                       reason) -> None:
    rows = [list(r) for r in ROWS]
    for k, v in enumerate(values):  # the four train rows
        rows[k][3] = v
    table = read_manifest(write(tmp_path / "m.csv", HEADER, rows))
    problems = check(table, root, metadata={"spacing": spec})
    assert len(problems) == 1, problems
    assert re.search(r"m.csv: metadata head 'spacing': cannot bin the train values \(" + reason, problems[0])
    with pytest.raises(ValueError, match=r"m.csv: spacing: cannot bin the fit rows \(" + reason):
        encode_labels(table, spec, name="spacing", fit_rows=range(4))


def test_metadata_table_refuses_two_columns_for_one_task_and_dotted_task_names(tmp_path: Path) -> None:
    from wsca_lightning.data.metadata_table import MetadataTable

    path = write(tmp_path / "t.csv", ["id", "site id", "site_id"], [["a", "x", "1"], ["b", "y", "2"]])
    # both columns become task 'site_id': one used to replace the other without a word
    with pytest.raises(ManifestError, match=r"t.csv: columns 'site id' and 'site_id' both become task 'site_id' "
                                            r"\[column 'site_id'\]: rename one of them"):
        MetadataTable(path, "id")
    # a dotted task name used to pass construction and fail only in fit(), once training had started
    with pytest.raises(ManifestError, match=r"metadata_columns.a.b: task name 'a.b' must be non-empty, without"):
        MetadataTable(path, "id", {"a.b": {"column": "site id"}})

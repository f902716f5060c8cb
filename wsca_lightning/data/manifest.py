"""Spreadsheet (CSV/TSV) manifests of images and metadata: the table layer of the ``data=manifest`` datamodule.

A manifest is a user's own spreadsheet, so it arrives with every kind of small defect (a trailing space in a header,
a decimal comma, a missing image, a patient in two splits). Training for hours and then failing on row 8,000 is the
worst outcome, and so is fixing one defect per run. Hence:

* :func:`read_manifest` parses the file into raw, whitespace-stripped cell strings and keeps each row's line number;
* :func:`validate_manifest` checks the table against the head config and returns *every* problem at once, one line
  each, naming the file, the line numbers (header = line 1), the column and what to do;
* :func:`encode_labels` turns one column into integer labels with a vocabulary / bin edges fitted on the training
  rows only (the same rule as the synthetic datamodule), missing cells becoming ``IGNORE_INDEX`` (-1).

Nothing here writes anywhere: the data folder is read-only to us.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import operator
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wsca_lightning.data.splits import SPLIT_NAMES, groups_in_several_parts, split_name
from wsca_lightning.plain import is_int
from wsca_lightning.tasks import TASK_KINDS, TaskSpec
from wsca_lightning.wsc.binning import BINNING_METHODS, IGNORE_INDEX, bin_names, digitize, fit_bin_edges

__all__ = [
    "DELIMITERS",
    "ColumnSpec",
    "ManifestError",
    "ManifestTable",
    "add_dicom_columns",
    "encode_labels",
    "image_path",
    "parse_splits",
    "column_problem",
    "is_dicom",
    "is_inside",
    "parse_float",
    "problem_line",
    "read_grayscale",
    "read_manifest",
    "validate_manifest",
]

#: Delimiters recognised when none is given (comma: CSV, semicolon: European Excel, tab: TSV).
DELIMITERS: tuple[str, ...] = (",", ";", "\t")
#: The split names a split column may hold (case-insensitive, after ``split_values`` mapping).
DEFAULT_BINS = 4
_SPEC_FIELDS: tuple[str, ...] = ("column", "type", "bins", "binning", "classes")
_SHOWN = 5  # line numbers / values shown per problem before "and N more"


class ManifestError(ValueError):
    """A manifest that cannot be read at all; :attr:`problems` holds one line per problem (also the message)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------------------------------- column specs


def _spec_problems(key: str, column: Any, kind: Any, bins: Any, binning: Any, classes: Any,
                   binning_given: bool) -> list[str]:
    problems: list[str] = []
    if not isinstance(column, str) or not column:
        problems.append(f"{key}.column: must be a non-empty column name, got {column!r}")
    if kind not in TASK_KINDS:
        problems.append(f"{key}.type: must be one of {', '.join(TASK_KINDS)}, got {kind!r}")
        return problems
    if kind == "continuous":
        if bins is not None and (not is_int(bins) or bins < 2):
            problems.append(f"{key}.bins: continuous heads need bins >= 2, got {bins!r}")
        if binning not in BINNING_METHODS:
            problems.append(f"{key}.binning: must be one of {', '.join(BINNING_METHODS)}, got {binning!r}")
        if classes is not None:
            problems.append(f"{key}.classes: a continuous head gets its classes from its bins; remove 'classes'")
        return problems
    if bins is not None:
        problems.append(f"{key}.bins: only continuous heads are binned; remove it from this {kind} head")
    if binning_given:
        problems.append(f"{key}.binning: only continuous heads are binned; remove it from this {kind} head")
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            problems.append(f"{key}.classes: must be a list of class values, got {classes!r}")
        else:
            bad = [c for c in classes if not (isinstance(c, str) or is_int(c))]
            names = [str(c).strip() for c in classes]
            if bad:
                problems.append(f"{key}.classes: class values must be strings or integers, got {bad!r}")
            elif any(not n for n in names):
                problems.append(f"{key}.classes: class values must be non-empty")
            elif len(set(names)) != len(names):
                problems.append(f"{key}.classes: repeated class values in {names}")
            elif kind == "binary" and len(names) != 2:
                problems.append(f"{key}.classes: a binary head needs exactly 2 classes, got {names}")
            elif len(names) < 2:
                problems.append(f"{key}.classes: a head needs at least 2 classes, got {names}")
    return problems


@dataclass(frozen=True)
class ColumnSpec:
    """One head read from one column, e.g. ``{column: px_spacing, type: continuous, bins: 6, binning: equal_width}``.

    ``classes`` (binary/categorical only) keeps only these values, in this order, which also fixes the label order
    so that a model's heads mean the same thing on every dataset. Other values are an error for the target and
    missing (-1) for metadata. Continuous heads get ``bins`` (default 4) bins fitted with ``binning``.
    """

    column: str
    type: str = "categorical"
    bins: int | None = None
    binning: str = "equal_width"
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        problems = _spec_problems(self.column if isinstance(self.column, str) else "column", self.column, self.type,
                                  self.bins, self.binning, self.classes, self.binning != "equal_width")
        if problems:
            raise ValueError("\n".join(problems))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c).strip() for c in self.classes))

    @property
    def num_bins(self) -> int:
        """Bins of a continuous head (``bins`` or the default 4)."""
        return DEFAULT_BINS if self.bins is None else int(self.bins)

    @classmethod
    def from_mapping(cls, key: str, value: Any) -> "ColumnSpec":
        """Build from a config mapping; raises ``ValueError`` with one ``"<key>.<field>: ..."`` line per problem
        (unknown fields and bad values all at once, so a config is fixed in one go)."""
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}: must be a mapping with keys {', '.join(_SPEC_FIELDS)}, got {value!r}")
        problems = [f"{key}.{field}: unknown field; valid fields: {', '.join(_SPEC_FIELDS)}"
                    for field in value if field not in _SPEC_FIELDS]
        if "column" not in value:
            problems.append(f"{key}: a head needs a 'column'")
        kind = value.get("type", "categorical")
        binning_given = value.get("binning") is not None
        binning = value.get("binning") or "equal_width"
        classes = value.get("classes")
        problems += [p for p in _spec_problems(key, value.get("column"), kind, value.get("bins"), binning,
                                               classes, binning_given)
                     if "column" in value or not p.startswith(f"{key}.column:")]
        if problems:
            raise ValueError("\n".join(problems))
        return cls(column=value["column"], type=kind, bins=value.get("bins"), binning=binning,
                   classes=None if classes is None else tuple(str(c).strip() for c in classes))


# --------------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ManifestTable:
    """A parsed manifest: raw cell strings, whitespace-stripped, with each row's line number for messages.

    ``header`` keeps the names exactly as in the file (FETAL_PLANES_DB has a trailing space in ``"Train "``): a
    config must name them exactly, and the validator says so when it does not.
    """

    path: str
    delimiter: str
    header: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    line_numbers: tuple[int, ...]

    def column(self, name: str) -> list[str]:
        """All cells of one column, in row order."""
        return [row.get(name, "") for row in self.rows]


def _capped(items: Sequence[str], separator: str = ", ", limit: int = _SHOWN) -> str:
    """The first ``limit`` items joined, then ``and N more``: a problem about 40,000 rows stays one readable line."""
    shown = separator.join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _lines(numbers: Sequence[int]) -> str:
    """``line 3`` / ``lines 3, 7, 12, 15, 20 and 40 more`` (line numbers of the file, header = line 1)."""
    numbers = list(numbers)
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    return "lines " + _capped([str(n) for n in numbers])


def _values(values: Sequence[str]) -> str:
    """``'a', 'b'`` capped like :func:`_lines`."""
    return _capped([repr(v) for v in values])


def problem_line(file: str, what: str, todo: str, lines: Sequence[int] = (), column: str | None = None) -> str:
    """One problem line: ``<file>: <what> (lines ...) [column 'x']: <what to do>``."""
    text = f"{file}: {what}"
    if lines:
        text += f" ({_lines(lines)})"
    if column is not None:
        text += f" [column {column!r}]"
    return f"{text}: {todo}"


def _detect_delimiter(header_line: str) -> str:
    """The candidate delimiter occurring most often in the header line outside quotes (``,`` when none does)."""
    unquoted = re.sub(r'"[^"]*"', "", header_line)
    counts = {d: unquoted.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])  # ties: first in DELIMITERS
    return best if counts[best] else ","


def read_manifest(path: str | os.PathLike, delimiter: str | None = None) -> ManifestTable:
    """Parse a CSV/TSV manifest (UTF-8, optional BOM; delimiter detected from the header when ``None``).

    Raises :class:`ManifestError` listing every structural problem (missing/empty/undecodable file, no header,
    duplicate header names, rows with more or fewer cells than the header) -- content problems are
    :func:`validate_manifest`'s job. Blank lines are skipped; cells are whitespace-stripped, header names are not.
    """
    file = os.fspath(path)
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise ManifestError([f"{file}: delimiter must be one character such as ',', ';' or '\\t', got {delimiter!r}"])
    if not os.path.isfile(file):
        what = "is a directory, not a file" if os.path.isdir(file) else "file not found"
        raise ManifestError([f"{file}: {what}: check the manifest path (relative paths start at "
                             f"{os.getcwd()!r})"])
    with open(file, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ManifestError([problem_line(file, "not UTF-8 text", "save the spreadsheet as 'CSV UTF-8'",
                                          lines=[line])]) from None
    if not text.strip():
        raise ManifestError([f"{file}: the file is empty: it needs a header line naming the columns, then one row "
                             "per image"])
    first = text.splitlines()[0]
    if not first.strip():
        raise ManifestError([problem_line(file, "no header (line 1 is blank)",
                                          "put the column names on the first line", lines=[1])])
    delim = delimiter if delimiter is not None else _detect_delimiter(first)

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    records: list[tuple[int, list[str]]] = []
    try:
        start = 1
        for cells in reader:
            if cells and any(c.strip() for c in cells):  # blank lines and all-empty rows (";;;") carry nothing
                records.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as e:
        raise ManifestError([problem_line(
            file, f"malformed CSV ({e})",
            "fix the quoting on that line (an unclosed '\"' swallows the rest of the file)",
            lines=[reader.line_num])]) from None
    if not records or records[0][0] != 1:
        raise ManifestError([problem_line(file, "no header (line 1 holds no column names)",
                                          "put the column names on the first line", lines=[1])])
    header_line, header_cells = records[0]
    header = tuple(header_cells)
    problems: list[str] = []
    names = [h.strip() for h in header]
    duplicates = sorted({n for n in names if n and names.count(n) > 1})
    if duplicates:
        problems.append(problem_line(file, f"repeated column name(s) {_values(duplicates)} in the header",
                                     "give every column a distinct name", lines=[header_line]))
    unnamed = [i for i, n in enumerate(names) if not n]

    more: list[int] = []
    fewer: list[int] = []
    unnamed_used: list[int] = []
    rows: list[dict[str, str]] = []
    line_numbers: list[int] = []
    for line, cells in records[1:]:
        if len(cells) > len(header) and not any(c.strip() for c in cells[len(header):]):
            cells = cells[: len(header)]  # trailing empty cells (an Excel artefact) are harmless
        if len(cells) > len(header):
            more.append(line)
            continue
        if len(cells) < len(header):
            fewer.append(line)
            continue
        if any(cells[i].strip() for i in unnamed):
            unnamed_used.append(line)
        rows.append({h: c.strip() for i, (h, c) in enumerate(zip(header, cells)) if i not in unnamed})
        line_numbers.append(line)
    delim_name = {",": "','", ";": "';'", "\t": "tab"}.get(delim, repr(delim))
    for bad, word in ((more, "more"), (fewer, "fewer")):
        if bad:
            problems.append(problem_line(
                file, f"{len(bad)} row(s) with {word} cells than the {len(header)} header columns "
                      f"(delimiter {delim_name})", lines=bad,
                todo="make every row have one cell per column (quote cells that contain the delimiter"
                     + (", or pass the right delimiter" if delimiter is None else "") + ")"))
    if unnamed_used:
        problems.append(problem_line(file, f"cells under a column with no name (column(s) "
                                       f"{', '.join(str(i + 1) for i in unnamed)})", lines=unnamed_used,
                                     todo="give that column a name in the header"))
    if problems:
        raise ManifestError(problems)
    return ManifestTable(path=file, delimiter=delim, header=header, rows=tuple(rows), line_numbers=tuple(line_numbers))


# ------------------------------------------------------------------------------------------------------- validation


def image_path(root: str | os.PathLike, cell: str, image_pattern: str = "{}") -> str:
    """Absolute, symlink-resolved path of the image named by ``cell``: ``image_pattern`` with ``{}`` replaced by
    the cell (FETAL_PLANES_DB: ``"Images/{}.png"``), relative to ``root`` unless absolute."""
    relative = image_pattern.replace("{}", cell)
    return os.path.realpath(os.path.join(os.fspath(root), relative))


def is_inside(path: str, root_real: str) -> bool:
    """Whether the resolved ``path`` lies in the resolved ``root_real`` (paths leaving the data root are refused)."""
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def parse_splits(table: ManifestTable, split_column: str,
                 split_values: Mapping[str, str] | None = None) -> list[str | None]:
    """Split name (``train``/``val``/``test``) of every row, ``None`` where the cell is missing or unknown.

    ``split_values`` maps raw cells to split names first (FETAL_PLANES_DB: ``{"1": "train", "0": "test"}``);
    matching is case-insensitive after stripping, as is the check against :data:`SPLIT_NAMES`.
    """
    return [split_name(cell, split_values) for cell in table.column(split_column)]


def column_problem(table: ManifestTable, role: str, name: Any) -> str:
    """The problem line for a config key (``role``) naming a column that is not in the header, with a hint."""
    file = table.path
    available = _capped([repr(h) for h in table.header], limit=40)
    if not isinstance(name, str):
        return f"{file}: {role} must be a column name, got {name!r}; available columns: {available}"
    near = [h for h in table.header if h.strip().lower() == name.strip().lower()]
    if near:
        todo = f"the header has {near[0]!r} (differs in spaces or case); use exactly {near[0]!r}"
    else:
        close = difflib.get_close_matches(name, list(table.header), n=1, cutoff=0.75)
        todo = (f"did you mean {close[0]!r}? " if close else "") + f"available columns: {available}"
    return problem_line(file, f"{role} refers to a column that is not in the header", todo, column=name)


def parse_float(cell: str) -> float | None:
    """The finite number in ``cell``, or None (empty, text, NaN or inf)."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _natural_key(value: str) -> tuple:
    """Sort key putting ``'2'`` before ``'10'`` and ``'site2'`` before ``'site10'``."""
    parts = re.split(r"(\d+)", value)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p), value


def validate_manifest(
    table: ManifestTable,
    *,
    root: str | os.PathLike,
    image_column: str = "image",
    image_pattern: str = "{}",
    target: ColumnSpec,
    metadata: Mapping[str, ColumnSpec],
    group_column: str | None = None,
    split_column: str | None = None,
    split_values: Mapping[str, str] | None = None,
    check_images: bool = True,
) -> list[str]:
    """Every problem of ``table`` for this head config, one line each (empty list: the manifest is usable).

    Each line reads ``<file>: <what> (lines 3, 7, ... and N more) [column 'x']: <what to do>``, line numbers being
    those of the file (header = line 1). Checks: referenced columns exist; image cells are present, stay inside
    ``root``, exist, are not repeated and (``check_images``) decode (:func:`read_grayscale`); target cells are
    present and give a binary/categorical label space; continuous metadata parse as numbers (empty = missing); no
    metadata column is empty or constant; split cells (after ``split_values``) are train/val/test; group cells are
    present and no group spans two splits. Only reads files.
    """
    file = table.path
    problems: list[str] = []
    lines = table.line_numbers

    # --- config-level problems
    if "{}" not in image_pattern:
        problems.append(f"{file}: image_pattern {image_pattern!r} must contain '{{}}' where the cell value goes")
    if target.type not in ("binary", "categorical"):
        problems.append("target: type must be binary or categorical (a continuous target would have to be binned; "
                        f"column {target.column!r} is declared {target.type})")
    bad_splits = {k: v for k, v in (split_values or {}).items() if str(v).strip().lower() not in SPLIT_NAMES}
    if bad_splits:
        problems.append(f"split_values: values must be one of {', '.join(SPLIT_NAMES)}, got {bad_splits!r}")
    for name, spec in metadata.items():
        if not isinstance(name, str) or not name or "/" in name or "." in name:
            problems.append(f"metadata.{name}: head name {name!r} must be a non-empty string without '/' or '.'")
        if spec.column == target.column:
            problems.append(f"metadata.{name}.column: {spec.column!r} is the target's column; a metadata head must "
                            "use another column")

    # --- referenced columns
    roles: list[tuple[str, Any]] = [("image_column", image_column), ("target.column", target.column)]
    roles += [(f"metadata.{name}.column", spec.column) for name, spec in metadata.items()]
    roles += [(role, col) for role, col in (("group_column", group_column), ("split_column", split_column))
              if col is not None]
    known = set(table.header)
    for role, col in roles:
        if col not in known:
            problems.append(column_problem(table, role, col))

    def has(col: Any) -> bool:
        return isinstance(col, str) and col in known

    if not table.rows:
        problems.append(f"{file}: no data rows under the header: add one row per image")
        return problems

    # --- splits (needed by the target and group checks)
    splits: list[str | None] | None = None
    if has(split_column) and not bad_splits:
        splits = parse_splits(table, split_column, split_values)
        cells = table.column(split_column)
        missing = [ln for ln, c in zip(lines, cells) if not c]
        unknown = [(ln, c) for ln, c, s in zip(lines, cells, splits) if c and s is None]
        if missing:
            problems.append(problem_line(file, "split missing", "fill in train, val or test", missing, split_column))
        if unknown:
            values = sorted({c for _, c in unknown}, key=_natural_key)
            problems.append(problem_line(
                file, f"unknown split value(s) {_values(values)}", lines=[ln for ln, _ in unknown], column=split_column,
                todo=f"use {', '.join(SPLIT_NAMES)} (case-insensitive), or map the values with split_values, e.g. "
                     f"{{{values[0]!r}: 'train'}}"))
        if not missing and not unknown and "train" not in splits:
            problems.append(problem_line(file, "no row is in the train split", column=split_column,
                                         todo="label vocabularies and bin edges are fitted on train rows; mark some "
                                          "rows train (or map them with split_values)"))

    # --- images
    if has(image_column) and "{}" in image_pattern:
        root_str = os.fspath(root)
        root_real = os.path.realpath(root_str)
        if not os.path.isdir(root_real):
            problems.append(f"{file}: data root {root_str!r} is not a directory: set root to the folder the image "
                            f"paths in column {image_column!r} are relative to")
        else:
            empty, outside, absent, undecodable = [], [], [], []
            first_seen: dict[str, int] = {}
            repeated: list[str] = []
            repeated_lines: list[int] = []
            examples: dict[str, str] = {}
            # decoding every image is the slow part of opening a large manifest: a progress bar on a terminal
            cells = tqdm(zip(lines, table.column(image_column)), desc="checking images", total=len(lines),
                         unit="image", disable=None if check_images else True)
            for ln, cell in cells:
                if not cell:
                    empty.append(ln)
                    continue
                path = image_path(root_real, cell, image_pattern)
                if path in first_seen:
                    repeated.append(f"{ln} repeats {first_seen[path]}")
                    repeated_lines.append(ln)
                    continue
                first_seen[path] = ln
                if not is_inside(path, root_real):
                    outside.append(ln)
                    examples.setdefault("outside", cell)
                elif not os.path.isfile(path):
                    absent.append(ln)
                    examples.setdefault("absent", image_pattern.replace("{}", cell))
                elif check_images:
                    error = _decode_error(path)
                    if error is not None:
                        undecodable.append(ln)
                        examples.setdefault("undecodable", f"{cell!r}: {error}")
            if empty:
                problems.append(problem_line(file, "image path missing", "fill in the image or remove the row",
                                             empty, image_column))
            if outside:
                problems.append(problem_line(
                    file, f"image path leaves the data root {root_str!r}, refused (e.g. {examples['outside']!r})",
                    "image paths must point inside root; move the images under root or set root to a folder "
                    "that contains them", outside, image_column))
            if absent:
                problems.append(problem_line(
                    file, f"image file not found under {root_str!r} (e.g. {examples['absent']!r})",
                    "check root, the cell values and image_pattern" + (
                        f" (now {image_pattern!r})" if image_pattern != "{}" else
                        ", e.g. image_pattern='images/{}.png' when cells omit a folder or extension"),
                    absent, image_column))
            if undecodable:
                problems.append(problem_line(
                    file, f"image cannot be decoded (e.g. {examples['undecodable']})",
                    "replace the file with a valid PNG/JPEG or remove the row", undecodable, image_column))
            if repeated:
                shown = _capped(repeated, separator="; ")
                problems.append(problem_line(
                    file, f"the same image is listed more than once (line {shown})",
                    "keep one row per image (a repeated image inflates its weight and can leak across splits)",
                    column=image_column))

    # --- target
    if has(target.column):
        problems += _check_labels(table, target, target.column, is_target=True, splits=splits)

    # --- metadata
    for name, spec in metadata.items():
        if has(spec.column) and spec.column != target.column:
            problems += _check_labels(table, spec, spec.column, is_target=False, splits=splits,
                                      head=f"metadata.{name}")

    # --- groups
    if has(group_column):
        groups = table.column(group_column)
        missing = [ln for ln, g in zip(lines, groups) if not g]
        if missing:
            problems.append(problem_line(file, "group missing", "fill in the group (e.g. patient id) of every row",
                                         missing, group_column))
        if splits is not None:
            several = groups_in_several_parts(splits, groups)
            leaks = sorted(several, key=_natural_key)
            if leaks:
                described = _capped([f"{g!r} ({', '.join(several[g])})" for g in leaks])
                problems.append(problem_line(
                    file, f"{len(leaks)} group(s) in more than one split: {described}",
                    f"put all rows of a group in one split (else evaluation leaks), using column {split_column!r}",
                    column=group_column))
    return problems


DICOM_SUFFIXES = (".dcm", ".dicom")
_PYDICOM_MISSING = "DICOM input needs pydicom: pip install 'wsca-lightning[dicom]'"
_DICOM_KEY = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)\s*(?:\[\s*(\d+)\s*\])?\s*$")


def _pydicom() -> Any:
    """pydicom, imported lazily (the optional ``dicom`` extra); a clear ImportError when it is missing."""
    try:
        import pydicom
    except ImportError:
        raise ImportError(_PYDICOM_MISSING) from None
    return pydicom


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` suffix, or the 128-byte preamble then ``DICM``."""
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom(path: str) -> torch.Tensor:
    """A ``(1, H, W)`` float32 image in [0, 1] from a DICOM file (first frame; see :func:`read_grayscale`)."""
    pydicom = _pydicom()
    ds = pydicom.dcmread(path)
    if hasattr(ds, "pixel_array_options"):  # pydicom 3: keep YBR as stored (pydicom 2 never converts)
        ds.pixel_array_options(as_rgb=False)
    pixels = np.asarray(ds.pixel_array)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 or pixels.ndim == (4 if samples > 1 else 3):
        pixels = pixels[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    pixels = pixels.astype(np.float64)
    if samples > 1 and pixels.ndim == 3:
        if photometric.startswith("YBR"):
            pixels = pixels[..., 0]  # Y is the luminance
        else:
            pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    slope = 1.0 if slope in (None, "") else float(slope)
    intercept = 0.0 if intercept in (None, "") else float(intercept)
    rescaled = slope != 1.0 or intercept != 0.0
    if rescaled:
        pixels = pixels * slope + intercept
    bits = ds.get("BitsStored", None)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if not rescaled and not signed and bits and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        low, high = 0.0, float(2 ** int(bits) - 1)
    else:
        low, high = float(pixels.min(initial=np.inf)), float(pixels.max(initial=-np.inf))
    if not high > low:
        pixels = np.zeros_like(pixels)
    else:
        pixels = np.clip((pixels - low) / (high - low), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).unsqueeze(0)


def _dicom_cell(ds: Any, keyword: str, index: int | None) -> str:
    """The element ``keyword`` (its value ``index`` when given) of a DICOM header as a string; ``""`` if absent."""
    value = ds.get(keyword, None)
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("ascii", "replace").strip("\x00 ")
    multi = not isinstance(value, (str, bytes, bytearray)) and isinstance(value, Sequence)
    if index is not None:
        if multi:
            return str(value[index]).strip() if index < len(value) else ""
        return str(value).strip() if index == 0 else ""
    if multi:
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def add_dicom_columns(table: ManifestTable, dicom_columns: Mapping[str, str], *, root: str | os.PathLike,
                      image_column: str, image_pattern: str = "{}") -> tuple[ManifestTable, list[str]]:
    """``table`` with one new column per ``dicom_columns`` entry (new column -> DICOM keyword, optionally indexed:
    ``PixelSpacing[1]``), each cell the header value of the row's image as a string (``""`` when the element is
    absent or the image is not DICOM), and the config problems (``dicom_columns.<name>: ...``).

    Only headers are read (``stop_before_pixels``); the table is returned unchanged when there are problems.
    """
    problems: list[str] = []
    if not isinstance(dicom_columns, Mapping):
        return table, [f"dicom_columns: must be a mapping of new column -> DICOM keyword, got {dicom_columns!r}"]
    if not dicom_columns:
        return table, []
    pydicom = _pydicom()
    from pydicom.datadict import tag_for_keyword

    wanted: list[tuple[str, str, int | None]] = []
    for name, key in dicom_columns.items():
        if not isinstance(name, str) or not name:
            problems.append(f"dicom_columns: column names must be non-empty strings, got {name!r}")
            continue
        if name in table.header:
            problems.append(f"dicom_columns.{name}: the manifest already has a column '{name}'")
            continue
        match = _DICOM_KEY.match(key) if isinstance(key, str) else None
        if match is None:
            problems.append(f"dicom_columns.{name}: must be a DICOM keyword, optionally indexed "
                            f"(e.g. PixelSpacing[0]), got {key!r}")
            continue
        if tag_for_keyword(match.group(1)) is None:
            problems.append(f"dicom_columns.{name}: unknown DICOM keyword '{match.group(1)}'")
            continue
        wanted.append((name, match.group(1), None if match.group(2) is None else int(match.group(2))))
    if problems:
        return table, problems
    root_real = os.path.realpath(os.fspath(root))
    rows = []
    for row in table.rows:
        new = dict(row)
        cells = dict.fromkeys((name for name, _, _ in wanted), "")
        cell = row.get(image_column, "")
        path = image_path(root, cell, image_pattern) if cell else ""
        if path and is_inside(path, root_real) and os.path.isfile(path) and is_dicom(path):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 -- an unreadable image is reported by the image checks
                ds = None
            if ds is not None:
                for name, keyword, index in wanted:
                    cells[name] = _dicom_cell(ds, keyword, index)
        new.update(cells)
        rows.append(new)
    header = table.header + tuple(name for name, _, _ in wanted)
    return ManifestTable(path=table.path, delimiter=table.delimiter, header=header, rows=tuple(rows),
                         line_numbers=table.line_numbers), []


def read_grayscale(path: str) -> torch.Tensor:
    """A ``(1, H, W)`` float32 image in [0, 1] from a PNG/JPEG/TIFF file: 8-bit, 16-bit or 32-bit-float grayscale,
    or colour converted to luminance; or from a DICOM file (``.dcm``/``.dicom`` or the ``DICM`` magic; needs the
    optional ``dicom`` extra, pydicom): the first frame, RescaleSlope/Intercept applied, MONOCHROME1 inverted,
    colour to luminance, scaled by the BitsStored range (unsigned, not rescaled) or else the image's min/max.

    Pillow (a torchvision dependency) decodes the others: it reads 16-bit and TIFF files, which torchvision's own
    decoders (deprecated since torchvision 0.29) do not all cover.
    """
    if is_dicom(path):
        return _read_dicom(path)
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I;16") or im.mode == "I":
            pixels = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())
            top = 65535.0 if im.mode.startswith("I;16") or float(pixels.max(initial=0.0)) <= 65535 else 2.0**32 - 1
            pixels = pixels / top
        elif im.mode == "F":
            pixels = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).clamp(0.0, 1.0)
        else:
            pixels = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32).copy()) / 255.0
    return pixels.unsqueeze(0)


def _decode_error(path: str) -> str | None:
    """Why the image at ``path`` cannot be read (``None`` if it can)."""
    try:
        read_grayscale(path)
    except Exception as e:  # noqa: BLE001 -- any failure means the loader would fail on this file
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return None


def _check_labels(table: ManifestTable, spec: ColumnSpec, column: str, *, is_target: bool,
                  splits: list[str | None] | None, head: str = "target") -> list[str]:
    """Problems of one head's column: unparsable/missing cells and a degenerate label space."""
    file = table.path
    lines = table.line_numbers
    cells = table.column(column)
    problems: list[str] = []
    role = "target" if is_target else f"metadata head {head.split('.', 1)[1]!r}"

    if spec.type == "continuous":
        if is_target:
            return problems  # already reported: the target must be binary or categorical
        bad = [(ln, c) for ln, c in zip(lines, cells) if c and parse_float(c) is None]
        if bad:
            comma = [c for _, c in bad if parse_float(c.replace(",", ".")) is not None]
            hint = f" (decimal commas such as {comma[0]!r}? write {comma[0].replace(',', '.')!r})" if comma else ""
            problems.append(problem_line(
                file, f"{role}: not a number ({_values(sorted({c for _, c in bad}))}){hint}",
                lines=[ln for ln, _ in bad], column=column, todo="write a number, or leave the cell empty for missing"))
        values = {v for c in cells if c and (v := parse_float(c)) is not None}
        train = ({v for c, s in zip(cells, splits) if s == "train" and c and (v := parse_float(c)) is not None}
                 if splits is not None and "train" in splits else None)
        if not values:
            problems.append(problem_line(file, f"{role}: the column has no values", column=column,
                                         todo="fill it in or drop this head"))
        elif len(values) == 1:
            problems.append(problem_line(file, f"{role}: every value is {next(iter(values))!r}", column=column,
                                         todo="a constant cannot be binned; drop this head"))
        elif train is not None and len(train) < 2:
            problems.append(problem_line(
                file, f"{role}: fewer than 2 distinct values in the train split", column=column,
                todo="bin edges are fitted on train rows; drop this head or change the split"))
        return problems

    # binary / categorical: any non-empty string is a class
    missing = [ln for ln, c in zip(lines, cells) if not c]
    if is_target and missing:
        problems.append(problem_line(file, "target missing", "fill in the label or remove the row", missing, column))
    if spec.classes is not None:
        outside = [(ln, c) for ln, c in zip(lines, cells) if c and c not in spec.classes]
        if is_target and outside:
            problems.append(problem_line(
                file, f"target value(s) {_values(sorted({c for _, c in outside}, key=_natural_key))} not in "
                      f"classes {list(spec.classes)}", lines=[ln for ln, _ in outside], column=column,
                todo="fix the labels, add the value to classes, or remove the rows"))
        kept = [c if c in spec.classes else "" for c in cells]
    else:
        kept = cells
    present = sorted({c for c in kept if c}, key=_natural_key)
    expected = 2 if spec.type == "binary" else None
    if not present:
        problems.append(problem_line(file, f"{role}: the column has no values" + (
            f" among classes {list(spec.classes)}" if spec.classes is not None else ""), column=column,
            todo="fill it in" + ("" if is_target else " or drop this head")))
    elif len(present) == 1:
        problems.append(problem_line(
            file, f"{role}: a single class {present[0]!r}", column=column,
            todo="a head needs at least 2 classes" + ("" if is_target else "; drop this head")))
    elif expected is not None and len(present) != expected:
        problems.append(problem_line(file, f"{role}: binary needs exactly 2 classes, found {len(present)} "
                                       f"({_values(present)})", column=column,
                                     todo="declare type categorical, or keep two with classes: [a, b]"))
    elif is_target and splits is not None and spec.classes is None and "train" in splits:
        train = {c for c, s in zip(kept, splits) if c and s == "train"}
        unseen = [(ln, c) for ln, c, s in zip(lines, kept, splits) if c and s is not None and c not in train]
        if unseen:
            problems.append(problem_line(
                file, f"target class(es) {_values(sorted({c for _, c in unseen}, key=_natural_key))} never occur "
                      "in the train split", lines=[ln for ln, _ in unseen], column=column,
                todo="the class vocabulary comes from train rows; move such rows to train or list all classes in "
                "target.classes"))
    return problems


# --------------------------------------------------------------------------------------------------------- encoding


def encode_labels(
    table: ManifestTable, spec: ColumnSpec, *, name: str, fit_rows: Sequence[int], strict: bool = False
) -> tuple[TaskSpec, list[int]]:
    """The head's :class:`TaskSpec` and one integer label per table row.

    The vocabulary (categorical/binary: ``spec.classes`` order, else the values of ``fit_rows`` sorted naturally) and
    the bin edges (continuous: :func:`fit_bin_edges` on ``fit_rows``) come from ``fit_rows`` only -- the training
    split -- so validation and test rows never shape the label space. Missing cells and values outside the
    vocabulary become ``IGNORE_INDEX`` (-1); with ``strict`` (the target) they raise ``ValueError`` instead.
    ``fit_rows`` are 0-based row indices into ``table.rows``.
    """
    file = table.path
    try:
        fit = [operator.index(i) for i in fit_rows]
    except TypeError:
        raise ValueError(f"fit_rows: must be integer row indices, got {list(fit_rows)[:_SHOWN]}") from None
    bad = [i for i in fit if not 0 <= i < len(table.rows)]
    if bad:
        raise ValueError(f"fit_rows: indices {bad[:_SHOWN]} are outside the {len(table.rows)} rows of {file}")
    if spec.column not in table.header:
        raise ValueError(column_problem(table, f"{name}: column", spec.column))
    cells = table.column(spec.column)
    lines = table.line_numbers

    if spec.type == "continuous":
        values = [parse_float(c) if c else math.nan for c in cells]
        unparsable = [ln for ln, c, v in zip(lines, cells, values) if c and v is None]
        if unparsable:
            raise ValueError(problem_line(file, f"{name}: not a number", "write a number or leave the cell empty",
                                          unparsable, spec.column))
        tensor = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
        try:
            edges = fit_bin_edges(tensor[fit], spec.num_bins, spec.binning)  # type: ignore[arg-type]
        except ValueError as e:
            raise ValueError(problem_line(file, f"{name}: cannot bin the fit rows ({e})", column=spec.column,
                                          todo="drop this head or use fewer bins")) from None
        labels = [int(x) for x in digitize(tensor, edges)]
        task = TaskSpec(name=name, kind="continuous", class_names=tuple(bin_names(edges)),
                        bin_edges=tuple(float(e) for e in edges))
        if strict:
            missing = [ln for ln, lab in zip(lines, labels) if lab == IGNORE_INDEX]
            if missing:
                raise ValueError(problem_line(file, f"{name}: missing value", "fill it in", missing, spec.column))
        return task, labels

    if spec.classes is not None:
        vocabulary = tuple(spec.classes)
    else:
        vocabulary = tuple(sorted({cells[i] for i in fit if cells[i]}, key=_natural_key))
    try:
        task = TaskSpec(name=name, kind=spec.type, class_names=vocabulary)  # type: ignore[arg-type]
    except ValueError as e:
        raise ValueError(problem_line(file, f"{name}: bad label space from the fit rows ({e})", column=spec.column,
                                      todo="check the column and the split")) from None
    index = {c: k for k, c in enumerate(vocabulary)}
    labels = [index.get(c, IGNORE_INDEX) for c in cells]
    if strict:
        missing = [ln for ln, c in zip(lines, cells) if not c]
        unseen = [ln for ln, c, lab in zip(lines, cells, labels) if c and lab == IGNORE_INDEX]
        problems = []
        if missing:
            problems.append(problem_line(file, f"{name}: missing value", "fill it in", missing, spec.column))
        if unseen:
            problems.append(problem_line(file, f"{name}: value(s) not among the classes {list(vocabulary)}",
                                         "fix the labels or the split", unseen, spec.column))
        if problems:
            raise ValueError("\n".join(problems))
    return task, labels

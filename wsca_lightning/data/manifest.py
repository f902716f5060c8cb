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
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wsca_lightning.data.splits import SPLIT_NAMES, groups_in_several_parts, split_name
from wsca_lightning.problems import ConfigError, Problem, raise_if
from wsca_lightning.tasks import HeadConfig, TaskSpec, is_task_name
from wsca_lightning.wsc.binning import IGNORE_INDEX, bin_names, digitize, fit_bin_edges

__all__ = [
    "DELIMITERS",
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
    "single_class_val_problem",
    "folded_label",
    "spelling_problem",
    "validate_manifest",
]

#: Delimiters recognised when none is given (comma: CSV, semicolon: European Excel, tab: TSV).
DELIMITERS: tuple[str, ...] = (",", ";", "\t")
_SHOWN = 5  # line numbers / values shown per problem before "and N more"


class ManifestError(ConfigError):
    """A manifest (or metadata table) that cannot be used; each problem is keyed by the config key to fix, or
    keyless when it is about the file's content (its message then names the file, lines and column)."""

    def __init__(self, problems: Sequence[str | Problem]) -> None:
        super().__init__([p if isinstance(p, Problem) else Problem("", p) for p in problems])


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
    return f"{file}: {_detail(what, todo, lines, column)}"


def _detail(what: str, todo: str, lines: Sequence[int] = (), column: str | None = None) -> str:
    """:func:`problem_line` without the file."""
    text = what
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
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel's "Unicode Text": every other byte is NUL
        raise ManifestError([problem_line(file, "UTF-16 text, not UTF-8", "save the spreadsheet as 'CSV UTF-8'",
                                          lines=[1])])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ManifestError([problem_line(file, "not UTF-8 text", "save the spreadsheet as 'CSV UTF-8'",
                                          lines=[line])]) from None
    if not text.strip():
        raise ManifestError([f"{file}: the file is empty: it needs a header line naming the columns, then one row "
                             "per image"])
    if "\x00" in text:  # no spreadsheet writes NUL into a CSV; it would reach file paths and crash there
        nul = [k + 1 for k, line in enumerate(text.split("\n")) if "\x00" in line]
        raise ManifestError([problem_line(file, "NUL characters in the text (UTF-16 without a BOM, or not a CSV at "
                                                "all?)", "save the spreadsheet as 'CSV UTF-8'", lines=nul)])
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
    # isdecimal, not isdigit: '²' is a digit that int() refuses, and it must not crash the sort
    return tuple((0, int(p), "") if p.isdecimal() else (1, 0, p.lower()) for p in parts if p), value


def folded_label(value: str) -> str:
    """A class value with case, Unicode width and spacing folded and invisible characters (zero-width space, a stray
    BOM) dropped: ``'Malignant'``, ``'MALIGNANT'`` and ``'malignant\\u200b'`` all fold to ``'malignant'``."""
    folded = unicodedata.normalize("NFKC", value)
    folded = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return " ".join(folded.casefold().split())


def spelling_problem(table: ManifestTable, column: str, *, role: str, classes_key: str = "classes",
                     rows: Sequence[int] | None = None) -> str | None:
    """The problem line when one class of ``column`` is written several ways (``'Malignant'`` beside
    ``'malignant'``), else ``None``: each spelling would silently become a class of its own.

    Each clash lists its spellings, the most frequent first, with their lines. ``rows`` (0-based) limits the check
    to those rows; ``classes_key`` is the config key that fixes the label space (``target.classes``).
    """
    cells = table.column(column)
    indices = range(len(cells)) if rows is None else rows
    spellings: dict[str, dict[str, list[int]]] = {}
    for i in indices:
        if cells[i]:
            spellings.setdefault(folded_label(cells[i]), {}).setdefault(cells[i], []).append(table.line_numbers[i])
    clashes = [sorted(found.items(), key=lambda item: (-len(item[1]), item[1][0]))
               for found in spellings.values() if len(found) > 1]
    if not clashes:
        return None
    clashes.sort(key=lambda clash: clash[0][1][0])  # in file order
    described = _capped([" vs ".join(f"{value!r} ({_lines(lines)})" for value, lines in clash) for clash in clashes],
                        separator="; ")
    example = clashes[0][0][0]
    return problem_line(
        table.path, f"{role}: the same class written in different ways (case, spacing or invisible characters): "
                    f"{described}", column=column,
        todo=f"each spelling would become a class of its own; write every class one way in the table (e.g. "
             f"{example!r} everywhere), or list the classes explicitly with {classes_key} (rows with another "
             "spelling then count as outside the classes)")


def validate_manifest(
    table: ManifestTable,
    *,
    root: str | os.PathLike,
    image_column: str = "image",
    image_pattern: str = "{}",
    target: HeadConfig,
    metadata: Mapping[str, HeadConfig],
    group_column: str | None = None,
    split_column: str | None = None,
    split_values: Mapping[str, str] | None = None,
    check_images: bool = True,
    degenerate: dict[str, str] | None = None,
) -> list[Problem]:
    """Every problem of ``table`` for this head config (empty list: the manifest is usable).

    Problems about the file's content are keyless; problems a config key fixes carry it (``image_column``,
    ``target.column``, ``split_values``, ...). With a ``degenerate`` dict, a metadata head whose column is empty,
    constant or a single class is recorded there (head name -> why) instead of reported. Each content message reads
    ``<file>: <what> (lines 3, 7, ... and N more) [column 'x']: <what to do>``, line numbers being
    those of the file (header = line 1). Checks: referenced columns exist; image cells are present, stay inside
    ``root``, exist, are not repeated and (``check_images``, each file read once: :func:`check_image`) decode,
    hold one frame and do not repeat another row's bytes across groups (:func:`_content_copies_problem`); target cells
    are
    present and give a binary/categorical label space (each class spelled one way, at least 2 classes in a val
    split); continuous metadata parse as numbers (empty = missing); no metadata column is empty or constant or
    spells a class two ways; split cells (after ``split_values``) are train/val/test; group cells are present and no
    group spans two splits. Only reads files.
    """
    file = table.path
    problems: list[Problem] = []
    lines = table.line_numbers

    def found(text: str) -> None:
        problems.append(Problem("", text))

    # --- config-level problems
    if "{}" not in image_pattern:
        found(f"{file}: image_pattern {image_pattern!r} must contain '{{}}' where the cell value goes")
    if target.type not in ("binary", "categorical"):
        problems.append(Problem("target", "type must be binary or categorical (a continuous target would have to be "
                                          f"binned; column {target.column!r} is declared {target.type})"))
    bad_splits = {k: v for k, v in (split_values or {}).items() if str(v).strip().lower() not in SPLIT_NAMES}
    if bad_splits:
        problems.append(Problem("split_values", f"values must be one of {', '.join(SPLIT_NAMES)}, got {bad_splits!r}"))
    for name, spec in metadata.items():
        if not is_task_name(name):
            problems.append(Problem(f"metadata.{name}", f"head name {name!r} must be a non-empty string without '/' "
                                                        "or '.'"))
        if spec.column == target.column:
            problems.append(Problem(f"metadata.{name}.column", f"{spec.column!r} is the target's column; a metadata "
                                                               "head must use another column"))

    # --- referenced columns
    roles: list[tuple[str, Any]] = [("image_column", image_column), ("target.column", target.column)]
    roles += [(f"metadata.{name}.column", spec.column) for name, spec in metadata.items()]
    roles += [(role, col) for role, col in (("group_column", group_column), ("split_column", split_column))
              if col is not None]
    known = set(table.header)
    for role, col in roles:
        if col not in known:
            problems.append(Problem(role, column_problem(table, role, col)))

    def has(col: Any) -> bool:
        return isinstance(col, str) and col in known

    if not table.rows:
        found(f"{file}: no data rows under the header: add one row per image")
        return problems

    # --- splits (needed by the target and group checks)
    splits: list[str | None] | None = None
    if has(split_column) and not bad_splits:
        splits = parse_splits(table, split_column, split_values)
        cells = table.column(split_column)
        missing = [ln for ln, c in zip(lines, cells) if not c]
        unknown = [(ln, c) for ln, c, s in zip(lines, cells, splits) if c and s is None]
        if missing:
            found(problem_line(file, "split missing", "fill in train, val or test", missing, split_column))
        if unknown:
            values = sorted({c for _, c in unknown}, key=_natural_key)
            found(problem_line(
                file, f"unknown split value(s) {_values(values)}", lines=[ln for ln, _ in unknown], column=split_column,
                todo=f"use {', '.join(SPLIT_NAMES)} (case-insensitive), or map the values with split_values, e.g. "
                     f"{{{values[0]!r}: 'train'}}"))
        if not missing and not unknown and "train" not in splits:
            found(problem_line(file, "no row is in the train split", column=split_column,
                                         todo="label vocabularies and bin edges are fitted on train rows; mark some "
                                          "rows train (or map them with split_values)"))

    # --- images
    if has(image_column) and "{}" in image_pattern:
        root_str = os.fspath(root)
        root_real = os.path.realpath(root_str)
        if not os.path.isdir(root_real):
            found(f"{file}: data root {root_str!r} is not a directory: set root to the folder the image "
                            f"paths in column {image_column!r} are relative to")
        else:
            empty, outside, absent, undecodable, multi = [], [], [], [], []
            first_seen: dict[str, int] = {}
            repeated: list[str] = []
            repeated_lines: list[int] = []
            examples: dict[str, str] = {}
            image_groups = table.column(group_column) if has(group_column) else None
            first_content: dict[str, tuple[int, str, str]] = {}  # digest -> (line, cell, group) of its first row
            copies: list[tuple[tuple[int, str, str], tuple[int, str, str]]] = []
            # decoding every image is the slow part of opening a large manifest: a progress bar on a terminal
            cells = tqdm(zip(lines, table.column(image_column), image_groups or [""] * len(lines)),
                         desc="checking images", total=len(lines), unit="image",
                         disable=None if check_images else True)
            for ln, cell, group in cells:
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
                    # one read per file: decoded and hashed from the same bytes (check_image)
                    check = check_image(path)
                    if check.frames > 1:
                        multi.append(ln)
                        examples.setdefault("multi", f"{cell!r} has {check.frames} frames")
                    elif check.error is not None:
                        undecodable.append(ln)
                        examples.setdefault("undecodable", f"{cell!r}: {check.error}")
                    if check.error is None and check.digest is not None:
                        row = (ln, cell, group)
                        earlier = first_content.setdefault(check.digest, row)
                        # a group is never split, so a copy inside one group cannot reach two splits
                        if earlier is not row and (image_groups is None or not group or group != earlier[2]):
                            copies.append((row, earlier))
            if empty:
                found(problem_line(file, "image path missing", "fill in the image or remove the row",
                                             empty, image_column))
            if outside:
                found(problem_line(
                    file, f"image path leaves the data root {root_str!r}, refused (e.g. {examples['outside']!r})",
                    "image paths must point inside root; move the images under root or set root to a folder "
                    "that contains them", outside, image_column))
            if absent:
                found(problem_line(
                    file, f"image file not found under {root_str!r} (e.g. {examples['absent']!r})",
                    "check root, the cell values and image_pattern" + (
                        f" (now {image_pattern!r})" if image_pattern != "{}" else
                        ", e.g. image_pattern='images/{}.png' when cells omit a folder or extension"),
                    absent, image_column))
            if undecodable:
                found(problem_line(
                    file, f"image cannot be decoded (e.g. {examples['undecodable']})",
                    "replace the file with a valid PNG, JPEG, TIFF or DICOM image, or remove the row", undecodable,
                    image_column))
            if multi:
                found(problem_line(
                    file, f"multi-frame image, refused (e.g. {examples['multi']})",
                    "only single-frame images are used: save the frame to train on as its own file and list that "
                    "(several frames: one file and row each, with the same group)", multi, image_column))
            if copies:
                found(_content_copies_problem(file, copies, image_column,
                                                        group_column if image_groups is not None else None))
            if repeated:
                shown = _capped(repeated, separator="; ")
                found(problem_line(
                    file, f"the same image is listed more than once (line {shown})",
                    "keep one row per image (a repeated image inflates its weight and can leak across splits)",
                    column=image_column))

    # --- target
    if has(target.column):
        problems += [Problem("", text) for text in _check_labels(table, target, target.column, is_target=True,
                                                                  splits=splits, split_column=split_column)]

    # --- metadata
    for name, spec in metadata.items():
        if has(spec.column) and spec.column != target.column:
            problems += [Problem("", text) for text in _check_labels(
                table, spec, spec.column, is_target=False, splits=splits, head=f"metadata.{name}",
                degenerate=degenerate)]

    # --- groups
    if has(group_column):
        groups = table.column(group_column)
        missing = [ln for ln, g in zip(lines, groups) if not g]
        if missing:
            found(problem_line(file, "group missing", "fill in the group (e.g. patient id) of every row",
                                         missing, group_column))
        if splits is not None:
            several = groups_in_several_parts(splits, groups)
            leaks = sorted(several, key=_natural_key)
            if leaks:
                described = _capped([f"{g!r} ({', '.join(several[g])})" for g in leaks])
                found(problem_line(
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


class MultiFrameError(ValueError):
    """An image file holding several frames (a TIFF stack, a multi-frame DICOM): which frame to train on is the
    user's decision, so the file is refused instead of silently cut to its first frame."""

    def __init__(self, frames: int, kind: str) -> None:
        self.frames = int(frames)
        super().__init__(f"multi-frame {kind} with {self.frames} frames: only single-frame images are used; save "
                         "the frame to use as its own file and list that")


def is_dicom(path: str | os.PathLike, data: bytes | None = None) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` suffix, or the 128-byte preamble then ``DICM`` (looked
    for in ``data``, the file's bytes, when given; else read from the file)."""
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return True
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read(132)
        except OSError:
            return False
    return len(data) >= 132 and data[128:132] == b"DICM"


_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: elements that mean "absent" when present but empty (pydicom's LUT functions would fail on their None)
_OPTIONAL_DICOM = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as Pillow's convert("L")


def _lut_range(item: Any) -> tuple[float, float]:
    """Output range of a Modality / VOI LUT Sequence item: 0 .. 2**bits - 1, ``bits`` being the third value of its
    LUT Descriptor (PS3.3 C.11.1.1.1, C.11.2.1.1)."""
    return 0.0, float(2 ** int(item.LUTDescriptor[2]) - 1)


def _voi_range(ds: Any) -> tuple[float, float] | None:
    """Output range of the VOI transform :func:`pydicom.pixels.apply_voi_lut` applies to ``ds`` (like it: a VOI LUT
    Sequence before windowing), ``None`` when it applies none."""
    from pydicom.pixels import apply_windowing

    sequence = ds.get("VOILUTSequence")
    if sequence and None not in (sequence[0].get("LUTDescriptor"), sequence[0].get("LUTData")):
        return _lut_range(sequence[0])
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # a window sends everything below it to its lowest output and everything above to its highest: where pydicom
        # sends -inf and +inf is its own output range (which depends on BitsStored, signedness, rescale, a modality
        # LUT), without a second copy of that rule here; the order is kept, so a negative slope still maps right
        with np.errstate(over="ignore"):
            low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
        return float(low), float(high)
    return None


def _extent(values: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of ``values`` as floats (``(inf, -inf)`` when empty)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.min(initial=np.inf)), float(values.max(initial=-np.inf))


def _whole_numbers_as_int(values: np.ndarray) -> np.ndarray:
    """Float values that are all whole numbers as int64 (lossless): a VOI LUT indexes with them, and pydicom warns
    on every float input (a rescaled CT in Hounsfield units is float but whole)."""
    if (np.issubdtype(values.dtype, np.floating) and bool(np.isfinite(values).all())
            and np.array_equal(values, np.rint(values))):
        return values.astype(np.int64)
    return values


def _read_dicom(path: str, data: bytes | None = None) -> torch.Tensor:
    """A ``(1, H, W)`` float32 image in [0, 1] from a single-frame DICOM file (``data``: its bytes, when already
    read); the intensity mapping is documented in :func:`read_grayscale`."""
    pydicom = _pydicom()
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(io.BytesIO(data) if data is not None else path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MultiFrameError(frames, "DICOM")  # checked before pixel_array decodes every frame
    for keyword in _OPTIONAL_DICOM:
        if keyword in ds and ds[keyword].value in (None, "", []):
            del ds[keyword]
    ds.pixel_array_options(as_rgb=False)  # keep YBR as stored: its Y is the luminance
    pixels = np.asarray(ds.pixel_array)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", 0) or 0)
    float_data = "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
    values: np.ndarray
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1 and pixels.ndim == 3:
        # colour: the Modality and VOI LUTs are grayscale transforms in the standard
        values = pixels[..., 0].astype(np.float64) if photometric.startswith("YBR") else pixels[..., :3] @ _LUMA
        low, high = (0.0, float(2 ** bits - 1)) if bits and not float_data else _extent(values)
    else:
        values = apply_modality_lut(pixels, ds)
        window = _voi_range(ds) if photometric in _MONOCHROME else None
        rescaled = ("RescaleSlope" in ds and "RescaleIntercept" in ds
                    and (float(ds.RescaleSlope) != 1.0 or float(ds.RescaleIntercept) != 0.0))
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        if window is not None:
            values = apply_voi_lut(_whole_numbers_as_int(values), ds)
            low, high = window
        elif ds.get("ModalityLUTSequence"):
            low, high = _lut_range(ds.ModalityLUTSequence[0])
        elif rescaled or signed or float_data or not bits:
            # no meaningful nominal range (a rescaled or signed 16-bit range would leave the image a thin band)
            low, high = _extent(values)
        else:
            low, high = 0.0, float(2 ** bits - 1)
    if high == low:
        pixels = np.zeros(values.shape)
    else:
        pixels = np.clip((values.astype(np.float64) - low) / (high - low), 0.0, 1.0)
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
                      image_column: str, image_pattern: str = "{}") -> tuple[ManifestTable, list[Problem]]:
    """``table`` with one new column per ``dicom_columns`` entry (new column -> DICOM keyword, optionally indexed:
    ``PixelSpacing[1]``), each cell the header value of the row's image as a string (``""`` when the element is
    absent or the image is not DICOM), and the config problems (keyed ``dicom_columns.<name>``).

    Only headers are read (``stop_before_pixels``); the table is returned unchanged when there are problems.
    """
    problems: list[Problem] = []
    if not isinstance(dicom_columns, Mapping):
        return table, [Problem("dicom_columns", f"must be a mapping of new column -> DICOM keyword, got "
                                                f"{dicom_columns!r}")]
    if not dicom_columns:
        return table, []
    pydicom = _pydicom()
    from pydicom.datadict import tag_for_keyword

    wanted: list[tuple[str, str, int | None]] = []
    for name, key in dicom_columns.items():
        if not isinstance(name, str) or not name:
            problems.append(Problem("dicom_columns", f"column names must be non-empty strings, got {name!r}"))
            continue
        if name in table.header:
            problems.append(Problem(f"dicom_columns.{name}", f"the manifest already has a column '{name}'"))
            continue
        match = _DICOM_KEY.match(key) if isinstance(key, str) else None
        if match is None:
            problems.append(Problem(f"dicom_columns.{name}", "must be a DICOM keyword, optionally indexed "
                                                             f"(e.g. PixelSpacing[0]), got {key!r}"))
            continue
        if tag_for_keyword(match.group(1)) is None:
            problems.append(Problem(f"dicom_columns.{name}", f"unknown DICOM keyword '{match.group(1)}'"))
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


_UNSIGNED_16 = ("I;16", "I;16L", "I;16B", "I;16N")  # Pillow's unsigned 16-bit grayscale modes


def _own_range(values: np.ndarray) -> np.ndarray:
    """``values`` mapped to [0, 1] by their own min and max (all zeros when constant)."""
    low, high = _extent(values)
    return np.zeros_like(values) if not high > low else (values - low) / (high - low)


def read_grayscale(path: str, data: bytes | None = None) -> torch.Tensor:
    """A ``(1, H, W)`` float32 image in [0, 1] from a single-frame image file. ``data``: the file's bytes when the
    caller has read them already (they are decoded instead of reading the file a second time).

    PNG, JPEG, TIFF, BMP, ... are decoded by Pillow (a torchvision dependency; it reads 16-bit and TIFF files, which
    torchvision's own decoders, deprecated since 0.29, do not all cover):

    * 8-bit grayscale: / 255; colour: luminance (ITU-R 601) / 255;
    * unsigned 16-bit: / 65535, the dtype's range;
    * signed 16-bit and 32-bit integer (Pillow mode ``I``; CT/MR exports): the image's own min -> 0, max -> 1 (a
      constant image -> 0). Their values are whatever the exporter chose (Hounsfield units, raw counts) and fill a
      small, arbitrary part of the dtype's range: scaled by int16's range a CT slice would use about 6 % of [0, 1];
    * 32-bit float: taken as already in [0, 1] and clipped to it.

    DICOM (``.dcm``/``.dicom`` or the ``DICM`` magic; needs the optional ``dicom`` extra, pydicom) follows the
    standard's grayscale pipeline with pydicom's own functions:

    1. modality transform, :func:`pydicom.pixels.apply_modality_lut`: the Modality LUT Sequence, else RescaleSlope
       and RescaleIntercept;
    2. VOI transform, :func:`pydicom.pixels.apply_voi_lut` (first view): the VOI LUT Sequence, else WindowCenter /
       WindowWidth with the VOILUTFunction (LINEAR, LINEAR_EXACT, SIGMOID);
    3. to [0, 1] by the output range of the last transform applied: after a VOI LUT 0 .. 2**bits - 1 (its LUT
       Descriptor), after windowing the window's output range as pydicom defines it (below the window -> 0, above
       -> 1); without a VOI transform, the modality output's range: a Modality LUT's 0 .. 2**bits - 1, else the
       image's own min/max for rescaled, signed or float data, else (unsigned integers as stored)
       0 .. 2**BitsStored - 1;
    4. MONOCHROME1 inverted (``1 - x``), so that high means bright for every file.

    Colour DICOM (RGB: luminance; YBR: its Y) skips steps 1-2 (grayscale transforms in the standard) and is scaled by
    0 .. 2**BitsStored - 1.

    Multi-frame files (TIFF/GIF/PNG stacks, DICOM with NumberOfFrames > 1) raise :class:`MultiFrameError` naming
    the frame count: which frame to train on is the user's call. An MPO file (a camera JPEG with previews) is read as
    its first, primary image.
    """
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    if is_dicom(path, data):
        return _read_dicom(path, data)
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError("not an image format Pillow can read (PNG, JPEG, TIFF, BMP, ...); a DICOM file needs a "
                         ".dcm suffix or the DICM preamble") from None
    with image as im:
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1 and im.format != "MPO":
            raise MultiFrameError(frames, f"{im.format or 'image'} file")
        im.load()
        if im.mode in _UNSIGNED_16:
            pixels = np.asarray(im, dtype=np.float32) / 65535.0
        elif im.mode == "I" or im.mode.startswith("I;"):
            pixels = _own_range(np.asarray(im, dtype=np.float64))
        elif im.mode == "F":
            pixels = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        else:
            pixels = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).unsqueeze(0)


@dataclass(frozen=True)
class ImageCheck:
    """What reading one image file once found (:func:`check_image`)."""

    digest: str | None  # SHA-256 of the file's bytes; None when the file cannot be read
    error: str | None  # why it cannot be decoded, one line; None when it decodes
    frames: int = 1  # > 1: a multi-frame file (refused; ``error`` says so)


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), capped at 160 characters."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def check_image(path: str) -> ImageCheck:
    """Read ``path`` once, hash its bytes (the same image under two names is found by its digest) and decode them as
    the training loader would (:func:`read_grayscale`)."""
    import hashlib

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return ImageCheck(None, one_line(e))
    digest = hashlib.sha256(data).hexdigest()
    try:
        read_grayscale(path, data)
    except MultiFrameError as e:
        return ImageCheck(digest, one_line(e), e.frames)
    except Exception as e:  # noqa: BLE001 -- any failure means the loader would fail on this file
        return ImageCheck(digest, one_line(e))
    return ImageCheck(digest, None)


def _content_copies_problem(file: str, copies: Sequence[tuple[tuple[int, str, str], tuple[int, str, str]]],
                            image_column: str, group_column: str | None) -> str:
    """The problem line for identical image bytes under two names (``(line, cell, group)`` of each copy and of the
    row it repeats).

    Identical content is refused unless both rows have the same, non-empty group: a group is never split, so such a
    copy cannot reach both train and val (it only weighs twice, like a repeated view of one patient). In two groups,
    or without ``group_column`` (each row its own group), it could, so it is refused even when both rows sit in one
    split now: two patients sharing an image is a labelling error, and a re-split would move them apart.
    """
    def described(row: tuple[int, str, str]) -> str:
        line, cell, group = row
        return f"line {line} {cell!r}" + (f" of group {group!r}" if group_column is not None else "")

    shown = _capped([f"{described(a)} repeats {described(b)}" for a, b in copies], separator="; ")
    todo = ("identical images in two groups can land in both train and val: remove one of each pair, or give both "
            f"rows the same group in column {group_column!r} if they belong to one patient" if group_column is not None
            else "identical images can land in both train and val: remove one of each pair, or set group_column and "
            "give both rows the same group if they belong to one patient")
    return problem_line(
        file, f"the same image content under two names, {len(copies)} time(s) ({shown}; identical file bytes)",
        todo, column=image_column)


def _fit_edges(values: torch.Tensor, spec: HeadConfig) -> torch.Tensor:
    """:func:`fit_bin_edges` for a continuous head, also refusing edges that do not bin: a span beyond float range
    (-1e308 .. 1e308) or below its resolution gives inf/nan or repeated edges, which would put every value in one
    bin without a word. Raises ``ValueError`` with the reason."""
    edges = fit_bin_edges(values, spec.num_bins, spec.binning)  # type: ignore[arg-type]
    if not (bool(torch.isfinite(edges).all()) and bool((edges[1:] > edges[:-1]).all())):
        finite = values[torch.isfinite(values)]
        raise ValueError(f"values {float(finite.min()):g} .. {float(finite.max()):g} give unusable bin edges "
                         f"{edges.tolist()}")
    return edges


def _check_labels(table: ManifestTable, spec: HeadConfig, column: str, *, is_target: bool,
                  splits: list[str | None] | None, head: str = "target", split_column: str | None = None,
                  degenerate: dict[str, str] | None = None) -> list[str]:
    """Problems of one head's column: unparsable/missing cells, one class spelled several ways and a degenerate
    label space (no value, a single class -- for the target also a single class in the val split). A degenerate
    metadata head goes into ``degenerate`` (head name -> why) instead, when given."""
    file = table.path
    lines = table.line_numbers
    cells = table.column(column)
    problems: list[str] = []
    name = head.split(".", 1)[1] if not is_target else head
    role = "target" if is_target else f"metadata head {name!r}"

    def unusable(what: str, todo: str) -> None:
        """A label space no head can learn: reported, or set aside for a metadata head the caller may drop."""
        if not is_target and degenerate is not None:
            degenerate.setdefault(name, _detail(what, todo, column=column))
        else:
            problems.append(problem_line(file, f"{role}: {what}", todo, column=column))

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
            unusable("the column has no values", todo="fill it in or drop this head")
        elif len(values) == 1:
            unusable(f"every value is {next(iter(values))!r}", todo="a constant cannot be binned; drop this head")
        elif train is not None and len(train) < 2:
            unusable("fewer than 2 distinct values in the train split",
                     todo="bin edges are fitted on train rows; drop this head or change the split")
        else:  # fit the edges now, as encode_labels will, so that a passing table also encodes
            fit = [v for c, s in zip(cells, splits or [None] * len(cells))  # with repeats: quantiles count them
                   if c and (train is None or s == "train") and (v := parse_float(c)) is not None]
            try:
                _fit_edges(torch.tensor(fit, dtype=torch.float64), spec)
            except ValueError as e:
                where = "" if train is None else " train"
                unusable(f"cannot bin the{where} values ({e})",
                         todo="use fewer bins, binning: equal_width, or rescale the column; or drop this head")
        return problems

    # binary / categorical: any non-empty string is a class
    missing = [ln for ln, c in zip(lines, cells) if not c]
    if is_target and missing:
        problems.append(problem_line(file, "target missing", "fill in the label or remove the row", missing, column))
    if spec.classes is None:
        spelled = spelling_problem(table, column, role=role, classes_key=f"{head}.classes")
        if spelled is not None:  # the class counts below would count the spellings: report only this
            return [*problems, spelled]
    if spec.classes is not None:
        outside = [(ln, c) for ln, c in zip(lines, cells) if c and c not in spec.classes]
        if is_target and outside:
            folded = {folded_label(k): k for k in spec.classes}
            respelled = sorted({f"{c!r} is {folded[folded_label(c)]!r} spelled differently" for _, c in outside
                                if folded_label(c) in folded})
            problems.append(problem_line(
                file, f"target value(s) {_values(sorted({c for _, c in outside}, key=_natural_key))} not in "
                      f"classes {list(spec.classes)}" + (f" ({_capped(respelled)})" if respelled else ""),
                lines=[ln for ln, _ in outside], column=column,
                todo="fix the labels, add the value to classes, or remove the rows"))
        kept = [c if c in spec.classes else "" for c in cells]
    else:
        kept = cells
    present = sorted({c for c in kept if c}, key=_natural_key)
    expected = 2 if spec.type == "binary" else None
    if not present:
        unusable("the column has no values" + (
            f" among classes {list(spec.classes)}" if spec.classes is not None else ""),
            todo="fill it in" + ("" if is_target else " or drop this head"))
    elif len(present) == 1:
        unusable(f"a single class {present[0]!r}",
                 todo="a head needs at least 2 classes" + ("" if is_target else "; drop this head"))
    elif expected is not None and len(present) != expected:
        unusable(f"binary needs exactly 2 classes, found {len(present)} ({_values(present)})",
                 todo="declare type categorical, or keep two with classes: [a, b]")
    elif (not is_target and splits is not None and "train" in splits
          and len({c for c, s in zip(kept, splits) if c and s == "train"}) < 2):
        # the label space is fitted on train rows (encode_labels): one class there is no head to learn
        unusable("fewer than 2 classes in the train split",
                 todo="classes are fitted on train rows; drop this head or change the split")
    elif is_target and splits is not None and spec.classes is None and "train" in splits:
        train = {c for c, s in zip(kept, splits) if c and s == "train"}
        unseen = [(ln, c) for ln, c, s in zip(lines, kept, splits) if c and s is not None and c not in train]
        if unseen:
            problems.append(problem_line(
                file, f"target class(es) {_values(sorted({c for _, c in unseen}, key=_natural_key))} never occur "
                      "in the train split", lines=[ln for ln, _ in unseen], column=column,
                todo="the class vocabulary comes from train rows; move such rows to train or list all classes in "
                "target.classes"))
    if is_target and splits is not None and len(present) >= 2:
        where = f" (split column {split_column!r})" if split_column is not None else ""
        single = single_class_val_problem(
            table, column, splits, classes=spec.classes,
            todo=f"mark rows of other classes val too{where}, or mark no row val and set val_fraction to carve a "
                 "stratified val split from train")
        if single is not None:
            problems.append(single)
    return problems


def single_class_val_problem(table: ManifestTable, column: str, splits: Sequence[str | None], *,
                             classes: Sequence[str] | None = None, todo: str) -> str | None:
    """The problem line when the val rows (``splits[i] == "val"``) hold a single class of the target ``column``
    (values outside ``classes``, when given, do not count), else ``None``.

    Like a single-class column, a single-class val split is refused before training: its AUROC is nan, so model
    selection on it is blind. ``todo`` says how to fix the split (it depends on where the split came from).
    """
    cells = table.column(column)
    val = [(ln, c) for ln, c, s in zip(table.line_numbers, cells, splits)
           if c and s == "val" and (classes is None or c in classes)]
    present = {c for _, c in val}
    if len(present) != 1:
        return None
    return problem_line(table.path, f"target: a single class {next(iter(present))!r} in the val split",
                        column=column, lines=[ln for ln, _ in val],
                        todo=f"validation needs at least 2 classes (with one, val AUROC is nan); {todo}")


# --------------------------------------------------------------------------------------------------------- encoding


def encode_labels(
    table: ManifestTable, spec: HeadConfig, *, name: str, fit_rows: Sequence[int], strict: bool = False
) -> tuple[TaskSpec, list[int]]:
    """The head's :class:`TaskSpec` and one integer label per table row.

    The vocabulary (categorical/binary: ``spec.classes`` order, else the values of ``fit_rows`` sorted naturally) and
    the bin edges (continuous: :func:`fit_bin_edges` on ``fit_rows``) come from ``fit_rows`` only -- the training
    split -- so validation and test rows never shape the label space. Missing cells and values outside the
    vocabulary become ``IGNORE_INDEX`` (-1); with ``strict`` (the target) they raise instead. Problems of the column
    raise :class:`~wsca_lightning.problems.ConfigError` without a key (the caller knows the head's key).
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
        raise ConfigError(Problem("", column_problem(table, f"{name}: column", spec.column)))
    cells = table.column(spec.column)
    lines = table.line_numbers

    if spec.type == "continuous":
        values = [parse_float(c) if c else math.nan for c in cells]
        unparsable = [ln for ln, c, v in zip(lines, cells, values) if c and v is None]
        if unparsable:
            raise ConfigError.at("", problem_line(file, f"{name}: not a number",
                                                  "write a number or leave the cell empty", unparsable, spec.column))
        tensor = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
        try:
            edges = _fit_edges(tensor[fit], spec)
        except ValueError as e:
            raise ConfigError.at("", problem_line(file, f"{name}: cannot bin the fit rows ({e})", column=spec.column,
                                          todo="drop this head, use fewer bins or rescale the column")) from None
        labels = [int(x) for x in digitize(tensor, edges)]
        task = TaskSpec(name=name, kind="continuous", class_names=tuple(bin_names(edges)),
                        bin_edges=tuple(float(e) for e in edges))
        if strict:
            missing = [ln for ln, lab in zip(lines, labels) if lab == IGNORE_INDEX]
            if missing:
                raise ConfigError.at("", problem_line(file, f"{name}: missing value", "fill it in", missing,
                                                      spec.column))
        return task, labels

    if spec.classes is not None:
        vocabulary = tuple(spec.classes)
    else:
        spelled = spelling_problem(table, spec.column, role=name)
        if spelled is not None:  # 'Malignant' beside 'malignant' would silently be two classes
            raise ConfigError.at("", spelled)
        vocabulary = tuple(sorted({cells[i] for i in fit if cells[i]}, key=_natural_key))
    try:
        task = TaskSpec(name=name, kind=spec.type, class_names=vocabulary)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError.at("", problem_line(file, f"{name}: bad label space from the fit rows ({e})",
                                              column=spec.column, todo="check the column and the split")) from None
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
        raise_if([Problem("", text) for text in problems])
    return task, labels

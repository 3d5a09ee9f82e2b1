"""Labelled tables (CSV, TSV, JSON, JSON lines, Parquet), read with every problem named by file and line.

:func:`read_table` reads a table with ``datasets.load_dataset`` after checking the file itself, so that
every problem is one :class:`BertlabError` naming the file and line: a missing file, invalid UTF-8
(found by scanning the bytes line by line), a row with the wrong number of fields, invalid JSON.
Delimited files are read with every column as text (``keep_default_na=False``: "NA" and "null" stay
text) and a UTF-8 byte-order mark is dropped from the first column name (MRPC's TSVs have one).

Row locations: a data row ``i`` of a CSV/TSV file is on line ``i + 2`` when the file has no blank
lines and no line breaks inside quoted fields (header = line 1); the reader records the real start
line of every row, so messages stay right when it has. JSON lines files count lines from 1; rows of a
JSON array or a Parquet file are named ``row N``.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from bertlab.errors import BertlabError

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "QUOTING",
    "RowLocator",
    "detect_format",
    "quiet_datasets",
    "read_table",
    "require_columns",
]

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
_BOM = "\ufeff"

# Long fields (whole documents) are legitimate; the csv module's default limit is 128 KiB.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))


class RowLocator:
    """``locator(i)`` -> where data row ``i`` of a table is: ``"PATH:LINE"``, or ``"PATH: row N"``."""

    def __init__(self, path: str | Path, lines: Sequence[int] | None = None, first_line: int | None = 2):
        self.path = str(path)
        self.lines = None if lines is None else np.asarray(lines, dtype=np.int64)
        self.first_line = first_line  # line of row 0 when the lines are not known (None: name rows)

    def line(self, i: int) -> int | None:
        if self.lines is not None and 0 <= i < len(self.lines):
            return int(self.lines[i])
        return None if self.first_line is None else self.first_line + i

    def __call__(self, i: int) -> str:
        line = self.line(i)
        return f"{self.path}: row {i + 1}" if line is None else f"{self.path}:{line}"

    def subset(self, indices: Sequence[int]) -> Callable[[int], str]:
        """The locator of a subset of the rows (row ``j`` of the subset is row ``indices[j]``)."""
        return lambda j: self(int(indices[j]))


def detect_format(path: str | Path, format: str | None = None) -> str:
    """The table format: ``format`` when given, else from the file extension."""
    if format is not None:
        fmt = str(format).lower().lstrip(".")
        fmt = {"ndjson": "jsonl", "jsonlines": "jsonl", "pq": "parquet"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise BertlabError(f"{path}: format={format!r} is not one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise BertlabError(
            f"{path}: cannot tell the table format from the extension {suffix or '(none)'!r}; "
            f"set format to one of {', '.join(FORMATS)}"
        )
    return _EXTENSIONS[suffix]


def _codec(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise BertlabError(f"unknown text encoding {encoding!r}") from None


def _text_lines(path: Path, encoding: str) -> Iterator[str]:
    """Decoded lines of ``path`` (line ends kept, a leading BOM dropped).

    UTF-8 is checked line by line on the bytes, so an invalid byte is reported with its line. Other
    encodings are decoded by Python's text reader (no line number on error: it decodes in blocks).
    """
    codec = _codec(encoding)
    if codec in ("utf-8", "utf-8-sig"):
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise BertlabError(
                        f"{path}:{lineno}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                        "of the line); re-save the file as UTF-8 or set encoding"
                    ) from None
        return
    try:
        with open(path, encoding=encoding, newline="") as f:
            for lineno, line in enumerate(f, start=1):
                yield line.lstrip(_BOM) if lineno == 1 else line
    except UnicodeDecodeError as e:
        raise BertlabError(f"{path}: not valid {encoding} ({e.reason})") from None


def _has_utf8_bom(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(3) == codecs.BOM_UTF8


def _is_blank(row: list[str]) -> bool:
    # pandas skips empty and whitespace-only lines (skip_blank_lines=True).
    return not row or (len(row) == 1 and not row[0].strip())


def _scan_delimited(path: Path, sep: str, quoting: int, encoding: str) -> tuple[list[str], list[int]]:
    """(header, start line of each data row); every row must have as many fields as the header."""
    reader = csv.reader(_text_lines(path, encoding), delimiter=sep, quoting=quoting, strict=False)
    header: list[str] | None = None
    starts: list[int] = []
    previous = 0
    try:
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if _is_blank(row):
                continue
            if header is None:
                header = [name.lstrip(_BOM) for name in row]
                seen: set[str] = set()
                for name in header:
                    if name in seen:
                        raise BertlabError(
                            f"{path}:{start}: column name {name!r} appears twice in the header"
                        )
                    seen.add(name)
                continue
            if len(row) != len(header):
                hint = ""
                if quoting != csv.QUOTE_NONE and reader.line_num > start:
                    # A field that starts with a quote swallowed the line ends up to the next quote:
                    # GLUE-style TSVs use quotes as plain text.
                    hint = (
                        f" (a quoted field runs over lines {start}-{reader.line_num}: if quotes are plain "
                        "text in this file, as in GLUE's TSVs, set data.quoting=none)"
                    )
                elif quoting != csv.QUOTE_NONE and any('"' in field for field in row):
                    hint = " (the line has quotes: if they are plain text, set data.quoting=none)"
                raise BertlabError(f"{path}:{start}: expected {len(header)} fields, saw {len(row)}{hint}")
            starts.append(start)
    except csv.Error as e:
        raise BertlabError(f"{path}:{reader.line_num}: cannot parse the line ({e})") from None
    if header is None:
        raise BertlabError(f"{path}: the file is empty (no header line)")
    return header, starts


def _scan_json_lines(path: Path, encoding: str, lines: Iterator[str] | None = None) -> list[int]:
    """Start line of each record; every non-blank line must be one JSON object."""
    starts: list[int] = []
    for lineno, line in enumerate(lines if lines is not None else _text_lines(path, encoding), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise BertlabError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise BertlabError(f"{path}:{lineno}: expected a JSON object, found {type(record).__name__}")
        starts.append(lineno)
    return starts


def _scan_json(path: Path, encoding: str) -> tuple[str, list[int] | None]:
    """``("array", None)`` for a JSON array of objects, ``("lines", starts)`` for JSON lines."""
    lines = list(_text_lines(path, encoding))
    text = "".join(lines)
    if not text.lstrip().startswith("["):
        return "lines", _scan_json_lines(path, encoding, iter(lines))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BertlabError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise BertlabError(f"{path}: row {i + 1} is not a JSON object but {type(record).__name__}")
    return "array", None


def _explain(exc: BaseException, path: Path, encoding: str) -> BertlabError:
    """A one-line error for what ``load_dataset`` raised (the real cause may be a few links down)."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        if isinstance(e, UnicodeDecodeError):
            return BertlabError(f"{path}: not valid {encoding} ({e.reason})")
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            return BertlabError(f"{path}:{m.group(2)}: expected {m.group(1)} fields, saw {m.group(3)}")
        e = e.__cause__ or e.__context__
    detail = " ".join(str(seen[-1]).split())[:300]
    return BertlabError(f"cannot read {path}: {type(seen[-1]).__name__}: {detail}")


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No datasets progress bars for these small reads (restored afterwards)."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _load(
    builder: str, path: Path, text_encoding: str, cache_dir: str | None, **kwargs: Any
) -> datasets.Dataset:
    try:
        with quiet_datasets():
            return datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache_dir, **kwargs
            )
    except BertlabError:
        raise
    except Exception as e:  # anything the readers raise is about this file
        raise _explain(e, path, text_encoding) from e


def read_table(
    path: str | Path,
    format: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    quoting: str = "minimal",
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, RowLocator]:
    """A labelled table as a ``datasets.Dataset``, and a :class:`RowLocator` that names the file line
    of each row; every problem is a :class:`BertlabError`.

    ``format``: csv, tsv, json (an array of objects, or JSON lines), jsonl or parquet; by default from
    the extension. ``delimiter`` overrides the csv/tsv separator. ``quoting="none"`` reads quote
    characters as text (SST-2, MRPC). CSV/TSV columns are all text.
    """
    path = Path(path)
    fmt = detect_format(path, format)
    if quoting not in QUOTING:
        raise BertlabError(f"quoting={quoting!r} is not one of {', '.join(QUOTING)}")
    if not path.exists():
        raise BertlabError(f"file not found: {path}")
    if not path.is_file():
        raise BertlabError(f"not a file: {path}")

    if fmt in ("csv", "tsv"):
        sep = delimiter if delimiter is not None else ("," if fmt == "csv" else "\t")
        if len(sep) != 1:
            raise BertlabError(f"{path}: delimiter must be one character, got {sep!r}")
        header, starts = _scan_delimited(path, sep, QUOTING[quoting], encoding)
        bom = _codec(encoding) in ("utf-8", "utf-8-sig") and _has_utf8_bom(path)
        ds = _load(
            "csv",
            path,
            encoding,
            cache_dir,
            sep=sep,
            quoting=QUOTING[quoting],
            keep_default_na=False,
            encoding="utf-8-sig" if bom else encoding,
            header=0,
            column_names=header,  # our names (BOM-free) replace the header row
            features=datasets.Features({name: datasets.Value("string") for name in header}),
        )
        lines: list[int] | None = starts
        first_line: int | None = 2
    elif fmt == "parquet":
        ds = _load("parquet", path, encoding, cache_dir)
        lines, first_line = None, None
    else:
        kind, lines = (
            ("lines", _scan_json_lines(path, encoding)) if fmt == "jsonl" else _scan_json(path, encoding)
        )
        ds = _load("json", path, encoding, cache_dir, encoding=encoding)
        first_line = 1 if kind == "lines" else None

    renames = {c: c.lstrip(_BOM) for c in ds.column_names if c.startswith(_BOM)}
    if renames:
        ds = ds.rename_columns(renames)
    if lines is not None and len(lines) != len(ds):
        # The two parsers disagree on what a row is (an odd blank line): fall back to counting rows.
        log.warning("%s: read %d rows but counted %d; line numbers may be off", path, len(ds), len(lines))
        lines = None
    return ds, RowLocator(path, lines, first_line)


def require_columns(ds: datasets.Dataset, path: str | Path, columns: dict[str, str | None]) -> None:
    """Each ``option -> column`` must be a column of ``ds``; the error names the columns there are."""
    for option, column in columns.items():
        if column is not None and column not in ds.column_names:
            raise BertlabError(
                f"{path}: no column {column!r} (set by {option}); the columns are {ds.column_names}"
            )

"""Labelled tables (CSV, TSV, JSON, JSON lines, Parquet) and the classification LightningDataModule.

:func:`read_table` reads a table with ``datasets.load_dataset`` after checking the file itself, so that
every problem is one :class:`BertlabError` naming the file and line: a missing file, invalid UTF-8
(found by scanning the bytes line by line), a row with the wrong number of fields, invalid JSON.
Delimited files are read with every column as text (``keep_default_na=False``: "NA" and "null" stay
text) and a UTF-8 byte-order mark is dropped from the first column name (MRPC's TSVs have one).

:class:`ClassifyDataModule` turns the tables into batches for sentence and sentence-pair
classification: ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]`` (token types 0 then 1), truncated to
``max_seq_length`` (longest first for pairs), padded to the longest row of each batch. Training
batches hold rows of similar length (see :class:`LengthGroupedBatchSampler`); their order is fixed by
``(seed, epoch)`` and the loader's position is saved in Lightning checkpoints, so training resumes
mid-epoch on the same batch. Evaluation batches are sorted by length; every batch carries ``index``
(the row number in its file), so outputs can be put back in file order.

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
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from bertlab.data.sampler import EpochPosition, ResumableDataLoader, ResumableSampler
from bertlab.data.tokenizer import load_tokenizer, special_token_ids
from bertlab.errors import BertlabError

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "PROBLEM_TYPES",
    "ClassifyCollator",
    "ClassifyDataModule",
    "EncodedDataset",
    "FixedBatchSampler",
    "LengthGroupedBatchSampler",
    "RowLocator",
    "detect_format",
    "encode_pairs",
    "read_table",
    "read_table_with_locations",
    "sort_labels",
    "truncate_pair",
]

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
PROBLEM_TYPES = ("single_label", "multi_label", "regression")
QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
_BOM = "\ufeff"
_INT = re.compile(r"[+-]?\d+\Z")
_SHOWN_LABELS = 20

# Long fields (whole documents) are legitimate; the csv module's default limit is 128 KiB.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))


# ----------------------------------------------------------------------------------- reading


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
                raise BertlabError(f"{path}:{start}: expected {len(header)} fields, saw {len(row)}")
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
def _quiet() -> Iterator[None]:
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
        with _quiet():
            return datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache_dir, **kwargs
            )
    except BertlabError:
        raise
    except Exception as e:  # anything the readers raise is about this file
        raise _explain(e, path, text_encoding) from e


def read_table_with_locations(
    path: str | Path,
    format: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    quoting: str = "minimal",
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, RowLocator]:
    """:func:`read_table`, plus a :class:`RowLocator` that names the file line of each row."""
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


def read_table(
    path: str | Path,
    format: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    quoting: str = "minimal",
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Read a labelled table into a ``datasets.Dataset``; raise :class:`BertlabError` on bad input.

    ``format``: csv, tsv, json (an array of objects, or JSON lines), jsonl or parquet; by default from
    the extension. ``delimiter`` overrides the csv/tsv separator. ``quoting="none"`` reads quote
    characters as text (SST-2, MRPC). CSV/TSV columns are all text.
    """
    return read_table_with_locations(path, format, delimiter, encoding, quoting, cache_dir)[0]


def require_columns(ds: datasets.Dataset, path: str | Path, columns: dict[str, str | None]) -> None:
    """Each ``option -> column`` must be a column of ``ds``; the error names the columns there are."""
    for option, column in columns.items():
        if column is not None and column not in ds.column_names:
            raise BertlabError(
                f"{path}: no column {column!r} (set by {option}); the columns are {ds.column_names}"
            )


# ------------------------------------------------------------------------------ labels


def sort_labels(labels: Sequence[str]) -> list[str]:
    """Distinct labels, sorted numerically when all are integers ("2" < "10"), else as text."""
    distinct = set(labels)
    if distinct and all(_INT.match(x) for x in distinct):
        return sorted(distinct, key=lambda x: (int(x), x))
    return sorted(distinct)


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _shown(labels: Sequence[str]) -> str:
    head = ", ".join(repr(x) for x in labels[:_SHOWN_LABELS])
    more = f", ... ({len(labels)} in all)" if len(labels) > _SHOWN_LABELS else ""
    return f"[{head}{more}]"


def _parse_labels(
    values: list[Any], problem_type: str, column: str, separator: str | None, where: RowLocator
) -> list[Any]:
    """Row labels as str (single_label), list[str] (multi_label) or float (regression)."""
    out: list[Any] = []
    for i, value in enumerate(values):
        if problem_type == "multi_label":
            if value is None:
                items: list[Any] = []
            elif isinstance(value, list | tuple):
                items = list(value)
            else:
                text = str(value).strip()
                if text.startswith("["):
                    try:
                        items = json.loads(text)
                    except json.JSONDecodeError:
                        raise BertlabError(
                            f"{where(i)}: column {column!r}: {text!r} is not a JSON list of labels"
                        ) from None
                    if not isinstance(items, list):
                        raise BertlabError(f"{where(i)}: column {column!r}: {text!r} is not a list")
                else:
                    items = text.split(separator if separator else ",")
            labels = [_label_text(x) for x in items if x is not None]
            out.append(list(dict.fromkeys(x for x in labels if x)))
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            raise BertlabError(f"{where(i)}: empty label in column {column!r}")
        if problem_type == "regression":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise BertlabError(
                    f"{where(i)}: label {value!r} in column {column!r} is not a number"
                ) from None
            if not math.isfinite(number):
                raise BertlabError(f"{where(i)}: label {value!r} in column {column!r} is not finite")
            out.append(number)
        else:
            out.append(_label_text(value))
    return out


# ---------------------------------------------------------------------------- encoding


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Longest-first truncation: drop the last token of the longer sequence (B on ties) until
    ``len_a + len_b <= budget``; returns the kept lengths (closed form of that loop)."""
    excess = len_a + len_b - budget
    if excess <= 0:
        return len_a, len_b
    if len_a != len_b:
        take = min(abs(len_a - len_b), excess)
        if len_a > len_b:
            len_a -= take
        else:
            len_b -= take
        excess -= take
    return len_a - excess // 2, len_b - (excess + 1) // 2


def encode_pairs(
    tokenizer: Any,
    texts: list[str],
    pairs: list[str] | None,
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
) -> dict[str, list]:
    """``input_ids`` ([CLS] A [SEP] (B [SEP])) and ``a_len`` (length of [CLS] A [SEP]) per row."""
    enc_a = tokenizer.encode_batch(texts, add_special_tokens=False)
    input_ids: list[list[int]] = []
    a_lens: list[int] = []
    if pairs is None:
        budget = max_seq_length - 2
        for e in enc_a:
            ids = [cls_id, *e.ids[:budget], sep_id]
            input_ids.append(ids)
            a_lens.append(len(ids))
    else:
        enc_b = tokenizer.encode_batch(pairs, add_special_tokens=False)
        budget = max_seq_length - 3
        for ea, eb in zip(enc_a, enc_b):
            la, lb = truncate_pair(len(ea.ids), len(eb.ids), budget)
            ids = [cls_id, *ea.ids[:la], sep_id, *eb.ids[:lb], sep_id]
            input_ids.append(ids)
            a_lens.append(la + 2)
    return {"input_ids": input_ids, "a_len": a_lens, "length": [len(x) for x in input_ids]}


def _encode_batch(
    batch: dict[str, list],
    tokenizer: Any,
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
) -> dict[str, list]:
    return encode_pairs(tokenizer, batch["text"], batch.get("pair"), max_seq_length, cls_id, sep_id)


class EncodedDataset(TorchDataset):
    """Arrow-backed encoded rows; each item also carries its row index (``index``)."""

    def __init__(self, table: datasets.Dataset) -> None:
        self.table = table
        self.lengths = np.asarray(table["length"], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # One Arrow read per batch instead of one per row.
        indices = [int(i) for i in indices]
        cols = self.table[indices]
        names = [n for n in ("input_ids", "a_len", "label") if n in cols]
        return [{"index": i, **{n: cols[n][j] for n in names}} for j, i in enumerate(indices)]


class ClassifyCollator:
    """Rows -> padded tensors: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``index`` and,
    when the rows have them, ``labels`` (long [B]; float multi-hot [B, K]; float [B] for regression)."""

    def __init__(self, pad_token_id: int, problem_type: str, num_labels: int) -> None:
        self.pad_token_id = pad_token_id
        self.problem_type = problem_type
        self.num_labels = num_labels

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch_size = len(rows)
        width = max(len(r["input_ids"]) for r in rows)
        ids = np.full((batch_size, width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((batch_size, width), dtype=np.int64)
        types = np.zeros((batch_size, width), dtype=np.int64)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = r["input_ids"]
            mask[i, :n] = 1
            types[i, r["a_len"] : n] = 1
        out = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(types),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
        }
        if "label" in rows[0]:
            if self.problem_type == "single_label":
                out["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
            elif self.problem_type == "regression":
                out["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.float32)
            else:
                hot = torch.zeros(batch_size, self.num_labels, dtype=torch.float32)
                for i, r in enumerate(rows):
                    hot[i, list(r["label"])] = 1.0
                out["labels"] = hot
        return out


# ---------------------------------------------------------------------------- batching


class LengthGroupedBatchSampler(EpochPosition, Sampler[list[int]]):
    """Training batches of rows with similar lengths, in an order fixed by ``(seed, epoch)``.

    Per epoch: shuffle all rows; cut the shuffled rows into chunks of ``chunk_batches`` batches; sort
    each chunk by length (longest first) and cut it into batches; shuffle the batches. Every row is in
    exactly one batch (the one short batch is the last of the last chunk, unless ``drop_last``).

    The sampler counts the batches it has handed out. ``state_dict`` / ``load_state_dict`` keep that
    position, and restoring it continues the same epoch's order at the same batch. With
    ``group_by_length=False`` batches are plain consecutive slices of the shuffled rows.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        seed: int,
        chunk_batches: int = 50,
        group_by_length: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise BertlabError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.chunk_batches = max(1, chunk_batches)
        self.group_by_length = group_by_length
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch already handed out (this rank)
        self._cache: tuple[int, int, list[np.ndarray]] | None = None

    @property
    def sampler(self) -> LengthGroupedBatchSampler:
        # Lightning calls ``dataloader.batch_sampler.sampler.set_epoch``: that is this object.
        return self

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[:2] == (epoch, self.seed):
            return self._cache[2]
        n, bs = len(self.lengths), self.batch_size
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n)
        batches: list[np.ndarray] = []
        if self.group_by_length:
            chunk = bs * self.chunk_batches
            for start in range(0, n, chunk):
                rows = order[start : start + chunk]
                rows = rows[np.argsort(-self.lengths[rows], kind="stable")]
                batches.extend(rows[i : i + bs] for i in range(0, len(rows), bs))
            batches = [batches[i] for i in rng.permutation(len(batches))]
        else:
            batches = [order[i : i + bs] for i in range(0, n, bs)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == bs]
        usable = len(batches) - len(batches) % self.world_size
        batches = batches[:usable][self.rank :: self.world_size]
        self._cache = (epoch, self.seed, batches)
        return batches

    def __len__(self) -> int:
        n, bs = len(self.lengths), self.batch_size
        total = n // bs if self.drop_last else -(-n // bs)
        return total // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._walk(self.batches()):
            yield batch.tolist()


class FixedBatchSampler(Sampler[list[int]]):
    """The same batches every time: rows sorted by length (longest first) when ``by_length``, else in
    file order. For evaluation and prediction, where order does not matter (rows carry ``index``)."""

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, by_length: bool = True) -> None:
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(-lengths, kind="stable") if by_length else np.arange(len(lengths))
        self.batch_size = batch_size
        self.batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


# -------------------------------------------------------------------------- datamodule


class ClassifyDataModule(L.LightningDataModule):
    """Labelled tables -> batches for sentence / sentence-pair classification (see the module docstring).

    The label set comes from the training split (or ``labels``, when a model already has one): label
    values as text, sorted (numerically when all are integers), in :attr:`labels`; the label id of a
    row is its position there. ``problem_type="multi_label"`` reads a list of labels per row (a JSON
    list, or text split on ``label_separator``, "," by default); ``"regression"`` a number per row.
    """

    def __init__(
        self,
        *,
        tokenizer_dir: str | Path,
        train_file: str | Path | None,
        validation_file: str | Path | None = None,
        test_file: str | Path | None = None,
        format: str | None = None,
        delimiter: str | None = None,
        encoding: str = "utf-8",
        quoting: str = "minimal",
        text_column: str = "sentence",
        text_pair_column: str | None = None,
        label_column: str = "label",
        problem_type: str = "single_label",
        label_separator: str | None = None,
        max_seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        group_by_length: bool = True,
        limit_train_rows: int | None = None,
        seed: int = 1234,
        labels: list[str] | None = None,
        cache_dir: str | None = None,
        hub: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if problem_type not in PROBLEM_TYPES:
            raise BertlabError(f"data.problem_type={problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if quoting not in QUOTING:
            raise BertlabError(f"data.quoting={quoting!r} is not one of {', '.join(QUOTING)}")
        if max_seq_length < 4:
            raise BertlabError(f"data.max_seq_length={max_seq_length} is too short (at least 4)")
        if batch_size < 1 or eval_batch_size < 1:
            raise BertlabError(
                f"data.batch_size={batch_size} and eval_batch_size={eval_batch_size} must be >= 1"
            )
        if limit_train_rows is not None and limit_train_rows < 1:
            raise BertlabError(f"data.limit_train_rows={limit_train_rows} must be at least 1")
        self.hub = dict(hub) if hub else None
        if self.hub and not self.hub.get("name"):
            raise BertlabError("data.hub.name is not set: name a datasets dataset, e.g. data.hub.name=glue")
        if train_file is None and labels is None:
            raise BertlabError("data.train_file is not set: the label set comes from the training file")
        self.tokenizer_dir = Path(tokenizer_dir)
        self.files = {"train": train_file, "validation": validation_file, "test": test_file}
        self.read_options = {
            "format": format,
            "delimiter": delimiter,
            "encoding": encoding,
            "quoting": quoting,
        }
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self.problem_type = problem_type
        self.label_separator = label_separator
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.group_by_length = group_by_length
        self.limit_train_rows = limit_train_rows
        self.seed = seed
        self.cache_dir = cache_dir
        self.labels: list[str] | None = None
        if labels is not None:
            self._set_labels([str(x) for x in labels], given=True)
        self._labels_given = labels is not None
        self._tokenizer: Any = None
        self._raw: dict[str, tuple[list[str], list[str] | None, list[Any], RowLocator]] = {}
        self._sets: dict[str, EncodedDataset] = {}
        self.predict_set: EncodedDataset | None = None

    # ------------------------------------------------------------------------- labels

    def _set_labels(self, labels: list[str], given: bool = False) -> None:
        if self.problem_type == "regression":
            self.labels = [self.label_column]
        else:
            if len(set(labels)) != len(labels):
                raise BertlabError(f"the label list {_shown(labels)} repeats a label")
            if self.problem_type == "single_label" and len(labels) < 2:
                what = (
                    "the given labels have"
                    if given
                    else f"{self.files['train']}: column {self.label_column!r} has"
                )
                raise BertlabError(
                    f"{what} only {len(labels)} distinct value(s) {_shown(labels)}; "
                    "single-label classification needs at least two"
                )
            if not labels:
                raise BertlabError(f"{self.files['train']}: no labels in column {self.label_column!r}")
            self.labels = list(labels)
        self.label_to_id = {x: i for i, x in enumerate(self.labels)}

    @property
    def num_labels(self) -> int:
        if self.labels is None:
            self.prepare_labels()
        assert self.labels is not None
        return len(self.labels)

    def prepare_labels(self) -> list[str]:
        """The label set (read from the training file on first use)."""
        if self.labels is None:
            _, _, values, _ = self._read("train")
            if self.problem_type == "multi_label":
                self._set_labels(sort_labels([x for row in values for x in row]))
            else:
                self._set_labels(sort_labels(values) if self.problem_type == "single_label" else [])
        assert self.labels is not None
        return self.labels

    # ------------------------------------------------------------------------ reading

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_dir)
        return self._tokenizer

    def _read(self, split: str) -> tuple[list[str], list[str] | None, list[Any], RowLocator]:
        """(texts, pair texts or None, parsed labels, locator) of a split, checked row by row."""
        if split in self._raw:
            return self._raw[split]
        if self.hub:
            ds, where, path = self._read_hub(split)
        else:
            path = self.files[split]
            if path is None:
                raise BertlabError(f"data.{split}_file is not set")
            ds, where = read_table_with_locations(path, cache_dir=self.cache_dir, **self.read_options)
        require_columns(
            ds,
            path,
            {
                "text_column": self.text_column,
                "text_pair_column": self.text_pair_column,
                "label_column": self.label_column,
            },
        )
        if split == "train" and self.limit_train_rows is not None:
            ds = ds.select(range(min(self.limit_train_rows, len(ds))))
        if len(ds) == 0:
            raise BertlabError(f"{path}: the table has no rows")
        texts = self._texts(ds[self.text_column], self.text_column, where)
        pairs = None
        if self.text_pair_column is not None:
            pairs = self._texts(ds[self.text_pair_column], self.text_pair_column, where)
        values = _parse_labels(
            ds[self.label_column], self.problem_type, self.label_column, self.label_separator, where
        )
        self._raw[split] = (texts, pairs, values, where)
        return self._raw[split]

    def _read_hub(self, split: str) -> tuple[datasets.Dataset, RowLocator, str]:
        """A split of a ``datasets`` dataset by name (``data.hub``): the real loading code; offline
        it works on local builders (``csv``, ``json``, ``parquet`` with ``data_files``) and caches."""
        hub = self.hub
        split_name = self.files[split]  # with a hub dataset, the *_file keys name its splits
        if split_name is None:
            raise BertlabError(f"data.{split}_file is not set (the name of the hub dataset's {split} split)")
        name = f"{hub['name']}[{split_name}]"
        try:
            ds = datasets.load_dataset(
                hub["name"],
                hub.get("config_name"),
                split=split_name,
                data_files=hub.get("data_files"),
                cache_dir=self.cache_dir,
            )
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
            raise BertlabError(f"data.hub: cannot load {name}: {str(e).splitlines()[0][:300]}") from None
        # A ClassLabel column gives its label names, in id order.
        feature = ds.features.get(self.label_column)
        if isinstance(feature, datasets.ClassLabel):
            ds = ds.cast_column(self.label_column, datasets.Value("string"))
            names = feature.names
            ds = ds.map(lambda row: {self.label_column: names[int(row[self.label_column])]})
        return ds, RowLocator(name, first_line=None), name

    @staticmethod
    def _texts(values: list[Any], column: str, where: RowLocator) -> list[str]:
        out = []
        for i, value in enumerate(values):
            text = "" if value is None else value if isinstance(value, str) else str(value)
            if not text.strip():
                raise BertlabError(f"{where(i)}: empty text in column {column!r}")
            out.append(text)
        return out

    def _label_ids(self, split: str, values: list[Any], where: RowLocator) -> list[Any]:
        if self.problem_type == "regression":
            return values
        known = self.label_to_id
        source = "the model's labels" if self._labels_given else "the training labels"

        def lookup(i: int, label: str) -> int:
            if label not in known:
                raise BertlabError(
                    f"{where(i)}: label {label!r} is not in {source} {_shown(self.labels or [])}"
                )
            return known[label]

        if self.problem_type == "multi_label":
            return [[lookup(i, x) for x in row] for i, row in enumerate(values)]
        return [lookup(i, x) for i, x in enumerate(values)]

    def _encode(self, texts: list[str], pairs: list[str] | None, labels: list[Any] | None) -> EncodedDataset:
        columns: dict[str, list] = {"text": texts}
        if pairs is not None:
            columns["pair"] = pairs
        if labels is not None:
            columns["label"] = labels
        features = {"text": datasets.Value("string")}
        if pairs is not None:
            features["pair"] = datasets.Value("string")
        if labels is not None:
            features["label"] = {
                "single_label": datasets.Value("int64"),
                "multi_label": datasets.List(datasets.Value("int64")),
                "regression": datasets.Value("float32"),
            }[self.problem_type]
        table = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        ids = special_token_ids(self.tokenizer)
        with _quiet():
            encoded = table.map(
                _encode_batch,
                batched=True,
                batch_size=1000,
                fn_kwargs={
                    "tokenizer": self.tokenizer,
                    "max_seq_length": self.max_seq_length,
                    "cls_id": ids["cls"],
                    "sep_id": ids["sep"],
                },
                remove_columns=[c for c in ("text", "pair") if c in columns],
                features=datasets.Features(
                    {
                        **({"label": features["label"]} if labels is not None else {}),
                        "input_ids": datasets.List(datasets.Value("int32")),
                        "a_len": datasets.Value("int32"),
                        "length": datasets.Value("int32"),
                    }
                ),
            )
        return EncodedDataset(encoded)

    def prepare_data(self) -> None:
        pass  # nothing to download; files are read in setup

    def setup(self, stage: str | None = None) -> None:
        """Read, check and encode the splits that ``stage`` needs (all given splits for None)."""
        wanted = {
            "fit": ["train", "validation"],
            "validate": ["validation"],
            "test": ["test"],
            "predict": [],
        }.get(stage or "", ["train", "validation", "test"])
        if self.files["train"] is not None:
            self.prepare_labels()  # the label set comes first: the other splits are checked against it
        for split in wanted:
            if split in self._sets or self.files[split] is None:
                continue
            texts, pairs, values, where = self._read(split)
            self._sets[split] = self._encode(texts, pairs, self._label_ids(split, values, where))

    @property
    def train_set(self) -> EncodedDataset | None:
        return self._sets.get("train")

    @property
    def val_set(self) -> EncodedDataset | None:
        return self._sets.get("validation")

    @property
    def test_set(self) -> EncodedDataset | None:
        return self._sets.get("test")

    def locator(self, split: str) -> RowLocator:
        """Where each row of ``split`` is in its file (for reports on single predictions)."""
        return self._read(split)[3]

    # ------------------------------------------------------------------------- loaders

    def collator(self) -> ClassifyCollator:
        return ClassifyCollator(
            special_token_ids(self.tokenizer)["pad"], self.problem_type, len(self.labels or [None])
        )

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        rank, world = self._rank_world()
        common = {
            "collate_fn": self.collator(),
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": False,
        }
        loader: DataLoader
        if self.group_by_length:
            batch_sampler = LengthGroupedBatchSampler(
                self.train_set.lengths, self.batch_size, seed=self.seed, rank=rank, world_size=world
            )
            loader = ResumableDataLoader(self.train_set, batch_sampler=batch_sampler, **common)
        else:
            sampler = ResumableSampler(
                len(self.train_set), seed=self.seed, shuffle=True, rank=rank, world_size=world
            )
            loader = ResumableDataLoader(
                self.train_set, batch_size=self.batch_size, sampler=sampler, **common
            )
        return loader

    def _eval_loader(self, dataset: EncodedDataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=FixedBatchSampler(dataset.lengths, self.eval_batch_size, self.group_by_length),
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        if self.val_set is None:
            raise BertlabError("data.validation_file is not set")
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        if self.test_set is None:
            raise BertlabError("data.test_file is not set")
        return self._eval_loader(self.test_set)

    def encode_texts(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> EncodedDataset:
        """Encode texts (and second texts) to predict on; an item's ``index`` is its position in ``texts``."""
        texts = ["" if t is None else str(t) for t in texts]
        if pairs is not None:
            pairs = ["" if t is None else str(t) for t in pairs]
            if len(pairs) != len(texts):
                raise BertlabError(f"got {len(texts)} texts but {len(pairs)} second texts")
        if not texts:
            raise BertlabError("no texts to predict on")
        return self._encode(list(texts), None if pairs is None else list(pairs), None)

    def predict_dataloader(
        self, texts: Sequence[str] | None = None, pairs: Sequence[str] | None = None
    ) -> DataLoader:
        """Batches of ``texts`` (and ``pairs``), or, without texts, of the test split (else validation).
        Batches are sorted by length; put outputs back in order with their ``index``."""
        if texts is not None:
            self.predict_set = self.encode_texts(texts, pairs)
        if self.predict_set is None:
            split = "test" if self.files["test"] is not None else "validation"
            self.setup("test" if split == "test" else "validate")
            self.predict_set = self._sets.get(split)
            if self.predict_set is None:
                raise BertlabError("nothing to predict: give texts, or set data.test_file or validation_file")
        return self._eval_loader(self.predict_set)

    # ------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels) if self.labels is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("labels") is not None and self.labels is None:
            self._set_labels([str(x) for x in state["labels"]])

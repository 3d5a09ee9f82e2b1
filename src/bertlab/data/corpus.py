"""Reading raw pretraining text.

A corpus file holds one sentence (or paragraph) per line, and a blank line (empty or whitespace only)
separates documents; with ``doc_per_line`` every non-blank line is a document of its own. Files are
read as bytes and decoded line by line, so errors name the file and the 1-based line, and a file is
never held in memory as a whole. A UTF-8 byte order mark at the start and CRLF line ends are accepted.

:func:`iter_hub_documents` gives the same :class:`Document` stream from a ``datasets`` dataset.
"""

from __future__ import annotations

import codecs
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bertlab.errors import BertlabError

__all__ = [
    "CorpusStats",
    "Document",
    "FileStats",
    "check_corpus",
    "iter_documents",
    "iter_hub_documents",
]

_BOM = codecs.BOM_UTF8
_CHUNK = 1 << 20


@dataclass
class Document:
    """One document: its non-empty, stripped lines and where it starts."""

    source: str
    first_line: int
    lines: list[str]

    @property
    def num_chars(self) -> int:
        """Characters in the document's lines (line ends not counted)."""
        return sum(len(line) for line in self.lines)


@dataclass
class FileStats:
    """What one corpus file holds."""

    path: str
    documents: int = 0
    lines: int = 0
    chars: int = 0


@dataclass
class CorpusStats:
    """What a whole corpus holds, in total and per file."""

    files: list[FileStats] = field(default_factory=list)

    @property
    def documents(self) -> int:
        """Documents in all files."""
        return sum(f.documents for f in self.files)

    @property
    def lines(self) -> int:
        """Non-blank lines in all files."""
        return sum(f.lines for f in self.files)

    @property
    def chars(self) -> int:
        """Characters of the non-blank (stripped) lines in all files."""
        return sum(f.chars for f in self.files)


def _open_corpus_file(path: Path) -> Any:
    source = str(path)
    if not path.exists():
        raise BertlabError(f"corpus file not found: {source}")
    if path.is_dir():
        raise BertlabError(f"corpus path is a directory, not a file: {source}; list the text files in it")
    try:
        return path.open("rb")
    except OSError as exc:
        raise BertlabError(f"cannot read corpus file {source}: {exc.strerror or exc}") from exc


def _too_long(source: str, lineno: int, n_chars: int, max_line_chars: int) -> BertlabError:
    return BertlabError(
        f"{source}:{lineno}: line has {n_chars} characters, more than data.max_line_chars={max_line_chars}; "
        "split it into sentences or raise data.max_line_chars"
    )


def _count_rest_chars(f: Any, decoder: codecs.IncrementalDecoder) -> int:
    """Read the rest of an over-long line (to its newline or EOF) and count its characters."""
    n = 0
    while True:
        chunk = f.readline(_CHUNK)
        if not chunk:
            n += len(decoder.decode(b"", final=True))
            return n
        end = chunk.endswith(b"\n")
        if end:
            chunk = chunk.rstrip(b"\r\n")
        n += len(decoder.decode(chunk, final=end))
        if end:
            return n


def _iter_lines(path: Path, max_line_chars: int) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, decoded line stripped of whitespace)`` for every line of ``path``."""
    source = str(path)
    # A line of max_line_chars characters takes at most 4 bytes a character, plus CR LF.
    limit = max(1, max_line_chars) * 4 + 3
    with _open_corpus_file(path) as f:
        lineno = 0
        while True:
            try:
                raw = f.readline(limit)
            except OSError as exc:
                raise BertlabError(f"cannot read corpus file {source}: {exc.strerror or exc}") from exc
            if not raw:
                return
            lineno += 1
            offset = 0
            if lineno == 1:
                if raw.startswith(_BOM):
                    raw, offset = raw[len(_BOM) :], len(_BOM)
                elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                    raise BertlabError(f"{source}:1: file is UTF-16 encoded; convert it to UTF-8")
            if b"\x00" in raw:
                raise BertlabError(f"{source}:{lineno}: contains a NUL byte; is this a text file?")
            if not raw.endswith(b"\n") and len(raw) + offset >= limit:
                # Over-long line: count its characters without holding all of it.
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                n_chars = len(decoder.decode(raw.rstrip(b"\r"))) + _count_rest_chars(f, decoder)
                raise _too_long(source, lineno, n_chars, max_line_chars)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BertlabError(
                    f"{source}:{lineno}: invalid UTF-8 at byte offset {exc.start + offset} of the line"
                ) from None
            text = text.strip()
            if len(text) > max_line_chars:
                raise _too_long(source, lineno, len(text), max_line_chars)
            yield lineno, text


# WikiText's raw layout: " = Title = " starts an article, " = = Section = = " a section, and blank
# lines separate paragraphs (not documents).
_WIKITEXT_TITLE = re.compile(r"^= [^=].* =$")
_WIKITEXT_SECTION = re.compile(r"^(= ){2,}.*( =){2,}$")


def _iter_wikitext_documents(source: str, lines: Iterator[tuple[int, str]]) -> Iterator[Document]:
    doc: list[str] = []
    first = 0
    for lineno, text in lines:
        if _WIKITEXT_TITLE.match(text):
            if doc:
                yield Document(source, first, doc)
            doc, first = [text.strip("= ").strip()], lineno
        elif text and not _WIKITEXT_SECTION.match(text):
            if not doc:
                first = lineno
            doc.append(text)
    if doc:
        yield Document(source, first, doc)


def _iter_file_documents(path: Path, max_line_chars: int, doc_per_line: bool) -> Iterator[Document]:
    source = str(path)
    found = False
    lines: list[str] = []
    first = 0
    line_iter = _iter_lines(path, max_line_chars)
    if not doc_per_line:
        # Look at the first non-blank line: a WikiText title means article boundaries come from
        # titles rather than blank lines.
        head: list[tuple[int, str]] = []
        for item in line_iter:
            head.append(item)
            if item[1]:
                break
        if head and _WIKITEXT_TITLE.match(head[-1][1]):
            yield from _iter_wikitext_documents(source, itertools.chain(head, line_iter))
            return
        line_iter = itertools.chain(head, line_iter)
    for lineno, text in line_iter:
        if not text:
            if lines:
                found = True
                yield Document(source, first, lines)
                lines = []
            continue
        if doc_per_line:
            found = True
            yield Document(source, lineno, [text])
            continue
        if not lines:
            first = lineno
        lines.append(text)
    if lines:
        found = True
        yield Document(source, first, lines)
    if not found:
        raise BertlabError(f"{source}: corpus file is empty")


def _as_paths(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = [Path(p) for p in paths]
    if not out:
        raise BertlabError("no corpus files given")
    return out


def iter_documents(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    max_line_chars: int = 100_000,
    doc_per_line: bool = False,
) -> Iterator[Document]:
    """Stream the documents of the corpus files ``paths``, in order.

    Blank lines separate documents (or, with ``doc_per_line``, every non-blank line is a document).
    Raises :class:`BertlabError` for a missing file, a directory, invalid UTF-8, a NUL byte, a line
    longer than ``max_line_chars`` characters and a file without text.
    """
    if max_line_chars < 1:
        raise BertlabError(f"data.max_line_chars={max_line_chars} must be at least 1")
    for path in _as_paths(paths):
        yield from _iter_file_documents(path, max_line_chars, doc_per_line)


def check_corpus(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    max_line_chars: int = 100_000,
    doc_per_line: bool = False,
    min_documents: int = 2,
    progress: bool = True,
) -> CorpusStats:
    """Read the whole corpus once, raising the errors of :func:`iter_documents`; return its counts.

    Also raises :class:`BertlabError` when the corpus has fewer than ``min_documents`` documents
    (next-sentence prediction needs at least two).
    """
    stats = CorpusStats()
    current: FileStats | None = None
    files = _as_paths(paths)
    total = sum(p.stat().st_size for p in files if p.is_file())
    # Reading a corpus of gigabytes takes minutes: show how far it is (bytes, with an ETA).
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="checking the corpus", disable=not progress
    ) as bar:
        for doc in iter_documents(files, max_line_chars=max_line_chars, doc_per_line=doc_per_line):
            if current is None or current.path != doc.source:
                current = FileStats(doc.source)
                stats.files.append(current)
            current.documents += 1
            current.lines += len(doc.lines)
            current.chars += doc.num_chars
            bar.update(sum(len(line.encode("utf-8")) + 1 for line in doc.lines))
    if stats.documents < min_documents:
        where = ", ".join(f.path for f in stats.files)
        hint = "put each document on its own line" if doc_per_line else "separate documents with a blank line"
        count = "a single document" if stats.documents == 1 else f"{stats.documents} documents"
        raise BertlabError(
            f"corpus has {count} ({where}): next-sentence prediction needs at least {min_documents} "
            f"documents; {hint}"
        )
    return stats


def iter_hub_documents(
    name: str,
    config_name: str | None,
    split: str,
    text_column: str,
    doc_column: str | None = None,
    streaming: bool = False,
    data_files: Any = None,
    max_line_chars: int = 100_000,
) -> Iterator[Document]:
    """Stream documents from a ``datasets`` dataset (hub name, or a builder like ``"text"``/``"json"``).

    Each row's ``text_column`` gives lines (a row holding several lines is split on its line breaks).
    Documents are separated by blank rows or, when ``doc_column`` is given, by a change of that
    column's value. ``Document.first_line`` is the 1-based row number where the document starts.
    """
    import datasets

    label = name if config_name is None else f"{name}/{config_name}"
    source = f"{label}:{split}"
    try:
        ds = datasets.load_dataset(name, config_name, split=split, data_files=data_files, streaming=streaming)
    except BertlabError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise BertlabError(
            f"cannot load dataset {label!r} split {split!r}: {type(exc).__name__}: {detail}"
        ) from exc

    wanted = [text_column] + ([doc_column] if doc_column is not None else [])

    def check_columns(columns: Sequence[str] | None) -> None:
        if columns is None:
            return
        for col in wanted:
            if col not in columns:
                which = "text_column" if col == text_column else "doc_column"
                raise BertlabError(
                    f"dataset {source}: {which} {col!r} is not a column; columns are: "
                    + ", ".join(repr(c) for c in columns)
                )

    check_columns(getattr(ds, "column_names", None))

    lines: list[str] = []
    first = 0
    key: Any = None
    for index, row in enumerate(ds):
        rowno = index + 1
        if index == 0:
            check_columns(list(row.keys()))
        value = row.get(text_column)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise BertlabError(
                f"dataset {source} row {rowno}: text_column {text_column!r} holds {type(value).__name__}, "
                "not text"
            )
        if doc_column is not None:
            row_key = row.get(doc_column)
            if lines and row_key != key:
                yield Document(source, first, lines)
                lines = []
            key = row_key
        pieces = [p.strip() for p in value.splitlines()]
        pieces = [p for p in pieces if p]
        if not pieces:
            if doc_column is None and lines:
                yield Document(source, first, lines)
                lines = []
            continue
        for piece in pieces:
            if len(piece) > max_line_chars:
                raise BertlabError(
                    f"dataset {source} row {rowno}: line has {len(piece)} characters, more than "
                    f"data.max_line_chars={max_line_chars}"
                )
        if not lines:
            first = rowno
        lines.extend(pieces)
    if lines:
        yield Document(source, first, lines)

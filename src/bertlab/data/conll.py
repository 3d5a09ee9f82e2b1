"""Reading CoNLL-style tagged files: one token per line, blank lines between sentences.

Each line holds columns; ``token_column`` (default 0) is the word and ``tag_column`` (default -1,
the last) its tag. Columns are split on runs of spaces and tabs (``delimiter=None``) or on single
tabs (``delimiter="\\t"``), where a token may itself be a space or another odd character (Weibo NER
has ``U+FFFD``); character-per-line Chinese files read the same way. ``-DOCSTART-`` lines are skipped
(and end a sentence). A UTF-8 byte-order mark and CRLF line ends are accepted.

Every problem raises :class:`BertlabError` naming ``file:line``: a missing or unreadable file,
invalid UTF-8, a line with a different number of columns than the file's first token line (or too
few for the configured columns), an empty token or tag, or a file without sentences.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from bertlab.errors import BertlabError

__all__ = ["DOCSTART", "Sentence", "read_conll"]

DOCSTART = "-DOCSTART-"
_SPACES = re.compile(r"[ \t]+")


class Sentence(NamedTuple):
    """Words and tags of one sentence. In a CoNLL file word ``i`` sits on line ``first_line + i`` of
    ``path``; a sentence that is one row of a table (JSON lines, a hub dataset) has ``row`` set to
    where that row is (``"file:line"``), and its words are named by their place in it."""

    words: list[str]
    tags: list[str]
    first_line: int
    path: str = ""
    row: str | None = None

    @property
    def origin(self) -> str:
        """Where the sentence starts: ``file:line`` (or its row)."""
        return self.row if self.row is not None else f"{self.path}:{self.first_line}"

    def where(self, i: int) -> str:
        """Where word ``i`` is, for error messages."""
        return f"{self.row}, word {i + 1}" if self.row is not None else f"{self.path}:{self.first_line + i}"


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BertlabError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise BertlabError(f"{path} is a directory, not a CoNLL file") from None
    except OSError as exc:
        raise BertlabError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BertlabError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None


def read_conll(
    path: str | os.PathLike[str],
    token_column: int = 0,
    tag_column: int = -1,
    delimiter: str | None = None,
) -> list[Sentence]:
    """All sentences of a CoNLL file, in order. See the module docstring for the format."""
    path = Path(path)
    if delimiter == "\\t":  # data.delimiter='\t' typed on a command line arrives as backslash-t
        delimiter = "\t"
    if delimiter not in (None, "\t"):
        raise BertlabError(f"delimiter must be None (spaces and tabs) or a tab, got {delimiter!r}")
    text = _decode(path)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    first = 0
    num_columns: int | None = None
    columns_line = 0

    def flush() -> None:
        nonlocal words, tags
        if words:
            sentences.append(Sentence(words, tags, first, str(path)))
        words, tags = [], []

    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if line.strip(" \t\r") == "":
            flush()
            continue
        if delimiter is None:
            cols = _SPACES.split(line.strip(" \t"))
        else:
            cols = line.split("\t")
            # Stray spaces around the columns of a tab file are not part of them; a column that is
            # nothing but spaces (a space token) is kept as it is.
            cols = [c.strip(" ") or c for c in cols]
        if cols[0] == DOCSTART or cols[0].startswith(DOCSTART + " "):
            flush()
            continue
        if num_columns is None:
            num_columns, columns_line = len(cols), lineno
            for name, index in (("token_column", token_column), ("tag_column", tag_column)):
                if not -num_columns <= index < num_columns:
                    raise BertlabError(
                        f"{path}:{lineno}: {name}={index} but the line has {num_columns} column(s)"
                    )
            if num_columns < 2:
                raise BertlabError(
                    f"{path}:{lineno}: expected a token and a tag, found 1 column ({line!r}); "
                    "set delimiter to match the file"
                )
        elif len(cols) != num_columns:
            raise BertlabError(
                f"{path}:{lineno}: expected {num_columns} columns (as on line {columns_line}), "
                f"found {len(cols)}: {line!r}"
            )
        word, tag = cols[token_column], cols[tag_column].strip()
        if word == "":
            raise BertlabError(f"{path}:{lineno}: empty token")
        if tag == "":
            raise BertlabError(f"{path}:{lineno}: empty tag")
        if not words:
            first = lineno
        words.append(word)
        tags.append(tag)
    flush()
    if not sentences:
        raise BertlabError(f"{path}: no sentences (the file is empty or holds only blank lines)")
    return sentences

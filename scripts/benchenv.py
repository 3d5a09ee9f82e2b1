"""Shared by the benchmark scripts: what they record about the machine they ran on, the GLUE-style
tables they read, the order sides take turns in, and the marked section of a doc page they rewrite
with their figures."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` of /proc/cpuinfo, where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name."""
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def cpu_flags(*fragments: str) -> str:
    """The CPU's feature flags that contain one of ``fragments`` (all of them without any), or ""."""
    flags = (_cpuinfo("flags") or "").split()
    return " ".join(f for f in flags if not fragments or any(x in f for x in fragments))


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """The order the sides take turns in at round ``round_index``: each round starts one side later,
    so a load that comes and goes hits every side alike."""
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


def read_tsv(path: Path, text_column: str, label_column: str | None) -> tuple[list[str], list[str]]:
    """GLUE-style TSV (a header, no quoting): the texts and the labels (none without
    ``label_column``); a missing column or a short row is an error naming the file and line."""
    from bertlab.errors import BertlabError

    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split("\t")
    needed = [c for c in (text_column, label_column) if c is not None]
    if any(c not in header for c in needed):
        raise BertlabError(f"{path}:1: columns {header}, need {', '.join(map(repr, needed))}")
    texts, labels = [], []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise BertlabError(f"{path}:{n}: {len(fields)} fields, the header has {len(header)}")
        texts.append(fields[header.index(text_column)])
        if label_column is not None:
            labels.append(fields[header.index(label_column)].strip())
    return texts, labels


def replace_section(path: Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between the one ``begin`` ... ``end`` marker pair of the document at ``path``
    (atomically); anything else about the markers is an error naming the file."""
    from bertlab.errors import BertlabError
    from bertlab.io import atomic_write

    doc = path.read_text(encoding="utf-8")
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise BertlabError(f"{path}: expected one {begin} ... {end} pair")
    head, rest = doc.split(begin)
    _, tail = rest.split(end)
    out = f"{head}{begin}\n{text}\n{end}{tail}"
    atomic_write(path, lambda f: f.write(out.encode("utf-8")))

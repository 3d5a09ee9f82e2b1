"""Shared by the benchmark scripts: what they record about the machine they ran on, and the marked
section of a doc page they rewrite with their figures."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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

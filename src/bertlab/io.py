"""Reading and writing files safely: the one JSON reader and the atomic writers every package uses.

A reader never sees a half-written file or directory: everything is written under a temporary name
beside its destination and renamed into place (``os.replace`` is atomic on one file system). A
crash leaves the previous version, or nothing, never a truncated one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from bertlab.errors import BertlabError

__all__ = ["atomic_directory", "atomic_write", "directory_digest", "read_json", "temporary_name"]


def read_json(path: str | Path) -> Any:
    """The JSON document in ``path``; a missing, unreadable or invalid file is a :class:`BertlabError`
    naming the file (and the line, for a syntax error)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BertlabError(f"{path}: not valid UTF-8") from None
    except OSError as exc:
        raise BertlabError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BertlabError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def temporary_name(final: Path, tag: str = "tmp") -> Path:
    """A hidden name beside ``final`` that no other process or thread picks."""
    return final.parent / f".{final.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], fsync: bool = False) -> None:
    """Write ``path`` by calling ``write(binary file)`` on a temporary file, then rename it into
    place. ``fsync``: flush to disk before the rename (checkpoints: survive a power cut)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with tmp.open("wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(final: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``final`` and rename it into place.

    If the body raises, the temporary directory is removed and ``final`` is left untouched: a reader
    never sees a half-written directory. ``keep_existing``: when another process has put ``final``
    in place meanwhile (a content-keyed cache, so the same content), keep that one and drop ours,
    so a process already reading it is not disturbed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists() and keep_existing:
            shutil.rmtree(tmp, ignore_errors=True)
        elif final.exists():
            # Another process finished first, or we are replacing an old copy: swap it out.
            old = temporary_name(final, "old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def directory_digest(path: str | Path, names: Sequence[str]) -> str:
    """Hash of the named files of a directory (those present), e.g. a tokenizer's vocabulary."""
    h = hashlib.sha256()
    for name in names:
        f = Path(path) / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]

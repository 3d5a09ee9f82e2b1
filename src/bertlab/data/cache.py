"""Content keys and atomic writes for the processed-data cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def file_identity(path: str | Path) -> dict[str, Any]:
    """What identifies a corpus file cheaply: absolute path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(settings: dict[str, Any], files: Sequence[str | Path] = ()) -> str:
    """A short hash of resolved settings and the identity of the input files."""
    payload = {"settings": settings, "files": [file_identity(f) for f in files]}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def directory_digest(path: str | Path, names: Sequence[str]) -> str:
    """Hash of the named files of a directory (those present), e.g. a tokenizer's vocabulary."""
    h = hashlib.sha256()
    for name in names:
        f = Path(path) / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``final`` and rename it into place.

    If the body raises, the temporary directory is removed and ``final`` is left untouched: a reader
    never sees a half-written directory.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            # Another process finished first, or we are replacing an old copy: swap it out.
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Content keys and atomic writes for the processed-data cache.

Under data parallelism one process per node builds a cache entry (local rank 0, Lightning's
``prepare_data`` rule) while the others wait for the finished directory to appear: the entry is
renamed into place whole, so its existence is the ready marker, and waiting is a poll of the file
system with a clear timeout, not a collective that the process group would time out.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bertlab.errors import BertlabError


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


def local_rank() -> int:
    """This process's rank on its node, from the environment Lightning's launchers and SLURM set
    (``LOCAL_RANK``, ``SLURM_LOCALID``); 0 when not distributed or before any launch."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return 0


def wait_for_ready(marker: str | Path, timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    """Wait until ``marker`` exists (a file that is written last, or a directory renamed into
    place). Raises :class:`BertlabError` after ``timeout_s`` seconds."""
    marker = Path(marker)
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if time.monotonic() >= deadline:
            raise BertlabError(
                f"local rank {local_rank()} waited {timeout_s:g} s for {what} ({marker}), which local "
                "rank 0 builds: see its log for an error, or raise data.prepare_timeout_s"
            )
        time.sleep(poll_s)


def same_on_every_rank(value: str, what: str) -> None:
    """Raise :class:`BertlabError` when the ranks of a distributed run hold different ``value``s.

    Each node builds its own cache unless the cache is shared, and what it builds must agree: a
    WordPiece training is not bit-reproducible, so two nodes can train different vocabularies from
    the same corpus and would then train one model on two sets of ids. A no-op outside a process
    group (call it where Lightning has set one up, e.g. a DataModule's ``setup``)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        ranks = {v: [r for r, x in enumerate(values) if x == v] for v in dict.fromkeys(values)}
        held = "; ".join(f"ranks {r}: {v}" for v, r in ranks.items())
        raise BertlabError(
            f"{what} differs between ranks ({held}): give every node the same tokenizer.path, or "
            "put paths.cache_dir on a file system all nodes share"
        )

"""The run directory: what ``bertlab-train`` leaves behind, and the one reader everything else uses.

::

    <run dir>/
    ├── summary.json          status (completed | failed), task, metrics, monitor, checkpoints, export
    ├── checkpoints/          best-step<N>.ckpt, last.ckpt
    ├── export/               the model in HF format (config.json, model.safetensors, tokenizer files)
    ├── resolved_config.yaml  the config, every interpolation resolved (config_tree.log: as a tree)
    └── .hydra/               Hydra's composed config and the command's overrides

``summary.json`` is written when the job ends, completed or failed; a directory without one is a
run still going or one that was killed. Tasks, prediction and export read run directories through
this module only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bertlab.errors import BertlabError
from bertlab.io import atomic_write, read_json

__all__ = [
    "SUMMARY_FILE",
    "best_checkpoint",
    "export_dir",
    "export_of",
    "is_run_dir",
    "read_summary",
    "tokenizer_dir",
    "write_summary",
]

SUMMARY_FILE = "summary.json"
EXPORT_DIR = "export"


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory that has ended (it has a ``summary.json``)."""
    return (Path(path) / SUMMARY_FILE).is_file()


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    summary = read_json(Path(run_dir) / SUMMARY_FILE)
    if not isinstance(summary, dict):
        raise BertlabError(f"{Path(run_dir) / SUMMARY_FILE}: expected a JSON object")
    return summary


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` atomically (a reader sees the old one or the new one, never half)."""
    path = Path(run_dir) / SUMMARY_FILE
    text = json.dumps(summary, indent=2, default=str).encode()
    atomic_write(path, lambda f: f.write(text))
    return path


def export_dir(run_dir: str | Path) -> Path | None:
    """The run's HF export, when it has one."""
    path = Path(run_dir) / EXPORT_DIR
    return path if (path / "config.json").is_file() else None


def export_of(path: str | Path) -> Path | None:
    """The export directory that ``path`` names: a run directory's ``export/`` (``None`` when the run
    has none), or ``path`` itself, taken to be an export directory (the caller checks it is one)."""
    return export_dir(path) if is_run_dir(path) else Path(path)


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint the run chose (its best, else its last), when it still exists."""
    summary = read_summary(run_dir)
    for key in ("best_checkpoint", "last_checkpoint"):
        value = summary.get(key)
        if value and Path(value).is_file():
            return Path(value)
    return None


def tokenizer_dir(run_dir: str | Path) -> Path | None:
    """The tokenizer the run trained with: the copy in its export, else the one its summary names."""
    run_dir = Path(run_dir)
    exported = export_dir(run_dir)
    if exported is not None:
        return exported
    if is_run_dir(run_dir):
        value = read_summary(run_dir).get("tokenizer")
        return Path(value) if value else None
    return None

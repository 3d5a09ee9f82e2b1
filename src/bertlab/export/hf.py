"""Writing a HuggingFace-format directory: ``config.json`` + ``model.safetensors`` + tokenizer files.

The directory is built under a temporary name and renamed into place, so an interrupted export
never leaves a half-written ``export/``. Which transformers class the weights are for, and what else
a layout needs (sentence-transformers' module folders, a CRF's transitions), is the task's
business: it passes the state, the config and a function that adds the rest.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from bertlab.io import atomic_directory

__all__ = ["save_safetensors", "write_hf_dir"]


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``state`` as a safetensors file (contiguous CPU copies: shared or strided tensors are refused)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_hf_dir(
    out_dir: str | Path,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    files: Sequence[Path] = (),
    metadata: dict[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write weights, ``config.json`` (with ``metadata`` under the key ``bertlab``) and copies of
    ``files`` (the tokenizer's) into ``out_dir``, atomically. ``extra(tmp_dir)`` writes whatever
    else the layout holds before the directory is renamed into place."""
    out_dir = Path(out_dir)
    config = dict(config)
    if metadata:
        config["bertlab"] = metadata
    with atomic_directory(out_dir) as tmp:
        save_safetensors(state, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        for src in files:
            shutil.copyfile(src, tmp / Path(src).name)
        if extra is not None:
            extra(tmp)
    return out_dir

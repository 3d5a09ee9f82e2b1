"""Export to the HuggingFace format: ``config.json`` + ``model.safetensors`` + tokenizer files.

The directory is built under a temporary name and renamed into place, so an interrupted export
never leaves a half-written ``export/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from bertlab.data.cache import atomic_directory
from bertlab.encoder import BertForPretraining, pretraining_heads_to_hf

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(tokenizer_dir: str | Path, out_dir: str | Path) -> None:
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if src.is_file():
            shutil.copyfile(src, Path(out_dir) / name)


def export_pretraining(
    model: BertForPretraining,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` so that ``transformers.BertForPreTraining.from_pretrained(out_dir)`` loads it
    with no missing weights. ``metadata`` (e.g. the run's metrics) goes into ``config.json`` under
    the key ``bertlab``."""
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    hf_state = pretraining_heads_to_hf(state, model.config)
    config = model.config.to_hf_dict()
    config["architectures"] = ["BertForPreTraining"]
    config["tie_word_embeddings"] = True
    if metadata:
        config["bertlab"] = metadata
    with atomic_directory(out_dir) as tmp:
        save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        copy_tokenizer(tokenizer_dir, tmp)
    return out_dir

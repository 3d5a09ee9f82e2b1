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
from torch import nn

from bertlab.data.cache import atomic_directory
from bertlab.encoder import BertEncoder, BertForPretraining, encoder_to_hf, pretraining_heads_to_hf

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(tokenizer_dir: str | Path, out_dir: str | Path) -> None:
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if src.is_file():
            shutil.copyfile(src, Path(out_dir) / name)


def _write_hf_dir(
    out_dir: str | Path,
    hf_state: dict[str, Any],
    hf_config: dict[str, Any],
    tokenizer_dir: str | Path,
    metadata: dict[str, Any] | None,
) -> Path:
    """Weights, config (with ``metadata`` under ``bertlab``) and tokenizer files, built in a
    temporary directory and renamed into place."""
    out_dir = Path(out_dir)
    if metadata:
        hf_config["bertlab"] = metadata
    with atomic_directory(out_dir) as tmp:
        save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
        copy_tokenizer(tokenizer_dir, tmp)
    return out_dir


def export_pretraining(
    model: BertForPretraining,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` so that ``transformers.BertForPreTraining.from_pretrained(out_dir)`` loads it
    with no missing weights. ``metadata`` (e.g. the run's metrics) goes into ``config.json`` under
    the key ``bertlab``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    hf_state = pretraining_heads_to_hf(state, model.config)
    config = model.config.to_hf_dict()
    config["architectures"] = ["BertForPreTraining"]
    config["tie_word_embeddings"] = True
    return _write_hf_dir(out_dir, hf_state, config, tokenizer_dir, metadata)


HF_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


def export_classifier(
    encoder: BertEncoder,
    classifier: nn.Linear,
    label_names: list[str],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    token_level: bool,
    problem_type: str = "single_label",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a fine-tuned model as ``BertForSequenceClassification`` (or, with ``token_level``,
    ``BertForTokenClassification``, which has no pooler) with ``id2label``/``label2id``."""
    config = encoder.config
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    hf_state = encoder_to_hf(state, config, prefix="bert.")
    if token_level:  # BertForTokenClassification has no pooler
        hf_state = {k: v for k, v in hf_state.items() if not k.startswith("bert.pooler.")}
    hf_state["classifier.weight"] = classifier.weight.detach().cpu().contiguous().clone()
    hf_state["classifier.bias"] = classifier.bias.detach().cpu().contiguous().clone()
    hf_config = config.to_hf_dict()
    hf_config["architectures"] = [
        "BertForTokenClassification" if token_level else "BertForSequenceClassification"
    ]
    hf_config["id2label"] = {str(i): name for i, name in enumerate(label_names)}
    hf_config["label2id"] = {name: i for i, name in enumerate(label_names)}
    if not token_level:
        hf_config["problem_type"] = HF_PROBLEM_TYPES[problem_type]
    return _write_hf_dir(out_dir, hf_state, hf_config, tokenizer_dir, metadata)

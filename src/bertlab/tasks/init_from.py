"""Load a pretrained encoder from whatever the user points at: a bertlab run directory, a
Lightning ``.ckpt``, or a HuggingFace BERT directory. Nothing here executes code from the file:
safetensors, or ``torch.load(weights_only=True)``, which refuses pickled objects."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from bertlab.encoder import BertConfig, encoder_from_hf, pretraining_from_hf
from bertlab.errors import BertlabError

TOKENIZER_MARKERS = ("tokenizer.json", "vocab.txt")


@dataclass
class Pretrained:
    """An encoder's config and weights (our names), the tokenizer that goes with them, and what
    the source said about the task it was trained for (labels, pooling, ...)."""

    config: BertConfig
    encoder_state: dict[str, torch.Tensor]
    missing_optional: list[str]
    tokenizer_dir: Path | None
    source: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    head_state: dict[str, torch.Tensor] = field(default_factory=dict)
    # the whole BertForPretraining state (our names) when the source is a pretraining model
    pretraining_state: dict[str, torch.Tensor] | None = None


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` that never unpickles code; a file that needs it is refused with a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise BertlabError(
            f"{path}: refused to load: the file holds pickled objects that could run code ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise BertlabError(f"{path}: cannot read checkpoint: {str(e).splitlines()[0][:200]}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BertlabError(f"{path}: cannot read JSON: {e}") from None


def _tokenizer_beside(*dirs: Path) -> Path | None:
    for d in dirs:
        if d and any((d / m).is_file() for m in TOKENIZER_MARKERS):
            return d
    return None


def _load_hf_dir(path: Path) -> Pretrained:
    config_path = path / "config.json"
    raw = _read_json(config_path)
    config = BertConfig.from_hf_dict(raw)
    if (path / "model.safetensors").is_file():
        weights = path / "model.safetensors"
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as e:
            raise BertlabError(f"{weights}: cannot read safetensors file: {e}") from None
    elif (path / "pytorch_model.bin").is_file():
        weights = path / "pytorch_model.bin"
        state = safe_torch_load(weights)
    else:
        raise BertlabError(f"{path}: no model.safetensors or pytorch_model.bin beside config.json")
    encoder_state, missing = encoder_from_hf(state, config)
    head_state = {k: v for k, v in state.items() if k.startswith("classifier.")}
    metadata = dict(raw.get("bertlab") or {})
    if raw.get("id2label"):
        metadata.setdefault("labels", [raw["id2label"][str(i)] for i in range(len(raw["id2label"]))])
    metadata["architectures"] = raw.get("architectures") or []
    pretraining_state = None
    if "cls.seq_relationship.weight" in state:
        pretraining_state, _ = pretraining_from_hf(state, config)
    return Pretrained(
        config, encoder_state, missing, _tokenizer_beside(path), path, metadata, head_state, pretraining_state
    )


def _load_ckpt(path: Path) -> Pretrained:
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise BertlabError(f"{path}: not a Lightning checkpoint (no state_dict)")
    hparams = ckpt.get("hyper_parameters") or {}
    if "model_config" not in hparams:
        raise BertlabError(
            f"{path}: checkpoint has no model_config in its hyper_parameters (not a bertlab checkpoint)"
        )
    config = BertConfig(**hparams["model_config"])
    state = ckpt["state_dict"]
    # Pretraining keeps the encoder at model.encoder.*, fine-tuning tasks at encoder.*.
    for prefix in ("model.encoder.", "encoder."):
        encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if encoder_state:
            break
    else:
        raise BertlabError(f"{path}: checkpoint holds no encoder weights")
    run_dir = path.parent.parent
    tokenizer_dir = _tokenizer_beside(run_dir / "export")
    if tokenizer_dir is None and (run_dir / "summary.json").is_file():
        tok = _read_json(run_dir / "summary.json").get("tokenizer")
        tokenizer_dir = _tokenizer_beside(Path(tok)) if tok else None
    head_state = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    metadata = {k: hparams[k] for k in ("label_names", "problem_type", "pooling", "scheme") if k in hparams}
    if "label_names" in metadata:
        metadata["labels"] = metadata.pop("label_names")
    pretraining_state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")} or None
    return Pretrained(config, encoder_state, [], tokenizer_dir, path, metadata, head_state, pretraining_state)


def load_pretrained(path: str | Path) -> Pretrained:
    """Read ``model.init_from``: a run directory (its ``export/``, else its best checkpoint), a
    ``.ckpt`` file, or a HF directory with ``config.json`` and weights."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BertlabError(f"model.init_from: {p} does not exist")
    if p.is_file():
        if p.suffix != ".ckpt":
            raise BertlabError(
                f"model.init_from: {p} is a file but not a .ckpt; give a checkpoint or a directory"
            )
        return _load_ckpt(p)
    if (p / "config.json").is_file():
        return _load_hf_dir(p)
    if (p / "summary.json").is_file():
        summary = _read_json(p / "summary.json")
        if (p / "export" / "config.json").is_file():
            return _load_hf_dir(p / "export")
        ckpt = summary.get("best_checkpoint") or summary.get("last_checkpoint")
        if ckpt and Path(ckpt).is_file():
            return _load_ckpt(Path(ckpt))
        raise BertlabError(f"model.init_from: run directory {p} has neither export/ nor a checkpoint")
    raise BertlabError(
        f"model.init_from: {p} is not a bertlab run directory (summary.json), an HF model directory "
        "(config.json) or a .ckpt file"
    )


def load_encoder_weights(encoder: torch.nn.Module, pretrained: Pretrained) -> None:
    """Copy the pretrained weights into ``encoder``; only the optional pooler may be missing."""
    result = encoder.load_state_dict(pretrained.encoder_state, strict=False)
    missing = [k for k in result.missing_keys if k not in pretrained.missing_optional]
    if missing or result.unexpected_keys:
        raise BertlabError(
            f"{pretrained.source}: weights do not fit the encoder (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )

"""Read a trained model from whatever the user points at: a bertlab run directory, a Lightning
``.ckpt``, a HuggingFace BERT directory, or a model id in the HuggingFace Hub cache.

Nothing here executes code from the file: safetensors, or ``torch.load(weights_only=True)``, which
refuses pickled objects. What comes back is task-neutral: the encoder's config and weights (our
names), the other weights as stored, the tokenizer, and what the source says about its task. The
task (:mod:`bertlab.tasks`) builds its model from that.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from bertlab import runs
from bertlab.data.tokenizer import TOKENIZER_FILES
from bertlab.encoder import BertConfig, encoder_from_hf
from bertlab.errors import BertlabError
from bertlab.io import read_json

__all__ = ["Pretrained", "load_encoder_weights", "load_pretrained", "safe_torch_load"]

# Files a Hub snapshot needs for bertlab: config, weights, tokenizer, and sentence-transformers' modules.
_HUB_PATTERNS = ["*.json", "*.safetensors", "vocab.txt", "*/*.json", "*/*.safetensors"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Pretrained:
    """A model as read from disk, before any task builds it.

    ``encoder_state``: the encoder's weights under our names (no ``encoder.`` prefix);
    ``missing_optional``: encoder keys the source may lack (an HF BertModel without a pooler).
    ``model_state``: from a bertlab checkpoint, the task model's whole state (our names);
    ``hf_state``: from an HF directory, the weights outside the encoder under transformers' names.
    ``metadata``: what the source says about its task (``task``: the task's settings with its
    ``_target_``; ``architectures``; ``labels`` from ``id2label``); ``directory``: the HF directory,
    for layouts with files of their own."""

    config: BertConfig
    encoder_state: dict[str, torch.Tensor]
    missing_optional: list[str]
    tokenizer_dir: Path | None
    source: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    model_state: dict[str, torch.Tensor] | None = None
    hf_state: dict[str, torch.Tensor] = field(default_factory=dict)
    directory: Path | None = None


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


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise BertlabError(f"{path}: cannot read safetensors file: {e}") from None


def _tokenizer_beside(*dirs: Path | None) -> Path | None:
    for d in dirs:
        if d is not None and any((d / m).is_file() for m in TOKENIZER_FILES[:2]):
            return d
    return None


def _load_hf_dir(path: Path) -> Pretrained:
    raw = read_json(path / "config.json")
    if not isinstance(raw, dict):
        raise BertlabError(f"{path / 'config.json'}: expected a JSON object")
    config = BertConfig.from_hf_dict(raw)
    if (path / "model.safetensors").is_file():
        state = read_safetensors(path / "model.safetensors")
    elif (path / "pytorch_model.bin").is_file():
        state = safe_torch_load(path / "pytorch_model.bin")
    else:
        raise BertlabError(f"{path}: no model.safetensors or pytorch_model.bin beside config.json")
    encoder_state, missing = encoder_from_hf(state, config)
    metadata = dict(raw.get("bertlab") or {})
    if raw.get("id2label"):
        metadata.setdefault("labels", [raw["id2label"][str(i)] for i in range(len(raw["id2label"]))])
    metadata["architectures"] = raw.get("architectures") or []
    if raw.get("problem_type"):
        metadata["hf_problem_type"] = raw["problem_type"]
    hf_state = {
        k: v for k, v in state.items() if not k.startswith(("bert.", "embeddings.", "encoder.", "pooler."))
    }
    return Pretrained(
        config, encoder_state, missing, _tokenizer_beside(path), path, metadata, None, hf_state, path
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
    # Every task's LightningModule holds its plain-torch model at .model, the encoder at model.encoder.
    model_state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    encoder_state = {k[len("encoder.") :]: v for k, v in model_state.items() if k.startswith("encoder.")}
    if not encoder_state:
        raise BertlabError(f"{path}: checkpoint holds no encoder weights")
    run_dir = path.parent.parent  # <run dir>/checkpoints/<file>.ckpt
    tokenizer = _tokenizer_beside(runs.tokenizer_dir(run_dir)) if runs.is_run_dir(run_dir) else None
    metadata = {"task": hparams.get("task")} if hparams.get("task") else {}
    return Pretrained(config, encoder_state, [], tokenizer, path, metadata, model_state)


def _hub_snapshot(model_id: str, what: str) -> Path:
    """The local snapshot of a Hub model id: from the cache (no network), else downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    try:
        return Path(snapshot_download(model_id, allow_patterns=_HUB_PATTERNS))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BertlabError(
            f"{what}{model_id} is not a path, and the Hub model of that id is neither in the cache "
            f"(HF_HOME) nor downloadable: {first[:200]}"
        ) from None


def load_pretrained(path: str | Path, what: str = "model.init_from: ") -> Pretrained:
    """Read a run directory (its ``export/``, else its best checkpoint), a ``.ckpt`` file, an HF
    directory with ``config.json`` and weights, or a Hub model id (``org/name``, through
    huggingface_hub's cache). ``what`` starts every error message (the setting or argument)."""
    p = Path(path).expanduser()
    if not p.exists():
        if _HUB_ID.match(str(path)) and not str(path).startswith((".", "/")):
            p = _hub_snapshot(str(path), what)
        else:
            raise BertlabError(f"{what}{p} does not exist")
    if p.is_file():
        if p.suffix != ".ckpt":
            raise BertlabError(f"{what}{p} is a file but not a .ckpt; give a checkpoint or a directory")
        return _load_ckpt(p)
    if (p / "config.json").is_file():
        return _load_hf_dir(p)
    if runs.is_run_dir(p):
        exported = runs.export_dir(p)
        if exported is not None:
            return _load_hf_dir(exported)
        ckpt = runs.best_checkpoint(p)
        if ckpt is not None:
            return _load_ckpt(ckpt)
        raise BertlabError(f"{what}run directory {p} has neither export/ nor a checkpoint")
    raise BertlabError(
        f"{what}{p} is not a bertlab run directory (summary.json), an HF model directory "
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

"""Weight names between our encoder and transformers' BERT (plain torch, no file I/O).

Our names (``BertEncoder.state_dict()``)          transformers' names (``BertModel``)
  embeddings.word_embeddings.weight                 embeddings.word_embeddings.weight
  embeddings.position_embeddings.weight             embeddings.position_embeddings.weight
  embeddings.token_type_embeddings.weight           embeddings.token_type_embeddings.weight
  embeddings.layer_norm.{weight,bias}               embeddings.LayerNorm.{weight,bias}
  layers.{i}.attention.qkv.{weight,bias}            encoder.layer.{i}.attention.self.{query,key,value}.*
  layers.{i}.attention.out.*                        encoder.layer.{i}.attention.output.dense.*
  layers.{i}.attention_norm.*                       encoder.layer.{i}.attention.output.LayerNorm.*
  layers.{i}.ffn_up.*                               encoder.layer.{i}.intermediate.dense.*
  layers.{i}.ffn_down.*                             encoder.layer.{i}.output.dense.*
  layers.{i}.ffn_norm.*                             encoder.layer.{i}.output.LayerNorm.*
  pooler.{weight,bias}                              pooler.dense.{weight,bias}

Pretraining heads (``BertForPretraining``, under ``encoder.`` / ``bert.``):
  mlm_head.dense.*                                  cls.predictions.transform.dense.*
  mlm_head.layer_norm.*                             cls.predictions.transform.LayerNorm.*
  mlm_head.bias                                     cls.predictions.bias (and cls.predictions.decoder.bias)
  (tied to the word embeddings)                     cls.predictions.decoder.weight
  nsp_head.classifier.*                             cls.seq_relationship.*

Every returned tensor is a fresh contiguous copy: nothing shares storage with the input or with another
output, so the result can go straight to ``safetensors.torch.save_file``.

Pooler: some HF checkpoints have none. The ``*_from_hf`` functions then return the state WITHOUT the
pooler keys and name them in the second element of their result, ``missing_optional``; the caller loads
with ``strict=False`` and checks that its missing keys are exactly those.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from bertlab.encoder.bert import BertConfig
from bertlab.errors import BertlabError

# Per layer: our suffix -> HF suffix (qkv is handled apart: it is split into three).
_LAYER_NAMES = {
    "attention.out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "ffn_up": "intermediate.dense",
    "ffn_down": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.layer_norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.layer_norm.bias": "embeddings.LayerNorm.bias",
}
_POOLER_NAMES = {"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"}
_MLM_NAMES = {
    "mlm_head.dense.weight": "cls.predictions.transform.dense.weight",
    "mlm_head.dense.bias": "cls.predictions.transform.dense.bias",
    "mlm_head.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm_head.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm_head.bias": "cls.predictions.bias",
    "nsp_head.classifier.weight": "cls.seq_relationship.weight",
    "nsp_head.classifier.bias": "cls.seq_relationship.bias",
}
# HF buffers and tied copies that carry no weights of their own.
_IGNORED_HF = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")


def _fresh(t: Tensor) -> Tensor:
    """A contiguous copy that shares storage with nothing."""
    return t.detach().clone(memory_format=torch.contiguous_format)


def _name_map(config: BertConfig) -> dict[str, str]:
    """Our encoder key -> HF BertModel key, for every key except the fused qkv."""
    names = dict(_EMBEDDING_NAMES)
    for i in range(config.num_layers):
        for ours, hf in _LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{kind}"] = f"encoder.layer.{i}.{hf}.{kind}"
    names.update(_POOLER_NAMES)
    return names


def _expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every HF BertModel key (without prefix) for ``config``."""
    h, f = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "pooler.dense.weight": (h, h),
        "pooler.dense.bias": (h,),
    }
    per_layer = {
        "attention.self.query": (h, h),
        "attention.self.key": (h, h),
        "attention.self.value": (h, h),
        "attention.output.dense": (h, h),
        "attention.output.LayerNorm": None,
        "intermediate.dense": (f, h),
        "output.dense": (h, f),
        "output.LayerNorm": None,
    }
    for i in range(config.num_layers):
        for name, weight in per_layer.items():
            out_dim = weight[0] if weight is not None else h
            shapes[f"encoder.layer.{i}.{name}.weight"] = weight if weight is not None else (h,)
            shapes[f"encoder.layer.{i}.{name}.bias"] = (out_dim,)
    return shapes


def _check_shape(key: str, tensor: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise BertlabError(
            f"checkpoint key {key!r}: expected shape {list(expected)}, found {list(tensor.shape)}"
        )


def _missing_error(missing: list[str]) -> BertlabError:
    shown = ", ".join(repr(k) for k in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return BertlabError(f"checkpoint is missing {len(missing)} BERT weight(s): {shown}{more}")


def _normalise_hf(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip a ``bert.`` prefix, rename old ``LayerNorm.gamma/beta``, drop position/type-id buffers."""
    has_prefix = any(k.startswith("bert.") for k in hf_state)
    out: dict[str, Tensor] = {}
    for key, tensor in hf_state.items():
        if _IGNORED_HF.search(key):
            continue
        if has_prefix and key.startswith("bert."):
            key = key[len("bert.") :]
        if ".LayerNorm." in key or key.startswith("LayerNorm."):
            key = re.sub(r"\.gamma$", ".weight", key)
            key = re.sub(r"\.beta$", ".bias", key)
        out[key] = tensor
    return out


def encoder_to_hf(state: dict[str, Tensor], config: BertConfig, prefix: str = "bert.") -> dict[str, Tensor]:
    """A ``BertEncoder.state_dict()`` under transformers' names, each key prefixed with ``prefix``
    ("bert." for BertForPreTraining / BertForSequenceClassification, "" for BertModel)."""
    h = config.hidden_size
    names = _name_map(config)
    out: dict[str, Tensor] = {}
    needed = list(names) + [
        f"layers.{i}.attention.qkv.{k}" for i in range(config.num_layers) for k in ("weight", "bias")
    ]
    missing = [k for k in needed if k not in state]
    if missing:
        raise BertlabError("encoder state is missing key(s): " + ", ".join(repr(k) for k in missing[:5]))
    for ours, hf in names.items():
        out[prefix + hf] = _fresh(state[ours])
    for i in range(config.num_layers):
        for kind in ("weight", "bias"):
            fused = state[f"layers.{i}.attention.qkv.{kind}"]
            if fused.shape[0] != 3 * h:
                raise BertlabError(
                    f"encoder key 'layers.{i}.attention.qkv.{kind}': expected first dim {3 * h}, "
                    f"found {list(fused.shape)}"
                )
            # Rows [0:H] query, [H:2H] key, [2H:3H] value (see SelfAttention).
            for j, part in enumerate(("query", "key", "value")):
                out[f"{prefix}encoder.layer.{i}.attention.self.{part}.{kind}"] = _fresh(
                    fused[j * h : (j + 1) * h]
                )
    return out


def encoder_from_hf(hf_state: dict[str, Tensor], config: BertConfig) -> tuple[dict[str, Tensor], list[str]]:
    """The inverse of :func:`encoder_to_hf`: (state for ``BertEncoder.load_state_dict``, missing_optional).

    Accepts keys with or without a ``bert.`` prefix (other keys, e.g. ``cls.*`` or ``classifier.*``, are
    ignored), old ``LayerNorm.gamma/beta`` names, and ignores the ``embeddings.position_ids`` buffer.
    ``missing_optional`` lists our pooler keys when the checkpoint has no pooler; they are then absent
    from the state (load with ``strict=False`` and allow exactly those). Raises :class:`BertlabError`
    naming missing keys, an unexpected extra layer, or the first shape mismatch.
    """
    hf = _normalise_hf(hf_state)
    shapes = _expected_shapes(config)
    pooler_hf = set(_POOLER_NAMES.values())
    missing = [k for k in shapes if k not in hf and k not in pooler_hf]
    if missing:
        raise _missing_error(missing)
    layer_ids = {int(m.group(1)) for k in hf if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    extra = sorted(i for i in layer_ids if i >= config.num_layers)
    if extra:
        raise BertlabError(
            f"checkpoint has {max(layer_ids) + 1} layers but the config says num_layers={config.num_layers}"
        )
    has_pooler = all(k in hf for k in pooler_hf)
    for key, expected in shapes.items():
        if key in hf:
            _check_shape(key, hf[key], expected)

    out: dict[str, Tensor] = {}
    missing_optional: list[str] = []
    for ours, hf_key in _name_map(config).items():
        if hf_key in pooler_hf and not has_pooler:
            missing_optional.append(ours)
            continue
        out[ours] = _fresh(hf[hf_key])
    for i in range(config.num_layers):
        base = f"encoder.layer.{i}.attention.self"
        for kind in ("weight", "bias"):
            parts = [hf[f"{base}.{part}.{kind}"] for part in ("query", "key", "value")]
            out[f"layers.{i}.attention.qkv.{kind}"] = torch.cat(
                [p.detach() for p in parts], dim=0
            ).contiguous()
    return out, missing_optional


def _infer_config(encoder_state: dict[str, Tensor]) -> BertConfig:
    """The shapes that the mapping needs, read from an encoder state (head count does not matter)."""
    try:
        vocab, hidden = encoder_state["embeddings.word_embeddings.weight"].shape
        layers = 1 + max(int(m.group(1)) for k in encoder_state if (m := re.match(r"layers\.(\d+)\.", k)))
        return BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=1,
            intermediate_size=encoder_state["layers.0.ffn_up.weight"].shape[0],
            max_position_embeddings=encoder_state["embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=encoder_state["embeddings.token_type_embeddings.weight"].shape[0],
        )
    except (KeyError, ValueError) as e:
        raise BertlabError(f"cannot read the model shape from the state dict: {e}") from None


def pretraining_heads_to_hf(state: dict[str, Tensor], config: BertConfig | None = None) -> dict[str, Tensor]:
    """A ``BertForPretraining.state_dict()`` as transformers' full ``BertForPreTraining`` state dict.

    ``config`` is only used for shapes; without it they are read from the state.

    ``cls.predictions.decoder.bias`` is written with the same values as ``cls.predictions.bias``. The
    tied ``cls.predictions.decoder.weight`` is left out: transformers re-ties it to the word embeddings
    on load (``from_pretrained`` reports it neither missing nor different), as its own save does.
    """
    encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    out = encoder_to_hf(encoder_state, config or _infer_config(encoder_state), prefix="bert.")
    missing = [k for k in _MLM_NAMES if k not in state]
    if missing:
        raise BertlabError("pretraining state is missing key(s): " + ", ".join(repr(k) for k in missing))
    for ours, hf in _MLM_NAMES.items():
        out[hf] = _fresh(state[ours])
    out["cls.predictions.decoder.bias"] = _fresh(state["mlm_head.bias"])
    return out


def pretraining_heads_from_hf(hf_state: dict[str, Tensor], config: BertConfig) -> dict[str, Tensor]:
    """The MLM and NSP heads of a transformers ``BertForPreTraining`` state (its ``cls.*`` keys) as
    ``BertForPretraining`` keys (``mlm_head.*``, ``nsp_head.*``).

    The heads are required (``cls.predictions.bias`` may come as ``cls.predictions.decoder.bias``); the
    decoder weight is ignored (it is tied to the word embeddings)."""
    heads = {
        (re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)) if ".LayerNorm." in k else k): v
        for k, v in hf_state.items()
        if k.startswith("cls.")
    }
    if "cls.predictions.bias" not in heads and "cls.predictions.decoder.bias" in heads:
        heads["cls.predictions.bias"] = heads["cls.predictions.decoder.bias"]
    h = config.hidden_size
    shapes = {
        "cls.predictions.transform.dense.weight": (h, h),
        "cls.predictions.transform.dense.bias": (h,),
        "cls.predictions.transform.LayerNorm.weight": (h,),
        "cls.predictions.transform.LayerNorm.bias": (h,),
        "cls.predictions.bias": (config.vocab_size,),
        "cls.seq_relationship.weight": (2, h),
        "cls.seq_relationship.bias": (2,),
    }
    missing = [k for k in shapes if k not in heads]
    if missing:
        raise _missing_error(missing)
    out = {}
    for ours, hf_key in _MLM_NAMES.items():
        _check_shape(hf_key, heads[hf_key], shapes[hf_key])
        out[ours] = _fresh(heads[hf_key])
    return out


def pretraining_from_hf(
    hf_state: dict[str, Tensor], config: BertConfig
) -> tuple[dict[str, Tensor], list[str]]:
    """The inverse of :func:`pretraining_heads_to_hf`: (state for ``BertForPretraining``, missing_optional).

    The pooler is optional as in :func:`encoder_from_hf`, with its keys returned as
    ``encoder.pooler.*`` in ``missing_optional``; the heads as :func:`pretraining_heads_from_hf`.
    """
    encoder_state, missing_optional = encoder_from_hf(hf_state, config)
    out = {f"encoder.{k}": v for k, v in encoder_state.items()}
    out.update(pretraining_heads_from_hf(hf_state, config))
    return out, [f"encoder.{k}" for k in missing_optional]


__all__ = [
    "encoder_from_hf",
    "encoder_to_hf",
    "pretraining_from_hf",
    "pretraining_heads_from_hf",
    "pretraining_heads_to_hf",
]

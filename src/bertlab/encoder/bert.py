"""The BERT encoder, whole, in one file (plain torch: no Lightning, no Hydra, no file reading).

Architecture (Devlin et al. 2018), exactly as transformers' ``BertModel`` with ``hidden_act="gelu"``
and absolute positions, so that weights map one to one (see ``hf_mapping.py``):

    embeddings = LayerNorm(word[ids] + token_type[types] + position[0..T-1]) -> dropout
    each layer (post-LN):
        x = LayerNorm(x + dropout(out(attention(qkv(x)))))
        x = LayerNorm(x + dropout(ffn_down(gelu(ffn_up(x)))))
    pooled = tanh(pooler(x[:, 0]))          # the [CLS] position

Query, key and value live in ONE fused ``qkv`` Linear(H, 3H): rows [0:H] are the query, [H:2H] the
key, [2H:3H] the value. Attention goes through ``F.scaled_dot_product_attention``, which picks a fused
kernel where it can.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertlab.errors import BertlabError


@dataclass
class BertConfig:
    """Shape and regularisation of a BERT encoder. Defaults are BERT-base (uncased vocabulary)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if int(getattr(self, name)) <= 0:
                raise BertlabError(f"BertConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("max_position_embeddings", "type_vocab_size"):
            if int(getattr(self, name)) <= 0:
                raise BertlabError(f"BertConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads != 0:
            raise BertlabError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise BertlabError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise BertlabError(
                f"BertConfig.pad_token_id ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """The same model as a transformers ``BertConfig`` dict (what goes into ``config.json``)."""
        return {
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "gelu",
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> BertConfig:
        """Read a transformers ``BertConfig`` dict; raise :class:`BertlabError` on anything we cannot run."""
        if "model_type" not in d:
            raise BertlabError("HF config: missing key 'model_type' (expected 'bert')")
        if d["model_type"] != "bert":
            raise BertlabError(f"HF config: model_type is {d['model_type']!r}, only 'bert' is supported")
        hidden_act = d.get("hidden_act", "gelu")
        if hidden_act != "gelu":
            raise BertlabError(
                f"HF config: hidden_act is {hidden_act!r}, only exact 'gelu' (erf) is supported"
            )
        position_type = d.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise BertlabError(
                f"HF config: position_embedding_type is {position_type!r}, only 'absolute' is supported"
            )
        # HF key -> our field. Keys without a default here must be present.
        required = {
            "vocab_size": "vocab_size",
            "hidden_size": "hidden_size",
            "num_hidden_layers": "num_layers",
            "num_attention_heads": "num_heads",
            "intermediate_size": "intermediate_size",
        }
        optional = {
            "max_position_embeddings": "max_position_embeddings",
            "type_vocab_size": "type_vocab_size",
            "hidden_dropout_prob": "hidden_dropout",
            "attention_probs_dropout_prob": "attention_dropout",
            "layer_norm_eps": "layer_norm_eps",
            "initializer_range": "initializer_range",
            "pad_token_id": "pad_token_id",
        }
        for key in required:
            if key not in d:
                raise BertlabError(f"HF config: missing required key {key!r}")
        kwargs: dict[str, Any] = {ours: d[hf] for hf, ours in required.items()}
        kwargs.update({ours: d[hf] for hf, ours in optional.items() if d.get(hf) is not None})
        types = {f.name: f.type for f in fields(cls)}
        for name, value in kwargs.items():
            kwargs[name] = float(value) if types[name] in ("float", float) else int(value)
        return cls(**kwargs)


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation for one module: N(0, std) weights, zero biases, identity LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertEmbeddings(nn.Module):
    """Sum of word, token-type and absolute-position embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        seq_len = input_ids.shape[-1]
        x = self.word_embeddings(input_ids)
        # Broadcast single rows instead of materialising zeros / aranges of shape [B, T].
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        if position_ids is None:
            if seq_len > self.position_embeddings.num_embeddings:
                raise BertlabError(
                    f"sequence length {seq_len} exceeds max_position_embeddings "
                    f"({self.position_embeddings.num_embeddings})"
                )
            x = x + self.position_embeddings.weight[:seq_len]
        else:
            x = x + self.position_embeddings(position_ids)
        return self.dropout(self.layer_norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and SDPA."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: [B, T, H]; attn_mask: bool [B, 1, 1, T], True where a key may be attended, or None."""
        batch, seq_len, hidden = x.shape
        # [B, T, 3H] -> [B, T, 3, heads, head_dim] -> [3, B, heads, T, head_dim]
        q, k, v = (
            self.qkv(x)
            .view(batch, seq_len, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        y = F.scaled_dot_product_attention(  # softmax(q k^T / sqrt(head_dim) + mask) v
            q, k, v, attn_mask=attn_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(batch, seq_len, hidden)  # merge heads back
        return self.out(y)

    def forward_queries(self, x: Tensor, queries: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Attention outputs for a few query positions only: keys and values from all of ``x`` [B, T, H],
        queries from ``queries`` [B, Q, H] (the residual stream at the Q chosen positions of each row).
        Equal to ``forward(x)`` at those positions, for Q/T of the query, output and softmax work."""
        batch, seq_len, hidden = x.shape
        num_queries = queries.shape[1]
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(queries, w[:hidden], b[:hidden])
        q = q.view(batch, num_queries, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (
            F.linear(x, w[hidden:], b[hidden:])
            .view(batch, seq_len, 2, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(batch, num_queries, hidden))


class TransformerLayer(nn.Module):
    """One post-LN BERT layer: attention block then feed-forward block, each residual + LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)  # stateless: reused for both residual branches

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, attn_mask)))
        return self.feed_forward(x)

    def feed_forward(self, x: Tensor) -> Tensor:
        """The feed-forward block with its residual and LayerNorm, position by position."""
        # F.gelu defaults to the exact erf form, i.e. HF's "gelu" (not the tanh approximation).
        return self.ffn_norm(x + self.dropout(self.ffn_down(F.gelu(self.ffn_up(x)))))

    def forward_selected(self, x: Tensor, attn_mask: Tensor | None, selected: Tensor) -> Tensor:
        """The layer's output at the ``selected`` positions only (bool [B, T]), as [N, H] in row-major
        order. Every position still serves as a key and value; queries, the output projection and the
        feed-forward block run on the N chosen positions alone."""
        rows, cols = selected.nonzero(as_tuple=True)
        # slot of each chosen position among the chosen positions of its row: 0, 1, 2, ...
        counts = selected.sum(dim=1)
        slots = torch.arange(rows.numel(), device=x.device) - (counts.cumsum(0) - counts)[rows]
        residual = x[rows, cols]  # [N, H]
        queries = x.new_zeros(x.shape[0], int(counts.max()) if rows.numel() else 0, x.shape[2])
        queries[rows, slots] = residual
        attended = self.attention.forward_queries(x, queries, attn_mask)[rows, slots]
        return self.feed_forward(self.attention_norm(residual + self.dropout(attended)))


class BertEncoder(nn.Module):
    """Embeddings, a stack of transformer layers and the [CLS] pooler."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList([TransformerLayer(config) for _ in range(config.num_layers)])
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.init_weights()

    @property
    def word_embeddings(self) -> nn.Parameter:
        """The word embedding matrix [V, H]; the MLM decoder is tied to it."""
        return self.embeddings.word_embeddings.weight

    def init_weights(self) -> None:
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_bert_weights(module, self.config.initializer_range)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """input_ids [B, T] -> (sequence_output [B, T, H], pooled_output [B, H]).

        attention_mask [B, T] is 1/True for real tokens and 0/False for padding (None: attend to all).
        A row whose mask is all zeros attends to nothing (SDPA gives zeros there), unlike HF's uniform attention.
        """
        x, attn_mask = self._embed(input_ids, attention_mask, token_type_ids)
        for layer in self.layers:
            x = layer(x, attn_mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return x, pooled

    def _embed(
        self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """(embeddings [B, T, H], the attention mask the layers take: bool [B, 1, 1, T] or None)."""
        attn_mask = None
        if attention_mask is not None:
            attn_mask = attention_mask.bool()[:, None, None, :]  # broadcast over heads and queries
        return self.embeddings(input_ids, token_type_ids), attn_mask

    def forward_selected(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        token_type_ids: Tensor | None,
        selected: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`forward` when only some positions' outputs are needed (pretraining: the masked
        ones). Returns (states at ``selected`` positions [N, H] in row-major order, pooled_output [B, H]).

        The last layer's output at a position depends on that position's query only, so the last
        layer runs queries, output projection and feed-forward on the selected positions and [CLS]
        (for the pooler). Same values as ``forward`` (to float rounding); less work.
        """
        x, attn_mask = self._embed(input_ids, attention_mask, token_type_ids)
        for layer in self.layers[:-1]:
            x = layer(x, attn_mask)
        with_cls = selected.clone()
        with_cls[:, 0] = True
        out = self.layers[-1].forward_selected(x, attn_mask, with_cls)
        # Row-major order puts each row's [CLS] first among its chosen positions.
        is_cls = with_cls.nonzero(as_tuple=True)[1] == 0
        pooled = torch.tanh(self.pooler(out[is_cls]))
        keep = selected[with_cls]  # drop the [CLS] rows that were not asked for
        return out[keep], pooled


__all__ = [
    "BertConfig",
    "BertEmbeddings",
    "BertEncoder",
    "SelfAttention",
    "TransformerLayer",
    "init_bert_weights",
]

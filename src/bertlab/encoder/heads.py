"""Task heads on top of :class:`BertEncoder`: MLM + NSP pretraining, sequence and token classification.

Plain torch. The LightningModules own the losses, except :func:`pretraining_loss`, which is shared so
that every caller computes MLM + NSP the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertlab.encoder.bert import init_bert_weights
from bertlab.errors import BertlabError


class MaskedLMHead(nn.Module):
    """transform (dense H->H, GELU, LayerNorm) then a decoder tied to the word embeddings, plus a bias.

    ``word_embeddings`` is the encoder's ``nn.Embedding`` (or its weight ``Parameter``). It is held by
    reference and NOT registered here, so it appears once in ``state_dict()`` / ``parameters()`` (under
    the encoder, which must own it) and the decoder can never drift from it: ``decoder_weight`` IS the
    embedding parameter, and its gradient gets contributions from both uses.
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        word_embeddings: nn.Embedding | nn.Parameter,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if not isinstance(word_embeddings, nn.Embedding | nn.Parameter):
            raise TypeError(
                f"word_embeddings must be nn.Embedding or nn.Parameter, got {type(word_embeddings)}"
            )
        shape = tuple(
            (word_embeddings.weight if isinstance(word_embeddings, nn.Embedding) else word_embeddings).shape
        )
        if shape != (vocab_size, hidden_size):
            raise BertlabError(
                f"MLM head: word embeddings have shape {shape}, expected {(vocab_size, hidden_size)}"
            )
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        # object.__setattr__ bypasses nn.Module registration: a reference, not a copy nor a submodule.
        object.__setattr__(self, "_tied", word_embeddings)

    @property
    def decoder_weight(self) -> nn.Parameter:
        tied = self._tied
        return tied.weight if isinstance(tied, nn.Embedding) else tied

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden [N, H] (states at masked positions only) -> logits [N, V]."""
        x = self.layer_norm(F.gelu(self.dense(hidden)))
        return F.linear(x, self.decoder_weight, self.bias)


class NextSentenceHead(nn.Module):
    """Linear(H, 2) on the pooled [CLS] output: is-next (0) / random (1), as in BERT."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(hidden_size, 2)

    def forward(self, pooled_output: Tensor) -> Tensor:
        return self.classifier(pooled_output)


def pretraining_loss(outputs: dict[str, Tensor], nsp_labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mlm_loss, nsp_loss), each a mean cross-entropy. With no masked position, mlm_loss is a 0 that
    still depends on the graph (no NaN, and DDP sees every parameter used)."""
    mlm_logits, mlm_targets = outputs["mlm_logits"], outputs["mlm_targets"]
    if mlm_logits.shape[0] == 0:
        mlm_loss = mlm_logits.sum() * 0.0
    else:
        mlm_loss = F.cross_entropy(mlm_logits, mlm_targets)
    nsp_loss = F.cross_entropy(outputs["nsp_logits"], nsp_labels)
    return mlm_loss, nsp_loss


class SequenceClassificationHead(nn.Module):
    """dropout + Linear on a sentence vector: the pooler output ("cls") or the masked mean ("mean")."""

    POOLINGS = ("cls", "mean")

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        dropout: float,
        pooling: str = "cls",
        initializer_range: float = 0.02,
    ) -> None:
        super().__init__()
        if pooling not in self.POOLINGS:
            raise BertlabError(
                f"classification head: pooling must be one of {self.POOLINGS}, got {pooling!r}"
            )
        if num_labels < 1:
            raise BertlabError(f"classification head: num_labels must be >= 1, got {num_labels}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        init_bert_weights(self.classifier, initializer_range)

    def forward(
        self, sequence_output: Tensor, pooled_output: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """-> logits [B, num_labels]."""
        if self.pooling == "cls":
            features = pooled_output
        elif attention_mask is None:
            features = sequence_output.mean(dim=1)
        else:
            weights = attention_mask.to(sequence_output.dtype).unsqueeze(-1)  # [B, T, 1]
            features = (sequence_output * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return self.classifier(self.dropout(features))


class TokenClassificationHead(nn.Module):
    """dropout + Linear(H, num_labels) on every position (NER)."""

    def __init__(
        self, hidden_size: int, num_labels: int, dropout: float, initializer_range: float = 0.02
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise BertlabError(f"token classification head: num_labels must be >= 1, got {num_labels}")
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        init_bert_weights(self.classifier, initializer_range)

    def forward(self, sequence_output: Tensor) -> Tensor:
        """sequence_output [B, T, H] -> logits [B, T, num_labels]."""
        return self.classifier(self.dropout(sequence_output))


__all__ = [
    "MaskedLMHead",
    "NextSentenceHead",
    "SequenceClassificationHead",
    "TokenClassificationHead",
    "pretraining_loss",
]

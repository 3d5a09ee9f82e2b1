"""One plain-torch model per task: the encoder plus its head, as transformers' ``BertFor*`` classes.

These modules are what every use of a model runs: the LightningModules train them, ``bertlab-predict``
and the server call them, the ONNX and HF exports are made from them. A behaviour written once here
cannot drift between training, prediction and export. Importing this file imports torch only.

Every model keeps its encoder at ``.encoder``, so its weights are ``encoder.*`` plus head weights,
whatever the task.
"""

from __future__ import annotations

from torch import Tensor, nn

from bertlab.constants import IGNORE_INDEX
from bertlab.encoder.bert import BertConfig, BertEncoder, init_bert_weights
from bertlab.encoder.crf import LinearChainCRF
from bertlab.encoder.heads import (
    MaskedLMHead,
    NextSentenceHead,
    SequenceClassificationHead,
    TokenClassificationHead,
)

__all__ = ["BertForPretraining", "BertForSequenceClassification", "BertForTokenClassification"]


class BertForPretraining(nn.Module):
    """Encoder + MLM head (tied decoder) + NSP head."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = BertEncoder(config)
        self.mlm_head = MaskedLMHead(
            config.hidden_size,
            config.vocab_size,
            self.encoder.embeddings.word_embeddings,
            config.layer_norm_eps,
        )
        self.nsp_head = NextSentenceHead(config.hidden_size)
        self.mlm_head.apply(self._init_weights)
        self.nsp_head.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_bert_weights(module, self.config.initializer_range)

    def init_weights(self) -> None:
        self.encoder.init_weights()
        self.mlm_head.apply(self._init_weights)
        self.nsp_head.apply(self._init_weights)
        nn.init.zeros_(self.mlm_head.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        mlm_labels: Tensor | None = None,
        return_sequence_output: bool = False,
    ) -> dict[str, Tensor]:
        """With ``mlm_labels`` (training): mlm_logits [N, V] and mlm_targets [N] for the N positions
        where mlm_labels != -100 (row-major order). Without (prediction, export): mlm_logits
        [B, T, V] at every position. Always nsp_logits [B, 2] and pooled_output [B, H];
        sequence_output [B, T, H] too with ``return_sequence_output=True``.

        The losses need the last layer's states at the masked positions and [CLS] only: with labels
        the encoder computes just those (:meth:`BertEncoder.forward_selected`), and the vocabulary
        projection runs on the masked positions alone (~15% of the [B*T, V] logits)."""
        if mlm_labels is None or return_sequence_output:
            sequence_output, pooled_output = self.encoder(input_ids, attention_mask, token_type_ids)
        if mlm_labels is None:
            out = {"mlm_logits": self.mlm_head(sequence_output)}
        else:
            predicted = mlm_labels != IGNORE_INDEX
            if return_sequence_output:
                masked_states = sequence_output[predicted]
            else:
                masked_states, pooled_output = self.encoder.forward_selected(
                    input_ids, attention_mask, token_type_ids, predicted
                )
            out = {"mlm_logits": self.mlm_head(masked_states), "mlm_targets": mlm_labels[predicted]}
        out["nsp_logits"] = self.nsp_head(pooled_output)
        out["pooled_output"] = pooled_output
        if return_sequence_output:
            out["sequence_output"] = sequence_output
        return out


class BertForSequenceClassification(nn.Module):
    """Encoder + :class:`SequenceClassificationHead`: logits [B, num_labels] for a text or a pair.

    ``pooling="cls"`` reads the pooler's [CLS] vector (transformers' ``BertForSequenceClassification``);
    ``"mean"`` the masked mean of the last layer (sentence-transformers' mean pooling). What the
    logits mean (softmax, sigmoid or a value) is the task's business, not the model's."""

    def __init__(
        self, config: BertConfig, num_labels: int, pooling: str = "cls", dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = BertEncoder(config)
        self.head = SequenceClassificationHead(
            config.hidden_size,
            num_labels,
            dropout,
            pooling=pooling,
            initializer_range=config.initializer_range,
        )

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        sequence_output, pooled_output = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.head(sequence_output, pooled_output, attention_mask)


class BertForTokenClassification(nn.Module):
    """Encoder + :class:`TokenClassificationHead`: logits [B, T, num_labels] at every position.

    With ``crf`` (a :class:`~bertlab.encoder.crf.LinearChainCRF` over the same labels) the logits are
    the CRF's emissions: ``forward`` is unchanged (so the ONNX graph and transformers'
    ``BertForTokenClassification`` compute exactly these emissions), and ``crf`` holds the transition
    scores that training (its NLL) and decoding (Viterbi) add to them. Its weights are ``crf.*``."""

    def __init__(
        self,
        config: BertConfig,
        num_labels: int,
        dropout: float = 0.1,
        crf: LinearChainCRF | None = None,
    ) -> None:
        super().__init__()
        if crf is not None and crf.num_labels != num_labels:
            raise ValueError(f"the CRF has {crf.num_labels} labels, the classifier {num_labels}")
        self.config = config
        self.encoder = BertEncoder(config)
        # Token classification never reads the [CLS] pooler (transformers' class has none). Frozen, it
        # keeps its weights and gets no gradient, and DDP does not wait for one that never comes.
        self.encoder.pooler.requires_grad_(False)
        self.head = TokenClassificationHead(config.hidden_size, num_labels, dropout, config.initializer_range)
        # Built after the head: a CRF starts at zero and draws nothing from the RNG, so both heads get
        # the same classifier weights at the same seed.
        self.crf: LinearChainCRF | None = crf

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        sequence_output, _ = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.head(sequence_output)

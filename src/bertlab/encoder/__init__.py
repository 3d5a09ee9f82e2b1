"""The shared BERT encoder, its task heads, one model per task, and the mapping to/from transformers'
weight names.

Plain torch only: importing this package never imports Lightning, Hydra or datasets.
"""

from bertlab.encoder.bert import (
    BertConfig,
    BertEmbeddings,
    BertEncoder,
    SelfAttention,
    TransformerLayer,
    init_bert_weights,
)
from bertlab.encoder.heads import (
    MaskedLMHead,
    NextSentenceHead,
    SequenceClassificationHead,
    TokenClassificationHead,
    pretraining_loss,
)
from bertlab.encoder.hf_mapping import (
    encoder_from_hf,
    encoder_to_hf,
    pretraining_from_hf,
    pretraining_heads_to_hf,
)
from bertlab.encoder.models import (
    BertForPretraining,
    BertForSequenceClassification,
    BertForTokenClassification,
)

__all__ = [
    "BertConfig",
    "BertEmbeddings",
    "BertEncoder",
    "BertForPretraining",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "MaskedLMHead",
    "NextSentenceHead",
    "SelfAttention",
    "SequenceClassificationHead",
    "TokenClassificationHead",
    "TransformerLayer",
    "encoder_from_hf",
    "encoder_to_hf",
    "init_bert_weights",
    "pretraining_from_hf",
    "pretraining_heads_to_hf",
    "pretraining_loss",
]

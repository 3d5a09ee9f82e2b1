"""The shared BERT encoder, its task heads and the mapping to/from transformers' weight names.

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
    IGNORE_INDEX,
    BertForPretraining,
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

__all__ = [
    "IGNORE_INDEX",
    "BertConfig",
    "BertEmbeddings",
    "BertEncoder",
    "BertForPretraining",
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

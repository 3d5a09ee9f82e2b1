"""Next-sentence-prediction instances, built the way BERT's ``create_pretraining_data.py`` does.

A document is a list of segments (token-id lists, one per line of the corpus). Segments are packed
into chunks of about ``max_seq_length - 3`` tokens (shorter with probability ``short_seq_prob``); each
chunk is split at a random segment boundary into A and B. Half of the time B is replaced by a run
of segments from another document, and the unused segments of the chunk are put back so no text is
lost. The pair is then truncated, one token at a time from the front or back of the longer side,
down to the budget, and laid out as ``[CLS] A [SEP] B [SEP]``.

One change from the original: the random B is drawn from a *different* document, always (the
original tries ten times and may give up on the same document). ``num_documents`` is whatever the
caller offers: the pretraining data module offers the block of ``data.random_next_window``
documents that holds A, as the original offered the documents of one input shard.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# NSP labels as in transformers' BertForPreTraining: 0 = B follows A, 1 = B is random.
IS_NEXT = 0
IS_RANDOM = 1


@dataclass(frozen=True)
class Instance:
    """One ``[CLS] A [SEP] B [SEP]`` sequence; token types are 0 up to ``a_len`` and 1 after."""

    input_ids: list[int]
    a_len: int  # number of tokens in "[CLS] A [SEP]"
    nsp_label: int


def truncate_pair(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random) -> None:
    """Trim the longer side one token at a time, from its front or back at random, in place."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def create_instances_from_document(
    get_document: Callable[[int], Sequence[Sequence[int]]],
    num_documents: int,
    document_index: int,
    max_seq_length: int,
    short_seq_prob: float,
    rng: random.Random,
    cls_id: int,
    sep_id: int,
) -> list[Instance]:
    """All NSP instances for one document.

    ``get_document(i)`` returns document ``i`` as a list of segments; it is called for this document
    and for the documents random B segments are drawn from, so the corpus need not be in memory.
    Tokens are opaque items: whole-word masking passes ``(id, continues-word)`` pairs (and pairs
    for ``cls_id``/``sep_id``) and gets the same instances as with plain ids.
    """
    if num_documents < 2:
        raise ValueError("next-sentence prediction needs at least 2 documents")
    document = [list(s) for s in get_document(document_index) if len(s) > 0]
    max_num_tokens = max_seq_length - 3  # room for [CLS], [SEP], [SEP]

    # Mostly fill the sequence, but sometimes train on shorter ones so the model sees the lengths
    # it will meet when fine-tuning.
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances: list[Instance] = []
    current_chunk: list[list[int]] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                # How many segments of the chunk go to A.
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = [t for s in current_chunk[:a_end] for t in s]

                tokens_b: list[int] = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    label = IS_RANDOM
                    target_b_length = max(1, target_seq_length - len(tokens_a))
                    # Any document but this one.
                    other = rng.randint(0, num_documents - 2)
                    if other >= document_index:
                        other += 1
                    random_document = [s for s in get_document(other) if len(s) > 0]
                    if random_document:
                        start = rng.randint(0, len(random_document) - 1)
                        for j in range(start, len(random_document)):
                            tokens_b.extend(random_document[j])
                            if len(tokens_b) >= target_b_length:
                                break
                    # The segments of this chunk not used as A are put back for the next chunk.
                    i -= len(current_chunk) - a_end
                else:
                    label = IS_NEXT
                    for s in current_chunk[a_end:]:
                        tokens_b.extend(s)

                truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
                if tokens_a and tokens_b:
                    input_ids = [cls_id, *tokens_a, sep_id, *tokens_b, sep_id]
                    instances.append(Instance(input_ids, len(tokens_a) + 2, label))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def document_rng(seed: int, duplicate: int, document_index: int) -> random.Random:
    """The random stream for one document and one duplication pass.

    Seeded from the three numbers alone, so the instances do not depend on how documents are split
    across worker processes or in which order they are built.
    """
    return random.Random(f"{seed}-{duplicate}-{document_index}")

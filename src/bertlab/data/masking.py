"""Dynamic masked-language-model masking and batch collation for pretraining.

BERT's recipe: choose 15% of the non-special tokens of a sequence (at least one, at most
``max_predictions_per_seq``); of those, 80% become ``[MASK]``, 10% a random token and 10% stay as
they are. The model predicts the original token at every chosen position.

Masking is dynamic (new positions every epoch) and yet reproducible: the random stream of each
sequence is seeded by ``(seed, epoch, index of the sequence)``. The same batch comes out the same
whichever worker builds it and after a resume from the middle of an epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from bertlab.constants import IGNORE_INDEX
from bertlab.data.tokenizer import special_token_ids


@dataclass(frozen=True)
class MaskingConfig:
    mask_token_id: int
    pad_token_id: int
    special_token_ids: tuple[int, ...]
    vocab_size: int
    mlm_probability: float = 0.15
    max_predictions_per_seq: int = 20
    mask_replace_prob: float = 0.8  # share of chosen tokens that become [MASK]
    random_replace_prob: float = 0.1  # share that become a random token; the rest stay

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, **settings: Any) -> MaskingConfig:
        """The token ids a tokenizer gives ([MASK], [PAD], every special token, the vocabulary
        size), with the rates and caps in ``settings``."""
        ids = special_token_ids(tokenizer)
        return cls(
            mask_token_id=ids["mask"],
            pad_token_id=ids["pad"],
            special_token_ids=tuple(sorted(set(ids.values()))),
            vocab_size=tokenizer.get_vocab_size(),
            **settings,
        )


def sequence_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream that masks sequence ``index`` in ``epoch``."""
    return np.random.default_rng([seed, epoch, index])


def word_starts(input_ids: np.ndarray, continuation: np.ndarray) -> np.ndarray:
    """Group id per position for whole-word masking: pieces marked as continuations join the word
    before them. ``continuation`` is a boolean array over the vocabulary."""
    return np.cumsum(~continuation[input_ids])


def word_groups(word_cont: Sequence[int] | np.ndarray) -> np.ndarray:
    """Group id per position from per-token flags (1: this token continues the previous token's
    word), as the pretraining data stores them (``word_cont``). Special tokens never continue a
    word, so a word never spans [CLS] or [SEP]."""
    return np.cumsum(np.asarray(word_cont, dtype=np.int64) == 0)


def mask_sequence(
    input_ids: np.ndarray,
    cfg: MaskingConfig,
    rng: np.random.Generator,
    special: np.ndarray,
    random_token_ids: np.ndarray,
    word_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask one sequence. Returns (masked input ids, labels with IGNORE_INDEX where not predicted).

    ``special`` is a boolean array over the vocabulary (True for [CLS], [SEP], [PAD], ...), and
    ``random_token_ids`` the ids a token may be replaced by (the non-special vocabulary).
    With ``word_ids`` (one group id per position), all pieces of a chosen word are masked together
    and the 15% budget counts tokens, as in BERT's whole-word masking.
    """
    candidates = np.flatnonzero(~special[input_ids])
    labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
    masked = input_ids.copy()
    if candidates.size == 0:
        return masked, labels
    num_to_predict = min(
        cfg.max_predictions_per_seq, max(1, int(round(candidates.size * cfg.mlm_probability)))
    )

    if word_ids is None:
        chosen = rng.permutation(candidates)[:num_to_predict]
    else:
        # Pick whole words in random order until the token budget is reached; skip a word that
        # would overshoot it (as BERT's create_pretraining_data does).
        groups = word_ids[candidates]
        unique_groups = np.unique(groups)
        picked: list[np.ndarray] = []
        count = 0
        for g in rng.permutation(unique_groups):
            if count >= num_to_predict:
                break
            members = candidates[groups == g]
            if count + members.size > num_to_predict:
                continue
            picked.append(members)
            count += members.size
        chosen = np.concatenate(picked) if picked else candidates[:0]

    labels[chosen] = input_ids[chosen]
    # One draw per chosen position decides its fate: [MASK], random token, or unchanged. For
    # whole words every piece draws on its own, as in the original implementation.
    fate = rng.random(chosen.size)
    to_mask = chosen[fate < cfg.mask_replace_prob]
    to_random = chosen[
        (fate >= cfg.mask_replace_prob) & (fate < cfg.mask_replace_prob + cfg.random_replace_prob)
    ]
    masked[to_mask] = cfg.mask_token_id
    if to_random.size:
        masked[to_random] = random_token_ids[rng.integers(0, random_token_ids.size, to_random.size)]
    return masked, labels


class PretrainingCollator:
    """Turns NSP instances into a padded, masked batch.

    Each feature is a dict with ``input_ids`` (list of int), ``a_len``, ``nsp_label`` and ``index``
    (position of the instance in the dataset, which seeds its masking). Set ``epoch`` before each
    epoch (the data module does). With whole-word masking a feature may carry ``word_cont`` (per
    token, 1 when it continues the previous token's word, from
    :func:`bertlab.data.tokenizer.word_continuation_flags`: ``##`` pieces and jieba words); without
    it, words are the vocabulary's ``##`` pieces (``continuation_token_mask``).
    """

    def __init__(
        self,
        cfg: MaskingConfig,
        seed: int,
        continuation_token_mask: Sequence[bool] | None = None,
        whole_word_masking: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.epoch = 0
        self.pad_to_multiple_of = pad_to_multiple_of
        self.special = np.zeros(cfg.vocab_size, dtype=bool)
        self.special[list(cfg.special_token_ids)] = True
        self.random_token_ids = np.flatnonzero(~self.special)
        self.whole_word_masking = whole_word_masking
        self.continuation = None
        if whole_word_masking and continuation_token_mask is not None:
            self.continuation = np.asarray(continuation_token_mask, dtype=bool)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        max_len = max(lengths)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            max_len = (max_len + m - 1) // m * m
        batch_size = len(features)
        input_ids = np.full((batch_size, max_len), self.cfg.pad_token_id, dtype=np.int64)
        labels = np.full((batch_size, max_len), IGNORE_INDEX, dtype=np.int64)
        token_type_ids = np.zeros((batch_size, max_len), dtype=np.int64)
        attention_mask = np.zeros((batch_size, max_len), dtype=np.int64)
        nsp_labels = np.empty(batch_size, dtype=np.int64)
        for row, f in enumerate(features):
            ids = np.asarray(f["input_ids"], dtype=np.int64)
            rng = sequence_rng(self.seed, self.epoch, int(f["index"]))
            word_ids = None
            if self.whole_word_masking:
                if "word_cont" in f:
                    word_ids = word_groups(f["word_cont"])
                elif self.continuation is not None:
                    word_ids = word_starts(ids, self.continuation)
                else:
                    raise ValueError(
                        "whole-word masking needs word_cont in each instance or the vocabulary's "
                        "continuation-piece mask"
                    )
            masked, seq_labels = mask_sequence(
                ids, self.cfg, rng, self.special, self.random_token_ids, word_ids
            )
            n = ids.size
            input_ids[row, :n] = masked
            labels[row, :n] = seq_labels
            token_type_ids[row, int(f["a_len"]) : n] = 1
            attention_mask[row, :n] = 1
            nsp_labels[row] = int(f["nsp_label"])
        return {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "mlm_labels": torch.from_numpy(labels),
            "nsp_labels": torch.from_numpy(nsp_labels),
        }

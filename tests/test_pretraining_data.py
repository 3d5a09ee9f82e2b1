"""Statistics of NSP instances and MLM masking, against BERT's create_pretraining_data recipe."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bertlab.data.masking import IGNORE_INDEX, MaskingConfig, PretrainingCollator, mask_sequence, sequence_rng
from bertlab.data.nsp import IS_NEXT, IS_RANDOM, create_instances_from_document, document_rng
from bertlab.data.sampler import ResumableDataLoader, ResumableSampler

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 5000


def make_corpus(num_docs: int, seed: int = 0) -> list[list[list[int]]]:
    """Documents whose token ids reveal their document: doc d uses ids in [100 + 40 d, 100 + 40 d + 40)."""
    rng = random.Random(seed)
    docs = []
    for d in range(num_docs):
        lo = 100 + 40 * d
        docs.append(
            [
                [rng.randrange(lo, lo + 40) for _ in range(rng.randint(5, 30))]
                for _ in range(rng.randint(3, 25))
            ]
        )
    return docs


def all_instances(docs, max_seq_length=64, short_seq_prob=0.1, dupes=1, seed=0):
    out = []
    for dupe in range(dupes):
        for i in range(len(docs)):
            for inst in create_instances_from_document(
                docs.__getitem__,
                len(docs),
                i,
                max_seq_length,
                short_seq_prob,
                document_rng(seed, dupe, i),
                CLS,
                SEP,
            ):
                out.append((i, inst))
    return out


def owner(token: int) -> int:
    return (token - 100) // 40


def test_nsp_layout_lengths_and_sources():
    docs = make_corpus(100)
    instances = all_instances(docs, max_seq_length=64)
    assert len(instances) > 500
    for doc_index, inst in instances:
        ids = inst.input_ids
        assert len(ids) <= 64
        assert ids[0] == CLS and ids[-1] == SEP and ids[inst.a_len - 1] == SEP
        assert ids.count(SEP) == 2 and ids.count(CLS) == 1
        a, b = ids[1 : inst.a_len - 1], ids[inst.a_len : -1]
        assert a and b
        assert {owner(t) for t in a} == {doc_index}
        b_owners = {owner(t) for t in b}
        assert len(b_owners) == 1
        if inst.nsp_label == IS_NEXT:
            assert b_owners == {doc_index}
        else:
            # a random B never comes from the same document
            assert doc_index not in b_owners


def test_nsp_is_next_b_follows_a_in_document():
    docs = make_corpus(30, seed=3)
    for doc_index, inst in all_instances(docs, max_seq_length=512, short_seq_prob=0.0):
        if inst.nsp_label != IS_NEXT:
            continue
        flat = [t for s in docs[doc_index] for t in s]
        seq = inst.input_ids[1 : inst.a_len - 1] + inst.input_ids[inst.a_len : -1]
        # untruncated at this length: A followed by B is a contiguous run of the document
        text = " ".join(map(str, flat))
        assert " ".join(map(str, seq)) in text


def test_nsp_labels_near_half():
    # Long documents of many segments, as in the recipe's intended input.
    rng = random.Random(1)
    docs = [
        [[rng.randrange(100 + 40 * d, 140 + 40 * d) for _ in range(12)] for _ in range(60)] for d in range(60)
    ]
    labels = np.array([inst.nsp_label for _, inst in all_instances(docs, max_seq_length=128, dupes=2)])
    frac_random = (labels == IS_RANDOM).mean()
    assert 0.45 < frac_random < 0.56, frac_random


def test_nsp_needs_two_documents():
    with pytest.raises(ValueError):
        create_instances_from_document(lambda i: [[5, 6]], 1, 0, 32, 0.1, random.Random(0), CLS, SEP)


def test_nsp_deterministic_per_document():
    docs = make_corpus(20)
    a = [inst for _, inst in all_instances(docs, seed=5)]
    b = [inst for _, inst in all_instances(docs, seed=5)]
    c = [inst for _, inst in all_instances(docs, seed=6)]
    assert a == b and a != c


def masking_cfg(max_pred=1000) -> MaskingConfig:
    return MaskingConfig(
        mask_token_id=MASK,
        pad_token_id=PAD,
        special_token_ids=(PAD, UNK, CLS, SEP, MASK),
        vocab_size=VOCAB,
        max_predictions_per_seq=max_pred,
    )


def test_masking_rates_80_10_10():
    cfg = masking_cfg()
    special = np.zeros(VOCAB, dtype=bool)
    special[[PAD, UNK, CLS, SEP, MASK]] = True
    random_ids = np.flatnonzero(~special)
    rng = np.random.default_rng(0)
    chosen = masked_as_mask = kept = replaced = candidates = 0
    for i in range(3000):
        body = rng.integers(5, VOCAB, rng.integers(20, 120))
        ids = np.concatenate([[CLS], body[: len(body) // 2], [SEP], body[len(body) // 2 :], [SEP]])
        out, labels = mask_sequence(ids, cfg, sequence_rng(0, 0, i), special, random_ids)
        sel = labels != IGNORE_INDEX
        # never a special position, labels hold the original ids
        assert not special[ids[sel]].any()
        assert (labels[sel] == ids[sel]).all()
        assert (out[~sel] == ids[~sel]).all()
        # nothing special is inserted except [MASK]
        assert not np.isin(out[sel], [PAD, UNK, CLS, SEP]).any()
        n_cand = len(body)
        assert sel.sum() == max(1, round(n_cand * 0.15))
        candidates += n_cand
        chosen += sel.sum()
        masked_as_mask += (out[sel] == MASK).sum()
        kept += (out[sel] == ids[sel]).sum()
        replaced += ((out[sel] != MASK) & (out[sel] != ids[sel])).sum()
    assert abs(chosen / candidates - 0.15) < 0.005
    assert abs(masked_as_mask / chosen - 0.8) < 0.01
    # a random replacement may draw the original token (1/VOCAB): kept is ~10% + a hair
    assert abs(kept / chosen - 0.1) < 0.01
    assert abs(replaced / chosen - 0.1) < 0.01


def test_masking_cap_max_predictions():
    cfg = masking_cfg(max_pred=5)
    special = np.zeros(VOCAB, dtype=bool)
    special[[PAD, UNK, CLS, SEP, MASK]] = True
    ids = np.concatenate([[CLS], np.arange(10, 210), [SEP]])
    _, labels = mask_sequence(ids, cfg, sequence_rng(0, 0, 0), special, np.flatnonzero(~special))
    assert (labels != IGNORE_INDEX).sum() == 5


def test_whole_word_masking_never_splits_words():
    cfg = masking_cfg()
    continuation = np.zeros(VOCAB, dtype=bool)
    continuation[1000:2000] = True  # ids 1000..1999 are "##" pieces
    collator = PretrainingCollator(cfg, seed=0, continuation_token_mask=continuation, whole_word_masking=True)
    rng = np.random.default_rng(0)
    total_chosen = total_candidates = 0
    for i in range(300):
        words = []
        for _ in range(40):
            words.append(
                [int(rng.integers(10, 1000))] + [int(x) for x in rng.integers(1000, 2000, rng.integers(0, 3))]
            )
        ids = [CLS] + [t for w in words for t in w] + [SEP]
        batch = collator([{"input_ids": ids, "a_len": len(ids), "nsp_label": 0, "index": i}])
        labels = batch["mlm_labels"][0].numpy()
        pos = 1
        for w in words:
            sel = labels[pos : pos + len(w)] != IGNORE_INDEX
            assert sel.all() or not sel.any(), "a word was split"
            pos += len(w)
        total_chosen += (labels != IGNORE_INDEX).sum()
        total_candidates += len(ids) - 2
    assert abs(total_chosen / total_candidates - 0.15) < 0.02


def test_collator_dynamic_across_epochs_and_reproducible():
    cfg = masking_cfg()
    collator = PretrainingCollator(cfg, seed=1)
    feats = [
        {
            "input_ids": [CLS] + list(range(10, 60)) + [SEP] + list(range(60, 90)) + [SEP],
            "a_len": 52,
            "nsp_label": 1,
            "index": 7,
        }
    ]
    e0 = collator(feats)
    again = collator(feats)
    collator.epoch = 1
    e1 = collator(feats)
    assert torch.equal(e0["mlm_labels"], again["mlm_labels"])
    assert not torch.equal(e0["mlm_labels"], e1["mlm_labels"])
    assert e0["token_type_ids"][0, :52].sum() == 0 and e0["token_type_ids"][0, 52:].all()
    assert e0["attention_mask"].all() and e0["nsp_labels"].tolist() == [1]


def _loader(n=103, batch=8, seed=3):
    data = [
        {"input_ids": [CLS, 10 + i, SEP, 11 + i, SEP], "a_len": 3, "nsp_label": 0, "index": i}
        for i in range(n)
    ]
    collator = PretrainingCollator(masking_cfg(), seed=seed)
    return ResumableDataLoader(
        data, batch_size=batch, sampler=ResumableSampler(n, seed), collate_fn=collator, drop_last=True
    )


def _key(batch) -> tuple:
    return tuple(batch["input_ids"].flatten().tolist()) + tuple(batch["mlm_labels"].flatten().tolist())


@pytest.mark.parametrize("stop_after", [0, 1, 5, 11])
def test_loader_resume_mid_epoch_continues_exactly(stop_after):
    full = []
    ref = _loader()
    for epoch in range(2):
        ref.sampler.set_epoch(epoch)
        full.extend(_key(b) for b in ref)

    first = _loader()
    got = []
    it = iter(first)
    for _ in range(stop_after):
        got.append(_key(next(it)))
    state = first.state_dict()

    resumed = _loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(0)
    got.extend(_key(b) for b in resumed)
    resumed.sampler.set_epoch(1)
    got.extend(_key(b) for b in resumed)
    assert got == full


def test_sampler_shards_by_rank():
    a = list(ResumableSampler(20, 0, rank=0, world_size=2))
    b = list(ResumableSampler(20, 0, rank=1, world_size=2))
    assert not set(a) & set(b) and len(a) == len(b) == 10


def test_sampler_order_is_numpy_permutation_in_half_the_memory():
    # The int32 order must be the int64 permutation the sampler used before: checkpoints written
    # with either resume on the other.
    sampler = ResumableSampler(100_003, seed=7)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        order = sampler._order()
        assert order.dtype == np.int32
        assert np.array_equal(order, np.random.default_rng([7, epoch]).permutation(100_003))


def test_tokenizer_training_is_deterministic(tmp_path):
    """The trainer breaks frequency ties in hash order; the saved vocabulary must not depend on it."""
    from bertlab.data.default_corpus import generate_documents
    from bertlab.data.tokenizer import train_wordpiece

    lines = [line for doc in generate_documents(80, seed=7) for line in doc]
    vocabs = {
        (train_wordpiece(iter(lines), tmp_path / f"t{i}", vocab_size=300) / "vocab.txt").read_text()
        for i in range(4)
    }
    assert len(vocabs) == 1

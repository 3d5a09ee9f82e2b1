"""Labelled tables, the classification datamodule and ClassifyModule (tiny models, CPU, seconds)."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bertlab.data.classify import ClassifyDataModule, truncate_pair
from bertlab.data.labels import sort_labels
from bertlab.data.sampler import LengthGroupedSampler, ResumableDataLoader
from bertlab.data.tables import read_table
from bertlab.data.tokenizer import load_tokenizer, train_wordpiece
from bertlab.encoder import BertConfig
from bertlab.errors import BertlabError
from bertlab.inference import TorchBackend
from bertlab.tasks.base import load_model
from bertlab.tasks.classify import ClassifyModule, ClassifyTask, make_metrics

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

WORDS = (
    "good bad great awful fine poor movie film plot actor story scene the a an is was very not quite "
    "really funny dull boring lovely sad happy music ending script"
).split()


def _sentence(rng: random.Random, n: int | None = None) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n or rng.randint(2, 12)))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    texts = [_sentence(rng) for _ in range(300)] + [" ".join(WORDS)] * 3
    return train_wordpiece(texts, tmp_path_factory.mktemp("tok") / "wp", vocab_size=200, min_frequency=1)


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _dm(tok_dir: Path, tmp_path: Path, **kwargs) -> ClassifyDataModule:
    kwargs.setdefault("cache_dir", str(tmp_path / "hf"))
    return ClassifyDataModule(tokenizer_dir=tok_dir, **kwargs)


# ------------------------------------------------------------------------------- reading

ROWS = [
    {"sentence": "a fine film", "label": 1},
    {"sentence": "NA", "label": 0},
    {"sentence": "null", "label": 1},
]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_read_formats(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"t.{fmt}"
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        _write(
            path, "sentence" + sep + "label\n" + "".join(f"{r['sentence']}{sep}{r['label']}\n" for r in ROWS)
        )
    elif fmt == "json":
        _write(path, json.dumps(ROWS, indent=1))
    elif fmt == "jsonl":
        _write(path, "".join(json.dumps(r) + "\n" for r in ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    ds = read_table(path, cache_dir=str(tmp_path / "hf"))[0]
    assert ds.column_names == ["sentence", "label"]
    assert ds["sentence"] == ["a fine film", "NA", "null"]  # "NA" / "null" stay text
    assert [str(x) for x in ds["label"]] == ["1", "0", "1"]


def test_format_from_extension_and_override(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.txt", "sentence|label\nok|1\n")
    with pytest.raises(BertlabError, match=r"t\.txt.*format"):
        read_table(path)
    ds = read_table(path, format="csv", delimiter="|", cache_dir=str(tmp_path / "hf"))[0]
    assert ds[0] == {"sentence": "ok", "label": "1"}


def test_bom_header_and_literal_quotes(tmp_path: Path) -> None:
    text = 'Quality\t#1 String\t#2 String\n1\t"Quoted start\tplain\n0\tsays "hi" there\t5" tall\n'
    path = _write(tmp_path / "mrpc.tsv", b"\xef\xbb\xbf" + text.encode("utf-8"))
    ds = read_table(path, quoting="none", cache_dir=str(tmp_path / "hf"))[0]
    assert ds.column_names == ["Quality", "#1 String", "#2 String"]
    assert ds["#1 String"] == ['"Quoted start', 'says "hi" there']
    assert ds["#2 String"] == ["plain", '5" tall']
    # With csv quoting the opening quote swallows the line break and the next row's start.
    merged = read_table(path, quoting="minimal", cache_dir=str(tmp_path / "hf2"))[0]
    assert len(merged) == 1 and merged["#1 String"][0].startswith("Quoted start\tplain\n0")


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.tsv", "sentence\tlabel\nok\t1\n\nfine\t0\nthree\tfields\there\n")
    with pytest.raises(BertlabError, match=r"bad\.tsv:5: expected 2 fields, saw 3$"):
        read_table(path)
    short = _write(tmp_path / "short.csv", "sentence,label\nok,1\nmissing\n")
    with pytest.raises(BertlabError, match=r"short\.csv:3: expected 2 fields, saw 1$"):
        read_table(short)


def test_invalid_utf8_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "latin.csv", b"sentence,label\nok,1\ncaf\xe9,0\n")
    with pytest.raises(BertlabError, match=r"latin\.csv:3: invalid UTF-8"):
        read_table(path)
    assert read_table(path, encoding="latin-1", cache_dir=str(tmp_path / "hf"))[0]["sentence"][1] == "café"
    with pytest.raises(BertlabError, match=r"file not found: .*nope\.csv"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(BertlabError, match=r"bad\.jsonl:2: invalid JSON"):
        read_table(_write(tmp_path / "bad.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": \n'))


def test_row_locations(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", 'sentence,label\na,1\n\n"two\nlines",0\nc,1\n')
    ds, where = read_table(path, cache_dir=str(tmp_path / "hf"))
    assert ds["sentence"] == ["a", "two\nlines", "c"]
    assert [where(i) for i in range(3)] == [f"{path}:2", f"{path}:4", f"{path}:6"]


def test_missing_column_names_present_columns(tok_dir: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tsv", "text\tlabel\nok\t1\nbad\t0\n")
    dm = _dm(tok_dir, tmp_path, train_file=path)
    with pytest.raises(BertlabError, match=r"t\.tsv: no column 'sentence' .*\['text', 'label'\]"):
        dm.setup("fit")


def test_empty_text_names_line(tok_dir: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tsv", "sentence\tlabel\nok\t1\n  \t0\n")
    with pytest.raises(BertlabError, match=r"t\.tsv:3: empty text in column 'sentence'$"):
        _dm(tok_dir, tmp_path, train_file=path).setup("fit")
    jsonl = _write(tmp_path / "t.jsonl", '{"sentence": "ok", "label": 1}\n{"sentence": null, "label": 0}\n')
    with pytest.raises(BertlabError, match=r"t\.jsonl:2: empty text in column 'sentence'$"):
        _dm(tok_dir, tmp_path, train_file=jsonl).setup("fit")


def test_unknown_dev_label(tok_dir: Path, tmp_path: Path) -> None:
    train = _write(tmp_path / "train.tsv", "sentence\tlabel\na\tpos\nb\tneg\n")
    dev = _write(tmp_path / "dev.tsv", "sentence\tlabel\na\tpos\nb\tneutral\n")
    dm = _dm(tok_dir, tmp_path, train_file=train, validation_file=dev)
    with pytest.raises(
        BertlabError, match=r"dev\.tsv:3: label 'neutral' is not in the training labels \['neg', 'pos'\]"
    ):
        dm.setup("fit")


def test_label_order(tok_dir: Path, tmp_path: Path) -> None:
    assert sort_labels(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert sort_labels(["b", "a", "10"]) == ["10", "a", "b"]
    train = _write(tmp_path / "train.csv", "sentence,label\na,10\nb,2\nc,0\n")
    dm = _dm(tok_dir, tmp_path, train_file=train)
    dm.setup("fit")
    assert dm.labels == ["0", "2", "10"] and dm.num_labels == 3
    assert [dm.train_set[i]["label"] for i in range(3)] == [2, 1, 0]


def test_multi_label_json_lists_and_row_limit(tok_dir: Path, tmp_path: Path) -> None:
    rows = [
        {"sentence": "good film", "label": ["pos", "film"]},
        {"sentence": "bad plot", "label": []},
        {"sentence": "fine", "label": ["pos"]},
        {"sentence": "not used", "label": ["other"]},
    ]
    train = _write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    dm = _dm(tok_dir, tmp_path, train_file=train, problem_type="multi_label", limit_train_rows=3)
    dm.setup("fit")
    assert dm.labels == ["film", "pos"] and len(dm.train_set) == 3
    batch = dm.collator()([dm.train_set[i] for i in range(3)])
    assert batch["labels"].tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]


def test_pandas_parser_error_is_translated() -> None:
    from bertlab.data.tables import _explain

    class ParserError(ValueError):
        pass

    try:
        try:
            raise ParserError("Error tokenizing data. C error: Expected 2 fields in line 7, saw 3\n")
        except ParserError as inner:
            raise RuntimeError("An error occurred while generating the dataset") from inner
    except RuntimeError as outer:
        err = _explain(outer, Path("x.tsv"), "utf-8")
    assert str(err) == "x.tsv:7: expected 2 fields, saw 3"


# ------------------------------------------------------------------------------ encoding


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 80))
def test_truncate_pair_is_longest_first(la: int, lb: int, budget: int) -> None:
    a, b = la, lb
    while a + b > budget:  # transformers' "longest_first": the longer loses a token, B on ties
        if a > b:
            a -= 1
        else:
            b -= 1
    assert truncate_pair(la, lb, budget) == (a, b)


def test_pair_encoding_token_types(tok_dir: Path, tmp_path: Path) -> None:
    rows = [("the movie was good", "a fine film"), ("bad", "not funny at all really very dull")]
    train = _write(
        tmp_path / "pairs.tsv", "a\tb\tlabel\n" + "".join(f"{x}\t{y}\t{i}\n" for i, (x, y) in enumerate(rows))
    )
    dm = _dm(
        tok_dir, tmp_path, train_file=train, text_column="a", text_pair_column="b", group_by_length=False
    )
    dm.setup("fit")
    tok = load_tokenizer(tok_dir)
    batch = dm.collator()([dm.train_set[i] for i in range(2)])
    for i, (a, b) in enumerate(rows):
        enc = tok.encode(a, b)  # the tokenizer's own pair template
        n = len(enc.ids)
        assert batch["input_ids"][i, :n].tolist() == enc.ids
        assert batch["token_type_ids"][i, :n].tolist() == enc.type_ids
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["token_type_ids"][i, n:].eq(0).all() and batch["input_ids"][i, n:].eq(0).all()
    assert batch["labels"].tolist() == [0, 1] and batch["index"].tolist() == [0, 1]

    # Truncation: longest first, both segments keep their [SEP].
    short = _dm(tok_dir, tmp_path, train_file=train, text_column="a", text_pair_column="b", max_seq_length=8)
    short.setup("fit")
    item = short.train_set[1]
    ids = item["input_ids"]
    assert len(ids) == 8 and ids[0] == 2 and ids[-1] == 3 and ids[item["a_len"] - 1] == 3
    assert item["a_len"] == 3  # "bad" is kept whole: the long second text is cut
    single = _dm(tok_dir, tmp_path, train_file=train, text_column="b", max_seq_length=5)
    single.setup("fit")
    assert len(single.train_set[1]["input_ids"]) == 5 and single.train_set[1]["a_len"] == 5


# ------------------------------------------------------------------------------ batching


def _batches(sampler: LengthGroupedSampler, batch_size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def test_length_grouped_batches_cover_every_row_once() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=1003)
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=7, chunk_batches=5)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = _batches(sampler, 16)
        assert len(batches) == 63 and len(sampler) == 1003
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1003))
        assert sum(len(b) < 16 for b in batches) == 1
        epochs.append(batches)
    assert epochs[0] != epochs[1]
    again = LengthGroupedSampler(lengths, batch_size=16, seed=7, chunk_batches=5)
    assert _batches(again, 16) == epochs[0]  # deterministic from seed and epoch
    # Grouped: the spread of lengths inside a batch is far below that of random batches.
    spread = np.mean([np.ptp(lengths[b]) for b in epochs[0] if len(b) > 1])
    plain = LengthGroupedSampler(lengths, batch_size=16, seed=7, shuffle=True, chunk_batches=10**6)
    plain_order = np.random.default_rng([7, 0]).permutation(len(lengths))
    random_batches = [plain_order[i : i + 16] for i in range(0, len(lengths), 16)]
    assert spread < 0.5 * np.mean([np.ptp(lengths[b]) for b in random_batches if len(b) > 1])
    assert len(list(plain)) == 1003


def test_sampler_resumes_mid_epoch() -> None:
    lengths = np.random.default_rng(1).integers(1, 30, size=101)
    full = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    full.set_epoch(2)
    expected = list(full)
    first = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    first.set_epoch(2)
    it = iter(first)
    head = [next(it) for _ in range(40)]
    state = first.state_dict()
    assert state == {"epoch": 2, "consumed": 40, "seed": 3}
    resumed = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    resumed.load_state_dict(state)
    assert head + list(resumed) == expected
    assert resumed.state_dict() == {"epoch": 3, "consumed": 0, "seed": 3}


def test_grouped_loader_state_counts_received_batches() -> None:
    data = [
        {"index": i, "input_ids": [2] + [5] * (i % 9) + [3], "a_len": 2 + i % 9, "label": i % 2}
        for i in range(50)
    ]

    def loader() -> ResumableDataLoader:
        lengths = [len(r["input_ids"]) for r in data]
        sampler = LengthGroupedSampler(lengths, 4, seed=0)
        return ResumableDataLoader(data, batch_size=4, sampler=sampler, collate_fn=lambda rows: rows)

    full = [[r["index"] for r in b] for b in loader()]
    first = loader()
    it = iter(first)
    head = [[r["index"] for r in next(it)] for _ in range(6)]
    state = first.state_dict()
    assert state["consumed"] == 24 and state["epoch"] == 0  # positions in samples: 6 batches of 4
    second = loader()
    second.sampler.set_epoch(0)  # Lightning calls set_epoch before iterating
    second.load_state_dict(state)
    assert head + [[r["index"] for r in b] for b in second] == full
    assert second.state_dict() == {"epoch": 1, "consumed": 0, "seed": 0}


# ------------------------------------------------------------------------------ training


def _tiny_config(tok_dir: Path) -> BertConfig:
    return BertConfig(
        vocab_size=load_tokenizer(tok_dir).get_vocab_size(),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )


def _module(tok_dir: Path, dm: ClassifyDataModule, optimizer: dict, pooling: str = "cls") -> ClassifyModule:
    task = ClassifyTask(pooling=pooling, labels=dm.labels, problem_type=dm.problem_type, max_seq_length=32)
    return ClassifyModule(task.build_model(_tiny_config(tok_dir)), task, optimizer)


def _task_files(tmp_path: Path, problem: str) -> dict:
    rng = random.Random(problem)

    def rows(n: int) -> str:
        out = []
        for _ in range(n):
            a, b = _sentence(rng), _sentence(rng)
            if problem == "multi_label":
                label = ",".join(x for x in ("good", "bad", "film") if x in a) or ""
                label = label or "none"
            elif problem == "regression":
                label = f"{a.count('good') - a.count('bad') + 0.5:.2f}"
            else:
                label = str(int("good" in a)) if problem != "pair" else str(int(a.split()[0] == b.split()[0]))
            out.append(f"{a}\t{b}\t{label}\n" if problem == "pair" else f"{a}\t{label}\n")
        header = "s1\ts2\tlabel\n" if problem == "pair" else "sentence\tlabel\n"
        return header + "".join(out)

    train = _write(tmp_path / "train.tsv", rows(12))
    dev = _write(tmp_path / "dev.tsv", rows(8))
    kwargs = {"train_file": train, "validation_file": dev, "test_file": dev}
    if problem == "pair":
        kwargs.update(text_column="s1", text_pair_column="s2")
    if problem == "multi_label":
        kwargs.update(problem_type="multi_label", label_separator=",")
    if problem == "regression":
        kwargs.update(problem_type="regression")
    return kwargs


def _trainer(**kwargs) -> L.Trainer:
    settings = {
        "max_steps": 3,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 2,
    }
    return L.Trainer(**{**settings, **kwargs})


@pytest.mark.parametrize("problem", ["single_label", "pair", "multi_label", "regression"])
def test_short_fit(tok_dir: Path, tmp_path: Path, problem: str) -> None:
    L.seed_everything(0, workers=True)
    dm = _dm(
        tok_dir,
        tmp_path,
        batch_size=4,
        eval_batch_size=4,
        max_seq_length=32,
        **_task_files(tmp_path, problem),
    )
    dm.setup("fit")
    optimizer = {"lr": 1e-3, "warmup_ratio": 0.1, "weight_decay": 0.01}
    model = _module(tok_dir, dm, optimizer, pooling="mean" if problem == "pair" else "cls")
    trainer = _trainer()
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    if problem == "regression":
        assert dm.labels == ["label"] and {"val/mse", "val/pearson", "val/spearman"} <= set(metrics)
        assert model.last_confusion is None
    elif problem == "multi_label":
        assert dm.labels == sorted(dm.labels) and "none" in dm.labels
        assert {"val/acc", "val/f1"} <= set(metrics)
        assert np.array(model.last_confusion).shape == (dm.num_labels, 2, 2)
    else:
        assert dm.labels == ["0", "1"] and {"val/acc", "val/f1", "val/mcc"} <= set(metrics)
        confusion = np.array(model.last_confusion)
        assert confusion.shape == (2, 2) and confusion.sum() == 8  # the 2 x 4 validation rows
    tested = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert "test/loss" in tested

    if problem == "single_label":
        # The predictor answers in input order, whatever the length-sorted batching did, and each
        # answer equals the model run on its text alone.
        task, tokenizer = model.task, load_tokenizer(tok_dir)
        texts = ["good film", "the plot was very very dull and boring", "bad"]
        backend = TorchBackend(model.model, task.output_names)
        batched = task.predictor(model.model, tokenizer, backend, 32, 2).predict([(t, None) for t in texts])
        assert [a["text"] for a in batched] == texts
        for text, answer in zip(texts, batched):
            (alone,) = task.predictor(model.model, tokenizer, backend, 32, 1).predict([(text, None)])
            assert alone["label"] == answer["label"] and alone["scores"] == pytest.approx(
                answer["scores"], abs=1e-5
            )
        # Checkpoints hold plain values only, and they rebuild the same model.
        ckpt_path = tmp_path / "m.ckpt"
        trainer.save_checkpoint(ckpt_path)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        assert ckpt["hyper_parameters"]["task"]["labels"] == ["0", "1"]
        restored_task, restored, _ = load_model(ckpt_path)
        assert restored_task.problem_type == "single_label" and restored.head.pooling == "cls"
        batch = task.check_batches(tokenizer, texts, 32)[0]
        inputs = [torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
        model.model.eval()
        with torch.no_grad():
            torch.testing.assert_close(restored(*inputs), model.model(*inputs))


def test_train_loader_position_in_checkpoint(tok_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(5)
    train = _write(
        tmp_path / "t.tsv", "sentence\tlabel\n" + "".join(f"{_sentence(rng)}\t{i % 2}\n" for i in range(24))
    )
    dm = _dm(tok_dir, tmp_path, train_file=train, batch_size=4)
    dm.setup("fit")
    model = _module(tok_dir, dm, {"lr": 1e-3})
    trainer = _trainer(limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", map_location="cpu", weights_only=True)
    loader_states = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_states == [{"epoch": 0, "consumed": 12, "seed": 1234}]  # 3 batches of 4 rows


# ------------------------------------------------------------------------------- metrics


def _compute(metrics: dict, preds: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    out = {}
    for name, metric in metrics.items():
        metric.update(preds, target)
        out[name] = float(metric.compute())
    return out


def test_metrics_agree_with_sklearn() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)

    y = torch.randint(0, 2, (200,), generator=g)
    p = torch.where(torch.rand(200, generator=g) < 0.7, y, 1 - y)
    got = _compute(make_metrics("single_label", 2)[0], p, y)
    assert got["acc"] == pytest.approx(skm.accuracy_score(y, p))
    assert got["f1"] == pytest.approx(skm.f1_score(y, p))  # binary F1 of class 1 (GLUE MRPC)
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-6)
    confusion = make_metrics("single_label", 2)[1]
    confusion.update(p, y)
    assert confusion.compute().tolist() == skm.confusion_matrix(y, p).tolist()

    y = torch.randint(0, 4, (300,), generator=g)
    p = torch.where(torch.rand(300, generator=g) < 0.5, y, torch.randint(0, 4, (300,), generator=g))
    got = _compute(make_metrics("single_label", 4)[0], p, y)
    assert got["acc"] == pytest.approx(skm.accuracy_score(y, p))
    assert got["f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-6)

    y = torch.randint(0, 2, (150, 5), generator=g)
    probs = torch.rand(150, 5, generator=g) * 0.6 + 0.4 * y
    hard = (probs >= 0.5).long()
    got = _compute(make_metrics("multi_label", 5)[0], probs, y)
    assert got["f1"] == pytest.approx(skm.f1_score(y, hard, average="micro"))
    assert got["acc"] == pytest.approx(skm.accuracy_score(y, hard))  # exact match (subset accuracy)
    confusion = make_metrics("multi_label", 5)[1]
    confusion.update(probs, y)
    assert confusion.compute().tolist() == skm.multilabel_confusion_matrix(y, hard).tolist()

    target = torch.randn(100, generator=g)
    pred = target + 0.5 * torch.randn(100, generator=g)
    got = _compute(make_metrics("regression", 1)[0], pred, target)
    assert got["mse"] == pytest.approx(skm.mean_squared_error(target, pred), rel=1e-5)
    assert got["pearson"] == pytest.approx(float(np.corrcoef(pred, target)[0, 1]), rel=1e-4)
    ranks = [np.argsort(np.argsort(x.numpy())) for x in (pred, target)]
    assert got["spearman"] == pytest.approx(float(np.corrcoef(*ranks)[0, 1]), rel=1e-4)


# ------------------------------------------------------------------------------ shared data


@pytest.mark.skipif(not (SHARED_DATA / "sst2" / "dev.tsv").exists(), reason="shared SST-2 data not present")
def test_shared_sst2_and_mrpc_dev(tmp_path: Path) -> None:
    sst2 = read_table(SHARED_DATA / "sst2" / "dev.tsv", quoting="none", cache_dir=str(tmp_path / "hf"))[0]
    assert len(sst2) == 872 and sst2.column_names == ["sentence", "label"]
    assert collections.Counter(sst2["label"]) == {"0": 428, "1": 444}
    mrpc_path = SHARED_DATA / "mrpc" / "dev.tsv"
    if not mrpc_path.exists():
        pytest.skip("shared MRPC data not present")
    mrpc = read_table(mrpc_path, quoting="none", cache_dir=str(tmp_path / "hf"))[0]
    assert len(mrpc) == 408
    assert {"Quality", "#1 String", "#2 String"} <= set(mrpc.column_names)
    assert collections.Counter(mrpc["Quality"]) == {"0": 129, "1": 279}

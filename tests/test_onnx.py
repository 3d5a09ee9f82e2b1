"""ONNX export checked by onnxruntime, and ``bertlab-predict --backend onnx``.

Tiny random-weight models (hidden 32, seq <= 32) exported the way a run exports them (the task's HF
export), then to ONNX; both backends run on the same text and must agree.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bertlab.cli.export import main as export_main
from bertlab.cli.predict import main as predict_main
from bertlab.data.tokenizer import load_tokenizer
from bertlab.encoder import BertConfig
from bertlab.errors import BertlabError
from bertlab.export import onnx as onnx_export
from bertlab.export.onnx import INFO_FILE, INT8_FILE, ONNX_FILE, make_session, run_session
from bertlab.inference import OnnxBackend
from bertlab.tasks.base import Task, export_onnx_beside, load_model
from bertlab.tasks.classify import ClassifyTask
from bertlab.tasks.ner import NerTask
from bertlab.tasks.pretrain import PretrainTask
from tests.conftest import words_tokenizer

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

WORDS = (
    "the film was good bad great movie anna moved from paris to apple office in cupertino plot thin "
    "actors lovely it rained again peter lived greenmere town"
).split()

LINES = [
    "the film was good",
    "Anna moved from Paris to the Apple office in Cupertino",
    "ok",
    "the plot is thin\tbut the actors are lovely",
    "it rained again and again and again",
]
# NER: a sentence longer than max_seq_length=32 word pieces is cut into windows
NER_LINES = [
    "Peter lived in Greenmere town .",
    "Anna moved from Paris to the Apple office in Cupertino",
    " ".join(WORDS * 2),
    "ok",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return words_tokenizer(tmp_path_factory.mktemp("tok") / "wp", WORDS, vocab_size=120)


def _config(tok_dir: Path) -> BertConfig:
    return BertConfig(
        vocab_size=load_tokenizer(tok_dir).get_vocab_size(),
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )


def _export(task: Task, tok_dir: Path, out: Path, seed: int, scale: float = 1.0) -> torch.nn.Module:
    """A random-weight model of ``task`` exported to ``out`` as a run exports it."""
    torch.manual_seed(seed)
    model = task.build_model(_config(tok_dir)).eval()
    if scale != 1.0:
        with torch.no_grad():  # logits far enough apart that int8 keeps the labels
            model.head.classifier.weight.mul_(scale)
    task.export_hf(model, tok_dir, out, {"task": task.metadata()})
    return model


@pytest.fixture(scope="module")
def cls_dir(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cls") / "export"
    _export(ClassifyTask(labels=["neg", "neu", "pos"], max_seq_length=32), tok_dir, out, seed=0, scale=20)
    export_onnx_beside(out, quantize="int8", max_seq_length=32)
    return out


@pytest.fixture(scope="module")
def ner_dir(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels = ["O", "B-person", "I-person", "B-location", "I-location"]
    out = tmp_path_factory.mktemp("ner") / "export"
    _export(
        NerTask(labels=labels, word_split="whitespace", max_seq_length=32, stride=8), tok_dir, out, seed=1
    )
    export_onnx_beside(out, max_seq_length=32)
    return out


def _inputs(batch: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]


def _predict(model: Path, lines: list[str], tmp_path: Path, *extra: str) -> list[dict]:
    inp, out = tmp_path / "in.txt", tmp_path / f"out{len(list(tmp_path.iterdir()))}.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    predict_main([str(model), "-i", str(inp), "-o", str(out), "--max-seq-length", "32", *extra])
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_classifier_onnx_equals_torch(cls_dir: Path, tmp_path: Path, capsys) -> None:
    info = json.loads((cls_dir / INFO_FILE).read_text())
    assert (
        info["opset"] == 18
        and info["task"]["name"] == "classify"
        and info["task"]["labels"] == ["neg", "neu", "pos"]
    )
    assert info["check"]["max_abs_diff"]["logits"] <= 1e-4
    assert [s[0] for s in info["check"]["batch_shapes"]] == [7, 1]  # padded batch, then one sentence
    session = make_session(cls_dir / ONNX_FILE, threads=1)
    assert [i.shape for i in session.get_inputs()] == [["batch", "seq"]] * 3
    assert session.get_outputs()[0].shape == ["batch", 3]

    # logits: onnxruntime against the PyTorch module, on a padded batch of another shape than the check's
    task, model, _ = load_model(cls_dir)
    tokenizer = load_tokenizer(cls_dir)
    batch = task.check_batches(tokenizer, LINES, 32)[0]
    assert batch["attention_mask"].min() == 0 and batch["token_type_ids"].max() == 1
    with torch.no_grad():
        ref = model(*_inputs(batch))
    (got,) = OnnxBackend(cls_dir / ONNX_FILE, task.output_names, threads=1)(batch)
    torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-4, rtol=0)
    # longer than any check input (32): the sequence axis is not tied to the check's shapes
    long = task.check_batches(tokenizer, [" ".join(WORDS * 3), "ok"], 64)[0]
    assert long["input_ids"].shape[1] == 64
    with torch.no_grad():
        ref_long = model(*_inputs(long))
    np.testing.assert_allclose(run_session(session, long)[0], ref_long.numpy(), atol=1e-4, rtol=0)

    # the command line: same labels and scores from both backends (batches sorted by length, batch 2)
    rows_pt = _predict(cls_dir, LINES, tmp_path, "--batch-size", "2")
    rows_ort = _predict(cls_dir, LINES, tmp_path, "--batch-size", "2", "--backend", "onnx", "--threads", "1")
    err = capsys.readouterr().err
    assert "5 inputs, classify, torch:" in err and "5 inputs, classify, onnx:" in err and "inputs/s" in err
    assert [r["label"] for r in rows_ort] == [r["label"] for r in rows_pt]
    assert [r["label"] for r in rows_pt] == ["neg neu pos".split()[int(i)] for i in ref.argmax(-1)]
    for a, b in zip(rows_pt, rows_ort):
        assert a["text"] == b["text"] and a.get("text_pair") == b.get("text_pair")
        assert max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]) <= 1e-5

    # int8: written beside it, checked by label agreement; the same labels on these lines
    assert (cls_dir / INT8_FILE).is_file() and info["int8"]["argmax_agreement"] >= 0.9
    rows_q = _predict(cls_dir, LINES, tmp_path, "--backend", "onnx", "--onnx-file", INT8_FILE)
    assert [r["label"] for r in rows_q] == [r["label"] for r in rows_pt]


def test_ner_onnx_equals_torch(ner_dir: Path, tmp_path: Path) -> None:
    info = json.loads((ner_dir / INFO_FILE).read_text())
    assert info["task"]["name"] == "ner" and info["task"]["scheme"] == "IOB2" and "int8" not in info
    session = make_session(ner_dir / ONNX_FILE)
    assert session.get_outputs()[0].shape == ["batch", "seq", 5]
    rows_pt = _predict(ner_dir, NER_LINES, tmp_path, "--batch-size", "3")
    rows_ort = _predict(ner_dir, NER_LINES, tmp_path, "--batch-size", "3", "--backend", "onnx")
    assert rows_ort == rows_pt  # words, tags, entity spans with character offsets
    assert len(rows_pt[2]["tags"]) == len(WORDS) * 2  # the long sentence: every word predicted
    assert any(r["entities"] for r in rows_pt)  # spans are compared, not only empty lists
    spans = [e for r in rows_pt for e in r["entities"]]
    assert all(set(e) >= {"start", "end", "text"} for e in spans)
    # token logits at every position of a padded batch
    task, model, _ = load_model(ner_dir)
    batch = task.check_batches(load_tokenizer(ner_dir), NER_LINES, 32)[0]
    with torch.no_grad():
        ref = model(*_inputs(batch)).numpy()
    np.testing.assert_allclose(run_session(session, batch)[0], ref, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def ner_crf_dir(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """task.head=crf: random CRF scores large enough that Viterbi and argmax disagree."""
    labels = ["O", "B-person", "I-person", "B-location", "I-location"]
    task = NerTask(head="crf", labels=labels, word_split="whitespace", max_seq_length=32, stride=8)
    out = tmp_path_factory.mktemp("ner_crf") / "export"
    torch.manual_seed(4)
    model = task.build_model(_config(tok_dir)).eval()
    with torch.no_grad():
        for p in model.crf.parameters():
            p.copy_(torch.randn(p.shape) * 3)
    task.export_hf(model, tok_dir, out, {"task": task.metadata()})
    export_onnx_beside(out, max_seq_length=32)
    return out


def test_ner_crf_onnx_equals_torch(ner_crf_dir: Path, tmp_path: Path) -> None:
    """The graph gives the emissions; both backends decode them with the CRF scores saved beside the
    weights (crf.safetensors): the same tags and spans, valid for the scheme, long sentence included."""
    info = json.loads((ner_crf_dir / INFO_FILE).read_text())
    assert info["task"]["head"] == "crf" and info["outputs"] == ["logits"]
    rows_pt = _predict(ner_crf_dir, NER_LINES, tmp_path, "--batch-size", "3")
    rows_ort = _predict(ner_crf_dir, NER_LINES, tmp_path, "--batch-size", "3", "--backend", "onnx")
    assert rows_ort == rows_pt
    assert len(rows_pt[2]["tags"]) == len(WORDS) * 2 and any(r["entities"] for r in rows_pt)
    for row in rows_pt:  # IOB2: an I- tag only after a B- or I- tag of its type
        for prev, tag in zip(["O", *row["tags"]], row["tags"]):
            assert not tag.startswith("I-") or prev[2:] == tag[2:], row["tags"]


# long documents: several windows of 32 each, pooled outside the graph
DOC_LINES = [" ".join(WORDS * 3), "the film was good", " ".join(WORDS[::-1] * 2) + "\tafter a tab"]


def test_windowed_classifier_predicts_the_same_on_both_backends(tok_dir: Path, tmp_path: Path) -> None:
    """data.long_text=windows: the ONNX graph is the plain [B, T] classifier; both backends run every
    window of each document and pool them with the task's pool_windows: same labels, same scores."""
    out = tmp_path / "export"
    task = ClassifyTask(labels=["neg", "neu", "pos"], max_seq_length=32, long_text="windows", stride=8)
    model = _export(task, tok_dir, out, seed=3, scale=20)
    _, info = export_onnx_beside(out, max_seq_length=32)
    assert info["task"]["long_text"] == "windows" and info["check"]["max_abs_diff"]["logits"] <= 1e-4
    rows_pt = _predict(out, DOC_LINES, tmp_path, "--batch-size", "2")
    rows_ort = _predict(out, DOC_LINES, tmp_path, "--batch-size", "2", "--backend", "onnx", "--threads", "1")
    assert [r["text"] for r in rows_pt] == DOC_LINES  # one answer per document; a tab is not a pair
    assert [r["label"] for r in rows_ort] == [r["label"] for r in rows_pt]
    for a, b in zip(rows_pt, rows_ort):
        assert max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]) <= 1e-5
    # the answers are the mean of the window logits, computed here by hand
    tokenizer = load_tokenizer(tok_dir)
    encode = task.encoder(tokenizer, 32)
    for line, answer in zip(DOC_LINES, rows_pt):
        (row,) = encode([(line, None)])
        with torch.no_grad():
            logits = model(*_inputs(encode.collate([row]))).mean(0)
        if line == DOC_LINES[0]:
            assert len(row["input_ids"]) > 2  # really several windows
        probs = logits.softmax(-1).tolist()
        assert answer["scores"] == pytest.approx(dict(zip(["neg", "neu", "pos"], probs)), abs=1e-5)


def _hf_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if "onnx" not in f.name:
            shutil.copyfile(f, dst / f.name)
    return dst


def test_failed_check_writes_nothing(cls_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = _hf_copy(cls_dir, tmp_path / "export")
    before = sorted(p.name for p in out.iterdir())
    # a correct graph (copied, to skip the exporter), but PyTorch's logits are made to differ by 1e-3
    monkeypatch.setattr(
        onnx_export, "_export_file", lambda g, s, path, o, m: shutil.copyfile(cls_dir / ONNX_FILE, path)
    )
    real = onnx_export._torch_outputs
    monkeypatch.setattr(onnx_export, "_torch_outputs", lambda g, b: [x + 1e-3 for x in real(g, b)])
    with pytest.raises(SystemExit) as exc:
        export_main([str(out), "--format", "onnx", "--quantize", "int8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ONNX check failed") and "\n" not in err and "nothing written" in err
    assert sorted(p.name for p in out.iterdir()) == before  # no model.onnx, no onnx.json, no temp file

    # int8 agreement too low: nothing at all is written either (not even the fp32 model)
    monkeypatch.setattr(onnx_export, "_torch_outputs", real)
    with pytest.raises(BertlabError, match="int8 check failed"):
        export_onnx_beside(out, quantize="int8", max_seq_length=32, int8_min_agreement=1.01)
    assert sorted(p.name for p in out.iterdir()) == before


def test_onnx_refused_when_stale_or_missing(cls_dir: Path, tmp_path: Path, capsys) -> None:
    bare = _hf_copy(cls_dir, tmp_path / "bare")
    with pytest.raises(SystemExit):
        _predict(bare, LINES, tmp_path, "--backend", "onnx")
    assert "model.onnx not found; write it with: bertlab-export" in capsys.readouterr().err
    stale = tmp_path / "stale"
    shutil.copytree(cls_dir, stale)
    state = load_file(str(stale / "model.safetensors"))
    state["classifier.bias"] = state["classifier.bias"] + 1.0
    save_file(state, str(stale / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SystemExit):
        _predict(stale, LINES, tmp_path, "--backend", "onnx")
    assert "exported from other weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "nowhere")])
    assert (
        capsys.readouterr().err.strip()
        == f"error: no run directory or export directory at {tmp_path / 'nowhere'}"
    )


def test_pretraining_export(tok_dir: Path, tmp_path: Path) -> None:
    task = PretrainTask(max_seq_length=32)
    model = _export(task, tok_dir, tmp_path / "export", seed=2)
    _, info = export_onnx_beside(tmp_path / "export", max_seq_length=32)
    assert info["task"]["name"] == "pretrain" and info["outputs"] == ["mlm_logits", "nsp_logits"]
    session = make_session(tmp_path / "export" / ONNX_FILE)
    batch = task.check_batches(load_tokenizer(tok_dir), LINES[::-1], 32)[0]
    mlm, nsp = run_session(session, batch)
    with torch.no_grad():
        seq, pooled = model.encoder(*_inputs(batch))
        ref_mlm, ref_nsp = model.mlm_head(seq), model.nsp_head(pooled)
    assert mlm.shape == (*batch["input_ids"].shape, model.config.vocab_size)
    np.testing.assert_allclose(mlm, ref_mlm.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(nsp, ref_nsp.numpy(), atol=1e-4, rtol=0)


def test_export_onnx_at_end_of_training(compose_cfg) -> None:
    """``export_onnx=int8`` in the train config: a tiny pretraining run ends with both ONNX files."""
    from bertlab.job import run

    cfg = compose_cfg(["trainer.max_steps=2", "trainer.val_check_interval=2", "export_onnx=int8"])
    run(cfg)
    export = Path(cfg.paths.output_dir) / "export"
    info = json.loads((export / INFO_FILE).read_text())
    assert (
        info["task"]["name"] == "pretrain"
        and (export / ONNX_FILE).is_file()
        and (export / INT8_FILE).is_file()
    )
    assert max(info["check"]["max_abs_diff"].values()) <= 1e-4
    assert json.loads((export.parent / "summary.json").read_text())["status"] == "completed"

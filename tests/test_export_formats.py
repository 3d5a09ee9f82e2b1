"""``bertlab-export --optimize`` (the fully fused ONNX graph) and ``--format torch-export`` (model.pt2),
for every task, checked the way the plain ONNX export is: against PyTorch to 1e-4 on the texts the
task encodes, or nothing is written.

Tiny random-weight models exported as a run exports them (tests/test_onnx.py's helpers).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertlab.cli.export import main as export_main
from bertlab.data.tokenizer import load_tokenizer
from bertlab.errors import BertlabError
from bertlab.export import fused
from bertlab.export import onnx as onnx_export
from bertlab.export.files import INFO_FILE, INT8_FILE, ONNX_FILE, PT2_FILE, PT2_INFO_FILE
from bertlab.export.onnx import CHECK_TEXTS
from bertlab.inference import OnnxBackend
from bertlab.tasks.base import export_onnx_beside, export_pt2_beside, load_model
from bertlab.tasks.classify import ClassifyTask
from bertlab.tasks.ner import NerTask
from bertlab.tasks.pretrain import PretrainTask
from tests.conftest import words_tokenizer
from tests.test_onnx import LINES, NER_LINES, WORDS, _export, _predict

pytest.importorskip("onnxruntime")

MASK_LINES = ["the film was [MASK]", "anna moved from [MASK] to the apple office\tit rained again"]
NER_LABELS = ["O", "B-person", "I-person", "B-location", "I-location"]
TASKS = {
    "classify": lambda: ClassifyTask(labels=["neg", "neu", "pos"], max_seq_length=32),
    "classify-mean": lambda: ClassifyTask(labels=["neg", "pos"], max_seq_length=32, pooling="mean"),
    "ner": lambda: NerTask(labels=NER_LABELS, word_split="whitespace", max_seq_length=32, stride=8),
    "pretrain": lambda: PretrainTask(max_seq_length=32),
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return words_tokenizer(tmp_path_factory.mktemp("tok") / "wp", WORDS, vocab_size=120)


def _inputs(batch: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module", params=list(TASKS))
def optimized(request: pytest.FixtureRequest, tok_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(name, export dir, onnx.json, what the command printed) of each task, exported with --optimize (and int8 for classify)."""
    name = request.param
    out = tmp_path_factory.mktemp(f"opt-{name}") / "export"
    _export(TASKS[name](), tok_dir, out, seed=0, scale=20 if name.startswith("classify") else 1.0)
    argv = [str(out), "--optimize", "--max-seq-length", "32"]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        export_main(argv + (["--quantize", "int8"] if name == "classify" else []))
    return name, out, json.loads((out / INFO_FILE).read_text()), err.getvalue()


def test_optimized_graph_is_fully_fused_and_checked(optimized) -> None:
    name, out, info, printed = optimized
    task, model, _ = load_model(out)
    layers = model.config.num_layers
    fused_ops = info["optimized"]["fused_ops"]
    assert info["opset"] == 14 and info["exporter"].startswith("torch.onnx.export(dynamo=False)")
    assert info["optimized"]["layers"] == layers
    assert fused_ops["Attention"] == layers and fused_ops["EmbedLayerNormalization"] == 1
    assert fused_ops["SkipLayerNormalization"] == 2 * layers
    assert fused_ops["BiasGelu"] == layers + (name == "pretrain")  # the MLM head's transform too
    assert "Softmax" not in info["optimized"]["op_counts"]
    assert max(info["check"]["max_abs_diff"].values()) <= 1e-4
    # the task's own check batches: a padded batch of the check texts, then one text alone
    expected = task.check_batches(load_tokenizer(out), CHECK_TEXTS, 32)
    assert info["check"]["batch_shapes"] == [list(b["input_ids"].shape) for b in expected]
    if name == "classify":
        assert info["int8"]["quantized_ops"]["QAttention"] == layers and (out / INT8_FILE).is_file()
    else:
        assert not (out / INT8_FILE).exists()
    # the session runs the graph at a length the check never used, with a padded batch
    texts = [" ".join(WORDS * 3), "ok", LINES[3]] if name != "ner" else NER_LINES
    batch = task.check_batches(load_tokenizer(out), texts, 64)[0]
    assert batch["input_ids"].shape[1] == 64 and batch["attention_mask"].min() == 0
    got = OnnxBackend(out / ONNX_FILE, task.output_names, threads=1)(batch)
    with torch.no_grad():
        ref = model(*_inputs(batch))
    refs = [ref[n] for n in task.output_names] if isinstance(ref, dict) else [ref]
    for g, r in zip(got, refs):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0)
    # one line: the file, the check, what was fused (and int8's agreement)
    assert printed.count("\n") == 1 and printed.startswith(
        f"{out / ONNX_FILE}: opset 14, max |onnxruntime - torch|"
    )
    assert f"fused ({layers} layers): Attention {layers}, " in printed


def test_optimized_graph_predicts_like_torch(optimized, tmp_path: Path) -> None:
    name, out, _, _ = optimized
    lines = {"ner": NER_LINES, "pretrain": MASK_LINES}.get(name, LINES)
    rows_pt = _predict(out, lines, tmp_path, "--batch-size", "2")
    rows_ort = _predict(out, lines, tmp_path, "--batch-size", "2", "--backend", "onnx", "--threads", "1")
    if name == "ner":
        assert rows_ort == rows_pt and any(r["entities"] for r in rows_pt)
        return
    if name == "pretrain":  # the same candidates at every [MASK], the same NSP answer
        for a, b in zip(rows_pt, rows_ort):
            assert [[c["token"] for c in m["candidates"]] for m in a["masks"]] == [
                [c["token"] for c in m["candidates"]] for m in b["masks"]
            ]
            assert abs(a.get("is_next", 0) - b.get("is_next", 0)) <= 1e-5
        return
    assert [r["label"] for r in rows_ort] == [r["label"] for r in rows_pt]
    for a, b in zip(rows_pt, rows_ort):
        assert max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]) <= 1e-5
    if name == "classify":  # int8 of the fused graph: the same labels on these lines
        rows_q = _predict(out, lines, tmp_path, "--backend", "onnx", "--onnx-file", INT8_FILE)
        assert [r["label"] for r in rows_q] == [r["label"] for r in rows_pt]


def test_optimized_export_writes_nothing_on_failure(
    tok_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "export"
    _export(TASKS["classify"](), tok_dir, out, seed=1)
    before = _files(out)
    # a graph that is not fully fused is refused: it would be slower without saying so
    monkeypatch.setattr(fused, "fusion_problems", lambda counts, layers: ["Attention: 1 (expected 2)"])
    with pytest.raises(SystemExit) as exc:
        export_main([str(out), "--optimize", "--quantize", "int8", "--max-seq-length", "32"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err
    assert err == "error: fused ONNX export: the optimizer did not fuse the graph: Attention: 1 (expected 2)"
    assert _files(out) == before
    monkeypatch.undo()
    # fused, but PyTorch's logits are made to differ by 1e-3: the 1e-4 check refuses it
    from bertlab.export import onnx as onnx_export

    real = onnx_export._torch_outputs
    monkeypatch.setattr(onnx_export, "_torch_outputs", lambda g, b: [x + 1e-3 for x in real(g, b)])
    with pytest.raises(BertlabError, match=r"ONNX check failed .* nothing written"):
        export_onnx_beside(out, max_seq_length=32, optimize=True)
    assert _files(out) == before


# ------------------------------------------------------------------------ torch.export


@pytest.mark.parametrize("name", ["classify", "ner"])
def test_torch_export_is_checked_and_loads_alone(name: str, tok_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    _export(TASKS[name](), tok_dir, out, seed=2)
    export_main([str(out), "--format", "torch-export", "--max-seq-length", "32"])
    assert f"{out / PT2_FILE}: max |exported - eager|" in capsys.readouterr().err
    info = json.loads((out / PT2_INFO_FILE).read_text())
    assert info["file"] == PT2_FILE and info["task"]["name"] == name and info["outputs"] == ["logits"]
    assert max(info["check"]["max_abs_diff"].values()) <= 1e-4 and info["weights_digest"]
    assert not (out / ONNX_FILE).exists()  # one format per call
    # loaded with torch alone, on a batch of a shape the export never saw (dynamic batch and length)
    program = torch.export.load(str(out / PT2_FILE)).module()
    task, model, _ = load_model(out)
    texts = NER_LINES if name == "ner" else [" ".join(WORDS * 3), "ok", LINES[3]]
    batch = task.check_batches(load_tokenizer(out), texts, 64)[0]
    with torch.no_grad():
        got, ref = program(*_inputs(batch)), model(*_inputs(batch))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_torch_export_writes_nothing_on_failure(tok_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "export"
    _export(TASKS["classify"](), tok_dir, out, seed=3)
    before = _files(out)
    real = onnx_export._torch_outputs  # the eager side of every export's check (compare_outputs)
    monkeypatch.setattr(onnx_export, "_torch_outputs", lambda g, b: [x + 1e-3 for x in real(g, b)])
    with pytest.raises(BertlabError, match=r"torch.export check failed .* nothing written"):
        export_pt2_beside(out, max_seq_length=32)
    assert _files(out) == before  # no model.pt2, no pt2.json, no temporary file
    for argv, message in [
        (["--format", "torch-export", "--optimize"], "apply to --format onnx, not torch-export"),
        (["--format", "torch-export", "--quantize", "int8"], "apply to --format onnx"),
    ]:
        with pytest.raises(SystemExit):
            export_main([str(out), *argv])
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err

"""``bertlab-predict``: labels, or entity spans with character offsets, for lines of text, as JSONL.

    bertlab-predict logs/ner/runs/<time>            < sentences.txt > entities.jsonl
    bertlab-predict logs/classify/runs/<time>/export --input reviews.txt --output labels.jsonl
    bertlab-predict logs/ner/runs/<time> --backend onnx --threads 2 < sentences.txt

For a classifier each input line is one text, or a pair as ``text_a<TAB>text_b``; for NER each line
is a sentence, split into words at white space (each CJK character is a word). Lines are batched
in order of length for speed; the output keeps the input order, one JSON object per line.
``--backend onnx`` runs the same batches through onnxruntime (``model.onnx`` written by
``bertlab-export``; ``--onnx-file model.int8.onnx`` for the quantized one); the output is the same.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from bertlab.data.cache import directory_digest
from bertlab.data.labelled import ClassifyCollator, encode_pairs
from bertlab.data.ner import NerCollator, build_windows, word_pieces
from bertlab.data.tokenizer import load_tokenizer, special_token_ids
from bertlab.errors import BertlabError
from bertlab.export.onnx import INPUT_NAMES, ONNX_FILE, make_session, read_info, run_session
from bertlab.tagging import entity_spans_with_offsets
from bertlab.tasks.classify import ClassifyModule
from bertlab.tasks.init_from import Pretrained, load_encoder_weights, load_pretrained
from bertlab.tasks.ner import NerModule, WordPredictionAssembler

# A word is a run of non-space characters, except that every CJK character is a word of its own.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def words_with_offsets(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [(m.start(), m.end()) for m in matches]


def read_lines(source: TextIO | Path) -> list[str]:
    """The input's lines (without line endings); invalid UTF-8 is reported with its line."""
    name = str(source) if isinstance(source, Path) else "<stdin>"
    raw = source.read_bytes() if isinstance(source, Path) else source.buffer.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = []
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise BertlabError(f"{name}:{i}: invalid UTF-8 at byte offset {e.start} of the line") from None
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _task_of(pretrained: Pretrained) -> str:
    task = pretrained.metadata.get("task")
    arch = " ".join(pretrained.metadata.get("architectures", []))
    if task in ("classify", "ner"):
        return task
    if "TokenClassification" in arch or "scheme" in pretrained.metadata:
        return "ner"
    if "SequenceClassification" in arch or "problem_type" in pretrained.metadata:
        return "classify"
    raise BertlabError(f"{pretrained.source}: not a fine-tuned classifier or NER model (no labels or task)")


def load_predictor(path: str | Path) -> tuple[str, torch.nn.Module, Pretrained]:
    """The fine-tuned model at ``path`` (export dir, run dir or .ckpt) in eval mode, and its task."""
    pretrained = load_pretrained(path)
    labels = pretrained.metadata.get("labels")
    if not labels:
        raise BertlabError(f"{pretrained.source}: the model has no label names (id2label)")
    if pretrained.tokenizer_dir is None:
        raise BertlabError(f"{pretrained.source}: no tokenizer beside the model")
    if not any(k.endswith("classifier.weight") for k in pretrained.head_state):
        raise BertlabError(f"{pretrained.source}: the model has no classifier weights")
    task = _task_of(pretrained)
    config = dict(vars(pretrained.config))
    meta = pretrained.metadata
    if task == "classify":
        problem = meta.get("problem_type", "single_label")
        problem = {
            "single_label_classification": "single_label",
            "multi_label_classification": "multi_label",
        }.get(problem, problem)
        module: torch.nn.Module = ClassifyModule(
            config,
            {},
            num_labels=len(labels),
            label_names=labels,
            problem_type=problem,
            pooling=meta.get("pooling", "cls"),
        )
    else:
        module = NerModule(config, {}, label_names=labels, scheme=meta.get("scheme", "IOB2"))
    load_encoder_weights(module.encoder, pretrained)
    head = {k.removeprefix("head."): v for k, v in pretrained.head_state.items()}
    head = {k if k.startswith("classifier.") else f"classifier.{k}": v for k, v in head.items()}
    module.head.load_state_dict(head)
    module.eval()
    return task, module, pretrained


LogitsFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class OnnxLogits:
    """A batch's logits from onnxruntime: the ``LogitsFn`` of ``--backend onnx``."""

    def __init__(self, path: str | Path, threads: int | None = None, num_labels: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise BertlabError(f"{path} not found; write it with: bertlab-export {path.parent} --format onnx")
        self.path = path
        self.session = make_session(path, threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUT_NAMES):
            raise BertlabError(f"{path}: the graph's inputs are {names}, expected {list(INPUT_NAMES)}")
        width = self.session.get_outputs()[0].shape[-1]
        if num_labels is not None and isinstance(width, int) and width != num_labels:
            raise BertlabError(f"{path}: the graph gives {width} logits, the model has {num_labels} labels")

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(run_session(self.session, {k: batch[k].numpy() for k in INPUT_NAMES})[0])


def onnx_logits_for(
    pretrained: Pretrained, num_labels: int, onnx_file: str | None = None, threads: int | None = None
) -> OnnxLogits:
    """The onnxruntime backend for a loaded predictor: ``onnx_file`` (default ``model.onnx``) beside
    its HF files, refused when ``onnx.json`` says it was exported from other weights."""
    export_dir = Path(pretrained.source)
    if not (export_dir / "config.json").is_file():
        raise BertlabError(
            f"{pretrained.source}: --backend onnx needs a run or export directory, not a .ckpt"
        )
    path = export_dir / (onnx_file or ONNX_FILE)
    info = read_info(export_dir)
    digest = info.get("weights_digest")
    if digest and digest != directory_digest(export_dir, ["model.safetensors"]):
        raise BertlabError(
            f"{path} was exported from other weights than {export_dir / 'model.safetensors'}; "
            f"re-run bertlab-export {export_dir} --format onnx"
        )
    return OnnxLogits(path, threads, num_labels)


def _batches(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), batch_size):
        yield list(order[i : i + batch_size])


@torch.no_grad()
def predict_classify(
    module: ClassifyModule,
    tokenizer: Any,
    lines: list[str],
    max_seq_length: int,
    batch_size: int,
    logits_fn: LogitsFn | None = None,
) -> list[dict[str, Any]]:
    """One result per line; ``logits_fn`` (e.g. :class:`OnnxLogits`) replaces ``module``'s forward."""
    ids = special_token_ids(tokenizer)
    texts, pairs = [], []
    for line in lines:
        a, _, b = line.partition("\t")
        texts.append(a)
        pairs.append(b)
    use_pairs = any("\t" in line for line in lines)
    enc = encode_pairs(tokenizer, texts, pairs if use_pairs else None, max_seq_length, ids["cls"], ids["sep"])
    rows = [
        {"input_ids": x, "a_len": a, "index": i}
        for i, (x, a) in enumerate(zip(enc["input_ids"], enc["a_len"]))
    ]
    collate = ClassifyCollator(ids["pad"], module.hparams["problem_type"], module.hparams["num_labels"])
    labels = module.hparams["label_names"]
    problem = module.hparams["problem_type"]
    out: list[dict[str, Any]] = [{} for _ in lines]
    order = np.argsort([len(r["input_ids"]) for r in rows], kind="stable")
    for chunk in _batches(order, batch_size):
        batch = collate([rows[i] for i in chunk])
        if logits_fn is not None:
            logits = logits_fn(batch).float()
        else:
            logits = module(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()
        for row, i in enumerate(chunk):
            item: dict[str, Any] = {"text": texts[i]}
            if use_pairs:
                item["text_pair"] = pairs[i]
            if problem == "regression":
                item["score"] = float(logits[row, 0])
            elif problem == "multi_label":
                probs = torch.sigmoid(logits[row])
                item["labels"] = [labels[k] for k in range(len(labels)) if probs[k] > 0.5]
                item["scores"] = {labels[k]: round(float(p), 6) for k, p in enumerate(probs)}
            else:
                probs = torch.softmax(logits[row], -1)
                k = int(probs.argmax())
                item["label"] = labels[k]
                item["score"] = round(float(probs[k]), 6)
                item["scores"] = {labels[j]: round(float(p), 6) for j, p in enumerate(probs)}
            out[i] = item
    return out


@torch.no_grad()
def predict_ner(
    module: NerModule,
    tokenizer: Any,
    lines: list[str],
    max_seq_length: int,
    batch_size: int,
    stride: int = 32,
    logits_fn: LogitsFn | None = None,
) -> list[dict[str, Any]]:
    """Words, tags and entity spans per line; ``logits_fn`` replaces ``module``'s forward."""
    ids = special_token_ids(tokenizer)
    split = [words_with_offsets(line) for line in lines]
    stride = min(stride, max(0, (max_seq_length - 2) // 2))
    windows = []
    for si, pieces in enumerate(word_pieces(tokenizer, [w for w, _ in split], ids["unk"])):
        if pieces:
            windows.extend(build_windows(si, pieces, None, max_seq_length, stride, ids["cls"], ids["sep"]))
    collate = NerCollator(ids["pad"])
    assembler = WordPredictionAssembler()
    tags_of: dict[int, list[str]] = {}
    order = np.argsort([len(w) for w in windows], kind="stable")
    for chunk in _batches(order, batch_size):
        batch = collate([windows[i] for i in chunk])
        logits = logits_fn(batch) if logits_fn is not None else None
        for si, pred, _ in assembler.add(module.predict_words(batch, logits)):
            tags_of[int(si)] = module.tags(pred)
    scheme = module.hparams["scheme"]
    out = []
    for si, (line, (words, offsets)) in enumerate(zip(lines, split)):
        tags = tags_of.get(si, [])
        entities = entity_spans_with_offsets(words, offsets, tags, scheme=scheme, text=line) if words else []
        out.append({"text": line, "entities": entities, "words": words, "tags": tags})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bertlab-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a fine-tuned run directory, its export/ directory, or a .ckpt")
    parser.add_argument("--input", "-i", default="-", help="text file, one example per line (default: stdin)")
    parser.add_argument("--output", "-o", default="-", help="JSONL file (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--onnx-file", default=None, help=f"with --backend onnx (default: {ONNX_FILE})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch and onnxruntime)")
    args = parser.parse_args(argv)
    try:
        started = time.time()
        if args.threads:
            torch.set_num_threads(args.threads)
        task, module, pretrained = load_predictor(args.model)
        logits_fn = None
        if args.backend == "onnx":
            logits_fn = onnx_logits_for(
                pretrained, len(module.hparams["label_names"]), args.onnx_file, args.threads
            )
        tokenizer = load_tokenizer(pretrained.tokenizer_dir)
        if args.input == "-":
            lines = read_lines(sys.stdin)
        else:
            path = Path(args.input)
            if not path.is_file():
                raise BertlabError(f"input file not found: {path}")
            lines = read_lines(path)
        max_len = min(args.max_seq_length, pretrained.config.max_position_embeddings)
        predict = predict_classify if task == "classify" else predict_ner
        predicting = time.perf_counter()
        results = predict(module, tokenizer, lines, max_len, args.batch_size, logits_fn=logits_fn)
        predict_s = time.perf_counter() - predicting
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
        if args.output == "-":
            sys.stdout.write(text)
        else:
            out = Path(args.output)
            tmp = out.with_name(f".{out.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(out)
        elapsed = time.time() - started
        rate = len(lines) / predict_s if predict_s > 0 else 0.0
        print(
            f"{len(lines)} lines, {task}, {args.backend}: {rate:.1f} sentences/s "
            f"({predict_s:.2f}s predicting, {elapsed:.1f}s in all)",
            file=sys.stderr,
        )
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

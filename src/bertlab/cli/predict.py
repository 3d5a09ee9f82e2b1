"""``bertlab-predict``: answers of a trained model for lines of input, as JSONL.

    bertlab-predict logs/ner/runs/<time>            < sentences.txt > entities.jsonl
    bertlab-predict logs/classify/runs/<time>/export --input reviews.txt --output labels.jsonl
    bertlab-predict logs/ner/runs/<time> --backend onnx --threads 2 < sentences.txt
    bertlab-predict logs/ner/runs/<time> --jsonl < tokens.jsonl      # {"tokens": [...]} per line

What a line is depends on the model's task: a text, or a pair as ``text_a<TAB>text_b``, for a
classifier; a sentence for NER (split into words as the model's ``task.word_split`` says); a text
with ``[MASK]`` tokens for a pretrained model (fill-mask). With ``--jsonl`` every line is a JSON
value instead (see each task's predictor). The output keeps the input order, one JSON object per
line, written as soon as each chunk of input is done: memory stays bounded on an input of any size.
``--backend onnx`` runs the same batches through onnxruntime (``model.onnx`` written by
``bertlab-export``; ``--onnx-file model.int8.onnx`` for the quantized one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from bertlab.cli.console import quiet_third_party
from bertlab.errors import BertlabError
from bertlab.export.onnx import ONNX_FILE
from bertlab.io import temporary_name
from bertlab.tasks.base import load_predictor


def read_lines(source: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line, decoded as it is read; invalid UTF-8 is an error naming
    the line. A byte-order mark on the first line is dropped."""
    for number, raw in enumerate(source, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield number, raw.decode("utf-8").rstrip("\n").rstrip("\r")
        except UnicodeDecodeError as e:
            raise BertlabError(
                f"{name}:{number}: invalid UTF-8 at byte offset {e.start} of the line"
            ) from None


def inputs(lines: Iterator[tuple[int, str]], name: str, jsonl: bool) -> Iterator[tuple[str, Any]]:
    """``(where, item)`` for each input: the line itself, or with ``jsonl`` the JSON value on it."""
    for number, line in lines:
        where = f"{name}:{number}"
        if not jsonl:
            yield where, line
            continue
        if not line.strip():
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise BertlabError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bertlab-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run directory, its export/ directory, or a .ckpt")
    parser.add_argument(
        "--input", "-i", default="-", help="input file, one example per line (default: stdin)"
    )
    parser.add_argument("--output", "-o", default="-", help="JSONL file (default: stdout)")
    parser.add_argument("--jsonl", action="store_true", help="each input line is a JSON value")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=None, help="default: the training length")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--onnx-file", default=None, help=f"with --backend onnx (default: {ONNX_FILE})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch and onnxruntime)")
    args = parser.parse_args(argv)
    quiet_third_party()
    tmp: Path | None = None
    try:
        started = time.time()
        if args.threads:
            torch.set_num_threads(args.threads)
        predictor = load_predictor(
            args.model, args.backend, args.onnx_file, args.threads, args.max_seq_length, args.batch_size
        )
        if args.input == "-":
            source, name = sys.stdin.buffer, "<stdin>"
        else:
            path = Path(args.input)
            if not path.is_file():
                raise BertlabError(f"input file not found: {path}")
            source, name = path.open("rb"), str(path)
        if args.output == "-":
            out = sys.stdout
        else:
            # Written beside the destination and renamed at the end: a failure leaves no half file.
            tmp = temporary_name(Path(args.output))
            out = tmp.open("w", encoding="utf-8")
        count = 0
        predicting = time.perf_counter()
        for answer in predictor.stream(inputs(read_lines(source, name), name, args.jsonl)):
            out.write(json.dumps(answer, ensure_ascii=False) + "\n")
            count += 1
        out.flush()
        predict_s = time.perf_counter() - predicting
        if tmp is not None:
            out.close()
            tmp.replace(args.output)
            tmp = None
        rate = count / predict_s if predict_s > 0 else 0.0
        print(
            f"{count} inputs, {predictor.task.name}, {args.backend}: {rate:.1f} inputs/s "
            f"({predict_s:.2f}s predicting, {time.time() - started:.1f}s in all)",
            file=sys.stderr,
        )
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    main()

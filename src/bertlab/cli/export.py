"""``bertlab-export``: write ``model.onnx`` beside the HF files of a run's export, checked by onnxruntime.

    bertlab-export logs/classify/runs/<time> --format onnx
    bertlab-export logs/ner/runs/<time>/export --format onnx --quantize int8

Works for every task. The export is kept only if onnxruntime gives PyTorch's outputs (to 1e-4) on
texts encoded by the saved tokenizer as the task encodes them; otherwise the command prints one line
and exits with status 2, leaving the directory as it was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertlab.cli.predict import read_lines
from bertlab.errors import BertlabError
from bertlab.export.onnx import DEFAULT_OPSET, ONNX_FILE, QUANTIZE_CHOICES
from bertlab.tasks.base import export_onnx_beside


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bertlab-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run directory or its export/ directory (HF format)")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: onnx)")
    parser.add_argument(
        "--quantize", choices=QUANTIZE_CHOICES, default=None, help="also write model.int8.onnx"
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the check")
    parser.add_argument("--check-file", default=None, help="texts for the check, one a line (a<TAB>b: pair)")
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        texts = None
        if args.check_file:
            path = Path(args.check_file)
            if not path.is_file():
                raise BertlabError(f"check file not found: {path}")
            with path.open("rb") as f:
                texts = [line for _, line in read_lines(f, str(path)) if line.strip()]
        if not Path(args.model).exists():
            raise BertlabError(f"no run directory or export directory at {args.model}")
        export_dir, info = export_onnx_beside(
            args.model, args.quantize, args.opset, args.threads, texts, args.max_seq_length
        )
        diff = max(info["check"]["max_abs_diff"].values())
        line = f"{export_dir / ONNX_FILE}: opset {info['opset']}, max |onnxruntime - torch| {diff:.2g}"
        if "int8" in info:
            line += f"; {info['int8']['file']}: argmax agreement {info['int8']['argmax_agreement']:.3f}"
        print(line, file=sys.stderr)
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""``bertlab-export``: write a checked deployment file beside the HF files of a run's export.

    bertlab-export logs/classify/runs/<time>                               # model.onnx
    bertlab-export logs/classify/runs/<time> --optimize --quantize int8   # fused model.onnx + int8
    bertlab-export logs/ner/runs/<time>/export --format torch-export      # model.pt2

Works for every task. ``--format onnx`` (default) writes ``model.onnx`` and ``onnx.json``;
``--optimize`` makes that graph the fully fused one (onnxruntime's Attention,
EmbedLayerNormalization, SkipLayerNormalization and fused GELU in every layer; the counts go into
``onnx.json``); ``--quantize int8`` also writes ``model.int8.onnx`` from it. ``--format
torch-export`` writes a ``torch.export`` ExportedProgram, ``model.pt2``, and ``pt2.json``. Every file
is kept only if it gives PyTorch's outputs (to 1e-4) on texts encoded by the saved tokenizer as the
task encodes them; otherwise the command prints one line and exits with status 2, leaving the
directory as it was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertlab.cli.console import quiet_third_party
from bertlab.cli.predict import read_lines
from bertlab.errors import BertlabError
from bertlab.export.onnx import DEFAULT_OPSET, ONNX_FILE, OPTIMIZED_OPSET, QUANTIZE_CHOICES
from bertlab.export.pt2 import PT2_FILE
from bertlab.tasks.base import export_onnx_beside, export_pt2_beside

FORMATS = ("onnx", "torch-export")


def _summary(export_dir: Path, info: dict) -> str:
    diff = max(info["check"]["max_abs_diff"].values())
    line = f"{export_dir / ONNX_FILE}: opset {info['opset']}, max |onnxruntime - torch| {diff:.2g}"
    fused = info.get("optimized")
    if fused:
        ops = ", ".join(f"{op} {n}" for op, n in fused["fused_ops"].items())
        line += f"; fused ({fused['layers']} layers): {ops}"
    if "int8" in info:
        line += f"; {info['int8']['file']}: argmax agreement {info['int8']['argmax_agreement']:.3f}"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bertlab-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run directory or its export/ directory (HF format)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="export format (default: onnx)")
    parser.add_argument(
        "--optimize", action="store_true", help="onnx: the fully fused graph (onnxruntime's BERT fusions)"
    )
    parser.add_argument(
        "--quantize", choices=QUANTIZE_CHOICES, default=None, help="onnx: also write model.int8.onnx"
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"onnx opset (default: {DEFAULT_OPSET}; {OPTIMIZED_OPSET} with --optimize)",
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the check")
    parser.add_argument("--check-file", default=None, help="texts for the check, one a line (a<TAB>b: pair)")
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args(argv)
    quiet_third_party()
    try:
        if args.format != "onnx" and (args.optimize or args.quantize or args.opset):
            raise BertlabError(
                f"--optimize, --quantize and --opset apply to --format onnx, not {args.format}"
            )
        texts = None
        if args.check_file:
            path = Path(args.check_file)
            if not path.is_file():
                raise BertlabError(f"check file not found: {path}")
            with path.open("rb") as f:
                texts = [line for _, line in read_lines(f, str(path)) if line.strip()]
        if not Path(args.model).exists():
            raise BertlabError(f"no run directory or export directory at {args.model}")
        if args.format == "torch-export":
            export_dir, info = export_pt2_beside(args.model, texts, args.max_seq_length)
            diff = max(info["check"]["max_abs_diff"].values())
            print(f"{export_dir / PT2_FILE}: max |exported - eager| {diff:.2g}", file=sys.stderr)
            return
        export_dir, info = export_onnx_beside(
            args.model,
            args.quantize,
            args.opset,
            args.threads,
            texts,
            args.max_seq_length,
            optimize=args.optimize,
        )
        print(_summary(export_dir, info), file=sys.stderr)
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

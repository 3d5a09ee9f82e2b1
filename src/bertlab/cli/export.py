"""``bertlab-export``: write ``model.onnx`` beside the HF files of a run's export, checked by onnxruntime.

    bertlab-export logs/classify/runs/<time> --format onnx
    bertlab-export logs/ner/runs/<time>/export --format onnx --quantize int8

Works for pretraining (MLM + NSP), classification and NER models. The export is kept only if
onnxruntime gives PyTorch's logits (to 1e-4) on texts encoded by the saved tokenizer; otherwise the
command prints one line and exits with status 2, leaving the directory as it was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torch import nn

from bertlab.cli.predict import load_predictor, read_lines
from bertlab.data.cache import directory_digest
from bertlab.encoder import BertForPretraining
from bertlab.errors import BertlabError
from bertlab.export.onnx import (
    DEFAULT_OPSET,
    FP32_ATOL,
    INT8_MIN_AGREEMENT,
    ONNX_FILE,
    QUANTIZE_CHOICES,
    PretrainingGraph,
    SequenceClassifierGraph,
    TokenClassifierGraph,
    export_onnx,
)
from bertlab.tasks.init_from import load_pretrained


def resolve_export_dir(path: str | Path) -> Path:
    """The HF export directory of ``path``: the directory itself (``config.json``) or a run's ``export/``."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return p
    if (p / "summary.json").is_file():
        if (p / "export" / "config.json").is_file():
            return p / "export"
        raise BertlabError(f"{p}: the run has no export/ (it was trained with export=false?)")
    if not p.exists():
        raise BertlabError(f"{p} does not exist")
    raise BertlabError(f"{p}: not a run directory (summary.json) nor an HF export directory (config.json)")


def build_graph(export_dir: str | Path) -> tuple[str, nn.Module, dict[str, Any]]:
    """(task, ONNX-ready module in eval mode, metadata for onnx.json) of an HF export directory."""
    export_dir = Path(export_dir)
    pretrained = load_pretrained(export_dir)
    if pretrained.tokenizer_dir is None:
        raise BertlabError(f"{export_dir}: no tokenizer beside the model")
    if pretrained.pretraining_state is not None and not pretrained.head_state:
        model = BertForPretraining(pretrained.config)
        result = model.load_state_dict(pretrained.pretraining_state, strict=False)
        if result.unexpected_keys or any(k not in pretrained.missing_optional for k in result.missing_keys):
            missing = [k for k in result.missing_keys if k not in pretrained.missing_optional]
            raise BertlabError(
                f"{export_dir}: weights do not fit the model ({(missing + result.unexpected_keys)[:3]})"
            )
        return "pretrain", PretrainingGraph(model).eval(), {"task": "pretrain"}
    task, module, pretrained = load_predictor(export_dir)
    meta: dict[str, Any] = {"task": task, "labels": list(module.hparams["label_names"])}
    if task == "classify":
        meta["problem_type"] = module.hparams["problem_type"]
        return task, SequenceClassifierGraph(module.encoder, module.head).eval(), meta
    meta["scheme"] = module.hparams["scheme"]
    return task, TokenClassifierGraph(module.encoder, module.head).eval(), meta


def export_to_onnx(
    path: str | Path,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    threads: int | None = 1,
    check_texts: list[str] | None = None,
    max_seq_length: int = 128,
    atol: float = FP32_ATOL,
    int8_min_agreement: float = INT8_MIN_AGREEMENT,
) -> tuple[Path, dict[str, Any]]:
    """Export the model of a run or export directory to ``<export dir>/model.onnx``; (dir, onnx.json)."""
    export_dir = resolve_export_dir(path)
    _, graph, meta = build_graph(export_dir)
    # predict --backend onnx refuses a model.onnx whose HF weights have changed since
    meta["weights_digest"] = directory_digest(export_dir, ["model.safetensors"])
    info = export_onnx(
        graph,
        export_dir,
        export_dir,  # build_graph checked that the tokenizer is there
        max_seq_length=max_seq_length,
        opset=opset,
        quantize=quantize,
        threads=threads,
        check_texts=check_texts,
        atol=atol,
        int8_min_agreement=int8_min_agreement,
        metadata=meta,
    )
    return export_dir, info


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
            texts = [line for line in read_lines(path) if line.strip()]
        export_dir, info = export_to_onnx(
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

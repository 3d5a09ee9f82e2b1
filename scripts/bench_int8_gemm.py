"""int8 against fp32 matrix products on this CPU, one thread, at a BERT's own shapes: how far int8 can
carry a whole model past PyTorch eager here.

    .venv/bin/python scripts/bench_int8_gemm.py --model /work/runs/sst2_minilm

Linear layers are most of an encoder's time, so the speed-up of int8 over PyTorch for a whole model is
close to the speed-up of its matrix products. For each weight shape of one encoder layer (Q, K and V
fused as onnxruntime's Attention holds them, the attention output, the feed-forward up and down
projections) and several row counts (batch x padded length), this times in one process, sides
alternating, medians over ``--rounds``:

- PyTorch eager fp32: ``nn.Linear`` (what ``bertlab-predict --backend torch`` runs);
- onnxruntime fp32: a one-node ``MatMul`` graph;
- onnxruntime int8: the same graph after ``quantize_dynamic(QInt8, per_channel=True)``, the call
  ``bertlab-export --quantize int8`` makes (``DynamicQuantizeLinear`` + ``MatMulInteger``).

The "layer" row weights the shapes as one layer uses them. Writes ``docs/int8_gemm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchenv import cpu_flags, cpu_model, rotated

REPO = Path(__file__).resolve().parents[1]


def matmul_graph(k: int, n: int, path: Path, rng: np.random.Generator) -> None:
    """A one-node ``Y = X @ W`` ONNX graph with a fixed random ``W`` of shape (k, n)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array((rng.standard_normal((k, n)) * 0.05).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["rows", n])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def median_seconds(sides: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Every side once per round, in a rotated order, after a warm-up call; the median per side."""
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in rotated(list(sides), r):
            started = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def result_row(product: str, rows: int, secs: dict[str, float], **extra: Any) -> dict[str, Any]:
    """One line of the table: milliseconds per side and int8's speed-up over each fp32 side."""
    return {
        "product": product,
        **extra,
        "rows": rows,
        **{f"{side}_ms": round(s * 1e3, 3) for side, s in secs.items()},
        "int8_x_torch": round(secs["torch"] / secs["ort_int8"], 2),
        "int8_x_ort_fp32": round(secs["ort_fp32"] / secs["ort_int8"], 2),
    }


def main(argv: list[str] | None = None) -> None:
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a run or export directory: its hidden and intermediate sizes")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--rows", type=int, nargs="+", default=[32 * 16, 32 * 32, 32 * 64])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", default=str(REPO / "docs" / "int8_gemm.json"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    hidden, inter = args.hidden, args.intermediate
    if args.model:
        from bertlab.runs import export_of

        source = export_of(args.model)
        if source is None or not (source / "config.json").is_file():
            raise SystemExit(f"{args.model}: no run directory with an export/, nor an export directory")
        config = json.loads(source.joinpath("config.json").read_text())
        hidden, inter = config["hidden_size"], config["intermediate_size"]
    # (in, out) of each of a layer's four products
    shapes = {
        "QKV (fused)": (hidden, 3 * hidden),
        "attention output": (hidden, hidden),
        "feed-forward up": (hidden, inter),
        "feed-forward down": (inter, hidden),
    }
    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    rows_out: list[dict[str, Any]] = []
    layer = {rows: {"torch": 0.0, "ort_fp32": 0.0, "ort_int8": 0.0} for rows in args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (k, n) in shapes.items():
            fp32, int8 = Path(tmp) / f"{k}x{n}.onnx", Path(tmp) / f"{k}x{n}.int8.onnx"
            matmul_graph(k, n, fp32, rng)
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
            s32 = ort.InferenceSession(fp32, options, providers=["CPUExecutionProvider"])
            s8 = ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
            linear = torch.nn.Linear(k, n).eval()
            for rows in args.rows:
                x = rng.standard_normal((rows, k)).astype(np.float32)
                xt = torch.from_numpy(x)
                with torch.inference_mode():
                    secs = median_seconds(
                        {
                            "torch": partial(linear, xt),
                            "ort_fp32": partial(s32.run, None, {"X": x}),
                            "ort_int8": partial(s8.run, None, {"X": x}),
                        },
                        args.rounds,
                    )
                for side, s in secs.items():
                    layer[rows][side] += s
                rows_out.append(result_row(name, rows, secs, shape=[k, n]))
                print(json.dumps(rows_out[-1]), file=sys.stderr)
    rows_out += [result_row("layer (all four)", rows, secs) for rows, secs in layer.items()]
    flags = cpu_flags("avx", "vnni", "amx")
    report = {
        "cpu": cpu_model(),
        "cpu_flags": flags,
        "threads": 1,
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "command": "python scripts/bench_int8_gemm.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows_out,
    }
    print("| product | rows | torch fp32 ms | ort fp32 ms | ort int8 ms | int8 / torch | int8 / ort fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(
            f"| {r['product']} | {r['rows']} | {r['torch_ms']} | {r['ort_fp32_ms']} | {r['ort_int8_ms']} "
            f"| {r['int8_x_torch']}x | {r['int8_x_ort_fp32']}x |"
        )
    print(f"CPU: {report['cpu']} ({flags}); load average {report['load_average']}")
    if not args.no_write:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

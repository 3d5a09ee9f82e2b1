"""What a server's batches cost on the CPU: the SST-2 classifier's Predictor on groups of 16 random dev
sentences (what dynamic batching gathers from 16 clients), in one forward pass, in length-sorted
passes of 8 / 4, or one sentence at a time; and with onnxruntime's idle threads spinning or not.

    .venv/bin/python scripts/probe_batching.py --model /work/runs/sst2_minilm

Every setting predicts the same groups (``--groups`` of 16, seeded), after a warm-up; sentences/s
over all of them. The settings take turns for ``--rounds`` rounds and the median counts. These are
the figures behind ``bertlab-serve``'s defaults (``--batch-size 4``; onnxruntime threads that do not
spin, ``bertlab.export.onnx.make_session``); see docs/deployment.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

from benchenv import read_tsv, rotated
from bertlab.inference import OnnxBackend
from bertlab.runs import export_of
from bertlab.tasks.base import load_predictor

REPO = Path(__file__).resolve().parents[1]


def session_spinning(path: Path, threads: int, spin: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def rate(predictor: Any, groups: list[list[str]], one_at_a_time: bool) -> float:
    started = time.perf_counter()
    for group in groups:
        parsed = [predictor.parse(t) for t in group]
        if one_at_a_time:
            for item in parsed:
                predictor.predict([item])
        else:
            predictor.predict(parsed)
    return sum(len(g) for g in groups) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"))
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = export_of(args.model)
    texts, _ = read_tsv(Path(args.data), "sentence", "label")
    rng = random.Random(0)
    groups = [rng.sample(texts, 16) for _ in range(args.groups)]
    settings: dict[str, tuple[Any, bool]] = {}
    for batch_size in (16, 8, 4):
        predictor = load_predictor(source, "onnx", None, 1, None, batch_size)
        settings[f"1 thread, groups of 16 in passes of {batch_size}"] = (predictor, False)
    settings["1 thread, one sentence at a time"] = (load_predictor(source, "onnx", None, 1, None, 16), True)
    for spin in (True, False):
        predictor = load_predictor(source, "onnx", None, 2, None, 8)
        assert isinstance(predictor.backend, OnnxBackend)
        predictor.backend.session = session_spinning(source / "model.onnx", 2, spin)
        name = "spinning" if spin else "sleeping"
        settings[f"2 threads, {name}, groups of 16 in passes of 8"] = (predictor, False)
        settings[f"2 threads, {name}, one sentence at a time"] = (predictor, True)
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for predictor, single in settings.values():
        rate(predictor, groups[:1], single)  # warm-up
    names = list(settings)
    for r in range(args.rounds):
        for name in rotated(names, r):
            predictor, single = settings[name]
            rates[name].append(rate(predictor, groups, single))
    for name, values in rates.items():
        each = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name}: {statistics.median(values):.1f} sentences/s (each round: {each})")


if __name__ == "__main__":
    main()

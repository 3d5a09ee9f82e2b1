"""Load test of ``bertlab-serve`` on the loopback: N concurrent Locust clients for a fixed time against
the SST-2 classifier, with and without dynamic batching, the fused ONNX graph and PyTorch.

    .venv/bin/python scripts/bench_serve.py --model /work/runs/sst2_minilm

The model's export must hold the fused graph (``bertlab-export <run> --optimize --quantize int8``).
For each configuration the script starts ``bertlab-serve`` on 127.0.0.1 (one worker, its default
threads), waits for ``/health``, sends a short warm-up, then runs Locust headless
(``scripts/locustfile_serve.py``: each user posts one dev sentence and sends the next as soon as the
answer is back) for ``--seconds`` with ``--users`` users, and stops the server with SIGTERM. It records
throughput, p50/p95/p99 latency, the error count (non-200 answers, wrong answers, connection errors),
the RSS of the server's processes (all of them, and the worker alone) before the load, every 2 s
during it and after it, and whether the server stopped cleanly. Every wait is bounded. Writes
``docs/serve_bench.json`` and the table between ``<!-- serve:begin -->`` and ``<!-- serve:end -->``
in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchenv import cpu_model, replace_section
from bertlab.errors import BertlabError
from bertlab.io import atomic_write

REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)
HOST = "127.0.0.1"  # loopback only
BEGIN, END = "<!-- serve:begin -->", "<!-- serve:end -->"

CONFIGS = {
    "onnx-batch": ("onnx", None, 16, 0.005),
    "onnx-single": ("onnx", None, 1, 0.0),
    "torch-batch": ("torch", None, 16, 0.005),
    "torch-single": ("torch", None, 1, 0.0),
    "int8-batch": ("onnx", "model.int8.onnx", 16, 0.005),
}
LABELS = {
    "onnx-batch": "ONNX optimized fp32, dynamic batching (16 requests, 5 ms)",
    "onnx-single": "ONNX optimized fp32, batch size 1",
    "torch-batch": "PyTorch, dynamic batching (16 requests, 5 ms)",
    "torch-single": "PyTorch, batch size 1",
    "int8-batch": "ONNX optimized int8, dynamic batching (16 requests, 5 ms)",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tree_rss(root: psutil.Process) -> tuple[float, float]:
    """(MiB of every process of the server, MiB of its inference worker(s)) by RSS."""
    total = worker = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            rss = p.memory_info().rss
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        total += rss
        if "spawn_main" in cmd:  # LitServe's inference workers are spawned processes
            worker += rss
    return round(total / 2**20, 1), round(worker / 2**20, 1)


def run_config(name: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    backend, onnx_file, max_batch, timeout = CONFIGS[name]
    port = free_port()
    url = f"http://{HOST}:{port}"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [str(PYTHON.parent / "bertlab-serve"), args.model, "--host", HOST, "--port", str(port)]
    cmd += ["--backend", backend, "--max-batch-size", str(max_batch), "--batch-timeout", str(timeout)]
    cmd += ["--onnx-file", onnx_file] if onnx_file else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--workers", str(args.workers)]
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    log = logs / f"{name}.server.log"
    server = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    result: dict[str, Any] = {"config": name, "label": LABELS[name], "server_command": shlex.join(cmd)}
    try:
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                raise BertlabError(f"{name}: bertlab-serve exited with {server.returncode}; see {log}")
            if time.monotonic() - started > args.start_timeout:
                raise BertlabError(f"{name}: bertlab-serve not ready after {args.start_timeout} s; see {log}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        result["startup_s"] = round(time.monotonic() - started, 1)
        for text in ("a warm-up sentence", "another, somewhat longer warm-up sentence for the server"):
            httpx.post(f"{url}/predict", json=[text], timeout=60).raise_for_status()
        root = psutil.Process(server.pid)
        result["rss_mib_before"], result["worker_rss_mib_before"] = tree_rss(root)
        samples: list[tuple[float, float, float]] = []
        done = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not done.wait(2.0):
                samples.append((round(time.monotonic() - t0, 1), *tree_rss(root)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        prefix = logs / name
        locust = [
            str(PYTHON.parent / "locust"), "-f", str(REPO / "scripts" / "locustfile_serve.py"), "--headless",
            "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s", "--stop-timeout", "10",
            "--host", url, "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        env = {**os.environ, "BENCH_TEXTS": args.data}
        with (logs / f"{name}.locust.log").open("wb") as out:
            subprocess.run(locust, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=args.seconds + 120)
        done.set()
        sampler.join()
        result["rss_mib_after"], result["worker_rss_mib_after"] = tree_rss(root)
        result["rss_samples"] = samples
        result.update(read_stats(Path(f"{prefix}_stats.csv")))
        result["errors_csv"] = _failures(Path(f"{prefix}_failures.csv"))
        return result
    finally:
        stop = time.monotonic()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                result["sigterm_exit_code"] = server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                result["sigterm_exit_code"] = "killed after 60 s"
        result["stop_s"] = round(time.monotonic() - stop, 1)
        text = log.read_text(errors="replace")
        result["server_tracebacks"] = text.count("Traceback")


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over its runs: medians of the rates and latencies, every error, the worst
    RSS growth and the highest RSS seen."""

    def median(key: str) -> float:
        return round(statistics.median(run[key] for run in runs), 1)

    return {
        "config": name,
        "label": LABELS[name],
        "runs": len(runs),
        "requests_per_s": median("requests_per_s"),
        "requests_per_s_each_run": [run["requests_per_s"] for run in runs],
        "p50_ms": median("p50_ms"),
        "p95_ms": median("p95_ms"),
        "p99_ms": median("p99_ms"),
        "requests": sum(run["requests"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        "rss_mib_before": [run["rss_mib_before"] for run in runs],
        "rss_mib_after": [run["rss_mib_after"] for run in runs],
        "rss_growth_mib_max": round(max(run["rss_mib_after"] - run["rss_mib_before"] for run in runs), 1),
        # the second half of the load: after the first batches of each shape have been allocated
        "rss_growth_second_half_mib_max": round(max(_second_half_growth(run) for run in runs), 1),
        "rss_mib_peak": max(max([x[1] for x in run["rss_samples"]] + [run["rss_mib_after"]]) for run in runs),
        "worker_rss_mib_before": [run["worker_rss_mib_before"] for run in runs],
        "worker_rss_mib_after": [run["worker_rss_mib_after"] for run in runs],
        "sigterm_exit_codes": [run["sigterm_exit_code"] for run in runs],
        "server_tracebacks": sum(run["server_tracebacks"] for run in runs),
    }


def _second_half_growth(run: dict[str, Any]) -> float:
    samples = run["rss_samples"]
    half = [x[1] for x in samples if x[0] >= samples[-1][0] / 2] if samples else []
    return run["rss_mib_after"] - half[0] if half else 0.0


def read_stats(path: Path) -> dict[str, Any]:
    with path.open(newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {
        "requests": int(row["Request Count"]),
        "errors": int(row["Failure Count"]),
        "requests_per_s": round(float(row["Requests/s"]), 1),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
        "max_ms": float(row["100%"]),
    }


def _failures(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))[:10]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the SST-2 run (or export) directory")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"))
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration, taking turns")
    parser.add_argument("--threads", type=int, default=None, help="per worker (default: the server's)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="inputs per forward pass (server's)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"some of {','.join(CONFIGS)}")
    parser.add_argument("--start-timeout", type=float, default=300)
    parser.add_argument("--logs", default="/tmp/bench_serve")
    parser.add_argument("--json", default=str(REPO / "docs" / "serve_bench.json"))
    parser.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--from-json", default=None, help="rewrite the markdown from a saved report, no run")
    args = parser.parse_args(argv)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        report["results"] = [
            summarize(name, [run for run in report["runs"] if run["config"] == name])
            for name in dict.fromkeys(run["config"] for run in report["runs"])
        ]
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(Path(args.json), lambda f: f.write(text.encode()))
        write_markdown(Path(args.markdown), report)
        return
    if not 1 <= args.users <= 64 or not 5 <= args.seconds <= 600 or not 1 <= args.rounds <= 5:
        raise BertlabError(
            "--users must be in 1..64, --seconds in 5..600, --rounds in 1..5 (a bounded load test)"
        )
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise BertlabError(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    command = ".venv/bin/python scripts/bench_serve.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    runs = []
    for r in range(args.rounds):
        # the configurations take turns, in the reverse order every other round
        for name in names if r % 2 == 0 else names[::-1]:
            print(f"round {r + 1}, {name}: {LABELS[name]}", file=sys.stderr)
            run = run_config(name, args, logs / f"round{r + 1}")
            run["round"] = r + 1
            runs.append(run)
            print(
                f"  {run['requests_per_s']} req/s, p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, "
                f"{run['errors']} errors, RSS {run['rss_mib_before']} -> {run['rss_mib_after']} MiB",
                file=sys.stderr,
            )
    results = [summarize(name, [run for run in runs if run["config"] == name]) for name in names]
    import litserve
    import onnxruntime
    import torch

    report = {
        "command": command,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": f"{cpu_model()}, {os.cpu_count()} cores (shared machine)",
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "versions": {
            "python": platform.python_version(),
            "litserve": litserve.__version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "model": args.model,
        "load": {
            "users": args.users,
            "seconds": args.seconds,
            "request": "one SST-2 dev sentence, closed loop",
        },
        "results": results,
        "runs": runs,
    }
    print(json.dumps(results, indent=1))
    if not args.no_write:
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(Path(args.json), lambda f: f.write(text.encode()))
        write_markdown(Path(args.markdown), report)


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    load = report["load"]
    rows = [
        "| configuration | requests/s, median (each run) | p50 ms | p95 ms | p99 ms | errors "
        "| RSS MiB before → after, each run | worst growth: whole run / second half | SIGTERM exit codes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        each = ", ".join(f"{x:.1f}" for x in r["requests_per_s_each_run"])
        rss = "; ".join(f"{a:.0f} → {b:.0f}" for a, b in zip(r["rss_mib_before"], r["rss_mib_after"]))
        rows.append(
            f"| {r['label']} | **{r['requests_per_s']:.1f}** ({each}) | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} "
            f"| {r['p99_ms']:.0f} | {r['errors']} of {r['requests']} | {rss} | {r['rss_growth_mib_max']:+.1f} / "
            f"{r['rss_growth_second_half_mib_max']:+.1f} MiB | {', '.join(str(c) for c in r['sigterm_exit_codes'])} |"
        )
    by = {r["config"]: r for r in report["results"]}
    ratios = []
    for batched, single, what in (
        ("onnx-batch", "onnx-single", "ONNX"),
        ("torch-batch", "torch-single", "PyTorch"),
    ):
        if batched in by and single in by:
            ratios.append(f"{what} {by[batched]['requests_per_s'] / by[single]['requests_per_s']:.2f}x")
    v = report["versions"]
    text = "\n".join([
        f"`bertlab-serve` on 127.0.0.1 with its defaults (one worker, threads = cores, forward passes of up to "
        f"4 inputs), {load['users']} Locust users for {load['seconds']} s per run, every user posting one SST-2 dev "
        "sentence and sending the next as soon as the answer is back; each configuration ran "
        f"{report['results'][0]['runs']} time(s), the configurations taking turns (a fresh server each run). "
        "Latencies: medians over the runs. RSS: all the server's processes (HTTP process, worker, LitServe's "
        "manager), sampled before the load, every 2 s during it, and after it.",
        "",
        *rows,
        "",
        f"- Dynamic batching / batch size 1, requests/s: {', '.join(ratios) or 'not measured'}.",
        f"- Command: `{report['command']}` (the model's export holds the fused graph: "
        "`bertlab-export /work/runs/sst2_minilm --optimize --quantize int8`).",
        f"- Device: {report['device']}; 1-minute load average {report['load_average_1min']['before']} before, "
        f"{report['load_average_1min']['after']} after (Locust ran on the same cores; other jobs shared the machine).",
        f"- Versions: Python {v['python']}, LitServe {v['litserve']}, torch {v['torch']}, onnxruntime "
        f"{v['onnxruntime']}; date {report['date_utc']} UTC.",
        "- Raw figures (every RSS sample, the server commands): `docs/serve_bench.json`.",
    ])  # fmt: skip
    replace_section(path, BEGIN, END, text)


if __name__ == "__main__":
    try:
        main()
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

"""Peak memory of a pretraining run as the corpus grows: the pipeline streams, so it stays flat.

For each size it writes a corpus file of about that many megabytes (documents of bertlab's generated
corpus in shuffled order, appended until the size is reached: nothing is held in memory), runs
``bertlab-train data=text_files`` on it (tokenizer training, tokenization, NSP instances, a few
training steps) in a fresh cache, and samples the memory of the whole process tree every 0.1 s:
RSS (which also counts the pages of memory-mapped Arrow files that are resident, a cache the kernel
can drop) and RssAnon (the process's own heap, what a growing Python list would show in).

``--cap-mb N`` runs the job in a memory cgroup limited to N MiB (cgroup v2 ``memory.max`` or v1
``memory.limit_in_bytes``; needs write access to ``/sys/fs/cgroup``, e.g. root in a container). The
limit counts everything the job's processes hold in RAM, page cache included, and there is no swap
to spill to here: a pipeline that materialised the corpus is killed by the kernel. The cgroup's own
peak and its OOM-kill count are reported beside the sampled figures.

    python scripts/scaling_rss.py --sizes-mb 25 100 400 --workdir /tmp/bertlab_scaling
    python scripts/scaling_rss.py --sizes-mb 3072 --cap-mb 1024 --workdir /tmp/bertlab_scaling

Delete ``--workdir`` afterwards (``--clean`` does it): the corpora and caches are large.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, size_mb: float, seed: int = 0) -> Path:
    """About ``size_mb`` MiB of text: pools of generated documents, shuffled, appended in a loop."""
    from bertlab.data.default_corpus import generate_documents

    target = int(size_mb * 2**20)
    if path.exists() and path.stat().st_size >= target:
        return path
    tmp = path.with_suffix(".tmp")
    written, pool_seed = 0, seed
    rng = random.Random(seed)
    with tmp.open("w", encoding="utf-8") as f:
        pool = ["\n".join(d) + "\n\n" for d in generate_documents(4000, seed=pool_seed)]
        while written < target:
            rng.shuffle(pool)
            for doc in pool:
                f.write(doc)
                written += len(doc.encode())
                if written >= target:
                    break
    os.replace(tmp, path)
    return path


def anon_kb(pid: int) -> int:
    """RssAnon of a process in KiB (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_memory(proc: psutil.Process) -> tuple[int, int]:
    rss = anon = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss += p.memory_info().rss
            anon += anon_kb(p.pid) * 1024
        except psutil.Error:
            pass
    return rss, anon


class MemoryCgroup:
    """A fresh memory cgroup limited to ``cap_mb`` MiB (v2 or v1), removed by :meth:`close`."""

    def __init__(self, cap_mb: int, name: str) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        self.v2 = v2.exists() and "memory" in v2.read_text().split()
        self.path = Path("/sys/fs/cgroup" if self.v2 else "/sys/fs/cgroup/memory") / name
        try:
            self.path.mkdir(exist_ok=True)
            limit = "memory.max" if self.v2 else "memory.limit_in_bytes"
            (self.path / limit).write_text(str(cap_mb * 2**20))
            swap = self.path / ("memory.swap.max" if self.v2 else "memory.memsw.limit_in_bytes")
            if swap.exists():  # no spilling to swap: v2 counts swap apart, v1 counts memory + swap
                swap.write_text("0" if self.v2 else str(cap_mb * 2**20))
        except OSError as e:
            raise SystemExit(
                f"cannot create a memory cgroup at {self.path} ({e}): --cap-mb needs cgroup write access"
            ) from None

    def add_self(self) -> None:  # a preexec_fn: the job and all its children run in the cgroup
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_mb(self) -> int | None:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        f = self.path / name
        return round(int(f.read_text()) / 2**20) if f.exists() else None

    def oom_kills(self) -> int:
        f = self.path / ("memory.events" if self.v2 else "memory.oom_control")
        for line in f.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def close(self) -> None:
        """Kill what is left in the cgroup (workers orphaned by an OOM kill of their parent), remove it."""
        for _ in range(50):
            pids = (self.path / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        try:
            self.path.rmdir()
        except OSError:
            pass


def train_command(corpus: Path, steps: int, num_proc: int | None, tokenizer: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bertlab.cli.train",
        "data=text_files",
        f"data.files=[{corpus}]",
        "tokenizer.vocab_size=2000",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "hardware.threads=1",
        "export=false",
        "print_config=false",
        *([f"data.num_proc={num_proc}"] if num_proc else []),
        *([f"tokenizer.path={tokenizer}"] if tokenizer else []),
    ]


def measure(
    corpus: Path,
    workdir: Path,
    steps: int,
    cap_mb: int | None,
    num_proc: int | None = None,
    tokenizer: Path | None = None,
    reuse_cache: bool = False,
) -> dict:
    root = workdir / f"root-{corpus.stem}-{cap_mb or 0}"
    # reuse_cache: keep the data an earlier run of the same size built, to measure training alone
    shutil.rmtree(root / "logs" if reuse_cache else root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BERTLAB_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    cmd = train_command(corpus, steps, num_proc, tokenizer)
    cgroup = MemoryCgroup(cap_mb, f"bertlab-scaling-{os.getpid()}") if cap_mb else None
    started = time.time()
    with (root / "train.out").open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=cgroup.add_self if cgroup else None,
        )
        ps = psutil.Process(proc.pid)
        peak_rss = peak_anon = 0
        peak_anon_at = 0.0
        while proc.poll() is None:
            rss, anon = _tree_memory(ps)
            peak_rss = max(peak_rss, rss)
            if anon > peak_anon:  # when it peaked, to match against the run's log timestamps
                peak_anon, peak_anon_at = anon, time.time()
            time.sleep(0.1)
    capped = {}
    if cgroup:
        capped = {"cgroup_peak_mb": cgroup.peak_mb(), "oom_kills": cgroup.oom_kills()}
        cgroup.close()
    summaries = list((root / "logs").glob("pretrain/runs/*/summary.json"))
    data = json.loads(summaries[0].read_text()).get("data", {}) if summaries else {}
    return {
        "corpus_mb": round(corpus.stat().st_size / 2**20, 1),
        "cap_mb": cap_mb,
        **capped,
        "num_proc": num_proc,
        "exit": proc.returncode,
        "seconds": round(time.time() - started, 1),
        "peak_rss_mb": round(peak_rss / 2**20),
        "peak_anon_mb": round(peak_anon / 2**20),
        "peak_anon_at": time.strftime("%H:%M:%S", time.localtime(peak_anon_at)),
        "documents": data.get("documents"),
        "train_instances": (data.get("train") or {}).get("instances"),
        "command": " ".join(cmd[1:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[25, 100, 400])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bertlab_scaling"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cap-mb", type=int, default=None, help="memory cgroup limit for the run, in MiB")
    ap.add_argument("--num-proc", type=int, default=None, help="data.num_proc for the preparation")
    ap.add_argument(
        "--tokenizer", type=Path, default=None, help="a trained tokenizer (skips WordPiece training)"
    )
    ap.add_argument(
        "--reuse-cache",
        action="store_true",
        help="keep the data cache of an earlier run of the same size: measures the training alone",
    )
    ap.add_argument("--clean", action="store_true", help="delete --workdir at the end")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for size in args.sizes_mb:
        corpus = write_corpus(args.workdir / f"corpus-{size:g}mb.txt", size)
        result = measure(
            corpus, args.workdir, args.steps, args.cap_mb, args.num_proc, args.tokenizer, args.reuse_cache
        )
        print(json.dumps(result), flush=True)
    if args.clean:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

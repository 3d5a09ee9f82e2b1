"""W&B offline: the run's files hold the metrics; a killed and resumed run keeps its run id."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

SMALL = [
    "logger=wandb",
    "data.generated_documents=60",
    "data.max_seq_length=32",
    "data.batch_size=4",
    "tokenizer.vocab_size=300",
    "trainer.enable_progress_bar=false",
    "trainer.val_check_interval=5",
    "trainer.log_every_n_steps=1",
    "hardware.threads=1",
]


def read_wandb_records(path: Path) -> list:
    """Records of an offline ``run-<id>.wandb`` file (W&B's log format: 32 KiB blocks of
    7-byte-headed chunks, after a 7-byte file header)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
            buf = b""
    records = []
    for raw in out:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def _history(records) -> list[dict[str, str]]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): i.value_json for i in r.history.item})
    return rows


def _logged_a_loss(runs: Path) -> bool:
    for path in runs.glob("*/wandb/offline-run-*/run-*.wandb"):
        try:
            return any("train/loss" in row for row in _history(read_wandb_records(path)))
        except Exception:  # a record half-written at this moment: look again later
            return False
    return False


@pytest.mark.slow  # a run killed and resumed in subprocesses: over a minute (make test-slow)
def test_offline_run_killed_and_resumed_keeps_its_id(tmp_path):
    env = {**os.environ, "BERTLAB_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "bertlab.cli.train", "trainer.max_steps=400", *SMALL]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "logs" / "pretrain" / "runs"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            last = list(runs.glob("*/checkpoints/last.ckpt")) if runs.exists() else []
            # W&B writes its file in the background: kill only once it holds a training loss, or a
            # loaded machine kills the run before anything reached the file.
            if last and last[0].stat().st_size > 0 and _logged_a_loss(runs):
                break
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint within 300 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run_dir,) = list(runs.iterdir())
    assert not (run_dir / "summary.json").exists()

    res = subprocess.run(
        [sys.executable, "-m", "bertlab.cli.train", f"resume={run_dir}", "trainer.max_steps=60"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    ids = {p.name.rsplit("-", 1)[1] for p in offline}
    assert len(ids) == 1, offline  # the same W&B run, continued
    first = _history(read_wandb_records(next(offline[0].glob("run-*.wandb"))))
    second = _history(read_wandb_records(next(offline[1].glob("run-*.wandb"))))
    assert any("train/loss" in row for row in first)
    steps = [int(row["trainer/global_step"]) for row in second if "trainer/global_step" in row]
    assert steps and max(steps) >= 59 and min(steps) >= 5  # continued after the checkpoint
    assert any("val/mlm_loss" in row for row in second)
    assert (offline[1] / "files" / "summary.json").exists()

"""``bertlab-predict`` streams: answers come out while the input is still being read, in order, so a
pipe of any length is answered with bounded memory.

A real process reads a pipe that the test keeps open: after one chunk of lines (and a few more) the
first answers must arrive before the test writes the rest and closes the pipe.
"""

from __future__ import annotations

import inspect
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bertlab.inference import Predictor
from bertlab.tasks.classify import ClassifyTask
from tests.conftest import words_tokenizer
from tests.test_onnx import WORDS, _export

DEADLINE_S = 180  # the process imports torch and loads the model first: slow on a busy machine
CHUNK = inspect.signature(Predictor.stream).parameters["chunk_size"].default


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return words_tokenizer(tmp_path_factory.mktemp("tok") / "wp", WORDS, vocab_size=120)


def _line(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]} {WORDS[(7 * i) % len(WORDS)]} number {i}"


def test_predict_answers_before_the_input_ends(tok_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "export"
    _export(ClassifyTask(labels=["neg", "pos"], max_seq_length=32), tok_dir, model, seed=0)
    first, rest = CHUNK + 8, 500
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertlab.cli.predict", str(model), "--threads", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    answers: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        for raw in proc.stdout:
            answers.put(raw)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.stdin.write("".join(f"{_line(i)}\n" for i in range(first)).encode())
        proc.stdin.flush()  # the pipe stays open: the input has not ended
        deadline = time.monotonic() + DEADLINE_S
        early: list[dict] = []
        while not early and time.monotonic() < deadline:
            try:
                early.append(json.loads(answers.get(timeout=1)))
            except queue.Empty:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert early, f"no answer within {DEADLINE_S} s while the input was still open"
        assert proc.poll() is None  # still reading its input
        assert early[0]["text"] == _line(0)
        proc.stdin.write("".join(f"{_line(i)}\n" for i in range(first, first + rest)).encode())
        proc.stdin.close()
        assert proc.wait(timeout=DEADLINE_S) == 0, proc.stderr.read().decode()[-2000:]
        reader.join(timeout=30)
        rows = early + [json.loads(answers.get_nowait()) for _ in range(answers.qsize())]
        assert [r["text"] for r in rows] == [_line(i) for i in range(first + rest)]  # all, in order
        assert all(r["label"] in ("neg", "pos") for r in rows)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

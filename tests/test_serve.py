"""``bertlab-serve``: live server processes on 127.0.0.1, a real HTTP client (httpx).

Two tiny random-weight models exported as a run exports them (the task's HF export, then ONNX): a
classifier served from its fused ONNX graph with dynamic batching, and an NER model served by
PyTorch. Both servers start at once (each loads torch in its worker: the slow part) and are stopped
with SIGTERM at the end. Every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bertlab.cli.predict import main as predict_main
from bertlab.cli.serve import main as serve_main
from bertlab.errors import BertlabError
from bertlab.serve import Invalid, PredictorAPI, ServeSettings, check_request
from bertlab.tasks.base import export_onnx_beside
from bertlab.tasks.classify import ClassifyTask
from bertlab.tasks.ner import NerTask
from tests.conftest import words_tokenizer
from tests.test_onnx import LINES, NER_LINES, WORDS, _export

httpx = pytest.importorskip("httpx")
pytest.importorskip("litserve")

HOST = "127.0.0.1"  # the servers and the client never use another address
START_S = 180  # a worker imports torch and loads the model: slow on a busy machine, bounded here
MAX_TEXTS, MAX_CHARS = 16, 500


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return words_tokenizer(tmp_path_factory.mktemp("tok") / "wp", WORDS, vocab_size=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """One ``bertlab-serve`` process (its own session, so that teardown can stop all of it)."""

    def __init__(self, model: Path, log: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log
        args = [
            sys.executable,
            "-m",
            "bertlab.cli.serve",
            str(model),
            "--host",
            HOST,
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(
            [*args, "--threads", "1", "--max-texts", str(MAX_TEXTS), "--max-chars", str(MAX_CHARS), *extra],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"bertlab-serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"bertlab-serve not ready after {START_S} s:\n{self.log.read_text()[-3000:]}")

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.post(f"{self.url}/predict", content=body, timeout=60, **kwargs)
        return httpx.post(f"{self.url}/predict", json=body, timeout=60, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def exports(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cls = tmp_path_factory.mktemp("serve-cls") / "export"
    _export(ClassifyTask(labels=["neg", "neu", "pos"], max_seq_length=32), tok_dir, cls, seed=0, scale=20)
    export_onnx_beside(cls, max_seq_length=32, optimize=True)
    ner = tmp_path_factory.mktemp("serve-ner") / "export"
    labels = ["O", "B-person", "I-person", "B-location", "I-location"]
    _export(
        NerTask(labels=labels, word_split="whitespace", max_seq_length=32, stride=8), tok_dir, ner, seed=1
    )
    return {"cls": cls, "ner": ner}


@pytest.fixture(scope="module")
def servers(
    exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("serve-logs")
    started = {
        # the classifier: its fused ONNX graph (the default when model.onnx is there), batches of up
        # to 8 requests gathered for 50 ms
        "cls": Server(exports["cls"], logs / "cls.log", "--max-batch-size", "8", "--batch-timeout", "0.05"),
        # NER on PyTorch; a 0.5 s batch wait keeps a request in flight long enough for the SIGTERM test
        "ner": Server(exports["ner"], logs / "ner.log", "--backend", "torch", "--batch-timeout", "0.5"),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _predict(model: Path, lines: list[str], tmp_path: Path, *extra: str) -> list[dict]:
    inp, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    predict_main([str(model), "-i", str(inp), "-o", str(out), *extra])
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _same_answers(got: list[dict], ref: list[dict]) -> None:
    """Equal, but for the scores' last digits: a request is padded with other requests than a line of
    bertlab-predict's input (float rounding)."""
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert {k: v for k, v in g.items() if k not in ("score", "scores")} == {
            k: v for k, v in r.items() if k not in ("score", "scores")
        }
        assert abs(g["score"] - r["score"]) <= 1e-5
        assert g["scores"].keys() == r["scores"].keys()
        assert max(abs(g["scores"][k] - r["scores"][k]) for k in r["scores"]) <= 1e-5


# ------------------------------------------------------------------------ answers


def test_classifier_answers_equal_predict(
    servers: dict[str, Server], exports: dict[str, Path], tmp_path: Path
):
    server = servers["cls"]
    ref = _predict(exports["cls"], LINES, tmp_path, "--backend", "onnx")
    response = server.post(LINES)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    _same_answers(response.json(), ref)
    # a pair as a [text, pair] list and as an object: the same answer as text<TAB>pair on a line
    pair = LINES[3].split("\t")
    for item in (pair, {"text": pair[0], "text_pair": pair[1]}):
        (answer,) = server.post([item]).json()
        assert answer["text_pair"] == pair[1]
        _same_answers([answer], [ref[3]])
    info = httpx.get(f"{server.url}/info", timeout=10).json()["model"]
    assert info["backend"] == "onnx" and info["task"] == "classify"
    assert info["fused_ops"]["Attention"] == 1  # the fused graph is what is served


def test_ner_answers_equal_predict(
    servers: dict[str, Server], exports: dict[str, Path], tmp_path: Path
) -> None:
    ref = _predict(exports["ner"], NER_LINES, tmp_path)
    response = servers["ner"].post(NER_LINES)
    assert response.status_code == 200
    assert response.json() == ref  # words, tags, entity spans with character offsets
    assert any(r["entities"] for r in ref)
    tokens = {"tokens": NER_LINES[0].split()}
    assert servers["ner"].post([tokens]).json() == _predict(
        exports["ner"], [json.dumps(tokens)], tmp_path, "--jsonl"
    )


def test_concurrent_requests_each_get_their_answer(servers: dict[str, Server]) -> None:
    """Requests batched together (up to 8 within 50 ms) each get their own answers, and a bad one among
    them gets its 422 without failing the others."""
    server = servers["cls"]
    texts = [f"{LINES[i % len(LINES)]} {i}" for i in range(12)]
    alone = dict(zip(texts, server.post(texts).json()))  # one request, no other request batched in
    bodies: list[Any] = [[t] for t in texts] + [[1], [texts[0], texts[1]]]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(server.post, bodies))
    for body, response in zip(bodies, responses):
        if body == [1]:
            assert response.status_code == 422 and "inputs[0]" in response.json()["detail"]
            continue
        assert response.status_code == 200, response.text
        _same_answers(response.json(), [alone[t] for t in body])


# ------------------------------------------------------------------------ bad requests

BAD = [
    (b'["the film"', 400, "not valid JSON"),
    (b'["\xff"]', 400, "not valid JSON (not UTF-8)"),
    (b'{"texts": ["a"]}', 422, "must be a JSON list of inputs"),
    (b'"the film"', 422, "got a string"),
    (b"[]", 422, "empty"),
    (json.dumps(["a"] * (MAX_TEXTS + 1)).encode(), 413, f"limit is {MAX_TEXTS}"),
    (json.dumps(["x" * (MAX_CHARS + 1)]).encode(), 413, f"inputs[0]: {MAX_CHARS + 1} characters"),
    (json.dumps(["ok", ["a", "b" * MAX_CHARS]]).encode(), 413, "inputs[1]:"),
    (b"[" + b'"a",' * 200_000 + b'"a"]', 413, "the body is over"),
    (b"[1]", 422, "inputs[0]: expected a text"),
    (b'["ok", {"text": "a", "label": 1}]', 422, "inputs[1]: unknown field"),
    (b'[["a", "b", "c"]]', 422, "inputs[0]"),
    (b'[[[[[["deep"]]]]]]', 422, "nested more than"),
]


@pytest.mark.parametrize("body, status, detail", BAD, ids=[f"{s}-{d[:24]}" for _, s, d in BAD])
def test_bad_request_gets_4xx_then_server_answers(
    servers: dict[str, Server], body: bytes, status: int, detail: str
):
    server = servers["cls"]
    response = server.post(body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    message = response.json()["detail"]
    assert detail in message and "\n" not in message
    good = server.post(["the film was good"])
    assert good.status_code == 200 and good.json()[0]["label"] in ("neg", "neu", "pos")


def test_other_methods_and_form_bodies(servers: dict[str, Server]) -> None:
    server = servers["cls"]
    assert httpx.get(f"{server.url}/predict", timeout=10).status_code == 405
    # curl -d sends application/x-www-form-urlencoded: the JSON body is still read as JSON
    form = httpx.post(
        f"{server.url}/predict",
        content=b'["the film was good"]',
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert form.status_code == 200 and form.json()[0]["text"] == "the film was good"
    assert httpx.get(f"{server.url}/health", timeout=10).text == "ok"


# ------------------------------------------------------------------------ shutdown


def test_sigterm_stops_cleanly(servers: dict[str, Server]) -> None:
    """SIGTERM to the main process: the request in flight is answered, the command exits 0 and every
    process it started is gone. (Runs last: it stops the NER server.)"""
    server = servers["ner"]
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert len(children) >= 2  # an HTTP process and a worker, at least
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(server.post, ["Anna moved from Paris"])
        time.sleep(0.2)  # the worker waits 0.5 s to fill its batch: the request is in flight
        server.proc.send_signal(signal.SIGTERM)
        response = in_flight.result(timeout=60)
    assert response.status_code == 200 and response.json()[0]["text"] == "Anna moved from Paris"
    assert server.proc.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [p.pid for p in alive]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)
    log = server.log.read_text()
    assert "bertlab-serve: stopped" in log and "Traceback" not in log, log[-2000:]


# ------------------------------------------------------------------------ in-process


def test_command_errors_are_one_line(exports: dict[str, Path], tmp_path: Path, capsys) -> None:
    cases = [
        ([str(tmp_path / "nowhere")], "no run directory or export directory at"),
        ([str(exports["ner"]), "--backend", "onnx"], "model.onnx not found; write it with: bertlab-export"),
        ([str(exports["cls"]), "--max-batch-size", "4", "--batch-timeout", "0"], "needs --batch-timeout > 0"),
        ([str(exports["cls"]), "--host", "10.0.0.1"], "--host must be"),
        ([str(exports["cls"]), "--max-texts", "0"], "--max-texts must be at least 1"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            serve_main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err


class FakePredictor:
    def parse(self, item: Any, where: str = "input") -> str:
        if not isinstance(item, str):
            raise BertlabError(f"{where}: not a string")
        return item

    def predict(self, inputs: list[str]) -> list[dict]:
        return [{"text": t, "n": len(t)} for t in inputs]


@pytest.mark.parametrize("max_batch_size", [1, 4])
def test_a_bad_request_does_not_fail_its_batch(max_batch_size: int) -> None:
    api = PredictorAPI(ServeSettings(model="unused", max_batch_size=max_batch_size))
    api.predictor = FakePredictor()
    requests = [["ab", "c"], ["x", 3], ["defg"]]
    decoded = [api.decode_request(r) for r in requests]
    assert isinstance(decoded[1], Invalid) and decoded[1].message == "inputs[1]: not a string"
    outputs = api.predict(decoded) if max_batch_size > 1 else [api.predict(d) for d in decoded]
    responses = [api.encode_response(o) for o in outputs]
    assert [r.status_code for r in responses] == [200, 422, 200]
    assert json.loads(responses[0].body) == [{"text": "ab", "n": 2}, {"text": "c", "n": 1}]
    assert json.loads(responses[1].body) == {"detail": "inputs[1]: not a string"}
    assert json.loads(responses[2].body) == [{"text": "defg", "n": 4}]


def test_check_request() -> None:
    assert check_request(["a", ["b", "c"], {"text": "d"}], 3, 10) is None
    assert check_request({"a": 1}, 3, 10) == (
        422,
        'the body must be a JSON list of inputs (texts, or pairs), got an object; e.g. ["a text", '
        '["a text", "its pair"]]',
    )
    assert check_request(None, 3, 10)[1].startswith(
        "the body must be a JSON list of inputs (texts, or pairs), got null"
    )
    assert check_request([], 3, 10) == (422, "the list of inputs is empty; send at least one")
    assert check_request(["a"] * 4, 3, 10) == (413, "4 inputs in one request; the limit is 3 (--max-texts)")
    # the characters of every string in an input count, object keys included: "text" + 6 = 10
    assert check_request([{"text": "abcdef"}], 3, 10) is None
    assert check_request(["ok", {"text": "abcdefg"}], 3, 10) == (
        413,
        "inputs[1]: 11 characters; the limit is 10 per input (--max-chars)",
    )
    assert check_request([[[[[["a"]]]]]], 3, 10) == (422, "inputs[0]: nested more than 4 levels deep")

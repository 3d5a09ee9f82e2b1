"""Serving a trained model over HTTP, on LitServe: the task's own :class:`~bertlab.inference.Predictor`
behind ``POST /predict``, with dynamic batching, several workers and request limits.

The server knows no task. Each worker loads the model once (:func:`bertlab.tasks.base.load_predictor`,
ONNX or PyTorch) and answers exactly what ``bertlab-predict`` writes, one answer per input, in order.

Where each check happens, and why:

* **The envelope** (:class:`RequestLimits`, an ASGI middleware in the HTTP process): valid JSON, a
  non-empty list, at most ``max_texts`` inputs, at most ``max_chars`` characters per input, a
  bounded body. A request that breaks one is answered 4xx there and never reaches a worker.
* **Each input** (:meth:`PredictorAPI.decode_request`, in the worker): the task's ``Predictor.parse``.
  With dynamic batching LitServe runs ``decode_request`` for every request of a batch in one ``try``,
  so an ``HTTPException`` raised there would fail every request batched with the bad one. Instead a
  bad request becomes a value that flows through ``predict`` untouched and is answered 422 by
  ``encode_response``; the requests batched with it get their answers.

Error bodies are FastAPI's ``{"detail": "<one line>"}``, like LitServe's own 500 and 504.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import litserve as ls
from starlette.responses import JSONResponse, Response

from bertlab import runs
from bertlab.errors import BertlabError
from bertlab.export.files import ONNX_FILE, read_info
from bertlab.io import directory_digest, read_json

__all__ = ["PredictorAPI", "RequestLimits", "ServeSettings", "build_server", "check_request", "resolve"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# A JSON character takes at most 6 bytes (\uXXXX); the rest is punctuation and pair/field names.
BYTES_PER_CHAR = 6
BODY_SLACK = 64 * 1024
MAX_DEPTH = 4  # an input is a text, a pair, or an object of texts / a token list


@dataclass
class ServeSettings:
    """Everything a worker needs to load and run the model (pickled to each worker process)."""

    model: str
    backend: str = "onnx"
    onnx_file: str | None = None
    threads: int = 1
    # Inputs per forward pass. Small: a gathered batch has random lengths, and padding 16 random SST-2
    # sentences to the longest cost more than batching saved (MiniLM, 1 thread: 22 sentences/s in one
    # pass vs 34 one at a time; length-sorted passes of 8: 35, of 4: 36; docs/deployment.md).
    batch_size: int = 4
    max_seq_length: int | None = None
    max_batch_size: int = 16  # requests LitServe gathers into one predict call
    batch_timeout: float = 0.005
    max_texts: int = 64
    max_chars: int = 2000


def resolve(model: str | Path, backend: str, onnx_file: str | None) -> tuple[Path, str, dict[str, Any]]:
    """(export directory, backend, what /info shows) for a run or export directory, checked in the
    main process so that a wrong path or a missing or stale graph is one line before any worker starts.
    ``backend="auto"``: ONNX when the graph is there, else PyTorch."""
    path = Path(model).expanduser()
    if not path.exists():
        raise BertlabError(f"no run directory or export directory at {path}")
    export_dir = runs.export_of(path)
    if export_dir is None or not (export_dir / "config.json").is_file():
        raise BertlabError(
            f"{path}: not a run directory with an export/ (summary.json) nor an HF export directory "
            "(config.json)"
        )
    graph = export_dir / (onnx_file or ONNX_FILE)
    if backend == "auto":
        backend = "onnx" if graph.is_file() else "torch"
    if backend == "onnx":
        if not graph.is_file():
            raise BertlabError(f"{graph} not found; write it with: bertlab-export {export_dir} --optimize")
        digest = read_info(export_dir).get("weights_digest")
        if digest and digest != directory_digest(export_dir, ["model.safetensors"]):
            raise BertlabError(
                f"{graph} was exported from other weights than {export_dir / 'model.safetensors'}; "
                f"re-run bertlab-export {export_dir}"
            )
    elif backend != "torch":
        raise BertlabError(f"backend={backend!r} is not one of auto, onnx, torch")
    config = read_json(export_dir / "config.json")
    task = (config.get("bertlab") or {}).get("task") or {}
    about = {
        "model": str(export_dir),
        "task": task.get("name") or (config.get("architectures") or ["?"])[0],
        "labels": task.get("labels"),
        "backend": backend,
        "file": graph.name if backend == "onnx" else "model.safetensors",
    }
    if backend == "onnx":
        info = read_info(export_dir)
        about["exporter"] = info.get("exporter")
        about["fused_ops"] = (info.get("optimized") or {}).get("fused_ops")
    return export_dir, backend, about


def check_request(value: Any, max_texts: int, max_chars: int) -> tuple[int, str] | None:
    """(status, message) for a request body that breaks the envelope, else None. The task's own
    checks of each input come later, in the worker."""
    if not isinstance(value, list):
        return 422, (
            f"the body must be a JSON list of inputs (texts, or pairs), got {_json_type(value)}; "
            'e.g. ["a text", ["a text", "its pair"]]'
        )
    if not value:
        return 422, "the list of inputs is empty; send at least one"
    if len(value) > max_texts:
        return 413, f"{len(value)} inputs in one request; the limit is {max_texts} (--max-texts)"
    for i, item in enumerate(value):
        chars = _characters(item, MAX_DEPTH)
        if chars is None:
            return 422, f"inputs[{i}]: nested more than {MAX_DEPTH} levels deep"
        if chars > max_chars:
            return 413, f"inputs[{i}]: {chars} characters; the limit is {max_chars} per input (--max-chars)"
    return None


def _characters(value: Any, depth: int) -> int | None:
    """Characters in the strings of ``value`` (object keys included); None when nested too deep."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list | dict) or depth == 0:
        return 0 if not isinstance(value, list | dict) else None
    parts = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    total = 0
    for part in parts:
        n = _characters(part, depth - 1)
        if n is None:
            return None
        total += n
    return total


def _json_type(value: Any) -> str:
    names = {dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


class RequestLimits:
    """ASGI middleware on ``POST <path>``: reads the body (at most ``max_bytes``), answers a request that
    breaks :func:`check_request` or is not JSON with a 4xx, and passes a good one on with its body
    replayed and its content type set to JSON (so ``curl -d '[...]'`` works without a header)."""

    def __init__(self, app: Any, path: str, max_texts: int, max_chars: int) -> None:
        self.app = app
        self.path = path
        self.max_texts = max_texts
        self.max_chars = max_chars
        self.max_bytes = max_texts * max_chars * BYTES_PER_CHAR + BODY_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _error(413, f"the body is over {self.max_bytes} bytes (--max-texts x --max-chars)")(
                    scope, receive, send
                )
                return
            chunks.append(chunk)
            more = bool(message.get("more_body"))
        body = b"".join(chunks)
        try:
            value = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            await _error(400, f"the body is not valid JSON ({reason}{where})")(scope, receive, send)
            return
        problem = check_request(value, self.max_texts, self.max_chars)
        if problem is not None:
            await _error(*problem)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        headers = [
            (k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.app({**scope, "headers": headers}, replay, send)


@dataclass
class Invalid:
    """A request whose inputs the task refused: answered 422 without failing its batch."""

    message: str


class PredictorAPI(ls.LitAPI):
    """The task's Predictor as a LitServe API. One request is a list of inputs; with dynamic batching
    LitServe hands :meth:`predict` the decoded requests of up to ``max_batch_size`` requests, whose
    inputs go through the predictor together (length-sorted batches of ``batch_size``)."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout)
        self.settings = settings
        self.predictor: Any = None

    def setup(self, device: str) -> None:
        # torch's OpenMP threads wait without spinning, as onnxruntime's do (export.onnx.make_session):
        # read when OpenMP starts, so before torch is imported; a value the user set is kept.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # Imported here: the HTTP processes never load torch or the model, only the workers do.
        import torch

        from bertlab.tasks.base import load_predictor

        s = self.settings
        torch.set_num_threads(s.threads)
        self.predictor = load_predictor(
            s.model, s.backend, s.onnx_file, s.threads, s.max_seq_length, s.batch_size
        )

    # decode_request and encode_response stay unannotated: LitServe reads their annotations as the
    # endpoint's FastAPI request and response types.
    def decode_request(self, request):
        parse = self.predictor.parse
        try:
            return [parse(item, f"inputs[{i}]") for i, item in enumerate(request)]
        except BertlabError as e:
            return Invalid(str(e))

    def predict(self, x: Any) -> Any:
        requests = x if self.max_batch_size > 1 else [x]
        inputs = [item for r in requests if not isinstance(r, Invalid) for item in r]
        answers = self.predictor.predict(inputs) if inputs else []
        out, start = [], 0
        for r in requests:
            if isinstance(r, Invalid):
                out.append(r)
            else:
                out.append(answers[start : start + len(r)])
                start += len(r)
        return out if self.max_batch_size > 1 else out[0]

    def encode_response(self, output):
        if isinstance(output, Invalid):
            return _error(422, output.message)
        # bertlab-predict's JSON (ensure_ascii=False), not FastAPI's encoder: the same text either way
        return Response(json.dumps(output, ensure_ascii=False).encode("utf-8"), media_type="application/json")


def build_server(
    settings: ServeSettings, workers: int = 1, request_timeout: float = 30.0, about: dict | None = None
) -> ls.LitServer:
    """The LitServer: ``workers`` processes on the CPU, each with its own copy of the model."""
    api = PredictorAPI(settings)
    limits = {"path": "/predict", "max_texts": settings.max_texts, "max_chars": settings.max_chars}
    return ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=workers,
        timeout=request_timeout,
        middlewares=[(RequestLimits, limits)],
        model_metadata={**(about or {}), "settings": asdict(settings), "workers": workers},
        restart_workers=True,  # a worker that dies (e.g. killed for memory) is replaced; its requests get 500
    )


def default_threads(workers: int) -> int:
    """CPU threads per worker: the machine's cores shared out among the workers."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))

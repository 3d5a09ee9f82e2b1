"""``bertlab-serve``: answer ``POST /predict`` with a trained model, over HTTP (LitServe).

    bertlab-serve logs/classify/runs/<time>                  # ONNX when model.onnx is there
    bertlab-serve logs/ner/runs/<time>/export --backend torch --port 8080 --workers 2
    curl -s localhost:8000/predict -d '["a gripping film", "dull and far too long"]'

``POST /predict`` takes a JSON list of inputs (what ``bertlab-predict --jsonl`` takes on a line: a
text, a pair, ...) and returns the list of answers ``bertlab-predict`` writes for them, in order.
``GET /health`` is 200 once every worker has loaded the model; ``GET /info`` shows the model and
these settings. A bad request gets a 4xx ``{"detail": "..."}`` saying what was wrong; the server
goes on. SIGTERM (or Ctrl-C) stops it gracefully: requests in flight are answered, then the
workers exit.

The settings are options with the defaults below, not a Hydra config: a server's settings are a
handful of numbers tied to one machine and one deployment, given where it is started (a unit file,
a container's command); Hydra's run directories, sweeps and composition serve training runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from bertlab.errors import BertlabError
from bertlab.serve import ServeSettings, build_server, default_threads, resolve

DEFAULTS = ServeSettings(model="")


def _graceful_sigterm(server: Any) -> threading.Event:
    """SIGTERM (or SIGINT) in the main process stops the server as LitServe's own shutdown endpoint does: by
    setting its shutdown event (from a thread: the main thread is inside a call on that event's
    manager connection). LitServer.run then stops the HTTP processes (uvicorn answers the requests
    in flight first) and then the workers. Returns the event that says a stop was asked for."""
    main_pid, stopping = os.getpid(), threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:  # a forked HTTP process that inherited this handler: default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stopping.set()
        event = getattr(server, "_shutdown_event", None)
        if event is None:  # before LitServer.run made its manager: nothing to stop gracefully yet
            raise KeyboardInterrupt
        threading.Thread(target=event.set, daemon=True).start()

    class QuietMonitorOnStop(logging.Filter):
        # LitServe's worker monitor polls that event's manager, which shutdown closes under it
        def filter(self, record: logging.LogRecord) -> bool:
            return not (stopping.is_set() and str(record.msg).startswith("Monitoring worker crashed"))

    logging.getLogger("litserve.server").addFilter(QuietMonitorOnStop())
    # Ctrl-C too: else the KeyboardInterrupt path runs, where the monitor may restart the workers it
    # sees die while the server stops
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopping


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bertlab-serve", description=__doc__.split("\n\n")[0])
    d = DEFAULTS
    parser.add_argument("model", help="a run directory or its export/ directory")
    parser.add_argument(
        "--backend", choices=["auto", "onnx", "torch"], default="auto",
        help="auto (default): onnx when the graph is beside the model, else torch",
    )  # fmt: skip
    parser.add_argument("--onnx-file", default=None, help="the graph beside the model (default: model.onnx)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="default 127.0.0.1; 0.0.0.0 or :: for every interface"
    )
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument(
        "--max-batch-size", type=int, default=d.max_batch_size,
        help=f"requests a worker gathers into one predict call: dynamic batching; 1: none (default {d.max_batch_size})",
    )  # fmt: skip
    parser.add_argument(
        "--batch-timeout", type=float, default=d.batch_timeout,
        help=f"seconds a worker waits to fill a batch (default {d.batch_timeout})",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size,
        help=f"inputs per forward pass, length-sorted, within a predict call (default {d.batch_size})",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes, each with its model (default 1)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads per worker (default: cores / workers)"
    )
    parser.add_argument(
        "--max-texts", type=int, default=d.max_texts, help=f"inputs per request (default {d.max_texts})"
    )
    parser.add_argument(
        "--max-chars", type=int, default=d.max_chars, help=f"characters per input (default {d.max_chars})"
    )
    parser.add_argument("--max-seq-length", type=int, default=None, help="default: the training length")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds a request may wait for a worker, then 504 (default 30)",
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        for name in ("max_batch_size", "workers", "max_texts", "max_chars", "batch_size"):
            if getattr(args, name) < 1:
                raise BertlabError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
                )
        if args.batch_timeout < 0 or args.batch_timeout >= args.timeout:
            raise BertlabError(f"--batch-timeout must be in [0, --timeout), got {args.batch_timeout}")
        if args.max_batch_size > 1 and args.batch_timeout == 0:
            # LitServe's batched loop then polls its queue without pausing: a core at 100% when idle
            raise BertlabError("dynamic batching (--max-batch-size > 1) needs --batch-timeout > 0")
        if args.host not in ("127.0.0.1", "0.0.0.0", "::"):
            raise BertlabError(f"--host must be 127.0.0.1, 0.0.0.0 or ::, got {args.host}")
        if not 1024 <= args.port <= 65535:
            raise BertlabError(f"--port must be in 1024..65535, got {args.port}")
        export_dir, backend, about = resolve(args.model, args.backend, args.onnx_file)
        settings = ServeSettings(
            model=str(export_dir),
            backend=backend,
            onnx_file=args.onnx_file,
            threads=args.threads or default_threads(args.workers),
            batch_size=args.batch_size,
            max_seq_length=args.max_seq_length,
            max_batch_size=args.max_batch_size,
            batch_timeout=args.batch_timeout,
            max_texts=args.max_texts,
            max_chars=args.max_chars,
        )
        server = build_server(settings, args.workers, args.timeout, about)
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    batching = (
        f"batches of up to {settings.max_batch_size} requests ({settings.batch_timeout * 1000:g} ms)"
        if settings.max_batch_size > 1
        else "no dynamic batching"
    )
    print(
        f"bertlab-serve: {about['task']} model {export_dir}, {backend} ({about['file']}), "
        f"{args.workers} worker(s) x {settings.threads} thread(s), {batching}; "
        f"http://{args.host}:{args.port}/predict",
        file=sys.stderr,
        flush=True,
    )
    _graceful_sigterm(server)
    try:
        server.run(
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            generate_client_file=False,
            access_log=False,
        )
    except RuntimeError as e:  # LitServe: a worker failed to load the model (its traceback is above)
        for worker in getattr(server, "inference_workers", []):
            worker.terminate()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # SIGTERM before LitServer.run began, or Ctrl-C before the workers were up
        for worker in getattr(server, "inference_workers", []):
            worker.terminate()
    print("bertlab-serve: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

"""The load of ``scripts/bench_serve.py``: each Locust user posts one SST-2 dev sentence at a time to
``/predict`` and sends the next as soon as the answer is back (a closed loop: N users = N requests in
flight). Run by that script, headless, against 127.0.0.1 only; alone::

    BENCH_TEXTS=/work/shared/data/sst2/dev.tsv .venv/bin/locust -f scripts/locustfile_serve.py \\
        --headless -u 16 -r 16 -t 60s --host http://127.0.0.1:8000
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, constant, events, task

_TEXTS: list[str] = []


@events.test_start.add_listener
def _load_texts(environment, **kwargs) -> None:  # noqa: ANN001
    host = environment.host or ""
    if not host.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise SystemExit(f"this load test targets the loopback only, not {host!r}")
    lines = Path(os.environ["BENCH_TEXTS"]).read_text(encoding="utf-8").splitlines()[1:]
    _TEXTS[:] = [line.split("\t")[0] for line in lines if line.strip()]


class Client(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random(id(self))

    @task
    def predict(self) -> None:
        body = json.dumps([self.rng.choice(_TEXTS)])
        with self.client.post(
            "/predict", data=body, headers={"content-type": "application/json"}, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()) != 1 or "label" not in response.json()[0]:
                response.failure(f"unexpected answer: {response.text[:200]}")

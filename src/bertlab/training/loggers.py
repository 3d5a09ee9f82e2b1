"""A CSV metrics logger that keeps the rows of a run's first part when the run is resumed.

Lightning's ``CSVLogger`` deletes the ``metrics.csv`` it finds in its directory, so a resumed run
lost every row logged before the interruption. This one is written on Lightning's public ``Logger``
interface and writes the same file (one row per logged step, columns sorted, ``step`` included).
With ``keep_before_step`` set (the job sets it to the step it resumes from) the earlier rows stay;
the rows from that step on go, since the resumed run logs them again.
"""

from __future__ import annotations

import csv
import io
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from bertlab.io import atomic_write

__all__ = ["CSVLogger"]


class CSVLogger(Logger):
    """``<save_dir>/<name>/<version>/metrics.csv`` (and ``hparams.yaml``), written on rank 0."""

    METRICS_FILE = "metrics.csv"

    def __init__(
        self,
        save_dir: str,
        name: str = "csv",
        version: str = "",
        flush_logs_every_n_steps: int = 100,
        keep_before_step: int | None = None,
    ) -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self._name = name
        self._version = version
        self.flush_logs_every_n_steps = flush_logs_every_n_steps
        self.keep_before_step = keep_before_step
        self._keys: list[str] = []
        self._pending: list[dict[str, Any]] = []
        self._started = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return str(Path(self._save_dir) / self._name / self._version)

    @property
    def metrics_path(self) -> Path:
        return Path(self.log_dir) / self.METRICS_FILE

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        text = yaml.safe_dump(params, sort_keys=True).encode()
        atomic_write(Path(self.log_dir) / "hparams.yaml", lambda f: f.write(text))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = step if step is not None else len(self._pending)
        self._pending.append(row)
        if (row["step"] + 1) % self.flush_logs_every_n_steps == 0:
            self.save()

    def _start(self) -> None:
        """The file this run starts from: the rows before ``keep_before_step`` of an earlier part,
        or nothing."""
        self._started = True
        path = self.metrics_path
        kept: list[dict[str, str]] = []
        if path.is_file() and self.keep_before_step is not None:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self._keys = list(reader.fieldnames or [])
                kept = [r for r in reader if r.get("step") and int(r["step"]) < self.keep_before_step]
        self._rewrite(kept)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self._keys)
        writer.writeheader()
        writer.writerows(rows)
        data = text.getvalue().encode()
        atomic_write(self.metrics_path, lambda f: f.write(data))

    @rank_zero_only
    def save(self) -> None:
        super().save()
        if not self._started:
            self._start()
        if not self._pending:
            return
        new_keys = {k for row in self._pending for k in row} - set(self._keys)
        if new_keys:
            # A new column: the header changes, so the file is written again with every row.
            with self.metrics_path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            self._keys = sorted({*self._keys, *new_keys})
            self._rewrite(rows + self._pending)
        else:
            with self.metrics_path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._keys).writerows(self._pending)
        self._pending = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

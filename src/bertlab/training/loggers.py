"""Lightning's CSV logger, keeping the metrics of a run's first part when the run is resumed."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.utilities import rank_zero_only


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger``, except on resume. Lightning deletes the ``metrics.csv`` it finds
    in the log directory, so a resumed run lost every row logged before the interruption. With
    ``keep_before_step`` set (the run sets it to the step it resumes from), the rows of earlier
    steps stay; the rows from that step on go, since the resumed run logs them again."""

    def __init__(self, *args: Any, keep_before_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_before_step = keep_before_step

    @property
    def experiment(self) -> Any:
        if self._experiment is not None or rank_zero_only.rank != 0 or self.keep_before_step is None:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        header: list[str] = []
        rows: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                rows = [r for r in reader if r.get("step") and int(r["step"]) < self.keep_before_step]
        writer = super().experiment  # deletes metrics.csv
        if header:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            with tmp.open("w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=header)
                out.writeheader()
                out.writerows(rows)
            os.replace(tmp, path)
            writer.metrics_keys = sorted(header)
        return writer

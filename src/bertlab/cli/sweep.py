"""The summary of a multirun sweep: every job's overrides and final metrics, best first.

A Hydra callback (``hydra.callbacks.sweep_summary`` in ``conf/hydra/default.yaml``) calls
:func:`write_sweep_summary` when a sweep ends; ``bertlab-report <sweep dir>`` does the same on demand.
It writes ``sweep_summary.csv``, ``sweep_summary.md`` and ``sweep_summary.png`` in the sweep
directory. A job that failed is listed as failed, with its error.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bertlab import runs


def _job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for job in _job_dirs(sweep_dir):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        if runs.is_run_dir(job):
            summary = runs.read_summary(job)
        else:
            summary = {"status": "failed", "error": "no summary.json (the job was killed or crashed)"}
        rows.append(
            {
                "job": job.name,
                "overrides": " ".join(overrides or []),
                "status": summary.get("status", "unknown"),
                "error": summary.get("error", ""),
                "metrics": summary.get("metrics", {}),
                "monitor": summary.get("monitor"),
                "monitor_mode": summary.get("monitor_mode"),
                "dir": str(job),
            }
        )
    return rows


def _score(row: dict[str, Any], monitor: str, mode: str) -> float:
    value = row["metrics"].get(monitor)
    if row["status"] != "completed" or value is None or (isinstance(value, float) and math.isnan(value)):
        return math.inf
    return -value if mode == "max" else value


def write_sweep_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write the three summary files; returns the rows, best first by the metric the jobs monitored
    (each job's summary.json names it)."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    monitored = [r for r in jobs if r["monitor"]]
    monitor = monitored[0]["monitor"] if monitored else "val/loss"
    mode = monitored[0]["monitor_mode"] if monitored else "min"
    rows = sorted(jobs, key=lambda r: _score(r, monitor, mode))
    # Show what differs between jobs; what all share is said once.
    split = [r["overrides"].split() for r in rows]
    common = [o for o in split[0] if all(o in s for s in split)] if split else []
    for r, s in zip(rows, split):
        r["swept"] = " ".join(o for o in s if o not in common)
    metric_names = sorted({k for r in rows for k in r["metrics"]})
    columns = ["job", "status", "overrides", *metric_names, "error"]
    with (sweep_dir / "sweep_summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(
                [
                    r["job"],
                    r["status"],
                    r["overrides"],
                    *[r["metrics"].get(m, "") for m in metric_names],
                    r["error"],
                ]
            )

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    shown = [monitor] + [m for m in metric_names if m != monitor]
    lines = [
        f"# Sweep summary: {sweep_dir.name}",
        "",
        f"{len(rows)} jobs, {sum(r['status'] == 'completed' for r in rows)} completed; "
        f"ranked by `{monitor}` ({mode}).",
        "",
        f"Common to every job: `{' '.join(common)}`" if common else "",
        "",
        "| rank | job | status | overrides | " + " | ".join(f"`{m}`" for m in shown) + " |",
        "|---" * (4 + len(shown)) + "|",
    ]
    for i, r in enumerate(rows, 1):
        status = r["status"] if r["status"] == "completed" else f"**{r['status']}**: {r['error']}"
        cells = [fmt(r["metrics"].get(m, "")) for m in shown]
        lines.append(f"| {i} | {r['job']} | {status} | `{r['swept']}` | " + " | ".join(cells) + " |")
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n")
    _plot(rows, monitor, sweep_dir / "sweep_summary.png")
    return rows


def _plot(rows: list[dict[str, Any]], monitor: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['job']}: {r.get('swept') or r['overrides']}"[:60] for r in rows]
    values = [
        r["metrics"].get(monitor, float("nan")) if r["status"] == "completed" else float("nan") for r in rows
    ]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.4 * max(1, len(rows))))
    colors = ["tab:blue" if not math.isnan(v) else "tab:red" for v in values]
    ax.barh(range(len(rows)), [0 if math.isnan(v) else v for v in values], color=colors)
    for i, v in enumerate(values):
        ax.text(
            0,
            i,
            " failed" if math.isnan(v) else f" {v:.4f}",
            va="center",
            color="white" if not math.isnan(v) else "black",
        )
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(monitor)
    ax.set_title("sweep: best first")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class SweepSummary(Callback):
    """Hydra callback: writes the sweep summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.exists():
            rows = write_sweep_summary(sweep_dir)
            print(f"sweep summary: {sweep_dir / 'sweep_summary.md'} ({len(rows)} jobs)")

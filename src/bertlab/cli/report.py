"""``bertlab-report <run dir | sweep dir>``: plots and a markdown summary of a run or a sweep.

For a run: ``report/curves.png`` (training loss and every validation metric over steps, from the
CSV log), ``report/confusion.png`` (classification), ``report/entities.png`` (NER, F1 per entity
type), and ``report/report.md``. For a sweep: the sweep summary (CSV, markdown, PNG).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from bertlab import runs
from bertlab.cli.sweep import write_sweep_summary
from bertlab.errors import BertlabError


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> Path:
    """Write the figure as a PNG and free it (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    _plt().close(fig)
    return out


def read_metrics_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from Lightning's CSV log."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                try:
                    series[key].append((int(float(step)), float(value)))
                except ValueError:
                    continue
    return dict(series)


def plot_curves(series: dict[str, list[tuple[int, float]]], out: Path) -> Path:
    plt = _plt()
    names = [k for k in series if k.startswith(("train/", "val/")) and k != "train/tokens"]
    names = sorted(names, key=lambda k: (not k.endswith("loss"), k))
    cols = 3
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = zip(*series[name])
        ax.plot(steps, values, marker="o" if name.startswith("val/") else None, markersize=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    return _save(fig, out)


def plot_confusion(matrix: list[list[float]], labels: list[str], out: Path) -> Path:
    plt = _plt()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1 + 0.6 * n))
    ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(matrix[i][j])}", ha="center", va="center", fontsize=9)
    ticks = labels if len(labels) == n else [str(i) for i in range(n)]
    ax.set_xticks(range(n), ticks, rotation=45, ha="right")
    ax.set_yticks(range(n), ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    return _save(fig, out)


def plot_entities(per_type: dict[str, dict[str, float]], out: Path) -> Path:
    plt = _plt()
    types = sorted(per_type)
    f1 = [per_type[t].get("f1", per_type[t].get("f1-score", 0.0)) for t in types]
    support = [per_type[t].get("support", 0) for t in types]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.4 * len(types)))
    ax.barh(range(len(types)), f1, color="tab:green")
    for i, (v, s) in enumerate(zip(f1, support)):
        ax.text(v, i, f" {v:.3f} (n={int(s)})", va="center", fontsize=8)
    ax.set_yticks(range(len(types)), types)
    ax.set_xlim(0, 1.15)
    ax.invert_yaxis()
    ax.set_xlabel("entity F1")
    ax.set_title("F1 per entity type")
    return _save(fig, out)


def report_run(run_dir: Path) -> Path:
    if not runs.is_run_dir(run_dir):
        raise BertlabError(f"{run_dir}: no summary.json (not a finished bertlab run)")
    summary = runs.read_summary(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    lines = [f"# {summary.get('task', 'run')} run: {run_dir.name}", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {v:.4f} |" for k, v in summary.get("metrics", {}).items()]
    lines.append("")
    csv_file = run_dir / "csv" / "metrics.csv"
    if csv_file.is_file():
        plot_curves(read_metrics_csv(csv_file), out / "curves.png")
        lines += ["## Curves", "", "![curves](curves.png)", ""]
    else:
        lines += ["(no csv/metrics.csv: run with logger=csv or logger=many for curves)", ""]
    reports: dict[str, Any] = summary.get("reports", {})
    if "confusion" in reports and summary.get("labels"):
        matrix = reports["confusion"]
        if matrix and isinstance(matrix[0][0], (int, float)):
            plot_confusion(matrix, summary["labels"], out / "confusion.png")
            lines += ["## Confusion matrix (validation)", "", "![confusion](confusion.png)", ""]
    entity = reports.get("entity_report")
    if entity and entity.get("per_type"):
        plot_entities(entity["per_type"], out / "entities.png")
        lines += [
            "## Entities (the last evaluation: the test set when there is one)",
            "",
            "| type | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for t, row in sorted(entity["per_type"].items()):
            lines.append(
                f"| {t} | {row.get('precision', 0):.3f} | {row.get('recall', 0):.3f} | "
                f"{row.get('f1', 0):.3f} | {int(row.get('support', 0))} |"
            )
        lines += ["", "![entities](entities.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bertlab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a run directory (with summary.json) or a sweep directory")
    args = parser.parse_args(argv)
    path = Path(args.path)
    try:
        if not path.is_dir():
            raise BertlabError(f"{path}: no such directory")
        if (path / "summary.json").is_file():
            written = report_run(path)
        elif (path / "multirun.yaml").is_file() or any((p / ".hydra").is_dir() for p in path.iterdir()):
            write_sweep_summary(path)
            written = path / "sweep_summary.md"
        else:
            raise BertlabError(f"{path}: neither a run directory (summary.json) nor a sweep directory")
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(written)


if __name__ == "__main__":
    main()

"""Multirun sweeps and Optuna searches through the real command line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

SMALL = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "data.generated_documents=60",
    "data.max_seq_length=32",
    "data.batch_size=4",
    "tokenizer.vocab_size=300",
    "trainer.enable_progress_bar=false",
    "hardware.threads=1",
    "logger=none",
]


def _sweep_dir(root: Path) -> Path:
    dirs = sorted((root / "logs" / "pretrain" / "multiruns").iterdir())
    assert len(dirs) == 1
    return dirs[0]


def _rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "sweep_summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_multirun_2x2_writes_summary_of_four_jobs(tmp_path):
    res = run_cli(["-m", "optimizer.lr=1e-3,3e-3", "model=tiny,mini", *SMALL], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    rows = _rows(sweep)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    losses = [float(r["val/mlm_loss"]) for r in rows]
    assert losses == sorted(losses)  # best first
    assert (sweep / "sweep_summary.png").stat().st_size > 1000
    assert "model=" in (sweep / "sweep_summary.md").read_text()
    # the report command rebuilds the same summary on demand
    from bertlab.cli.report import main as report_main

    (sweep / "sweep_summary.csv").unlink()
    report_main([str(sweep)])
    assert len(_rows(sweep)) == 4


def test_failed_job_is_recorded_and_sweep_goes_on(tmp_path):
    # The second job asks for sequences longer than the model's positions: it fails at once.
    res = run_cli(
        ["-m", "data.max_seq_length=32,1024", *[o for o in SMALL if "max_seq_length" not in o]], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["job"]: r for r in _rows(_sweep_dir(tmp_path))}
    assert rows["0"]["status"] == "completed"
    assert rows["1"]["status"] == "failed" and "max_seq_length=1024" in rows["1"]["error"]


@pytest.mark.slow  # an Optuna study of several jobs (make test-slow); the grid sweep stays in the default suite
def test_optuna_search_reports_best_value(tmp_path):
    res = run_cli(["hparams_search=pretrain_optuna", "hydra.sweeper.n_trials=3", *SMALL], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(float(r["val/mlm_loss"]) for r in _rows(sweep))
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.warmup_ratio", "optimizer.weight_decay"}

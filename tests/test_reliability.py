"""Faults: non-finite losses, corrupt checkpoints, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertlab.errors import BertlabError
from bertlab.job import run
from bertlab.tasks.pretrain import PretrainModule
from tests.conftest import REPO, run_cli


def _poison_step(monkeypatch, step: int) -> None:
    original = PretrainModule.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == step else loss

    monkeypatch.setattr(PretrainModule, "training_step", training_step)


def test_nonfinite_step_is_skipped_and_weights_stay_finite(compose_cfg, monkeypatch):
    _poison_step(monkeypatch, 3)
    cfg = compose_cfg(["trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["callbacks"]["NonFiniteGuard"]["skipped"] == 1
    metrics = (out / "csv" / "metrics.csv").read_text()
    assert "train/skipped_steps" in metrics


def test_nonfinite_stop_names_the_step(compose_cfg, monkeypatch):
    _poison_step(monkeypatch, 2)
    cfg = compose_cfg(["trainer.max_steps=6", "trainer.val_check_interval=3", "nonfinite=stop"])
    with pytest.raises(BertlabError, match="at step 2"):
        run(cfg)


def test_corrupt_last_checkpoint_falls_back_to_previous(bertlab_root, tmp_path):
    args = ["trainer.max_steps=4", "trainer.val_check_interval=2", "data.max_seq_length=32", "data.batch_size=2",
            "tokenizer.vocab_size=300", "data.generated_documents=60", "trainer.enable_progress_bar=false"]  # fmt: skip
    res = run_cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (run_dir,) = list((tmp_path / "logs" / "pretrain" / "runs").iterdir())
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a crash during a copy
    res = run_cli([f"resume={run_dir}", "trainer.max_steps=6"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "instead of a broken last.ckpt" in res.stdout + res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 6
    assert not list(run_dir.glob("checkpoints/.*tmp*"))


def test_sigterm_saves_a_checkpoint_and_exits_with_one_line(tmp_path):
    env = {**os.environ, "BERTLAB_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    args = ["trainer.max_steps=5000", "trainer.val_check_interval=1000", "data.max_seq_length=32",
            "data.batch_size=2", "tokenizer.vocab_size=300", "data.generated_documents=60",
            "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "hardware.threads=1"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertlab.cli.train", *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    runs = tmp_path / "logs" / "pretrain" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline:
        metrics = list(runs.glob("*/csv/metrics.csv")) if runs.exists() else []
        if metrics and metrics[0].read_text().count("\n") > 20:
            break
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    last_line = [ln for ln in err.strip().splitlines() if ln.strip()][-1]
    assert last_line.startswith("error: received SIGTERM") and "resume=" in last_line
    (run_dir,) = list(runs.iterdir())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] > 0


def test_a_kill_at_any_checkpoint_write_leaves_a_resumable_run(compose_cfg, monkeypatch):
    """Each checkpoint write or delete is a moment a kill can land. After every one of them,
    last.ckpt must name a best checkpoint that exists (else the resumed run fails at the end), and
    a last.ckpt from a validation step must postdate that validation (else the resumed run skips
    it). One last.ckpt, never last-v1.ckpt."""
    from bertlab.training.callbacks import AtomicCheckpointIO

    cfg = compose_cfg(["trainer.max_steps=12", "trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
                       "callbacks.periodic_checkpoint.every_n_train_steps=2"])  # fmt: skip
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    validated: list[int] = []
    deleted: list[str] = []

    def check_folder() -> None:
        assert [p.name for p in folder.glob("last*.ckpt")] == ["last.ckpt"]
        state = torch.load(folder / "last.ckpt", weights_only=True)
        (best,) = [v["best_model_path"] for v in state["callbacks"].values() if v.get("monitor")]
        assert not best or Path(best).is_file(), (
            f"last.ckpt (step {state['global_step']}) names a deleted {best}"
        )
        step = state["global_step"]
        assert step % 4 or step in validated, f"last.ckpt of step {step} was written before its validation"

    save, remove = AtomicCheckpointIO.save_checkpoint, AtomicCheckpointIO.remove_checkpoint

    def save_and_check(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        check_folder()

    def remove_and_check(self, path):
        remove(self, path)
        deleted.append(Path(path).name)
        check_folder()

    original_end = PretrainModule.on_validation_epoch_end

    def on_validation_epoch_end(self):
        original_end(self)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            validated.append(self.global_step)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_and_check)
    monkeypatch.setattr(AtomicCheckpointIO, "remove_checkpoint", remove_and_check)
    monkeypatch.setattr(PretrainModule, "on_validation_epoch_end", on_validation_epoch_end)
    run(cfg)
    assert validated == [4, 8, 12]
    assert deleted, "no best checkpoint was superseded: the test did not exercise a deletion"
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 12

"""Callbacks the run adds itself (not user-configurable)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bertlab.data.sampler import ResumableDataLoader
from bertlab.errors import BertlabError


class RunIdentity(L.Callback):
    """What a resumed run needs beyond Lightning's own state: the W&B run id (so the same W&B run
    continues), torch's random-number state (so dropout draws the same masks as if the run had
    never stopped; the data pipeline seeds its own randomness per sequence), and the training
    loop's true position in the epoch (see :meth:`ResumableDataLoader.note_batch_started`)."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint["wandb_run_id"] = str(logger.version)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["bertlab_rng"] = rng

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        rng = checkpoint.get("bertlab_rng")
        if not rng:
            return
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableDataLoader):
            loader.note_batch_started()


class NonFiniteGuard(L.Callback):
    """Checks every step's gradients before the optimizer step. ``mode="skip"``: a step with a
    non-finite loss or gradient is skipped (no parameter changes; counted in
    ``train/skipped_steps``); ``mode="stop"``: training stops with an error naming the step. Either
    way no NaN ever reaches the weights, so no checkpoint holds one."""

    def __init__(self, mode: str = "skip") -> None:
        if mode not in ("skip", "stop"):
            raise BertlabError(f"nonfinite={mode!r} is not one of skip, stop")
        self.mode = mode
        self.skipped = 0

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if bool(finite):
            return
        step = trainer.global_step
        if self.mode == "stop":
            raise BertlabError(
                f"non-finite loss or gradient at step {step}: training stopped (nonfinite=stop)"
            )
        self.skipped += 1
        for p in pl_module.parameters():
            p.grad = None  # the optimizer skips parameters without a gradient
        pl_module.log("train/skipped_steps", float(self.skipped), reduce_fx="max")

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))


class SaveOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) or SIGTERM: write ``checkpoints/last.ckpt`` at the step boundary where
    training stopped, so ``resume=<run dir>`` continues from there."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.saved: str | None = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.global_step > 0:
            path = f"{self.dirpath}/last.ckpt"
            trainer.save_checkpoint(path)
            self.saved = path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, flushed, then renamed into place: a crash during a
    save leaves the previous checkpoint intact, never a truncated one. Loading never unpickles
    code (``weights_only=True``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        from bertlab.tasks.init_from import safe_torch_load

        return safe_torch_load(Path(path))

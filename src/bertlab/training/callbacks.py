"""Callbacks of a training job: the run's identity and random state in checkpoints, the non-finite
guard, the save on Ctrl-C / SIGTERM, the best and periodic checkpoints, and atomic checkpoint files.

``BestCheckpoint`` and ``PeriodicCheckpoint`` are named in ``conf/callbacks/default.yaml``; the job
adds the others itself. The exact-resume guarantees (docs/reliability.md) rest on a few of
Lightning's non-public loop internals; each use is listed, with why, in docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bertlab.data.sampler import ResumableDataLoader
from bertlab.errors import BertlabError
from bertlab.io import atomic_write
from bertlab.pretrained import safe_torch_load


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
        self._at_validation_step = False
        self._sigterm_after_validation = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.global_step > 0:
            path = f"{self.dirpath}/last.ckpt"
            self._at_validation_step = _validation_follows(trainer)
            try:
                trainer.save_checkpoint(path)
            finally:
                self._at_validation_step = False
            self.saved = path

    # A SIGTERM during a validation within fit takes effect when that validation is over. Lightning
    # stops the validation halfway, and a run resumed from there never logged that validation.
    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.received_sigterm:
            self._sigterm_after_validation = True
            trainer._signal_connector.received_sigterm = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._sigterm_after_validation:
            self._sigterm_after_validation = False
            trainer._signal_connector.received_sigterm = True

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning resumes a checkpoint of a finished step that was also a validation step by
        # replaying the end of that step, which counts it for the loggers a second time: every
        # step after the resume was logged one step late. Count it once here.
        if self._at_validation_step:
            loop = checkpoint["loops"]["fit_loop"]
            progress = loop["epoch_loop.batch_progress"]["total"]
            if progress["completed"] == progress["processed"]:
                loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` keeping the best checkpoint by the monitored metric, and
    ``last.ckpt``, with one change: a superseded best file is deleted only after a ``last.ckpt``
    naming its successor is on disk. Lightning deletes it first, so a run killed between the two
    left a ``last.ckpt`` whose best checkpoint was gone, and the resumed run failed at the end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # last.ckpt is shared with PeriodicCheckpoint: overwrite it, never write last-v1.ckpt.
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        self._superseded: list[str] = []

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self._superseded.append(filepath)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        while self._superseded:
            super()._remove_checkpoint(trainer, self._superseded.pop())


class PeriodicCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps, what a killed run resumes from. At a step
    where validation follows, it is written after that validation: Lightning's resume treats a
    checkpoint from before it as if the validation had run, and would skip it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if _validation_follows(trainer):
            return  # saved in on_validation_end instead
        super().on_train_batch_end(trainer, pl_module, *args)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A last.ckpt of this step written after its validation stays: a checkpoint from the end of
        # fit marks the epoch finished, and a run resumed from it (to go on to more steps) would
        # start the next epoch instead of continuing this one.
        steps = [c._last_global_step_saved for c in trainer.checkpoint_callbacks if c.save_last]  # type: ignore[attr-defined]
        if trainer.global_step not in steps:
            super().on_train_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        n = self._every_n_train_steps
        due = n >= 1 and trainer.global_step % n == 0 and self._last_global_step_saved != trainer.global_step
        if due and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _validation_follows(trainer: L.Trainer) -> bool:
    """Whether the fit loop runs validation right after the current training batch (the loop's
    own test, asked from ``on_train_batch_end``)."""
    loop = trainer.fit_loop.epoch_loop
    if not trainer.training or loop._skip_next_val:
        return False
    return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, flushed to disk, then renamed into place: a crash
    during a save leaves the previous checkpoint intact, never a truncated one. Loading never
    unpickles code (``weights_only=True``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f), fsync=True)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return safe_torch_load(Path(path))


class StepProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, counting optimizer steps out of ``max_steps`` when the run is counted in
    steps (pretraining). Lightning's own bar counts batches of each epoch and titles it with the
    epoch out of ``max_epochs``, which read ``Epoch 0/-2`` for a run with unlimited epochs. Runs
    counted in epochs keep Lightning's bar."""

    def _by_steps(self, trainer: L.Trainer) -> bool:
        return trainer.max_steps > 0

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._by_steps(trainer):
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # once for the run, not every epoch: steps go on counting
            bar.reset(total=trainer.max_steps)
            bar.n = trainer.global_step  # a resumed run starts where it stopped
        bar.set_description(f"step (epoch {trainer.current_epoch})")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._by_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, step = self.train_progress_bar, trainer.global_step
        due = step % max(1, self.refresh_rate) == 0 or step == trainer.max_steps
        if self.is_enabled and step != bar.n and due:
            bar.update(step - bar.n)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._by_steps(trainer):
            return super().on_train_epoch_end(trainer, pl_module)
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

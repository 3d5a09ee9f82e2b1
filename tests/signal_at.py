"""A callback for tests: the run sends itself a signal (SIGTERM by default, as a scheduler would;
SIGKILL for a crash) at a chosen step and hook, at an exact point instead of a timed one."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAt(L.Callback):
    def __init__(self, step: int, hook: str = "train_batch_end", signum: int = signal.SIGTERM) -> None:
        self.step = step
        self.hook = hook
        self.signum = signum

    def _fire(self, trainer: L.Trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        # global_step == step here: step `step` is done and its checkpoints are written.
        self._fire(trainer, "train_batch_start")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._fire(trainer, "train_batch_end")

    def on_validation_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._fire(trainer, "validation_end")

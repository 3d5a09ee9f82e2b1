"""A callback for tests: the run sends itself SIGTERM at a chosen step and hook, as a scheduler
would, but at an exact point."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SigtermAt(L.Callback):
    def __init__(self, step: int, hook: str = "train_batch_end") -> None:
        self.step = step
        self.hook = hook

    def _fire(self, trainer: L.Trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._fire(trainer, "train_batch_end")

    def on_validation_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._fire(trainer, "validation_end")

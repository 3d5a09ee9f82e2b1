"""Callbacks the run adds itself (not user-configurable)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger


class RunIdentity(L.Callback):
    """Keeps the W&B run id in every checkpoint, so a resumed run continues the same W&B run."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint["wandb_run_id"] = str(logger.version)

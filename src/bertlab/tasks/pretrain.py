"""Masked language modelling + next-sentence prediction as a LightningModule."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from bertlab.encoder import BertConfig, BertForPretraining
from bertlab.encoder.heads import pretraining_loss
from bertlab.tasks import optim


class PretrainModule(L.LightningModule):
    """BERT pretraining. ``model_config`` are :class:`BertConfig` fields; ``optimizer`` the
    optimizer settings (see :mod:`bertlab.tasks.optim`). Both are saved, as plain dicts, in every
    checkpoint, which therefore loads with ``torch.load(weights_only=True)``."""

    def __init__(
        self, model_config: dict[str, Any], optimizer: dict[str, Any], compile: bool = False
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = BertConfig(**model_config)
        self.model = BertForPretraining(self.config)
        self.compile_model = compile
        self.val_mlm_loss = MeanMetric()
        self.val_mlm_acc = MeanMetric()
        self.val_nsp_loss = MeanMetric()
        self.val_nsp_acc = MeanMetric()

    def configure_model(self) -> None:
        if self.compile_model:
            # In place (nn.Module.compile): the module and its state_dict keys stay as they are, so
            # checkpoints and exports are the same with and without compilation.
            self.model.compile(dynamic=True)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            mlm_labels=batch["mlm_labels"],
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        mlm_loss, nsp_loss = pretraining_loss(out, batch["nsp_labels"])
        loss = mlm_loss + nsp_loss
        bs = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/mlm_loss", mlm_loss, batch_size=bs)
        self.log("train/nsp_loss", nsp_loss, batch_size=bs)
        self.log("train/tokens", batch["attention_mask"].sum().float(), reduce_fx="sum", batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        mlm_loss, nsp_loss = pretraining_loss(out, batch["nsp_labels"])
        num_masked = out["mlm_targets"].numel()
        if num_masked:
            correct = (out["mlm_logits"].argmax(-1) == out["mlm_targets"]).float().mean()
            # Weighted by the number of masked tokens: the epoch value is per token, not per batch.
            self.val_mlm_loss.update(mlm_loss.detach(), num_masked)
            self.val_mlm_acc.update(correct, num_masked)
        bs = batch["nsp_labels"].numel()
        nsp_correct = (out["nsp_logits"].argmax(-1) == batch["nsp_labels"]).float().mean()
        self.val_nsp_loss.update(nsp_loss.detach(), bs)
        self.val_nsp_acc.update(nsp_correct, bs)

    def on_validation_epoch_end(self) -> None:
        mlm_loss = self.val_mlm_loss.compute()
        nsp_loss = self.val_nsp_loss.compute()
        metrics = {
            "val/mlm_loss": mlm_loss,
            "val/mlm_acc": self.val_mlm_acc.compute(),
            "val/perplexity": torch.exp(torch.clamp(mlm_loss, max=math.log(1e9))),
            "val/nsp_loss": nsp_loss,
            "val/nsp_acc": self.val_nsp_acc.compute(),
            "val/loss": mlm_loss + nsp_loss,
        }
        self.log_dict(metrics, prog_bar=False, sync_dist=False)
        self.log("val/mlm_acc_bar", metrics["val/mlm_acc"], prog_bar=True, logger=False)
        for m in (self.val_mlm_loss, self.val_mlm_acc, self.val_nsp_loss, self.val_nsp_acc):
            m.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        total = int(self.trainer.estimated_stepping_batches) if self.trainer else 1
        return optim.configure(self.model, self.hparams["optimizer"], total)

"""Sentence and sentence-pair classification (and regression) as a LightningModule.

Batches come from :class:`bertlab.data.labelled.ClassifyDataModule`. The model is the shared
:class:`~bertlab.encoder.BertEncoder` with a :class:`~bertlab.encoder.SequenceClassificationHead`
on the pooled [CLS] vector (``pooling="cls"``) or the masked mean of the last layer (``"mean"``).

Problem types, losses and the metrics logged as ``val/*`` and ``test/*``:

- ``single_label``: cross-entropy; ``acc``, ``f1`` (for two classes the binary F1 of class index 1,
  as GLUE's MRPC F1; macro F1 otherwise), ``mcc``; the confusion matrix (rows: true label, columns:
  predicted) of the last validation or test run is kept in :attr:`ClassifyModule.last_confusion`.
- ``multi_label``: binary cross-entropy on multi-hot labels; ``f1`` (micro), ``acc`` (exact match,
  probability threshold 0.5); ``last_confusion`` holds one ``[[tn, fp], [fn, tp]]`` per label.
- ``regression`` (one output): mean squared error; ``mse``, ``pearson``, ``spearman``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MultilabelConfusionMatrix,
    MultilabelExactMatch,
    MultilabelF1Score,
)
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

from bertlab.encoder import BertConfig, BertEncoder, SequenceClassificationHead
from bertlab.errors import BertlabError
from bertlab.tasks import optim
from bertlab.tasks.hparams import plain

__all__ = ["PROBLEM_TYPES", "ClassifyModule", "collect_predictions", "make_metrics"]

PROBLEM_TYPES = ("single_label", "multi_label", "regression")


def make_metrics(problem_type: str, num_labels: int) -> tuple[dict[str, Metric], Metric | None]:
    """(metrics by short name, confusion matrix metric or None) for a problem type.

    Single-label metrics take predicted label ids; multi-label ones take probabilities and multi-hot
    targets; regression ones take the predicted and true values."""
    if problem_type == "single_label":
        f1: Metric = (
            BinaryF1Score() if num_labels == 2 else MulticlassF1Score(num_classes=num_labels, average="macro")
        )
        metrics: dict[str, Metric] = {
            "acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1": f1,
            "mcc": MulticlassMatthewsCorrCoef(num_classes=num_labels),
        }
        return metrics, MulticlassConfusionMatrix(num_classes=num_labels)
    if problem_type == "multi_label":
        metrics = {
            "acc": MultilabelExactMatch(num_labels=num_labels),
            "f1": MultilabelF1Score(num_labels=num_labels, average="micro"),
        }
        return metrics, MultilabelConfusionMatrix(num_labels=num_labels)
    if problem_type == "regression":
        metrics = {"mse": MeanSquaredError(), "pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()}
        return metrics, None
    raise BertlabError(f"problem_type={problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")


class ClassifyModule(L.LightningModule):
    """Encoder + sequence classification head. ``model_config`` are :class:`BertConfig` fields,
    ``optimizer`` the settings of :mod:`bertlab.tasks.optim`; ``label_names`` the label of each output
    (the datamodule's ``labels``). All hyperparameters are saved as plain values, so checkpoints load
    with ``torch.load(weights_only=True)``."""

    def __init__(
        self,
        model_config: dict[str, Any],
        optimizer: dict[str, Any],
        num_labels: int,
        label_names: list[str],
        problem_type: str = "single_label",
        pooling: str = "cls",
        classifier_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        # Plain values (a Hydra DictConfig would not load with weights_only=True); save_hyperparameters
        # reads these locals.
        model_config = plain(model_config)
        optimizer = plain(optimizer)
        label_names = [str(x) for x in plain(label_names)]
        num_labels = int(num_labels)
        problem_type = str(problem_type)
        pooling = str(pooling)
        classifier_dropout = float(classifier_dropout)
        if problem_type not in PROBLEM_TYPES:
            raise BertlabError(f"problem_type={problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if problem_type == "regression" and num_labels != 1:
            raise BertlabError(f"regression predicts one value: num_labels must be 1, got {num_labels}")
        if problem_type == "single_label" and num_labels < 2:
            raise BertlabError(f"single-label classification needs num_labels >= 2, got {num_labels}")
        if problem_type == "multi_label" and num_labels < 1:
            raise BertlabError(f"multi-label classification needs num_labels >= 1, got {num_labels}")
        if len(label_names) != num_labels:
            raise BertlabError(f"label_names has {len(label_names)} names for num_labels={num_labels}")
        self.save_hyperparameters()
        self.config = BertConfig(**model_config)
        self.problem_type = problem_type
        self.num_labels = num_labels
        self.label_names = label_names
        self.encoder = BertEncoder(self.config)
        self.head = SequenceClassificationHead(
            self.config.hidden_size,
            num_labels,
            classifier_dropout,
            pooling=pooling,
            initializer_range=self.config.initializer_range,
        )
        metrics, confusion = make_metrics(problem_type, num_labels)
        self.val_metrics = MetricCollection(metrics, prefix="val/")
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.val_confusion = confusion
        self.test_confusion = confusion.clone() if confusion is not None else None
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.last_confusion: list[list[int]] | list[list[list[int]]] | None = None

    # ------------------------------------------------------------------------- model

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """-> logits [B, num_labels]."""
        sequence_output, pooled_output = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.head(sequence_output, pooled_output, attention_mask)

    def _logits(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.problem_type == "single_label":
            return F.cross_entropy(logits.float(), labels.long())
        if self.problem_type == "multi_label":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.mse_loss(logits.float().squeeze(-1), labels.float())

    def outputs(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(probabilities, predictions): softmax and label ids; sigmoid and multi-hot (>= 0.5); for
        regression both are the predicted value."""
        logits = logits.float()
        if self.problem_type == "single_label":
            probs = logits.softmax(-1)
            return probs, probs.argmax(-1)
        if self.problem_type == "multi_label":
            probs = logits.sigmoid()
            return probs, (probs >= 0.5).long()
        value = logits.squeeze(-1)
        return value, value

    # ---------------------------------------------------------------------- training

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(self._logits(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        logits = self._logits(batch)
        labels = batch["labels"]
        loss = self.loss(logits, labels)
        probs, preds = self.outputs(logits)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        confusion = self.val_confusion if stage == "val" else self.test_confusion
        (self.val_loss if stage == "val" else self.test_loss).update(loss.detach(), labels.size(0))
        if self.problem_type == "single_label":
            metrics.update(preds, labels)
            confusion.update(preds, labels)  # type: ignore[union-attr]
        elif self.problem_type == "multi_label":
            metrics.update(probs, labels.long())
            confusion.update(probs, labels.long())  # type: ignore[union-attr]
        else:
            metrics.update(preds, labels.float())

    def _end(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        confusion = self.val_confusion if stage == "val" else self.test_confusion
        loss = self.val_loss if stage == "val" else self.test_loss
        values = {name: value.float() for name, value in metrics.compute().items()}
        values[f"{stage}/loss"] = loss.compute()
        self.log_dict(values)
        if confusion is not None:
            self.last_confusion = confusion.compute().long().tolist()
            confusion.reset()
        metrics.reset()
        loss.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._end("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._end("test")

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """``{"index", "probs", "pred"}`` for the batch (see :meth:`outputs`); combine the batches
        with :func:`collect_predictions` to get file order back."""
        probs, preds = self.outputs(self._logits(batch))
        return {"index": batch["index"], "probs": probs, "pred": preds}

    def label_of(self, preds: Tensor | Sequence[int]) -> list[Any]:
        """Label names of predicted ids (lists of names for multi-hot rows; values for regression)."""
        values = preds.tolist() if isinstance(preds, Tensor) else list(preds)
        if self.problem_type == "single_label":
            return [self.label_names[int(p)] for p in values]
        if self.problem_type == "multi_label":
            return [[self.label_names[j] for j, on in enumerate(row) if on] for row in values]
        return values

    def configure_optimizers(self) -> dict[str, Any]:
        return optim.configure(self, self.hparams["optimizer"], int(self.trainer.estimated_stepping_batches))


def collect_predictions(outputs: Sequence[Mapping[str, Tensor]] | None) -> dict[str, Tensor]:
    """Concatenate :meth:`ClassifyModule.predict_step` outputs and sort them back by ``index``."""
    if not outputs:
        return {}
    joined = {key: torch.cat([o[key].detach().cpu() for o in outputs]) for key in outputs[0]}
    order = torch.argsort(joined["index"])
    return {key: value[order] for key, value in joined.items()}

"""Sentence and sentence-pair classification (and multi-label, and regression): the whole task.

- model: :class:`~bertlab.encoder.BertForSequenceClassification` (``task.pooling``: ``cls`` or ``mean``);
- data: :class:`~bertlab.data.classify.ClassifyDataModule` (``data=csv`` or ``data=hub_labelled``);
- training and metrics: :class:`ClassifyModule`;
- decoding: :func:`predictions` (the one place probabilities become labels) and :class:`ClassifyPredictor`;
- long documents (``data.long_text=windows``): the model runs on each window (``[W, T]``, the plain
  model that every export holds) and :func:`pool_windows` averages each document's window logits into
  its logits; training, validation, testing, prediction (either backend) and the server all pool there;
- export: ``BertForSequenceClassification`` for ``[CLS]`` pooling; for mean pooling, which no
  transformers class computes, a sentence-transformers directory (``modules.json``: the BERT model,
  mean pooling, a ``Dense`` layer whose output is the logits).

Problem types (``data.problem_type``), losses and the metrics logged as ``val/*`` and ``test/*``:

- ``single_label``: cross-entropy; ``acc``, ``f1`` (for two classes the binary F1 of class index 1,
  as GLUE's MRPC F1; macro F1 otherwise), ``mcc``; checkpoints monitor ``val/acc``.
- ``multi_label``: binary cross-entropy on multi-hot labels; ``f1`` (micro), ``acc`` (exact match);
  a label is predicted when its probability is at least :data:`MULTI_LABEL_THRESHOLD`; monitors ``val/f1``.
- ``regression`` (one output): mean squared error; ``mse``, ``pearson``, ``spearman``; monitors ``val/mse`` (min).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
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

from bertlab.data.classify import LONG_TEXT, ClassifyDataModule, PairEncoder
from bertlab.data.labels import PROBLEM_TYPES
from bertlab.encoder import BertConfig, BertForSequenceClassification, encoder_to_hf
from bertlab.errors import BertlabError
from bertlab.export.hf import save_safetensors
from bertlab.inference import Predictor, length_batches
from bertlab.pretrained import Pretrained, read_safetensors
from bertlab.tasks.base import (
    Job,
    RunContext,
    Task,
    TaskModule,
    build_finetune,
    split_pair,
    validation_split_summary,
    write_export,
)

__all__ = [
    "MULTI_LABEL_THRESHOLD",
    "ClassifyModule",
    "ClassifyPredictor",
    "ClassifyTask",
    "make_metrics",
    "pool_windows",
    "predictions",
]

# A label of a multi-label model is predicted when its probability is at least this.
MULTI_LABEL_THRESHOLD = 0.5
MONITORS = {
    "single_label": ("val/acc", "max"),
    "multi_label": ("val/f1", "max"),
    "regression": ("val/mse", "min"),
}
HF_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}
# sentence-transformers' folders for a mean-pooled classifier
ST_POOLING, ST_DENSE = "1_Pooling", "2_Dense"


def predictions(logits: Tensor, problem_type: str) -> tuple[Tensor, Tensor]:
    """(probabilities, predictions) of logits [B, K]: softmax and the label id; sigmoid and a
    multi-hot row (probability >= :data:`MULTI_LABEL_THRESHOLD`); for regression both are the value.
    Metrics, prediction and serving all decide here."""
    logits = logits.float()
    if problem_type == "single_label":
        probs = logits.softmax(-1)
        return probs, probs.argmax(-1)
    if problem_type == "multi_label":
        probs = logits.sigmoid()
        return probs, (probs >= MULTI_LABEL_THRESHOLD).long()
    value = logits.squeeze(-1)
    return value, value


def pool_windows(logits: Tensor, window_doc: Tensor | None, num_docs: int) -> Tensor:
    """Document logits [D, K] from window logits [W, K]: the mean over each document's windows
    (``window_doc[w]``: the document of window ``w``; None: one window per document, returned as is).

    The mean of logits, not an attention over windows: it has no parameters, so the model and every
    export of it stay the plain ``[B, T]`` classifier (HF, ONNX), and it fits every problem type (for
    regression it is the mean prediction; for softmax it is a normalised product of the windows'
    distributions, so windows that agree reinforce each other). A topic or a sentiment is spread over
    a document; an attention would be the choice when one passage decides, and it needs data to learn.
    """
    if window_doc is None or logits.size(0) == num_docs:  # a window per document, in document order
        return logits
    logits = logits.float()
    sums = logits.new_zeros(num_docs, logits.size(-1)).index_add_(0, window_doc, logits)
    counts = torch.bincount(window_doc, minlength=num_docs).clamp_min(1).to(logits.dtype)
    return sums / counts.unsqueeze(-1)


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
            "acc": MultilabelExactMatch(num_labels=num_labels, threshold=MULTI_LABEL_THRESHOLD),
            "f1": MultilabelF1Score(num_labels=num_labels, average="micro", threshold=MULTI_LABEL_THRESHOLD),
        }
        return metrics, MultilabelConfusionMatrix(num_labels=num_labels, threshold=MULTI_LABEL_THRESHOLD)
    if problem_type == "regression":
        metrics = {"mse": MeanSquaredError(), "pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()}
        return metrics, None
    raise BertlabError(f"problem_type={problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")


class ClassifyModule(TaskModule):
    """Trains a :class:`BertForSequenceClassification` with its problem type's loss and metrics. The
    confusion matrix (rows: true label, columns: predicted; one ``[[tn, fp], [fn, tp]]`` per label
    for multi-label) of the last validation or test run is kept in :attr:`last_confusion`."""

    def __init__(
        self, model: BertForSequenceClassification, task: ClassifyTask, optimizer: dict[str, Any]
    ) -> None:
        super().__init__(model, task, optimizer)
        self.problem_type = task.problem_type
        num_labels = len(task.labels)
        metrics, confusion = make_metrics(self.problem_type, num_labels)
        self.val_metrics = MetricCollection(metrics, prefix="val/")
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.val_confusion = confusion
        self.test_confusion = confusion.clone() if confusion is not None else None
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.last_confusion: list[list[int]] | list[list[list[int]]] | None = None

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits per document: the model on every window, pooled by :func:`pool_windows`."""
        logits = self.model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        return pool_windows(logits, batch.get("window_doc"), batch["index"].size(0))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.problem_type == "single_label":
            return F.cross_entropy(logits.float(), labels.long())
        if self.problem_type == "multi_label":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.mse_loss(logits.float().squeeze(-1), labels.float())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].size(0))
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        logits = self(batch)
        labels = batch["labels"]
        probs, preds = predictions(logits, self.problem_type)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        confusion = self.val_confusion if stage == "val" else self.test_confusion
        (self.val_loss if stage == "val" else self.test_loss).update(
            self.loss(logits, labels).detach(), labels.size(0)
        )
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


class ClassifyTask(Task):
    """Settings (``conf/task/classify.yaml``): ``pooling`` (cls | mean), ``classifier_dropout``; from
    the data when training: ``labels``, ``problem_type``, ``max_seq_length``, ``long_text`` and
    ``stride`` (how a long text is read: prediction and the export check read it the same way)."""

    name = "classify"
    datamodule_class = ClassifyDataModule
    data_choices = "csv|hub_labelled"

    def __init__(
        self,
        pooling: str = "cls",
        classifier_dropout: float = 0.1,
        labels: Sequence[str] | None = None,
        problem_type: str = "single_label",
        max_seq_length: int | None = None,
        long_text: str = "truncate",
        stride: int = 0,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        if problem_type not in PROBLEM_TYPES:
            raise BertlabError(f"problem_type={problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if long_text not in LONG_TEXT:
            raise BertlabError(f"long_text={long_text!r} is not one of {', '.join(LONG_TEXT)}")
        self.settings.update(
            pooling=str(pooling),
            classifier_dropout=float(classifier_dropout),
            labels=[str(x) for x in labels] if labels is not None else None,
            problem_type=str(problem_type),
            max_seq_length=max_seq_length,
            long_text=str(long_text),
            stride=int(stride),
        )

    @property
    def problem_type(self) -> str:
        return str(self.settings["problem_type"])

    @classmethod
    def from_hf(cls, pretrained: Pretrained, labels: Sequence[str] | None = None) -> ClassifyTask:
        hf_type = pretrained.metadata.get("hf_problem_type") or "single_label_classification"
        ours = {v: k for k, v in HF_PROBLEM_TYPES.items()}.get(hf_type, "single_label")
        return cls(pooling="cls", labels=labels, problem_type=ours)

    # ------------------------------------------------------------------------------- training

    def default_monitor(self, cfg: DictConfig) -> tuple[str, str]:
        problem = str(cfg.data.get("problem_type", "single_label"))
        if problem not in MONITORS:
            raise BertlabError(f"data.problem_type={problem!r} is not one of {', '.join(PROBLEM_TYPES)}")
        return MONITORS[problem]

    def build(self, cfg: DictConfig, pretrained: Pretrained | None, run: RunContext) -> Job:
        from_data = ("labels", "problem_type", "max_seq_length", "long_text", "stride")
        return build_finetune(self, cfg, pretrained, run, ClassifyModule, from_data, cache_dir=run.cache_dir)

    def summary(self, job: Job) -> dict[str, Any]:
        out: dict[str, Any] = {"labels": self.labels}
        data = job.datamodule
        if getattr(data, "long_text", "truncate") == "windows":  # how many windows the documents made
            out["windows"] = {
                split: {"documents": len(ds), "windows": int(ds.windows.sum()), "max": int(ds.windows.max())}
                for split, ds in (
                    ("train", data.train_set),
                    ("validation", data.val_set),
                    ("test", data.test_set),
                )
                if ds is not None and len(ds)
            }
        out.update(validation_split_summary(data))
        if getattr(job.module, "last_confusion", None) is not None:
            out["reports"] = {"confusion": job.module.last_confusion}
        return out

    # ------------------------------------------------------------------------------ the model

    def build_model(self, config: BertConfig) -> BertForSequenceClassification:
        num_labels = len(self.labels)
        if self.problem_type == "regression" and num_labels != 1:
            raise BertlabError(f"regression predicts one value: 1 label expected, got {num_labels}")
        if self.problem_type == "single_label" and num_labels < 2:
            raise BertlabError(f"single-label classification needs at least 2 labels, got {num_labels}")
        return BertForSequenceClassification(
            config, num_labels, self.settings["pooling"], self.settings["classifier_dropout"]
        )

    def head_from_hf(self, pretrained: Pretrained) -> dict[str, Tensor]:
        if self.settings["pooling"] == "mean":
            path = Path(pretrained.directory or pretrained.source) / ST_DENSE / "model.safetensors"
            weights = read_safetensors(path)
            return {
                "head.classifier.weight": weights["linear.weight"],
                "head.classifier.bias": weights["linear.bias"],
            }
        return {f"head.{k}": v for k, v in pretrained.hf_state.items() if k.startswith("classifier.")}

    def export_hf(
        self,
        model: BertForSequenceClassification,
        tokenizer_dir: Path,
        out_dir: Path,
        metadata: dict[str, Any],
    ) -> Path:
        labels = self.labels
        label_maps = {"id2label": dict(enumerate(labels)), "label2id": {x: i for i, x in enumerate(labels)}}
        classifier = model.head.classifier
        if self.settings["pooling"] == "cls":
            state = encoder_to_hf(model.encoder.state_dict(), model.config, prefix="bert.")
            state["classifier.weight"], state["classifier.bias"] = classifier.weight, classifier.bias
            config = {
                "architectures": ["BertForSequenceClassification"],
                "problem_type": HF_PROBLEM_TYPES[self.problem_type],
                **label_maps,
            }
            return write_export(model, out_dir, state, config, tokenizer_dir, metadata)

        # Mean pooling: no transformers class computes it. sentence-transformers loads this layout
        # and computes exactly bertlab's logits: BertModel -> masked mean -> Dense (identity).
        def sentence_transformers_modules(tmp: Path) -> None:
            hidden, num_labels = model.config.hidden_size, len(labels)
            modules = [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": ST_POOLING, "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": ST_DENSE, "type": "sentence_transformers.models.Dense"},
            ]
            (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
            length = int(self.settings.get("max_seq_length") or model.config.max_position_embeddings)
            (tmp / "sentence_bert_config.json").write_text(
                json.dumps({"max_seq_length": length, "do_lower_case": False})
            )
            (tmp / ST_POOLING).mkdir()
            pooling = {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}
            (tmp / ST_POOLING / "config.json").write_text(json.dumps(pooling, indent=2))
            (tmp / ST_DENSE).mkdir()
            dense = {
                "in_features": hidden,
                "out_features": num_labels,
                "bias": True,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
            (tmp / ST_DENSE / "config.json").write_text(json.dumps(dense, indent=2))
            save_safetensors(
                {"linear.weight": classifier.weight, "linear.bias": classifier.bias},
                tmp / ST_DENSE / "model.safetensors",
            )

        state = encoder_to_hf(model.encoder.state_dict(), model.config, prefix="")
        config = {"architectures": ["BertModel"], **label_maps}
        return write_export(
            model, out_dir, state, config, tokenizer_dir, metadata, sentence_transformers_modules
        )

    def encoder(self, tokenizer: Any, max_seq_length: int) -> PairEncoder:
        """Texts to model inputs as this model was trained to read them (truncated, or in windows)."""
        return PairEncoder(tokenizer, max_seq_length, self.long_text, int(self.settings.get("stride") or 0))

    @property
    def long_text(self) -> str:
        return str(self.settings.get("long_text") or "truncate")

    def check_batches(
        self, tokenizer: Any, texts: Sequence[str], max_seq_length: int
    ) -> list[dict[str, np.ndarray]]:
        encode = self.encoder(tokenizer, max_seq_length)
        if self.long_text == "windows":  # documents: a tab is whitespace, not a pair
            examples: list[tuple[str, str | None]] = [(t, None) for t in texts]
        else:
            examples = [split_pair(t) for t in texts]
        rows = encode(examples)
        return [encode.collate(rows), encode.collate(rows[:1])]

    # ----------------------------------------------------------------------------- prediction

    def predictor(
        self, model: Any, tokenizer: Any, backend: Any, max_seq_length: int, batch_size: int
    ) -> Predictor:
        return ClassifyPredictor(self, model, tokenizer, backend, max_seq_length, batch_size)


class ClassifyPredictor(Predictor):
    """Inputs: a text; a pair as ``[text, text_pair]``, ``{"text": ..., "text_pair": ...}`` or, on a
    line, ``text<TAB>text_pair``. Answers: ``label``, ``score`` and every label's ``scores``
    (single-label); ``labels`` and ``scores`` (multi-label); ``score`` (regression).

    A model trained with ``data.long_text=windows`` reads documents: a line is one text (a tab in it
    is whitespace), every window of it runs through the backend (in length-sorted batches of
    ``batch_size`` windows) and :func:`pool_windows` gives its one answer; a text pair is refused."""

    def parse(self, item: Any, where: str = "input") -> tuple[str, str | None]:
        windows = self.task.long_text == "windows"
        if isinstance(item, str):
            return (item, None) if windows else split_pair(item)
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            pair = item.get("text_pair")
            if pair is not None and not isinstance(pair, str):
                raise BertlabError(f"{where}: text_pair must be a string, got {type(pair).__name__}")
            unknown = sorted(set(item) - {"text", "text_pair"})
            if unknown:
                raise BertlabError(f"{where}: unknown field(s) {unknown}; expected text and text_pair")
            if pair is not None and windows:
                raise BertlabError(
                    f"{where}: this model reads single documents (long_text=windows), not pairs"
                )
            return item["text"], pair
        if isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
            if windows:
                raise BertlabError(
                    f"{where}: this model reads single documents (long_text=windows), not pairs"
                )
            return item[0], item[1]
        raise BertlabError(
            f"{where}: expected a text (a string), a [text, text_pair] pair of strings or "
            f'{{"text": ..., "text_pair": ...}}, got {json.dumps(item, ensure_ascii=False)[:80]}'
        )

    def logits(self, inputs: Sequence[tuple[str, str | None]]) -> Tensor:
        """Logits [len(inputs), K], one row per input: the backend on every window (length-sorted
        batches of ``batch_size`` windows), pooled per input by :func:`pool_windows`."""
        encode = self.task.encoder(self.tokenizer, self.max_seq_length)
        windows, doc = encode.windows(encode(inputs))
        parts: list[np.ndarray] = [np.empty(0)] * len(windows)
        for chunk in length_batches([len(w["input_ids"]) for w in windows], self.batch_size):
            (out,) = self.backend(encode.pad([windows[i] for i in chunk]))
            for row, i in enumerate(chunk):
                parts[i] = out[row]
        window_logits = torch.from_numpy(np.stack(parts).astype(np.float32, copy=False))
        return pool_windows(window_logits, torch.tensor(doc, dtype=torch.long), len(inputs))

    def predict(self, inputs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        if not inputs:
            return []
        labels, problem = self.task.labels, self.task.problem_type
        probs, preds = predictions(self.logits(inputs), problem)
        out: list[dict[str, Any]] = []
        for i, (text, pair) in enumerate(inputs):
            item: dict[str, Any] = {"text": text}
            if pair is not None:
                item["text_pair"] = pair
            if problem == "regression":
                item["score"] = float(probs[i])
            elif problem == "multi_label":
                item["labels"] = [labels[k] for k, on in enumerate(preds[i].tolist()) if on]
                item["scores"] = {labels[k]: round(float(p), 6) for k, p in enumerate(probs[i])}
            else:
                k = int(preds[i])
                item["label"] = labels[k]
                item["score"] = round(float(probs[i, k]), 6)
                item["scores"] = {labels[j]: round(float(p), 6) for j, p in enumerate(probs[i])}
            out.append(item)
        return out

"""Named-entity recognition (word-level token classification) as a LightningModule.

Batches come from :class:`bertlab.data.ner.NerDataModule`: windows of word pieces whose ``word_index``
marks the one position that predicts each word (-1 elsewhere) and whose ``sentence_index`` /
``sentence_num_words`` say which sentence a window belongs to. Evaluation turns each batch's logits
into per-word label ids right away (argmax at those positions), holds small integer arrays only until
every word of a sentence has come in (its windows may lie in different batches), then scores the
sentence into an :class:`~bertlab.tagging.EntityCounts` -- seqeval's entity-level figures, default
or strict mode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from bertlab.encoder import IGNORE_INDEX, BertConfig, BertEncoder, TokenClassificationHead
from bertlab.errors import BertlabError
from bertlab.tagging import EntityCounts, canonical_scheme
from bertlab.tasks import optim
from bertlab.tasks.hparams import plain

log = logging.getLogger(__name__)

__all__ = ["NerModule", "WordPredictionAssembler", "WordPredictions"]


@dataclass
class WordPredictions:
    """The predicted words of one batch, flat: entry ``k`` is word ``word_index[k]`` of sentence
    ``sentence_index[k]`` (which has ``num_words[k]`` words), predicted as label ``pred[k]``
    (``gold[k]`` is the batch's label there, -100 where the batch has none)."""

    sentence_index: np.ndarray
    word_index: np.ndarray
    num_words: np.ndarray
    pred: np.ndarray
    gold: np.ndarray

    def __len__(self) -> int:
        return len(self.pred)


class WordPredictionAssembler:
    """Gathers word predictions, in any order and across batches, into whole sentences.

    :meth:`add` returns the sentences completed by the new predictions as
    ``(sentence_index, pred_ids, gold_ids)`` with one entry per word, in word order. A word predicted
    twice is an error. Only the incomplete sentences' small arrays are kept.
    """

    def __init__(self) -> None:
        self._pending: dict[int, list[Any]] = {}  # sentence -> [pred, gold, filled]

    def __len__(self) -> int:
        """The number of sentences still incomplete."""
        return len(self._pending)

    def reset(self) -> None:
        self._pending = {}

    def add(self, preds: WordPredictions) -> list[tuple[int, np.ndarray, np.ndarray]]:
        done = []
        if len(preds) == 0:
            return done
        order = np.argsort(preds.sentence_index, kind="stable")
        sent = preds.sentence_index[order]
        starts = np.flatnonzero(np.r_[True, sent[1:] != sent[:-1]])
        ends = np.r_[starts[1:], len(sent)]
        for a, b in zip(starts, ends):
            rows = order[a:b]
            si = int(sent[a])
            entry = self._pending.get(si)
            if entry is None:
                n = int(preds.num_words[rows[0]])
                entry = [np.full(n, -1, dtype=np.int32), np.full(n, IGNORE_INDEX, dtype=np.int32), 0]
                self._pending[si] = entry
            words = preds.word_index[rows]
            if (entry[0][words] != -1).any() or len(np.unique(words)) != len(words):
                raise RuntimeError(f"sentence {si}: a word was predicted twice (overlapping windows)")
            entry[0][words] = preds.pred[rows]
            entry[1][words] = preds.gold[rows]
            entry[2] += len(rows)
            if entry[2] == len(entry[0]):
                done.append((si, entry[0], entry[1]))
                del self._pending[si]
        return done


class NerModule(L.LightningModule):
    """BERT encoder + token classification head, scored by entities.

    ``model_config`` are :class:`BertConfig` fields, ``optimizer`` the optimizer settings (see
    :mod:`bertlab.tasks.optim`), ``label_names`` the tags by label id (``NerDataModule.labels``).
    ``scheme`` and ``strict`` choose how entities are read when scoring: seqeval's default mode, or its
    strict mode for that scheme. All hyperparameters are plain, so a checkpoint loads with
    ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        model_config: dict[str, Any],
        optimizer: dict[str, Any],
        label_names: list[str],
        scheme: str = "IOB2",
        classifier_dropout: float = 0.1,
        strict: bool = False,
    ) -> None:
        super().__init__()
        model_config = plain(model_config)
        label_names = [str(t) for t in label_names]
        # Plain dicts and lists (a Hydra DictConfig would not load with weights_only=True).
        self.save_hyperparameters(
            {
                "model_config": model_config,
                "optimizer": plain(optimizer),
                "label_names": label_names,
                "scheme": scheme,
                "classifier_dropout": float(classifier_dropout),
                "strict": bool(strict),
            }
        )
        if not label_names:
            raise BertlabError("NER: label_names is empty")
        if len(set(label_names)) != len(label_names):
            raise BertlabError(f"NER: label_names repeats a label: {label_names}")
        try:
            self.scheme = canonical_scheme(scheme)
        except ValueError as exc:
            raise BertlabError(f"NER scheme: {exc}") from None
        self.strict = bool(strict)
        self.label_names = label_names
        self.config = BertConfig(**model_config)
        self.encoder = BertEncoder(self.config)
        self.head = TokenClassificationHead(
            self.config.hidden_size, len(label_names), classifier_dropout, self.config.initializer_range
        )
        self.last_entity_report: dict[str, Any] = {}
        self._eval: dict[str, dict[str, Any]] = {}

    # --------------------------------------------------------------------------- model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> logits [B, T, num_labels]."""
        sequence_output, _ = self.encoder(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        )
        return self.head(sequence_output)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over labelled positions, and their number."""
        keep = labels != IGNORE_INDEX
        count = int(keep.sum())
        if count == 0:
            return logits.sum() * 0.0, 0
        return F.cross_entropy(logits[keep].float(), labels[keep]), count

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss, _ = self._loss(logits, batch["labels"])
        bs = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        return loss

    @torch.no_grad()
    def predict_words(
        self, batch: dict[str, torch.Tensor], logits: torch.Tensor | None = None
    ) -> WordPredictions:
        """Word-level label ids of a batch (argmax at each word's predicting position), on the CPU."""
        if logits is None:
            logits = self(batch)
        where = batch["word_index"] >= 0
        pred = logits.argmax(-1)[where]
        sentence = batch["sentence_index"][:, None].expand_as(where)[where]
        num_words = batch["sentence_num_words"][:, None].expand_as(where)[where]
        gold = batch["labels"][where] if "labels" in batch else torch.full_like(pred, IGNORE_INDEX)
        arrays = [
            t.to("cpu", torch.int64).numpy()
            for t in (sentence, batch["word_index"][where], num_words, pred, gold)
        ]
        return WordPredictions(*arrays)

    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> WordPredictions:
        return self.predict_words(batch)

    def tags(self, label_ids: Iterable[int]) -> list[str]:
        return [self.label_names[int(i)] for i in label_ids]

    # ---------------------------------------------------------------------- evaluation

    def _start(self, stage: str) -> None:
        self._eval[stage] = {
            "assembler": WordPredictionAssembler(),
            "counts": EntityCounts(scheme=self.scheme, mode="strict" if self.strict else "default"),
            "loss_sum": 0.0,
            "loss_count": 0,
            "words": 0,
            "correct": 0,
        }

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
        if stage not in self._eval:
            self._start(stage)
        state = self._eval[stage]
        logits = self(batch)
        loss, count = self._loss(logits, batch["labels"])
        state["loss_sum"] += float(loss) * count
        state["loss_count"] += count
        preds = self.predict_words(batch, logits)
        scored = preds.gold != IGNORE_INDEX
        state["words"] += int(scored.sum())
        state["correct"] += int((preds.pred[scored] == preds.gold[scored]).sum())
        for _, pred, gold in state["assembler"].add(preds):
            if (gold == IGNORE_INDEX).any():
                continue  # a sentence without gold tags cannot be scored
            state["counts"].update(self.tags(gold), self.tags(pred))

    def _end(self, stage: str) -> None:
        state = self._eval.pop(stage, None)
        if state is None:
            return
        incomplete = len(state["assembler"])
        if incomplete and not self.trainer.sanity_checking:
            log.warning(
                "%s: %d sentence(s) were not complete at the end of the epoch (limited batches?); "
                "they are left out of the entity scores",
                stage,
                incomplete,
            )
        figures = state["counts"].compute()
        self.last_entity_report = figures
        metrics = {
            f"{stage}/f1": figures["f1"],
            f"{stage}/precision": figures["precision"],
            f"{stage}/recall": figures["recall"],
            f"{stage}/loss": state["loss_sum"] / max(1, state["loss_count"]),
            f"{stage}/token_acc": state["correct"] / max(1, state["words"]),
        }
        self.log_dict({k: torch.tensor(float(v)) for k, v in metrics.items()}, prog_bar=False)
        self.log(f"{stage}/f1_bar", torch.tensor(float(figures["f1"])), prog_bar=True, logger=False)

    def on_validation_epoch_start(self) -> None:
        self._start("val")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._end("val")

    def on_test_epoch_start(self) -> None:
        self._start("test")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._end("test")

    def configure_optimizers(self) -> dict[str, Any]:
        return optim.configure(self, self.hparams["optimizer"], int(self.trainer.estimated_stepping_batches))

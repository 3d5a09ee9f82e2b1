"""Named-entity recognition (a label per word, entity-level F1 as seqeval computes it): the whole task.

- model: :class:`~bertlab.encoder.BertForTokenClassification` (logits at every word piece);
- data: :class:`~bertlab.data.ner.NerDataModule` (``data=conll``): windows of word pieces whose
  ``word_index`` marks the one position that predicts each word (-1 elsewhere) and whose
  ``sentence_index`` / ``sentence_num_words`` say which sentence a window belongs to;
- training and metrics: :class:`NerModule`. Evaluation turns each batch's logits into per-word label
  ids right away (:func:`word_predictions`), holds small integer arrays only until every word of a
  sentence has come in (its windows may lie in different batches), then scores the sentence into an
  :class:`~bertlab.tagging.EntityCounts` -- seqeval's entity-level figures, default or strict mode;
- decoding: :func:`word_predictions` and :class:`NerPredictor` (words split as ``task.word_split``
  says, entity spans with character offsets into the input);
- export: ``BertForTokenClassification`` with ``id2label``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from bertlab.constants import IGNORE_INDEX
from bertlab.data.ner import NerCollator, NerDataModule, build_windows, word_pieces
from bertlab.data.tokenizer import load_tokenizer, special_token_ids
from bertlab.data.words import WORD_SPLITS, split_words
from bertlab.encoder import BertConfig, BertForTokenClassification, encoder_to_hf
from bertlab.errors import BertlabError
from bertlab.inference import Predictor, length_batches
from bertlab.pretrained import Pretrained
from bertlab.tagging import EntityCounts, canonical_scheme, entity_spans_with_offsets
from bertlab.tasks.base import (
    Job,
    RunContext,
    Task,
    TaskModule,
    datamodule,
    init_encoder,
    model_config,
    tokenizer_for,
    write_export,
)

log = logging.getLogger(__name__)

__all__ = [
    "NerModule",
    "NerPredictor",
    "NerTask",
    "WordPredictionAssembler",
    "WordPredictions",
    "word_predictions",
]


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


def word_predictions(batch: dict[str, Any], logits: np.ndarray) -> WordPredictions:
    """Word-level label ids of a batch: the argmax at each word's predicting position. ``batch`` holds
    the collator's ``word_index``, ``sentence_index``, ``sentence_num_words`` (and ``labels`` when
    gold tags are known); ``logits`` [B, T, K]. Evaluation, prediction and serving all decode here."""
    word_index = np.asarray(batch["word_index"])
    where = word_index >= 0
    rows = np.nonzero(where)[0]
    pred = logits.argmax(-1)[where]
    gold = np.asarray(batch["labels"])[where] if "labels" in batch else np.full_like(pred, IGNORE_INDEX)
    return WordPredictions(
        np.asarray(batch["sentence_index"])[rows].astype(np.int64),
        word_index[where].astype(np.int64),
        np.asarray(batch["sentence_num_words"])[rows].astype(np.int64),
        pred.astype(np.int64),
        gold.astype(np.int64),
    )


class NerModule(TaskModule):
    """Trains a :class:`BertForTokenClassification` with cross-entropy on the labelled word pieces and
    scores it by entities (``task.scheme``; seqeval's strict mode with ``task.strict``). The per-type
    report of the last validation or test run is in :attr:`last_entity_report`."""

    def __init__(self, model: BertForTokenClassification, task: NerTask, optimizer: dict[str, Any]) -> None:
        super().__init__(model, task, optimizer)
        self.last_entity_report: dict[str, Any] = {}
        self._eval: dict[str, dict[str, Any]] = {}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over labelled positions, and their number."""
        keep = labels != IGNORE_INDEX
        count = int(keep.sum())
        if count == 0:
            return logits.sum() * 0.0, 0
        return F.cross_entropy(logits[keep].float(), labels[keep]), count

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return loss

    # ---------------------------------------------------------------------- evaluation

    def _start(self, stage: str) -> None:
        self._eval[stage] = {
            "assembler": WordPredictionAssembler(),
            "counts": EntityCounts(scheme=self.task.scheme, mode="strict" if self.task.strict else "default"),
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
        preds = word_predictions(batch, logits.detach().float().cpu().numpy())
        scored = preds.gold != IGNORE_INDEX
        state["words"] += int(scored.sum())
        state["correct"] += int((preds.pred[scored] == preds.gold[scored]).sum())
        for _, pred, gold in state["assembler"].add(preds):
            if (gold == IGNORE_INDEX).any():
                continue  # a sentence without gold tags cannot be scored
            state["counts"].update(self.task.tags(gold), self.task.tags(pred))

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


class NerTask(Task):
    """Settings (``conf/task/ner.yaml``): ``classifier_dropout``; ``strict`` (seqeval's strict mode
    for the scheme); ``word_split`` (how prediction splits a text into words: see
    :mod:`bertlab.data.words`); from the data when training: ``labels``, ``scheme``,
    ``max_seq_length``, ``stride``."""

    name = "ner"
    datamodule_class = NerDataModule
    data_choices = "conll"

    def __init__(
        self,
        classifier_dropout: float = 0.1,
        strict: bool = False,
        word_split: str = "tweet",
        labels: Sequence[str] | None = None,
        scheme: str = "IOB2",
        max_seq_length: int | None = None,
        stride: int = 32,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        if word_split not in WORD_SPLITS:
            raise BertlabError(f"task.word_split={word_split!r} is not one of {', '.join(WORD_SPLITS)}")
        try:
            scheme = canonical_scheme(scheme)
        except ValueError as exc:
            raise BertlabError(f"NER scheme: {exc}") from None
        if labels is not None and len(set(labels)) != len(labels):
            raise BertlabError(f"NER: the label list repeats a label: {list(labels)}")
        self.settings.update(
            classifier_dropout=float(classifier_dropout),
            strict=bool(strict),
            word_split=str(word_split),
            labels=[str(x) for x in labels] if labels is not None else None,
            scheme=scheme,
            max_seq_length=max_seq_length,
            stride=int(stride),
        )

    @property
    def labels(self) -> list[str]:
        if not self.settings["labels"]:
            raise BertlabError("the NER model has no label names")
        return list(self.settings["labels"])

    @property
    def scheme(self) -> str:
        return str(self.settings["scheme"])

    @property
    def strict(self) -> bool:
        return bool(self.settings["strict"])

    def tags(self, label_ids: Iterable[int]) -> list[str]:
        labels = self.labels
        return [labels[int(i)] for i in label_ids]

    @classmethod
    def from_hf(cls, pretrained: Pretrained, labels: Sequence[str] | None = None) -> NerTask:
        prefixes = {str(x).split("-", 1)[0] for x in labels or []}
        scheme = (
            "BMES"
            if "M" in prefixes
            else "BILOU"
            if prefixes & {"L", "U"}
            else "IOBES"
            if "S" in prefixes
            else "IOB2"
        )
        return cls(labels=labels, scheme=scheme)

    # ------------------------------------------------------------------------------- training

    def default_monitor(self, cfg: DictConfig) -> tuple[str, str]:
        return "val/f1", "max"

    def build(self, cfg: DictConfig, pretrained: Pretrained | None, run: RunContext) -> Job:
        tokenizer_dir = tokenizer_for(cfg, pretrained)
        load_tokenizer(tokenizer_dir)  # a clear error for a broken tokenizer before reading data
        config = model_config(cfg, tokenizer_dir, pretrained)
        data = datamodule(cfg, run.micro_batch, tokenizer_dir=str(tokenizer_dir))
        data.prepare_data()
        data.setup("fit")
        self.settings.update(
            labels=list(data.labels),
            scheme=data.scheme,
            max_seq_length=data.max_seq_length,
            stride=data.stride,
        )
        model = self.build_model(config)
        init_encoder(model, pretrained)
        return Job(data, NerModule(model, self, run.optimizer), tokenizer_dir)

    def summary(self, job: Job) -> dict[str, Any]:
        out: dict[str, Any] = {"labels": self.labels}
        if job.datamodule.held_out_rows:  # no validation file: where the validation rows came from
            out["validation_split"] = {
                "size": len(job.datamodule.held_out_rows),
                "rows": job.datamodule.held_out_rows,
            }
        if job.module.last_entity_report:
            out["reports"] = {"entity_report": job.module.last_entity_report}
        return out

    # ------------------------------------------------------------------------------ the model

    def build_model(self, config: BertConfig) -> BertForTokenClassification:
        return BertForTokenClassification(config, len(self.labels), self.settings["classifier_dropout"])

    def head_from_hf(self, pretrained: Pretrained) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v for k, v in pretrained.hf_state.items() if k.startswith("classifier.")}

    def export_hf(
        self, model: BertForTokenClassification, tokenizer_dir: Path, out_dir: Path, metadata: dict[str, Any]
    ) -> Path:
        encoder_state = {
            k[len("encoder.") :]: v for k, v in model.state_dict().items() if k.startswith("encoder.")
        }
        state = encoder_to_hf(encoder_state, model.config, prefix="bert.")
        # BertForTokenClassification has no pooler.
        state = {k: v for k, v in state.items() if not k.startswith("bert.pooler.")}
        classifier = model.head.classifier
        state["classifier.weight"], state["classifier.bias"] = classifier.weight, classifier.bias
        labels = self.labels
        config = {
            "architectures": ["BertForTokenClassification"],
            "id2label": dict(enumerate(labels)),
            "label2id": {x: i for i, x in enumerate(labels)},
        }
        return write_export(model, out_dir, state, config, tokenizer_dir, metadata)

    def check_batches(
        self, tokenizer: Any, texts: Sequence[str], max_seq_length: int
    ) -> list[dict[str, np.ndarray]]:
        encode = NerEncoder(tokenizer, max_seq_length, int(self.settings["stride"]))
        windows = encode([split_words(t.replace("\t", " "), "whitespace")[0] for t in texts])
        first = [w for w in windows if w.sentence_index == 0]
        return [encode.collate(windows), encode.collate(first)]

    # ----------------------------------------------------------------------------- prediction

    def predictor(
        self, model: Any, tokenizer: Any, backend: Any, max_seq_length: int, batch_size: int
    ) -> Predictor:
        return NerPredictor(self, model, tokenizer, backend, max_seq_length, batch_size)


class NerEncoder:
    """Sentences (lists of words) -> windows of word pieces, and windows -> a padded batch."""

    def __init__(self, tokenizer: Any, max_seq_length: int, stride: int) -> None:
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.stride = min(stride, max(0, (max_seq_length - 2) // 2))
        self.ids = special_token_ids(tokenizer)
        self.collator = NerCollator(self.ids["pad"])

    def __call__(self, sentences: Sequence[Sequence[str]]) -> list[Any]:
        windows = []
        for si, pieces in enumerate(word_pieces(self.tokenizer, sentences, self.ids["unk"])):
            if pieces:
                windows.extend(
                    build_windows(
                        si, pieces, None, self.max_seq_length, self.stride, self.ids["cls"], self.ids["sep"]
                    )
                )
        return windows

    def collate(self, windows: Sequence[Any]) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.collator(list(windows)).items()}


@dataclass
class NerInput:
    """A sentence to tag: its words, their character offsets, and the text the offsets point into."""

    text: str
    words: list[str]
    offsets: list[tuple[int, int]]
    pretokenized: bool = False


class NerPredictor(Predictor):
    """Inputs: a text (split into words as ``task.word_split`` says), ``{"text": ...}``, or words
    already split: ``{"tokens": [...]}`` (offsets then point into the tokens joined by single
    spaces). Answers: ``entities`` (type, character ``start``/``end``, ``word_start``/``word_end``,
    ``text``), ``words`` and ``tags``."""

    def parse(self, item: Any, where: str = "input") -> NerInput:
        if isinstance(item, dict) and set(item) == {"tokens"}:
            tokens = item["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip() for t in tokens):
                raise BertlabError(f"{where}: tokens must be a list of non-empty strings")
            offsets, start = [], 0
            for t in tokens:
                offsets.append((start, start + len(t)))
                start += len(t) + 1
            return NerInput(" ".join(tokens), list(tokens), offsets, pretokenized=True)
        if isinstance(item, dict) and set(item) == {"text"}:
            item = item["text"]
        if not isinstance(item, str):
            raise BertlabError(
                f'{where}: expected a text (a string), {{"text": ...}} or {{"tokens": [...]}}, got '
                f"{json.dumps(item, ensure_ascii=False)[:80]}"
            )
        words, offsets = split_words(item, self.task.settings["word_split"])
        return NerInput(item, words, offsets)

    def predict(self, inputs: Sequence[NerInput]) -> list[dict[str, Any]]:
        encode = NerEncoder(self.tokenizer, self.max_seq_length, int(self.task.settings["stride"]))
        windows = encode([x.words for x in inputs])
        assembler = WordPredictionAssembler()
        tags_of: dict[int, list[str]] = {}
        for chunk in length_batches([len(w) for w in windows], self.batch_size):
            batch = encode.collate([windows[i] for i in chunk])
            (logits,) = self.backend(batch)
            for si, pred, _ in assembler.add(word_predictions(batch, logits)):
                tags_of[int(si)] = self.task.tags(pred)
        out = []
        for si, x in enumerate(inputs):
            tags = tags_of.get(si, [])
            entities = (
                entity_spans_with_offsets(x.words, x.offsets, tags, scheme=self.task.scheme, text=x.text)
                if x.words
                else []
            )
            answer: dict[str, Any] = {"text": x.text, "entities": entities, "words": x.words, "tags": tags}
            if x.pretokenized:
                answer["tokens"] = answer.pop("words")
            out.append(answer)
        return out

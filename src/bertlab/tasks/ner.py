"""Named-entity recognition (a label per word, entity-level F1 as seqeval computes it): the whole task.

- model: :class:`~bertlab.encoder.BertForTokenClassification` (logits at every word piece), with
  ``task.head=crf`` also a :class:`~bertlab.encoder.crf.LinearChainCRF` whose emissions the logits
  are, constrained to the paths ``data.scheme`` allows;
- data: :class:`~bertlab.data.ner.NerDataModule` (``data=conll``): windows of word pieces whose
  ``word_index`` marks the one position that predicts each word (-1 elsewhere) and whose
  ``sentence_index`` / ``sentence_num_words`` say which sentence a window belongs to;
- training and metrics: :class:`NerModule`. ``softmax``: cross-entropy at each word's first piece.
  ``crf``: the CRF's negative log-likelihood of each window's predicted words (see *The CRF over
  windows* below). Evaluation turns each batch's logits into per-word results right away
  (:func:`word_predictions`), holds small arrays only until every word of a sentence has come in (its
  windows may lie in different batches), decodes the sentence, then scores it into an
  :class:`~bertlab.tagging.EntityCounts` -- seqeval's entity-level figures, default or strict mode;
- decoding: :func:`word_predictions` and :class:`WordPredictionAssembler` (argmax per word, or one
  Viterbi path per sentence), used alike by evaluation and :class:`NerPredictor` (words split as
  ``task.word_split`` says, entity spans with character offsets into the input), so ``bertlab-predict``
  (both backends) and ``bertlab-serve`` decode as evaluation does;
- export: ``BertForTokenClassification`` with ``id2label``; with the CRF also ``crf.safetensors`` (the
  decoding scores) and a ``README.md`` saying how to decode.

The CRF over windows
--------------------
A sentence longer than a window is cut into overlapping windows, and each word is predicted by
exactly one of them; the words a window predicts are a contiguous run of the sentence, in order.

- **Training** scores each window on its own (a window is a training example; its neighbours may be
  in other batches): its predicted words' emissions are gathered and packed to the front
  (:func:`pack_words`), and the CRF's NLL runs over them. Where the run does not start (end) the
  sentence, the CRF row is *open* there: no start (end) score and no start (end) constraint, since
  the word before it may be inside an entity (``I-X`` may open the run) and the word after it may
  continue one (IOBES ``B-X`` may close it). Transitions inside the run are constrained as always.
- **Gold paths that the scheme forbids** would make the loss ``+inf`` (Weibo's training file has a
  few orphan ``I-`` tags). Before the loss, such a path is rewritten to the allowed path with the
  same entities as :func:`bertlab.tagging.spans_from_tags` reads them (:func:`repair_tags`: an orphan
  ``I-X`` after ``O`` becomes ``B-X`` in IOB2). That lenient reading is the one prediction uses to
  turn tags into entities, so the CRF learns the entities that the gold tags denote to everything
  else in bertlab. The tags that are scored are never changed.
- **Decoding** runs one Viterbi over the whole sentence (:class:`WordPredictionAssembler` with
  :func:`crf_decoder`): each word's emissions come from the window that predicts it, and the
  sentence's own start and end get the learned, constrained start and end scores. The path is the
  CRF's best allowed path for the sentence, so it is valid for the scheme across window boundaries
  too; decoding window by window could not promise that (two windows' paths can meet in ``O, I-X``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from bertlab.constants import IGNORE_INDEX
from bertlab.data.ner import NerCollator, NerDataModule, build_windows, word_pieces
from bertlab.data.tokenizer import special_token_ids
from bertlab.data.words import WORD_SPLITS, split_words
from bertlab.encoder import BertConfig, BertForTokenClassification, encoder_to_hf
from bertlab.encoder.crf import LinearChainCRF, viterbi_decode_numpy
from bertlab.errors import BertlabError
from bertlab.export.hf import save_safetensors
from bertlab.inference import Predictor, length_batches
from bertlab.pretrained import Pretrained
from bertlab.tagging import (
    EntityCounts,
    allowed_transitions,
    canonical_scheme,
    check_tag,
    convert_tags,
    entity_spans_with_offsets,
)
from bertlab.tasks.base import (
    Job,
    RunContext,
    Task,
    TaskModule,
    build_finetune,
    validation_split_summary,
    write_export,
)

log = logging.getLogger(__name__)

__all__ = [
    "CRF_FILE",
    "HEADS",
    "NerModule",
    "NerPredictor",
    "NerTask",
    "PackedWords",
    "WordPredictionAssembler",
    "WordPredictions",
    "crf_decoder",
    "pack_words",
    "repair_tags",
    "word_predictions",
]

HEADS = ("softmax", "crf")
# the CRF's decoding scores in an HF export, beside model.safetensors
CRF_FILE = "crf.safetensors"
# one sentence's emissions [n_words, K] -> its label ids [n_words]
SentenceDecoder = Callable[[np.ndarray], np.ndarray]


@dataclass
class WordPredictions:
    """The predicted words of one batch, flat: entry ``k`` is word ``word_index[k]`` of sentence
    ``sentence_index[k]`` (which has ``num_words[k]`` words), predicted as label ``pred[k]`` by argmax
    (``gold[k]`` is the batch's label there, -100 where the batch has none). ``emissions [N, K]``: the
    logits at those words, kept when a CRF decodes whole sentences."""

    sentence_index: np.ndarray
    word_index: np.ndarray
    num_words: np.ndarray
    pred: np.ndarray
    gold: np.ndarray
    emissions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pred)


class WordPredictionAssembler:
    """Gathers word predictions, in any order and across batches, into whole sentences.

    :meth:`add` returns the sentences completed by the new predictions as
    ``(sentence_index, pred_ids, gold_ids)`` with one entry per word, in word order. A word predicted
    twice is an error. Only the incomplete sentences' small arrays are kept. With ``decode`` (a CRF's
    Viterbi, :func:`crf_decoder`) the words' emissions are kept instead of their argmax, and a completed
    sentence's labels are ``decode(emissions)``: one path over the whole sentence, across its windows.
    """

    def __init__(self, decode: SentenceDecoder | None = None) -> None:
        self.decode = decode
        self._pending: dict[int, list[Any]] = {}  # sentence -> [pred, gold, filled, emissions]

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
                entry = [np.full(n, -1, dtype=np.int32), np.full(n, IGNORE_INDEX, dtype=np.int32), 0, None]
                if self.decode is not None:
                    if preds.emissions is None:
                        raise ValueError("a decoding assembler needs the words' emissions (keep_emissions)")
                    entry[3] = np.zeros((n, preds.emissions.shape[1]), dtype=preds.emissions.dtype)
                self._pending[si] = entry
            words = preds.word_index[rows]
            if (entry[0][words] != -1).any() or len(np.unique(words)) != len(words):
                raise RuntimeError(f"sentence {si}: a word was predicted twice (overlapping windows)")
            entry[0][words] = preds.pred[rows]
            entry[1][words] = preds.gold[rows]
            if entry[3] is not None:
                entry[3][words] = preds.emissions[rows]
            entry[2] += len(rows)
            if entry[2] == len(entry[0]):
                pred = entry[0]
                if self.decode is not None:
                    pred = np.asarray(self.decode(entry[3]), dtype=np.int32)
                done.append((si, pred, entry[1]))
                del self._pending[si]
        return done


def word_predictions(
    batch: dict[str, Any], logits: np.ndarray, keep_emissions: bool = False
) -> WordPredictions:
    """Word-level results of a batch: the argmax at each word's predicting position, and with
    ``keep_emissions`` the logits there (what a CRF decodes once the sentence is complete). ``batch``
    holds the collator's ``word_index``, ``sentence_index``, ``sentence_num_words`` (and ``labels``
    when gold tags are known); ``logits`` [B, T, K]. Evaluation, prediction and serving all decode
    here and in :class:`WordPredictionAssembler`."""
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
        np.ascontiguousarray(logits[where], dtype=np.float32) if keep_emissions else None,
    )


def crf_decoder(model: Any) -> SentenceDecoder | None:
    """The sentence decoder of a model with a CRF (None without one): numpy Viterbi
    (:func:`~bertlab.encoder.crf.viterbi_decode_numpy`) with the CRF's constrained scores as they are
    now, the same for every backend (the ONNX graph computes the emissions only)."""
    crf = getattr(model, "crf", None)
    if crf is None:
        return None
    start, transitions, end = (t.detach().float().cpu().numpy() for t in crf.constrained_transitions())

    def decode(emissions: np.ndarray) -> np.ndarray:
        return np.asarray(viterbi_decode_numpy(emissions, start, transitions, end), dtype=np.int64)

    return decode


# ------------------------------------------------------------------------------ the CRF loss


@dataclass
class PackedWords:
    """A batch's predicted words, packed to the front of each row (the CRF's mask must be a prefix):
    ``emissions [B, W, K]``, ``tags [B, W]`` (gold ids, -100 where none), ``mask [B, W]``, ``words
    [B, W]`` (the word's index in its sentence, -1 where masked), and per row ``open_start`` /
    ``open_end`` [B]: its run of words does not start / end its sentence."""

    emissions: Tensor
    tags: Tensor
    mask: Tensor
    words: Tensor
    open_start: Tensor
    open_end: Tensor


def pack_words(logits: Tensor, batch: dict[str, Tensor]) -> PackedWords:
    """Gather the logits at each window's predicting positions (``word_index >= 0``), in order."""
    word_index = batch["word_index"].to(logits.device)
    where = word_index >= 0
    counts = where.sum(dim=1)
    width = int(counts.max()) if counts.numel() else 0
    # A stable sort of "not predicted" puts the predicted positions first, in their order.
    order = torch.sort((~where).to(torch.int32), dim=1, stable=True).indices[:, :width]
    mask = torch.arange(width, device=logits.device).unsqueeze(0) < counts.unsqueeze(1)
    emissions = logits.gather(1, order.unsqueeze(2).expand(-1, -1, logits.shape[2]))
    words = word_index.gather(1, order).masked_fill(~mask, -1)
    if "labels" in batch:
        tags = batch["labels"].to(logits.device).gather(1, order).masked_fill(~mask, IGNORE_INDEX)
    else:
        tags = torch.full_like(words, IGNORE_INDEX)
    if width == 0:
        closed = torch.zeros_like(counts, dtype=torch.bool)
        return PackedWords(emissions, tags, mask, words, closed, closed)
    last = words.gather(1, (counts - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    num_words = batch["sentence_num_words"].to(logits.device)
    return PackedWords(
        emissions,
        tags,
        mask,
        words,
        (counts > 0) & (words[:, 0] != 0),
        (counts > 0) & (last != num_words - 1),
    )


def _neighbour(tag: str, scheme: str, before: bool) -> str | None:
    """A tag of ``tag``'s type that may come right before (after) it, when ``tag`` may not start (end)
    a sentence: the context a window cut out of a sentence had there. None when none is needed."""
    starts, _, ends = allowed_transitions([tag], scheme)
    if (starts if before else ends)[0]:
        return None
    _, _, type_ = tag.partition("-")
    for prefix in "BIMELSU":
        other = f"{prefix}-{type_}"
        if not check_tag(other, scheme):
            continue
        pair = [other, tag] if before else [tag, other]
        if allowed_transitions(pair, scheme)[1][0][1]:
            return other
    return None


def repair_tags(
    tags: Sequence[str], scheme: str, open_start: bool = False, open_end: bool = False
) -> list[str]:
    """``tags`` rewritten to a path that ``scheme`` allows, with the entities that
    :func:`~bertlab.tagging.spans_from_tags` reads in them (an orphan ``I-X`` after ``O`` starts an
    entity: ``B-X`` in IOB2; an IOBES ``B-X`` before ``O`` is a one-word entity: ``S-X``). An allowed
    path comes back unchanged.

    ``open_start`` / ``open_end``: the tags are a window's run inside a longer sentence. Its first tag
    may then continue an entity of the word before the run (``I-X`` stays ``I-X``), and its last tag
    may be continued after it: the tags are read behind (before) a tag of the same type that may
    precede (follow) them, as the sentence's own neighbouring tag would.
    """
    tags = [str(t) for t in tags]
    if not tags:
        return tags
    before = _neighbour(tags[0], scheme, before=True) if open_start else None
    after = _neighbour(tags[-1], scheme, before=False) if open_end else None
    padded = ([before] if before else []) + tags + ([after] if after else [])
    fixed = convert_tags(padded, scheme, scheme)
    return fixed[(1 if before else 0) : len(fixed) - (1 if after else 0)]


class NerModule(TaskModule):
    """Trains a :class:`BertForTokenClassification` and scores it by entities (``task.scheme``;
    seqeval's strict mode with ``task.strict``). ``task.head=softmax``: cross-entropy on the labelled
    word pieces; ``crf``: the CRF's negative log-likelihood of each window's gold path (module
    docstring), per word, with the CRF's scores at ``task.crf_lr_scale`` times the learning rate. The
    per-type report of the last validation or test run is in :attr:`last_entity_report`."""

    def __init__(self, model: BertForTokenClassification, task: NerTask, optimizer: dict[str, Any]) -> None:
        super().__init__(model, task, optimizer)
        self.last_entity_report: dict[str, Any] = {}
        self._eval: dict[str, dict[str, Any]] = {}
        self._repairs_logged = False

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def _loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """The head's loss per labelled word, and the number of words it covers."""
        if self.model.crf is not None:
            return self._crf_loss(logits, batch)
        labels = batch["labels"]
        keep = labels != IGNORE_INDEX
        count = int(keep.sum())
        if count == 0:
            return logits.sum() * 0.0, 0
        return F.cross_entropy(logits[keep].float(), labels[keep]), count

    def _crf_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """The CRF's NLL of the gold paths of the batch's windows, summed and divided by their words:
        the scale of the softmax head's per-word cross-entropy, so that one learning rate (and the
        gradient clipping) fits both heads. Every parameter gets a gradient, even from a batch
        without a word (DDP needs that)."""
        packed = pack_words(logits, batch)
        tags, mask = self._gold_paths(packed)
        loss = self.model.crf.nll(
            packed.emissions, tags, mask, "token_mean", packed.open_start, packed.open_end
        )
        return loss, int(mask.sum())

    def _gold_paths(self, packed: PackedWords) -> tuple[torch.Tensor, torch.Tensor]:
        """(tags, mask) of the packed gold paths, each allowed by the CRF's constraints: a forbidden
        path is repaired (:func:`repair_tags`); a row that still cannot be (a repaired tag outside the
        label set, or words without gold) is left out of the loss (its mask row is all False)."""
        crf = self.model.crf
        tags, mask = packed.tags, packed.mask
        unlabelled = ((tags == IGNORE_INDEX) & mask).any(dim=1)
        if unlabelled.any():
            mask = mask & ~unlabelled.unsqueeze(1)
        ok = crf.allowed_paths(tags, mask, packed.open_start, packed.open_end)
        if bool(ok.all()):
            return tags, mask
        tags, mask = tags.clone(), mask.clone()
        label_to_id = {x: i for i, x in enumerate(self.task.labels)}
        for row in torch.nonzero(~ok).flatten().tolist():
            n = int(mask[row].sum())
            gold = self.task.tags(tags[row, :n].tolist())
            fixed = repair_tags(
                gold, self.task.scheme, bool(packed.open_start[row]), bool(packed.open_end[row])
            )
            ids = [label_to_id.get(t) for t in fixed]
            if None in ids:
                mask[row] = False
            else:
                tags[row, :n] = torch.tensor(ids, dtype=tags.dtype, device=tags.device)
            if not self._repairs_logged:
                self._repairs_logged = True
                log.info(
                    "gold tags the %s scheme does not allow are repaired before the CRF loss, e.g. %s -> %s",
                    self.task.scheme,
                    " ".join(gold[:12]),
                    " ".join(fixed[:12]) if None not in ids else "(left out: a tag outside the label set)",
                )
        still = ~crf.allowed_paths(tags, mask, packed.open_start, packed.open_end)
        return tags, mask & ~still.unsqueeze(1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(self(batch), batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """As every task's (:func:`bertlab.training.optim.configure`), but with the CRF's scores in a
        group of their own: ``task.crf_lr_scale`` times the learning rate, no weight decay.

        Why: AdamW moves a parameter by about the learning rate per step whatever its gradient, and a
        fine-tuning rate (5e-5) would leave the transition scores, which start at 0 and need to reach
        a few units to matter next to the emissions, near 0 after a few hundred steps (at most
        ~0.008 in WNUT-17's 320 steps): the CRF would be its constraints only. Widely copied BERT-CRF
        recipes train the CRF layer ~30-100x faster (``--learning_rate=3e-5 --crf_learning_rate=1e-3``);
        the default 100 lets the scores move by a few units within one of bertlab's recipes. They are
        log-space scores like biases, so they are not decayed toward 0."""
        out = super().configure_optimizers()
        crf = self.model.crf
        if crf is None:
            return out
        optimizer, schedule = out["optimizer"], out["lr_scheduler"]["scheduler"]
        crf_params = list(crf.parameters())
        ids = {id(p) for p in crf_params}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        lr = float(optimizer.param_groups[0]["initial_lr"]) * float(self.task.settings["crf_lr_scale"])
        optimizer.add_param_group({"params": crf_params, "lr": lr, "initial_lr": lr, "weight_decay": 0.0})
        # The same schedule (warmup, decay) over the three groups: a new LambdaLR with the factor of
        # the one optim.configure made, which applies it to the groups it knew only.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_lambdas[0])
        return {**out, "lr_scheduler": {**out["lr_scheduler"], "scheduler": scheduler}}

    # ---------------------------------------------------------------------- evaluation

    def _start(self, stage: str) -> None:
        self._eval[stage] = {
            # the CRF's scores as they are now: they change between validations
            "assembler": WordPredictionAssembler(crf_decoder(self.model)),
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
        loss, count = self._loss(logits, batch)
        state["loss_sum"] += float(loss) * count
        state["loss_count"] += count
        assembler = state["assembler"]
        preds = word_predictions(
            batch, logits.detach().float().cpu().numpy(), keep_emissions=assembler.decode is not None
        )
        for _, pred, gold in assembler.add(preds):
            # token accuracy of the decoded labels: counted per complete sentence (a CRF decodes
            # sentences, not batches)
            scored = gold != IGNORE_INDEX
            state["words"] += int(scored.sum())
            state["correct"] += int((pred[scored] == gold[scored]).sum())
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
    """Settings (``conf/task/ner.yaml``): ``head`` (``softmax``: a label per word by argmax; ``crf``: a
    linear-chain CRF, trained by its NLL and decoded by Viterbi, constrained to the scheme's paths);
    ``crf_lr_scale`` (the CRF scores' learning rate over the optimizer's); ``classifier_dropout``;
    ``strict`` (seqeval's strict mode for the scheme); ``word_split`` (how prediction splits a text
    into words: see :mod:`bertlab.data.words`); from the data when training: ``labels``, ``scheme``,
    ``max_seq_length``, ``stride``."""

    name = "ner"
    datamodule_class = NerDataModule
    data_choices = "conll"

    def __init__(
        self,
        head: str = "softmax",
        crf_lr_scale: float = 100.0,
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
        if head not in HEADS:
            raise BertlabError(f"task.head={head!r} is not one of {', '.join(HEADS)}")
        if not float(crf_lr_scale) > 0:
            raise BertlabError(f"task.crf_lr_scale={crf_lr_scale} must be above 0")
        if word_split not in WORD_SPLITS:
            raise BertlabError(f"task.word_split={word_split!r} is not one of {', '.join(WORD_SPLITS)}")
        try:
            scheme = canonical_scheme(scheme)
        except ValueError as exc:
            raise BertlabError(f"NER scheme: {exc}") from None
        if labels is not None and len(set(labels)) != len(labels):
            raise BertlabError(f"NER: the label list repeats a label: {list(labels)}")
        self.settings.update(
            head=str(head),
            crf_lr_scale=float(crf_lr_scale),
            classifier_dropout=float(classifier_dropout),
            strict=bool(strict),
            word_split=str(word_split),
            labels=[str(x) for x in labels] if labels is not None else None,
            scheme=scheme,
            max_seq_length=max_seq_length,
            stride=int(stride),
        )

    @property
    def scheme(self) -> str:
        return str(self.settings["scheme"])

    @property
    def head(self) -> str:
        """``softmax`` or ``crf`` (models saved before the CRF existed have no setting: softmax)."""
        return str(self.settings.get("head") or "softmax")

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
        return build_finetune(
            self, cfg, pretrained, run, NerModule, ("labels", "scheme", "max_seq_length", "stride")
        )

    def summary(self, job: Job) -> dict[str, Any]:
        out: dict[str, Any] = {"labels": self.labels, "head": self.head}
        out.update(validation_split_summary(job.datamodule))
        if job.module.last_entity_report:
            out["reports"] = {"entity_report": job.module.last_entity_report}
        return out

    # ------------------------------------------------------------------------------ the model

    def build_model(self, config: BertConfig) -> BertForTokenClassification:
        crf = LinearChainCRF.from_labels(self.labels, self.scheme) if self.head == "crf" else None
        return BertForTokenClassification(
            config, len(self.labels), self.settings["classifier_dropout"], crf=crf
        )

    def head_from_hf(self, pretrained: Pretrained) -> dict[str, torch.Tensor]:
        state = {f"head.{k}": v for k, v in pretrained.hf_state.items() if k.startswith("classifier.")}
        if self.head == "crf":
            state.update(read_crf_file(Path(pretrained.directory or pretrained.source) / CRF_FILE))
        return state

    def export_hf(
        self, model: BertForTokenClassification, tokenizer_dir: Path, out_dir: Path, metadata: dict[str, Any]
    ) -> Path:
        state = encoder_to_hf(model.encoder.state_dict(), model.config, prefix="bert.")
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
        if model.crf is None:
            return write_export(model, out_dir, state, config, tokenizer_dir, metadata)
        # transformers has no CRF class. The weights stay a BertForTokenClassification (its logits are
        # the emissions, exactly), the decoding scores go beside them, and the decoding is said where
        # a user looks: config.json's bertlab metadata and the directory's README.md (model card).
        scores = dict(zip(("start", "transitions", "end"), model.crf.constrained_transitions()))
        metadata = {**metadata, "decoding": CRF_DECODING}

        def extra(tmp: Path) -> None:
            save_safetensors(scores, tmp / CRF_FILE)
            readme = CRF_README.replace("{scheme}", self.scheme).replace("{labels}", ", ".join(labels))
            (tmp / "README.md").write_text(readme, encoding="utf-8")

        return write_export(model, out_dir, state, config, tokenizer_dir, metadata, extra)

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


def read_crf_file(path: Path) -> dict[str, torch.Tensor]:
    """The ``crf.*`` state of :class:`LinearChainCRF` from an export's ``crf.safetensors`` (the
    constrained scores: ``-inf`` marks a forbidden entry, whose learned value is never used)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise BertlabError(
            f"{path.parent}: a CRF model (task.head=crf) needs its {CRF_FILE} beside model.safetensors"
        )
    try:
        scores = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise BertlabError(f"{path}: cannot read the CRF scores: {e}") from None
    missing = {"start", "transitions", "end"} - set(scores)
    if missing:
        raise BertlabError(f"{path}: no {', '.join(sorted(missing))} in the CRF scores")
    state = {}
    names = {"start": "start", "transitions": "", "end": "end"}  # file name -> LinearChainCRF's names
    for name, prefix in names.items():
        value = scores[name].float()
        param = f"{prefix}_transitions" if prefix else "transitions"
        state[f"crf.{param}"] = torch.where(torch.isfinite(value), value, torch.zeros_like(value))
        state[f"crf.allowed_{prefix or 'transitions'}"] = torch.isfinite(value)
    return state


# what config.json's bertlab metadata says of an export with a CRF head
CRF_DECODING = {
    "method": "crf_viterbi",
    "file": CRF_FILE,
    "note": "the logits are CRF emissions: decode with Viterbi over start, transitions and end "
    "(README.md), not argmax",
}

# The export's README.md (model card) with a CRF head. Its code is run by tests/test_ner_crf.py.
CRF_README = """# A bertlab NER model with a CRF head

Labels ({scheme}): {labels}

**Decode with the CRF, not with argmax.** `model.safetensors` is transformers'
`BertForTokenClassification`, and its logits are exactly this model's CRF *emissions*. The model's tags
are the Viterbi path through those emissions and the scores in `crf.safetensors`:

- `start` [K]: the score of each label as a sentence's first tag;
- `transitions` [K, K]: `transitions[i, j]` scores label `j` right after label `i`;
- `end` [K]: the score of each label as a sentence's last tag;

with `-inf` where the {scheme} scheme forbids it (`I-X` after `O`, ...). The argmax of the logits is
not what this model was trained to output, and it can give sequences the scheme forbids.
`bertlab-predict <this directory>` (either backend; `--backend onnx` after `bertlab-export`) and
`bertlab-serve` decode with the CRF, and cut sentences longer than the model's window into windows.

With transformers alone (one sentence that fits in one window; a word is tagged at its first piece):

```python
import torch
from safetensors.numpy import load_file
from transformers import AutoTokenizer, BertForTokenClassification

path = "."  # this directory
tokenizer = AutoTokenizer.from_pretrained(path)
model = BertForTokenClassification.from_pretrained(path).eval()
crf = load_file(f"{path}/crf.safetensors")


def viterbi(emissions, start, transitions, end):
    score, back = start + emissions[0], []
    for emission in emissions[1:]:
        candidates = score[:, None] + transitions  # [previous label, label]
        back.append(candidates.argmax(axis=0))
        score = candidates.max(axis=0) + emission
    path = [int((score + end).argmax())]
    for best in reversed(back):
        path.append(int(best[path[-1]]))
    return path[::-1]


words = ["Anna", "moved", "to", "Paris"]
encoding = tokenizer(words, is_split_into_words=True, return_tensors="pt")
with torch.no_grad():
    logits = model(**encoding).logits[0].numpy()
first_pieces = [encoding.word_ids().index(w) for w in range(len(words))]
path = viterbi(logits[first_pieces], crf["start"], crf["transitions"], crf["end"])
tags = [model.config.id2label[i] for i in path]
```

With bertlab: `bertlab.encoder.crf.viterbi_decode_numpy(emissions, start, transitions, end)` is the
same function.
"""


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
    ``text``), ``words`` and ``tags``. A model with a CRF head is decoded by Viterbi over each
    sentence (:func:`crf_decoder`), whatever the backend."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder = crf_decoder(self.model)

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
        # with a CRF: Viterbi over each whole sentence, the scores read from the model loaded beside
        # the weights (the ONNX graph gives the emissions only)
        assembler = WordPredictionAssembler(self.decoder)
        tags_of: dict[int, list[str]] = {}
        for chunk in length_batches([len(w) for w in windows], self.batch_size):
            batch = encode.collate([windows[i] for i in chunk])
            (logits,) = self.backend(batch)
            preds = word_predictions(batch, logits, keep_emissions=self.decoder is not None)
            for si, pred, _ in assembler.add(preds):
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

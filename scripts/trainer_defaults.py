"""transformers' ``Trainer`` with its own defaults on a sentence classification table: the yardstick for
bertlab's fine-tuning defaults ("a user who names only the data and the model gets at least this").

    .venv/bin/python scripts/trainer_defaults.py --train /work/runs/sst2_train_8000.tsv \
        --dev ../shared/data/sst2/dev.tsv --model $MINILM --epochs 1 --batch-size 32 --max-length 64

Only what a user of ``Trainer`` must choose is set: epochs, batch size, the maximum length the texts
are cut to; everything else (learning rate 5e-5, no warmup, no weight decay, AdamW eps 1e-8, linear
decay) is ``TrainingArguments``' default. The model is ``AutoModelForSequenceClassification`` (its
``[CLS]`` pooler head), as the ``run_glue`` example builds it. Prints and writes (``--json``) the dev
accuracy and the wall time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchenv import read_tsv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--dev", type=Path, required=True)
    p.add_argument("--model", required=True, help="an HF BERT directory")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--label-column", default="label")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42, help="TrainingArguments' default seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def dataset(path: Path) -> Dataset:
        texts, labels = read_tsv(path, args.text_column, args.label_column)
        enc = tokenizer(texts, truncation=True, max_length=args.max_length)
        return Dataset.from_dict({**enc, "labels": [int(x) for x in labels]})

    train, dev = dataset(args.train), dataset(args.dev)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    out = tempfile.mkdtemp(prefix="trainer_defaults_")
    training_args = TrainingArguments(
        output_dir=out,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        seed=args.seed,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer)
    )
    started = time.time()
    trainer.train()
    train_s = time.time() - started
    logits = trainer.predict(dev).predictions
    accuracy = float((np.argmax(logits, -1) == np.asarray(dev["labels"])).mean())
    print(f"dev accuracy {accuracy:.4f}", flush=True)
    defaults = (
        "learning_rate",
        "warmup_steps",
        "weight_decay",
        "adam_epsilon",
        "lr_scheduler_type",
        "max_grad_norm",
    )
    result = {
        "dev_accuracy": accuracy,
        "train_s": round(train_s, 1),
        "train_rows": len(train),
        "seed": args.seed,
        "torch_threads": args.threads,
        "training_arguments": {k: str(getattr(training_args, k, None)) for k in defaults},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

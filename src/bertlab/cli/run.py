"""One training job from a composed config: data, module, trainer, run-directory contract."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from bertlab.data.pretrain import PretrainDataModule
from bertlab.data.tokenizer import load_tokenizer, special_token_ids
from bertlab.errors import BertlabError
from bertlab.export.hf import export_pretraining
from bertlab.tasks.pretrain import PretrainModule

log = logging.getLogger("bertlab")

MODEL_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "hidden_dropout",
    "attention_dropout",
    "layer_norm_eps",
    "initializer_range",
)


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def validate_config(cfg: DictConfig) -> None:
    """Checks that need no data: clear one-line errors before any work starts."""
    max_pos = int(cfg.model.max_position_embeddings)
    if int(cfg.data.max_seq_length) > max_pos:
        raise BertlabError(
            f"data.max_seq_length={cfg.data.max_seq_length} is more than the model's "
            f"max_position_embeddings={max_pos} (model={cfg.model.name})"
        )
    if cfg.task.name == "pretrain" and cfg.data.get("kind") != "pretrain":
        raise BertlabError(f"task=pretrain needs a pretraining corpus (data=generated|text_files|hub), not data={cfg.data.get('kind')}")


def build_datamodule(cfg: DictConfig) -> PretrainDataModule:
    data = _plain(cfg.data)
    data.pop("kind", None)
    return PretrainDataModule(
        **data,
        tokenizer=_plain(cfg.tokenizer),
        num_workers=int(cfg.hardware.num_workers),
        pin_memory=bool(cfg.hardware.pin_memory),
        cache_dir=str(cfg.paths.cache_dir),
        seed=int(cfg.seed),
    )


def model_config(cfg: DictConfig, tokenizer_dir: Path) -> dict[str, Any]:
    tokenizer = load_tokenizer(tokenizer_dir)
    vocab_size = tokenizer.get_vocab_size()
    wanted = cfg.model.get("vocab_size")
    if wanted is not None and int(wanted) != vocab_size:
        raise BertlabError(
            f"model.vocab_size={wanted} does not match the tokenizer's vocabulary of {vocab_size} "
            f"tokens ({tokenizer_dir}); set model.vocab_size=null to follow the tokenizer"
        )
    fields = {k: cfg.model[k] for k in MODEL_FIELDS}
    return {**fields, "vocab_size": vocab_size, "pad_token_id": special_token_ids(tokenizer)["pad"]}


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def run(cfg: DictConfig) -> float | None:
    """Train as ``cfg`` says; returns the monitored metric (for sweeps)."""
    started = time.time()
    validate_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    torch.set_float32_matmul_precision(str(cfg.hardware.matmul_precision))

    datamodule = build_datamodule(cfg)
    tokenizer_dir = datamodule.prepare_tokenizer()
    module = PretrainModule(
        model_config=model_config(cfg, tokenizer_dir),
        optimizer=_plain(cfg.optimizer),
        compile=bool(cfg.hardware.compile),
    )
    datamodule.prepare_data()
    log.info("data: %s", json.dumps(datamodule.stats()))

    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    trainer_kwargs = _plain(cfg.trainer)
    trainer = L.Trainer(
        accelerator=cfg.hardware.accelerator,
        devices=cfg.hardware.devices,
        precision=cfg.hardware.precision,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(out_dir),
        use_distributed_sampler=False,  # the data modules shard by rank themselves
        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trainer.interrupted:
        raise BertlabError("training was interrupted")

    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or ""
    last = getattr(checkpoint, "last_model_path", "") or ""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if best and not cfg.trainer.get("fast_dev_run"):
        # The best checkpoint's own validation metrics, and its weights for the export.
        results = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics = {k: float(v) for k, v in results[0].items() if k.startswith("val/")}
    metrics = {k: v for k, v in sorted(metrics.items()) if not k.endswith("_bar")}

    export_dir = None
    if cfg.get("export", True) and trainer.is_global_zero:
        export_dir = export_pretraining(
            module.model,
            tokenizer_dir,
            out_dir / "export",
            metadata={"task": cfg.task.name, "metrics": metrics, "checkpoint": best or last},
        )

    summary = {
        "status": "completed",
        "task": cfg.task.name,
        "model": cfg.model.name,
        "metrics": metrics,
        "global_step": int(trainer.global_step),
        "best_checkpoint": best or None,
        "last_checkpoint": last or None,
        "export": str(export_dir) if export_dir else None,
        "tokenizer": str(tokenizer_dir),
        "data": datamodule.stats(),
        "elapsed_s": round(time.time() - started, 1),
    }
    if trainer.is_global_zero:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("summary: %s", json.dumps({"metrics": metrics, "run_dir": str(out_dir)}))
    monitor = cfg.task.get("monitor")
    return metrics.get(monitor) if monitor else None

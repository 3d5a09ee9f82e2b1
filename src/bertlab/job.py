"""One training job from a composed config: data, module, trainer, run-directory contract."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from bertlab.cli.callbacks import AtomicCheckpointIO, NonFiniteGuard, RunIdentity, SaveOnInterrupt
from bertlab.cli.distributed import DistributedLayout, step_layout, trainer_settings
from bertlab.data.labelled import ClassifyDataModule
from bertlab.data.ner import NerDataModule
from bertlab.data.pretrain import PretrainDataModule
from bertlab.data.tokenizer import load_tokenizer, special_token_ids
from bertlab.errors import BertlabError
from bertlab.export.hf import export_classifier, export_pretraining
from bertlab.tasks.classify import ClassifyModule
from bertlab.tasks.init_from import Pretrained, load_encoder_weights, load_pretrained
from bertlab.tasks.ner import NerModule
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
# Which data config kind each task reads.
TASK_DATA = {"pretrain": "pretrain", "classify": "labelled", "ner": "conll"}


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def missing_values(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys of ``cfg`` (outside ``hydra``) still set to ``???``."""
    missing = []
    for key in cfg:
        if key == "hydra" and not prefix:
            continue
        name = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            missing.append(name)
        else:
            value = cfg[key]
            if isinstance(value, DictConfig):
                missing.extend(missing_values(value, f"{name}."))
    return missing


def validate_config(cfg: DictConfig) -> None:
    """Checks that need no data: clear one-line errors before any work starts."""
    missing = missing_values(cfg)
    if missing:
        raise BertlabError(
            f"missing required value(s): {', '.join(missing)} (set them on the command line, e.g. {missing[0]}=...)"
        )
    task = cfg.task.name
    if task not in TASK_DATA:
        raise BertlabError(f"task={task} is not one of {', '.join(TASK_DATA)}")
    kind = cfg.data.get("kind")
    if kind != TASK_DATA[task]:
        wanted = {"pretrain": "generated|text_files|hub", "labelled": "csv", "conll": "conll"}[
            TASK_DATA[task]
        ]
        raise BertlabError(f"task={task} reads data={wanted}, but the data config is of kind {kind!r}")
    if cfg.model.get("init_from") is None:
        max_pos = int(cfg.model.max_position_embeddings)
        if int(cfg.data.max_seq_length) > max_pos:
            raise BertlabError(
                f"data.max_seq_length={cfg.data.max_seq_length} is more than the model's "
                f"max_position_embeddings={max_pos} (model={cfg.model.name})"
            )
    if task != "pretrain" and not cfg.model.get("init_from") and not cfg.tokenizer.get("path"):
        raise BertlabError(
            f"task={task} needs a pretrained model (model.init_from=<run dir | .ckpt | HF dir>) "
            "or, to start from random weights, a tokenizer (tokenizer.path=<dir>)"
        )
    if cfg.hardware.get("strategy") == "fsdp" and cfg.hardware.get("accelerator") == "cpu":
        raise BertlabError(
            "hardware=fsdp needs GPUs (torch's FSDP does not run on CPU); "
            "on CPU use hardware=ddp hardware.accelerator=cpu"
        )
    onnx = cfg.get("export_onnx") or False
    if onnx and onnx not in (True, "int8"):
        raise BertlabError(f"export_onnx={onnx!r} is not one of false, true, int8")
    if onnx and not cfg.get("export", True):
        raise BertlabError("export_onnx needs export=true (the ONNX file is written beside the HF export)")


def model_config(cfg: DictConfig, tokenizer_dir: Path, pretrained: Pretrained | None) -> dict[str, Any]:
    """The encoder's shape: the pretrained model's when there is one, else ``cfg.model`` with the
    tokenizer's vocabulary. Either way the vocabulary must match the tokenizer."""
    tokenizer = load_tokenizer(tokenizer_dir)
    vocab_size = tokenizer.get_vocab_size()
    if pretrained is not None:
        fields = dict(vars(pretrained.config))
        if fields["vocab_size"] != vocab_size:
            raise BertlabError(
                f"the tokenizer in {tokenizer_dir} has {vocab_size} tokens but the model "
                f"{pretrained.source} has a vocabulary of {fields['vocab_size']}"
            )
        max_len = int(cfg.data.max_seq_length)
        if max_len > fields["max_position_embeddings"]:
            raise BertlabError(
                f"data.max_seq_length={max_len} is more than the pretrained model's "
                f"max_position_embeddings={fields['max_position_embeddings']} ({pretrained.source})"
            )
        return fields
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


def _log_export_artifact(logger: WandbLogger, export_dir: Path, task: str, metrics: dict[str, float]) -> None:
    """The HF export as a W&B model artifact (``logger.wandb.log_export=true``)."""
    import wandb

    artifact = wandb.Artifact(f"{task}-{logger.experiment.id}", type="model", metadata={"metrics": metrics})
    artifact.add_dir(str(export_dir))
    logger.experiment.log_artifact(artifact)


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{"a/b/c": value}`` (what dashboards can filter and group on)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}/")
        else:
            out[prefix.rstrip("/")] = (
                node if isinstance(node, (int, float, str, bool)) or node is None else str(node)
            )

    walk(plain, "")
    return out


def _resolve_ckpt_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """``ckpt_path``: a file, or ``last`` for this run directory's last checkpoint."""
    value = cfg.get("ckpt_path")
    if not value:
        return None
    if value == "last":
        return _last_good_checkpoint(out_dir / "checkpoints")
    if not Path(value).is_file():
        raise BertlabError(f"ckpt_path={value}: no such checkpoint")
    return str(value)


def _last_good_checkpoint(folder: Path) -> str | None:
    """``last.ckpt``, or, when it is truncated or corrupt, the newest checkpoint that loads."""
    from bertlab.tasks.init_from import safe_torch_load

    if not folder.is_dir():
        return None
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
    for path in candidates:
        try:
            safe_torch_load(path)
        except BertlabError as e:
            log.warning("%s cannot be used (%s); trying an earlier checkpoint", path, e)
            continue
        if path.name != "last.ckpt":
            log.warning("resuming from %s instead of a broken last.ckpt", path)
        return str(path)
    return None


def build_loggers(cfg: DictConfig, ckpt_path: str | None) -> list[Any]:
    """The configured loggers; a resumed W&B run keeps its id, sweep jobs share a group."""
    group = cfg.get("logger")
    if not group:
        return []
    group = OmegaConf.to_container(group, resolve=True)
    resumed: dict[str, Any] = {}
    if ckpt_path:
        # What the loggers need from the checkpoint resumed, read once.
        from bertlab.tasks.init_from import safe_torch_load

        saved = safe_torch_load(Path(ckpt_path))
        resumed = {"global_step": int(saved["global_step"]), "wandb_run_id": saved.get("wandb_run_id")}
        del saved
    wandb_cfg = group.get("wandb")
    if wandb_cfg is not None:
        wandb_cfg.pop("log_export", None)  # ours, not WandbLogger's (see _log_export_artifact)
        if resumed and not wandb_cfg.get("id"):
            wandb_cfg["id"] = resumed["wandb_run_id"]
        try:
            hydra_cfg = HydraConfig.get()
            if hydra_cfg.mode == RunMode.MULTIRUN:
                wandb_cfg["group"] = f"{cfg.task.name}-{Path(hydra_cfg.sweep.dir).name}"
        except ValueError:
            pass
    loggers = [hydra.utils.instantiate(c) for c in group.values() if c and "_target_" in c]
    if resumed:
        from bertlab.cli.csv_logger import CSVLogger

        for lg in loggers:
            if isinstance(lg, CSVLogger):
                lg.keep_before_step = resumed["global_step"]
    return loggers


@dataclass
class Job:
    datamodule: L.LightningDataModule
    module: L.LightningModule
    tokenizer_dir: Path


def _optimizer(cfg: DictConfig) -> dict[str, Any]:
    """The optimizer settings, with the hardware's fused-kernel choice (speed only)."""
    return {**_plain(cfg.optimizer), "fused": cfg.hardware.get("fused_optimizer")}


def _data_kwargs(cfg: DictConfig) -> dict[str, Any]:
    data = _plain(cfg.data)
    data.pop("kind", None)
    data["batch_size"] = step_layout(cfg)[1]  # one device's micro-batch of the global batch
    return {
        **data,
        "num_workers": int(cfg.hardware.num_workers),
        "pin_memory": bool(cfg.hardware.pin_memory),
        "seed": int(cfg.seed),
    }


def _pretrained(cfg: DictConfig) -> Pretrained | None:
    init_from = cfg.model.get("init_from")
    return load_pretrained(init_from) if init_from else None


def _tokenizer_for(cfg: DictConfig, pretrained: Pretrained | None) -> Path:
    if cfg.tokenizer.get("path"):
        return Path(cfg.tokenizer.path)
    if pretrained is not None:
        if pretrained.tokenizer_dir is None:
            raise BertlabError(
                f"{pretrained.source}: no tokenizer (tokenizer.json or vocab.txt) beside the model"
            )
        return pretrained.tokenizer_dir
    raise BertlabError("no tokenizer: set tokenizer.path or model.init_from")


def build_pretrain(cfg: DictConfig) -> Job:
    pretrained = _pretrained(cfg)
    tokenizer = _plain(cfg.tokenizer)
    if pretrained is not None and not tokenizer.get("path"):
        tokenizer["path"] = str(_tokenizer_for(cfg, pretrained))
    datamodule = PretrainDataModule(
        **_data_kwargs(cfg), tokenizer=tokenizer, cache_dir=str(cfg.paths.cache_dir)
    )
    tokenizer_dir = datamodule.prepare_tokenizer()
    module = PretrainModule(
        model_config=model_config(cfg, tokenizer_dir, pretrained),
        optimizer=_optimizer(cfg),
        compile=bool(cfg.hardware.compile),
    )
    if pretrained is not None and pretrained.pretraining_state is not None:
        # Continuing pretraining: the MLM and NSP heads come along with the encoder.
        result = module.model.load_state_dict(pretrained.pretraining_state, strict=False)
        if result.unexpected_keys or any(k.split(".")[-2] != "pooler" for k in result.missing_keys):
            raise BertlabError(
                f"{pretrained.source}: weights do not fit the model ({result.missing_keys[:3]})"
            )
    elif pretrained is not None:
        load_encoder_weights(module.model.encoder, pretrained)
    datamodule.prepare_data()
    log.info("data: %s", json.dumps(datamodule.stats()))
    return Job(datamodule, module, tokenizer_dir)


def build_finetune(cfg: DictConfig) -> Job:
    pretrained = _pretrained(cfg)
    tokenizer_dir = _tokenizer_for(cfg, pretrained)
    load_tokenizer(tokenizer_dir)  # a clear error for a broken tokenizer before reading data
    fields = model_config(cfg, tokenizer_dir, pretrained)
    kwargs = _data_kwargs(cfg)
    task = cfg.task.name
    if task == "classify":
        datamodule = ClassifyDataModule(
            **kwargs, tokenizer_dir=str(tokenizer_dir), cache_dir=str(cfg.paths.cache_dir)
        )
    else:
        datamodule = NerDataModule(**kwargs, tokenizer_dir=str(tokenizer_dir))
    datamodule.prepare_data()
    datamodule.setup("fit")
    labels = list(datamodule.labels)
    optimizer = _optimizer(cfg)
    if task == "classify":
        module: L.LightningModule = ClassifyModule(
            model_config=fields,
            optimizer=optimizer,
            num_labels=datamodule.num_labels,
            label_names=labels,
            problem_type=str(cfg.data.problem_type),
            pooling=str(cfg.task.pooling),
            classifier_dropout=float(cfg.task.classifier_dropout),
        )
    else:
        module = NerModule(
            model_config=fields,
            optimizer=optimizer,
            label_names=labels,
            scheme=str(cfg.data.scheme),
            classifier_dropout=float(cfg.task.classifier_dropout),
            strict=bool(cfg.task.strict),
        )
    if pretrained is not None:
        load_encoder_weights(module.encoder, pretrained)
    if cfg.hardware.compile:
        module.encoder.compile(dynamic=True)  # in place: state_dict keys unchanged
    log.info("%s: %d labels %s", task, len(labels), labels[:20])
    return Job(datamodule, module, tokenizer_dir)


def _export(cfg: DictConfig, job: Job, out_dir: Path, metadata: dict[str, Any]) -> Path:
    task = cfg.task.name
    if task == "pretrain":
        return export_pretraining(job.module.model, job.tokenizer_dir, out_dir, metadata=metadata)
    module = job.module
    extra = {"task": task}
    if task == "classify":
        extra.update(pooling=module.hparams["pooling"], problem_type=module.hparams["problem_type"])
    else:
        extra.update(scheme=module.hparams["scheme"])
    return export_classifier(
        module.encoder,
        module.head.classifier,
        list(module.hparams["label_names"]),
        job.tokenizer_dir,
        out_dir,
        token_level=task == "ner",
        problem_type=module.hparams.get("problem_type", "single_label"),
        metadata={**metadata, **extra},
    )


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kwargs = _plain(cfg.trainer)
    if isinstance(kwargs.get("profiler"), dict):
        kwargs["profiler"] = hydra.utils.instantiate(kwargs["profiler"])
    return kwargs


def print_config_tree(cfg: DictConfig, out_dir: Path) -> None:
    """The resolved config as a tree, one branch per group, on the console and in the run dir."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key in cfg:
        if key == "hydra":
            continue
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(Syntax(text.rstrip(), "yaml"))
    Console().print(tree)
    with (out_dir / "config_tree.log").open("w") as f:
        Console(file=f, width=100, color_system=None).print(tree)


def _metrics(results: list[dict[str, Any]] | dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, float]:
    merged: dict[str, Any] = {}
    for r in results if isinstance(results, list) else [results]:
        merged.update(r)
    return {
        k: float(v)
        for k, v in sorted(merged.items())
        if k.startswith(prefixes) and not k.endswith("_bar") and torch.as_tensor(v).numel() == 1
    }


def run_phases(cfg: DictConfig) -> float | None:
    """Pretraining in phases (``task.phases``), as BERT's recipe: e.g. 90% of the steps at length
    128, then 10% at 512. Each phase runs in ``phase<k>_<name>/`` of the run directory, starts from
    the weights (encoder and heads) of the phase before it, and continues one learning-rate
    schedule over ``trainer.max_steps`` in all. Running the command again (or ``resume=<run dir>``)
    skips finished phases and resumes the unfinished one from its last checkpoint."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    phases = list(cfg.task.phases)
    total = int(cfg.trainer.max_steps)
    if total <= 0 and not cfg.trainer.get("fast_dev_run"):
        raise BertlabError("task.phases needs trainer.max_steps (the steps of all phases together)")
    fractions = [float(p.fraction) for p in phases]
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise BertlabError(f"task.phases: the fractions {fractions} must add up to 1")
    steps = [round(f * total) for f in fractions[:-1]]
    steps.append(total - sum(steps))
    offset, init_from, results = 0, cfg.model.get("init_from"), []
    for k, (phase, n) in enumerate(zip(phases, steps), start=1):
        phase_dir = out_dir / f"phase{k}_{phase.name}"
        if not (phase_dir / "summary.json").is_file():
            pcfg = cfg.copy()
            with open_dict(pcfg):
                pcfg.task.phases = None
                pcfg.paths.output_dir = str(phase_dir)
                for key, value in (phase.get("data") or {}).items():
                    pcfg.data[key] = value
                pcfg.trainer.max_steps = n
                pcfg.model.init_from = init_from
                pcfg.optimizer.step_offset = offset
                pcfg.optimizer.total_steps = total
                pcfg.export = True
                pcfg.ckpt_path = "last"  # this phase's own last good checkpoint, if it has one
            log.info("phase %d/%d (%s): %d steps", k, len(phases), phase.name, n)
            run(pcfg)
        results.append(
            {"phase": phase.name, "steps": n, **json.loads((phase_dir / "summary.json").read_text())}
        )
        offset += n
        init_from = str(phase_dir)
    final = results[-1]
    summary = {
        **{k: v for k, v in final.items() if k not in ("phase", "steps")},
        "phases": [
            {
                "name": r["phase"],
                "steps": r["steps"],
                "metrics": r["metrics"],
                "dir": str(out_dir / f"phase{i}_{r['phase']}"),
            }
            for i, r in enumerate(results, 1)
        ],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    monitor = cfg.task.get("monitor")
    return final["metrics"].get(monitor) if monitor else None


def run(cfg: DictConfig) -> float | None:
    """Train as ``cfg`` says; returns the monitored metric (for sweeps)."""
    if cfg.task.get("phases"):
        return run_phases(cfg)
    started = time.time()
    validate_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # the other ranks of a DDP job share the run directory
        (out_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.get("print_config", True):
            print_config_tree(cfg, out_dir)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    torch.set_float32_matmul_precision(str(cfg.hardware.matmul_precision))
    if cfg.hardware.get("threads"):
        torch.set_num_threads(int(cfg.hardware.threads))

    job = build_pretrain(cfg) if cfg.task.name == "pretrain" else build_finetune(cfg)
    datamodule, module = job.datamodule, job.module

    ckpt_path = _resolve_ckpt_path(cfg, out_dir)
    loggers = build_loggers(cfg, ckpt_path)
    for logger in loggers:
        logger.log_hyperparams(flat_config(cfg))
    guard = NonFiniteGuard(str(cfg.get("nonfinite", "skip")))
    interrupt = SaveOnInterrupt(str(out_dir / "checkpoints"))
    callbacks = _instantiate_all(cfg.get("callbacks")) + [RunIdentity(), guard, interrupt]
    callbacks.append(DistributedLayout(*step_layout(cfg)))
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    if not loggers:
        # Without a logger there is nowhere to write the learning rate.
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    trainer = L.Trainer(
        accelerator=cfg.hardware.accelerator,
        devices=cfg.hardware.devices,
        precision=cfg.hardware.precision,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(out_dir),
        use_distributed_sampler=False,  # the data modules shard by rank themselves
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
        **{**_trainer_kwargs(cfg), **trainer_settings(cfg)},
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        saved = f"checkpoint saved: {interrupt.saved}; " if interrupt.saved else ""
        raise BertlabError(
            f"training was interrupted at step {trainer.global_step}; {saved}resume with: bertlab-train resume={out_dir}"
        )

    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or ""
    last = getattr(checkpoint, "last_model_path", "") or ""
    fast = bool(cfg.trainer.get("fast_dev_run"))
    metrics = _metrics(dict(trainer.callback_metrics), ("val/",))
    if best and not fast:
        # The best checkpoint's own validation metrics, and its weights for the export.
        metrics = _metrics(
            trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False), ("val/",)
        )
    elif not metrics and not fast:
        # No validation ran during training (a run shorter than val_check_interval): run one now.
        metrics = _metrics(trainer.validate(module, datamodule=datamodule, verbose=False), ("val/",))
    has_test = cfg.task.name != "pretrain" and cfg.data.get("test_file")
    if has_test:
        results = trainer.test(
            module, datamodule=datamodule, ckpt_path=best if best and not fast else None, verbose=False
        )
        metrics.update(_metrics(results, ("test/",)))
    reports = {}
    for attr in ("last_entity_report", "last_confusion"):
        if getattr(module, attr, None) is not None:
            reports[attr.removeprefix("last_")] = getattr(module, attr)

    export_dir = None
    if cfg.get("export", True) and trainer.is_global_zero:
        export_dir = _export(cfg, job, out_dir / "export", {"metrics": metrics, "checkpoint": best or last})
        onnx = cfg.get("export_onnx") or False
        if onnx:
            from bertlab.cli.export import export_to_onnx  # onnx and onnxruntime only when asked

            quantize = "int8" if onnx == "int8" else None
            export_to_onnx(export_dir, quantize=quantize, threads=cfg.hardware.get("threads") or 1)

    summary = {
        "status": "completed",
        "task": cfg.task.name,
        "model": cfg.model.name if not cfg.model.get("init_from") else str(cfg.model.init_from),
        "metrics": metrics,
        "global_step": int(trainer.global_step),
        "best_checkpoint": best or None,
        "last_checkpoint": last or None,
        "export": str(export_dir) if export_dir else None,
        "tokenizer": str(job.tokenizer_dir),
        "elapsed_s": round(time.time() - started, 1),
    }
    if isinstance(datamodule, PretrainDataModule):
        summary["data"] = datamodule.stats()
    else:
        summary["labels"] = list(datamodule.labels)
    if reports:
        summary["reports"] = reports
    if trainer.is_global_zero:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(metrics)
                if export_dir and cfg.logger.wandb.get("log_export"):
                    _log_export_artifact(logger, export_dir, cfg.task.name, metrics)
                logger.experiment.save(str(out_dir / "summary.json"), base_path=str(out_dir), policy="now")
        log.info("summary: %s", json.dumps({"metrics": metrics, "run_dir": str(out_dir)}))
    monitor = cfg.task.get("monitor")
    return metrics.get(monitor) if monitor else None

"""One training job from a composed config: the task, its data and module, the Trainer, and the
run directory (:mod:`bertlab.runs`).

The job never names a task: it instantiates ``cfg.task`` (a :class:`~bertlab.tasks.base.Task`) and
asks it for the monitored metric, the data and module, the summary and the export.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
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

from bertlab import runs
from bertlab.errors import BertlabError
from bertlab.pretrained import Pretrained, load_pretrained, safe_torch_load
from bertlab.schema import check_config
from bertlab.tasks.base import MODEL_FIELDS, RunContext, Task, export_onnx_beside
from bertlab.training.callbacks import AtomicCheckpointIO, NonFiniteGuard, RunIdentity, SaveOnInterrupt
from bertlab.training.distributed import DistributedLayout, launch_local_ranks, step_layout, trainer_settings
from bertlab.training.loggers import CSVLogger

log = logging.getLogger("bertlab")


def make_task(cfg: DictConfig) -> Task:
    """The task ``cfg.task`` names by its ``_target_``."""
    if not cfg.task.get("_target_"):
        raise BertlabError("the task config has no _target_ (the Task class that implements it)")
    try:
        task = hydra.utils.instantiate(cfg.task, _convert_="all")
    except Exception as e:  # an import error or a wrong setting in a user's task config
        cause = e.__cause__ or e
        if isinstance(cause, BertlabError):
            raise cause from None
        raise BertlabError(f"task: cannot create {cfg.task._target_}: {cause}") from None
    if not isinstance(task, Task):
        raise BertlabError(f"task: {cfg.task._target_} is not a bertlab.tasks.base.Task")
    return task


def validate_config(cfg: DictConfig) -> Task:
    """Checks that need no data: clear one-line errors before any work starts. Returns the task."""
    check_config(cfg)  # required values, types and ranges of every section, data files
    task = make_task(cfg)
    task.check_config(cfg)
    if cfg.model.get("init_from") is None:
        max_pos = int(cfg.model.max_position_embeddings)
        if int(cfg.data.max_seq_length) > max_pos:
            raise BertlabError(
                f"data.max_seq_length={cfg.data.max_seq_length} is more than the model's "
                f"max_position_embeddings={max_pos} (model={cfg.model.name})"
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
    return task


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
        for lg in loggers:
            if isinstance(lg, CSVLogger):
                lg.keep_before_step = resumed["global_step"]
    return loggers


def _model_follows(cfg: DictConfig, pretrained: Pretrained) -> None:
    """With ``model.init_from`` the encoder's shape is the pretrained model's. A ``model=`` chosen on
    the command line that disagrees is an error (it would silently train another size); otherwise
    ``cfg.model`` is set to the real shape, so resolved_config.yaml records what is trained."""
    real = {k: getattr(pretrained.config, k) for k in MODEL_FIELDS}
    differs = {k: (cfg.model.get(k), v) for k, v in real.items() if cfg.model.get(k) != v}
    shape = ("num_layers", "hidden_size", "num_heads", "intermediate_size")
    if any(k in differs for k in shape) and _chosen_on_command_line("model"):
        ours = f"L{cfg.model.num_layers}/H{cfg.model.hidden_size}"
        theirs = f"L{real['num_layers']}/H{real['hidden_size']}"
        raise BertlabError(
            f"model={cfg.model.name} is {ours} but model.init_from={cfg.model.init_from} is {theirs}: "
            "the size follows init_from; leave model= out"
        )
    for key, (_, value) in differs.items():
        cfg.model[key] = value
    if differs:
        cfg.model.name = f"from init_from (L{real['num_layers']}/H{real['hidden_size']})"


def _chosen_on_command_line(group: str) -> bool:
    try:
        return any(o.split("=", 1)[0].lstrip("+~") == group for o in HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra run (a composed config used directly)
        return False


def _evaluate_only(cfg: DictConfig, task: Task, pretrained: Pretrained | None) -> None:
    """``train=false``: the model to score is ``model.init_from``, a model of this task, read with its
    own label set (the data must not renumber the labels)."""
    if pretrained is None:
        raise BertlabError(
            "train=false scores a trained model: set model.init_from=<run dir | export | .ckpt> "
            "(or run bertlab-train evaluate=<run dir>)"
        )
    trained = (pretrained.metadata.get("task") or {}).get("_target_")
    mine = f"{type(task).__module__}.{type(task).__qualname__}"
    if trained != mine:
        raise BertlabError(
            f"train=false: {pretrained.source} is not a trained {task.name} model (its task: {trained or 'none'})"
        )
    labels = pretrained.metadata["task"].get("labels")
    data_class = hydra.utils.get_class(str(cfg.data._target_))
    if labels and "labels" in inspect.signature(data_class).parameters:
        with open_dict(cfg):
            cfg.data.labels = list(labels)


def run_context(cfg: DictConfig) -> RunContext:
    """What the run decides for the task: the micro-batch, the optimizer (with the hardware's fused
    kernel choice, speed only), compilation and the cache folder."""
    return RunContext(
        micro_batch=step_layout(cfg)[1],
        optimizer={
            **OmegaConf.to_container(cfg.optimizer, resolve=True),
            "fused": cfg.hardware.get("fused_optimizer"),
        },
        compile=bool(cfg.hardware.compile),
        cache_dir=str(cfg.paths.cache_dir),
    )


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if isinstance(kwargs.get("profiler"), dict):
        kwargs["profiler"] = hydra.utils.instantiate(kwargs["profiler"])
    return kwargs


def write_config_tree(cfg: DictConfig, out_dir: Path, show: bool = False) -> None:
    """The resolved config as a tree, one branch per group, in ``config_tree.log`` (and on the
    console with ``print_config=true``)."""
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
    if show:
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
        if not runs.is_run_dir(phase_dir):
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
        results.append({"phase": phase.name, "steps": n, **runs.read_summary(phase_dir)})
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
    runs.write_summary(out_dir, summary)
    return final["metrics"].get(final.get("monitor"))


def run(cfg: DictConfig) -> float | None:
    """Train as ``cfg`` says; returns the monitored metric (for sweeps)."""
    if cfg.task.get("phases"):
        return run_phases(cfg)
    started = time.time()
    task = validate_config(cfg)
    monitor, monitor_mode = task.monitor(cfg)
    init_from = cfg.model.get("init_from")
    pretrained = load_pretrained(init_from) if init_from else None
    training = bool(cfg.get("train", True))
    with open_dict(cfg):  # the checkpoint callback and the resolved config read them from here
        cfg.task.monitor, cfg.task.monitor_mode = monitor, monitor_mode
        if pretrained is not None:
            _model_follows(cfg, pretrained)
    if not training:
        _evaluate_only(cfg, task, pretrained)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # the other ranks of a DDP job share the run directory
        (out_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        write_config_tree(cfg, out_dir, show=bool(cfg.get("print_config", False)))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    torch.set_float32_matmul_precision(str(cfg.hardware.matmul_precision))
    if cfg.hardware.get("threads"):
        torch.set_num_threads(int(cfg.hardware.threads))

    job = task.build(cfg, pretrained, run_context(cfg))
    datamodule, module = job.datamodule, job.module
    if not training:  # the whole trained model, head included: nothing is trained
        module.model.load_state_dict(task.load_model(pretrained).state_dict())
    log.info("%s: %s", task.name, json.dumps(task.summary(job), default=str)[:300])

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
    launch_local_ranks(cfg.hardware)  # the other processes of a multi-process job, if any
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
    fast = bool(cfg.trainer.get("fast_dev_run"))
    best = last = ""
    if training:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            saved = f"checkpoint saved: {interrupt.saved}; " if interrupt.saved else ""
            raise BertlabError(
                f"training was interrupted at step {trainer.global_step}; {saved}resume with: bertlab-train resume={out_dir}"
            )
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") or ""
        last = getattr(checkpoint, "last_model_path", "") or ""
    metrics = _metrics(dict(trainer.callback_metrics), ("val/",))
    if best and not fast:
        # The best checkpoint's own validation metrics, and its weights for the export.
        metrics = _metrics(
            trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False), ("val/",)
        )
    elif not metrics and not fast:
        # No validation ran during training (a run shorter than val_check_interval, or train=false).
        metrics = _metrics(trainer.validate(module, datamodule=datamodule, verbose=False), ("val/",))
    if cfg.data.get("test_file"):
        results = trainer.test(
            module, datamodule=datamodule, ckpt_path=best if best and not fast else None, verbose=False
        )
        metrics.update(_metrics(results, ("test/",)))

    export_dir = None
    if training and cfg.get("export", True) and trainer.is_global_zero:
        metadata = {"task": task.metadata(), "metrics": metrics, "checkpoint": best or last}
        export_dir = task.export_hf(module.model, job.tokenizer_dir, out_dir / "export", metadata)
        onnx = cfg.get("export_onnx") or False
        if onnx:
            quantize = "int8" if onnx == "int8" else None
            export_onnx_beside(export_dir, quantize=quantize, threads=cfg.hardware.get("threads") or 1)

    summary = {
        "status": "completed",
        "task": task.name,
        "model": cfg.model.name if not cfg.model.get("init_from") else str(cfg.model.init_from),
        "metrics": metrics,
        "monitor": monitor,
        "monitor_mode": monitor_mode,
        "global_step": int(trainer.global_step),
        "best_checkpoint": best or None,
        "last_checkpoint": last or None,
        "export": str(export_dir) if export_dir else None,
        "tokenizer": str(job.tokenizer_dir),
        "elapsed_s": round(time.time() - started, 1),
        **task.summary(job),
    }
    if trainer.is_global_zero:
        runs.write_summary(out_dir, summary)
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(metrics)
                if export_dir and cfg.logger.wandb.get("log_export"):
                    _log_export_artifact(logger, export_dir, task.name, metrics)
                logger.experiment.save(str(out_dir / runs.SUMMARY_FILE), base_path=str(out_dir), policy="now")
        log.info("summary: %s", json.dumps({"metrics": metrics, "run_dir": str(out_dir)}))
    return metrics.get(monitor)

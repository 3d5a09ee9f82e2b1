"""One job on several processes: the global batch, Lightning's strategy, Hydra's run directory.

``data.batch_size`` is the global batch: sequences per optimizer step over all devices and nodes,
whatever the hardware. ``hardware.micro_batch_size`` (default: as large as the global batch allows)
is what one device runs at a time; gradient accumulation makes up the rest:
``accumulate = batch_size / (devices x num_nodes x micro_batch_size)``.

Lightning's DDP launcher starts ranks 1.. by running the script again. With Hydra it passes the
command line back (``-m`` and the sweep included, which starts the whole sweep again in every child)
and the run directory's unresolved pattern; :class:`HydraRunDirLauncher` gives each child this job's
own overrides and this job's output directory instead, so every rank works in one run directory,
in single runs and in sweeps alike.
"""

from __future__ import annotations

import os
import sys
from typing import Any
from unittest import mock

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from lightning.pytorch.strategies.launchers import subprocess_script
from omegaconf import DictConfig

from bertlab.errors import BertlabError


def num_devices(hardware: DictConfig) -> int:
    """Devices per node as a number (``auto``/``-1``: every GPU of the node, or 1 CPU process)."""
    devices = hardware.get("devices", 1)
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        gpu = str(hardware.get("accelerator")) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        return torch.cuda.device_count() if gpu else 1
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    try:
        return int(text)
    except ValueError:
        raise BertlabError(f"hardware.devices={devices!r} is not a number, a list or auto") from None


def world_size(hardware: DictConfig) -> int:
    """Processes in all: devices per node x nodes."""
    return num_devices(hardware) * int(hardware.get("num_nodes", 1) or 1)


def batch_layout(
    global_batch: int, world: int, micro_batch: int | None, accumulate: int = 1
) -> tuple[int, int]:
    """``(micro_batch, accumulate)`` for a global batch on ``world`` processes.

    ``accumulate`` is ``trainer.accumulate_grad_batches``: on one process with no micro-batch size
    it keeps its old meaning (global batch = ``batch_size x accumulate``); otherwise it must be 1.
    """
    if global_batch < 1:
        raise BertlabError(f"data.batch_size={global_batch} must be at least 1")
    if accumulate != 1:
        if world == 1 and micro_batch is None:
            return global_batch, accumulate
        raise BertlabError(
            f"trainer.accumulate_grad_batches={accumulate}: with several devices the accumulation is "
            "computed from data.batch_size (the global batch) and hardware.micro_batch_size; set those"
        )
    if micro_batch is None:
        if global_batch % world:
            raise BertlabError(
                f"data.batch_size={global_batch} (the global batch) does not divide among {world} "
                f"processes (devices x nodes); use a multiple of {world}"
            )
        return global_batch // world, 1
    if micro_batch < 1 or global_batch % (world * micro_batch):
        raise BertlabError(
            f"data.batch_size={global_batch} (the global batch) is not a multiple of {world} processes "
            f"x hardware.micro_batch_size={micro_batch}; choose sizes where it is"
        )
    return micro_batch, global_batch // (world * micro_batch)


def child_command(local_rank: int) -> tuple[list[str], str]:
    """The command that starts local rank ``local_rank`` of this job (used by the DDP launcher)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    out = str(hc.runtime.output_dir).replace("\\", "\\\\").replace('"', '\\"')
    command = [sys.executable, "-m", "bertlab.cli.train", *list(hc.overrides.task)]
    command += [
        f'hydra.run.dir="{out}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",  # rank 0 wrote .hydra/
    ]
    return command, get_original_cwd()


_LAUNCHED: list[subprocess_script._SubprocessScriptLauncher] = []
# What Lightning's launcher puts in the environment of the process that starts the others.
_LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class HydraRunDirLauncher(subprocess_script._SubprocessScriptLauncher):
    """Lightning's subprocess launcher with :func:`child_command` for the Hydra case."""

    def _call_children_scripts(self) -> None:
        with mock.patch.object(subprocess_script, "_hydra_subprocess_cmd", child_command):
            super()._call_children_scripts()
        _LAUNCHED.append(self)


def end_of_job(timeout_s: float = 300.0) -> None:
    """After a job that started processes: wait for them, close the process group, and clear the
    launch environment, so that the next job of a sweep starts processes of its own."""
    if not _LAUNCHED:
        return
    for launcher in _LAUNCHED:
        for proc in launcher.procs:
            try:
                proc.wait(timeout=timeout_s)
            except Exception:  # a child that hangs must not hang the sweep
                proc.kill()
    _LAUNCHED.clear()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for name in _LAUNCH_ENV:
        os.environ.pop(name, None)


class _HydraLaunch:
    def _configure_launcher(self) -> None:
        super()._configure_launcher()  # type: ignore[misc]
        launcher = self._launcher  # type: ignore[attr-defined]
        if type(launcher) is subprocess_script._SubprocessScriptLauncher:
            self._launcher = HydraRunDirLauncher(  # type: ignore[attr-defined]
                launcher.cluster_environment, launcher.num_processes, launcher.num_nodes
            )


class HydraDDPStrategy(_HydraLaunch, DDPStrategy):
    """DDP whose child processes share the Hydra job's run directory."""


class HydraFSDPStrategy(_HydraLaunch, FSDPStrategy):
    """FSDP (each transformer layer sharded) whose child processes share the run directory."""


def build_strategy(hardware: DictConfig) -> str | Strategy:
    """``hardware.strategy``: ``auto`` (one device), ``ddp`` or ``fsdp``."""
    name = str(hardware.get("strategy", "auto") or "auto")
    if name == "auto":
        if world_size(hardware) > 1:
            return HydraDDPStrategy()
        return "auto"
    if name == "ddp":
        return HydraDDPStrategy(find_unused_parameters=bool(hardware.get("find_unused_parameters", False)))
    if name == "fsdp":
        from bertlab.encoder.bert import TransformerLayer

        return HydraFSDPStrategy(
            auto_wrap_policy={TransformerLayer},
            sharding_strategy=str(hardware.get("sharding_strategy", "FULL_SHARD")),
            state_dict_type="full",  # checkpoints stay one file that loads anywhere
        )
    raise BertlabError(f"hardware.strategy={name!r} is not one of auto, ddp, fsdp")


class DistributedLayout(L.Callback):
    """Saves how a step was split (processes x micro-batch x accumulation) in the checkpoint and,
    when a run resumes with another split, rescales Lightning's batch counters (which count
    micro-batches of one rank) so that accumulation and validation fall on the same optimizer steps.
    The data position itself is saved over all ranks (see :class:`ResumableDataLoader`)."""

    def __init__(self, world: int, micro_batch: int, accumulate: int) -> None:
        self.layout = {"world_size": world, "micro_batch_size": micro_batch, "accumulate": accumulate}

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["bertlab_layout"] = dict(self.layout)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        old = checkpoint.get("bertlab_layout") or {"accumulate": self.layout["accumulate"]}
        old_acc, new_acc = int(old["accumulate"]), self.layout["accumulate"]
        if old_acc == new_acc:
            return
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if not progress:
            return
        for part in ("total", "current"):
            for key, value in list(progress.get(part, {}).items()):
                if isinstance(value, int):
                    progress[part][key] = value * new_acc // old_acc


def step_layout(cfg: DictConfig) -> tuple[int, int, int]:
    """``(world size, micro-batch, accumulation)`` for the job's global ``data.batch_size``."""
    hardware = cfg.hardware
    world = world_size(hardware)
    micro = hardware.get("micro_batch_size")
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    micro, accumulate = batch_layout(
        int(cfg.data.batch_size), world, None if micro is None else int(micro), accumulate
    )
    return world, micro, accumulate


def trainer_settings(cfg: DictConfig) -> dict[str, Any]:
    """What the Trainer gets from the layout: strategy, nodes, accumulation, and the validation
    interval in micro-batches (``trainer.val_check_interval`` counts optimizer steps)."""
    world, micro, accumulate = step_layout(cfg)
    settings: dict[str, Any] = {
        "strategy": build_strategy(cfg.hardware),
        "num_nodes": int(cfg.hardware.get("num_nodes", 1) or 1),
        "accumulate_grad_batches": accumulate,
    }
    interval = cfg.trainer.get("val_check_interval")
    if isinstance(interval, int) and not isinstance(interval, bool):
        settings["val_check_interval"] = interval * accumulate
    return settings

"""One job on several processes: the global batch, Lightning's strategy, Hydra's run directory.

``data.batch_size`` is the global batch: sequences per optimizer step over all devices and nodes,
whatever the hardware. ``hardware.micro_batch_size`` (default: as large as the global batch allows)
is what one device runs at a time; gradient accumulation makes up the rest:
``accumulate = batch_size / (devices x num_nodes x micro_batch_size)``.

The other ranks of a job on one node are started by :func:`launch_local_ranks` (as torchrun would,
through the environment) with this job's own overrides and output directory, so every rank works in
one run directory, in single runs and in sweeps alike. (Lightning's own launcher would re-run the
whole command line: a sweep's ``-m`` starts the sweep again in every child.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
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
    """The command that starts local rank ``local_rank`` of this job: this job's own overrides and
    config directories, in this job's run directory (not the sweep, not a new directory)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    out = str(hc.runtime.output_dir).replace("\\", "\\\\").replace('"', '\\"')
    command = [sys.executable, "-m", "bertlab.cli.train"]
    # Config directories the user added with --config-dir (a search path from the command line).
    for source in hc.runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":
            command += ["--config-dir", source.path]
    command += list(hc.overrides.task)
    command += [
        f'hydra.run.dir="{out}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",  # rank 0 wrote .hydra/
    ]
    return command, get_original_cwd()


# The processes this job started, and what it put in its own environment to start them.
_CHILDREN: list[subprocess.Popen] = []
_LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_RESTORE: list[Any] = []  # the SIGTERM handler to put back after the job


def _launched_externally() -> bool:
    """torchrun, SLURM's srun, or a launcher of our own has already started every process."""
    return "LOCAL_RANK" in os.environ or SLURMEnvironment.detect() or TorchElasticEnvironment.detect()


def launch_local_ranks(hardware: DictConfig) -> None:
    """Start local ranks 1.. of a multi-process job on this node, before the Trainer exists.

    Each child runs :func:`child_command` with ``LOCAL_RANK`` (and the address, port, node rank and
    world size) in its environment, as torchrun would; Lightning then sees processes launched from
    outside (its ``LightningEnvironment``) and starts none itself. Doing it here rather than through
    Lightning's own launcher lets every rank join this job's run directory, in a sweep too, through
    public settings only. Under SLURM or torchrun the processes exist already and nothing is started.
    """
    devices = num_devices(hardware)
    if devices <= 1 or _launched_externally():
        return
    from lightning.fabric.plugins.environments import LightningEnvironment

    environment = LightningEnvironment()
    os.environ["MASTER_ADDR"] = environment.main_address
    os.environ["MASTER_PORT"] = str(environment.main_port)
    os.environ["NODE_RANK"] = str(environment.node_rank())
    os.environ["WORLD_SIZE"] = str(world_size(hardware))
    os.environ["LOCAL_RANK"] = "0"
    for local_rank in range(1, devices):
        command, cwd = child_command(local_rank)
        env = {**os.environ, "LOCAL_RANK": str(local_rank)}
        _CHILDREN.append(subprocess.Popen(command, env=env, cwd=cwd))
    # A SIGTERM to this process reaches the ranks it started (Lightning keeps handlers it finds).
    previous = signal.getsignal(signal.SIGTERM)

    def forward(signum: int, frame: Any) -> None:
        for child in _CHILDREN:
            if child.poll() is None:
                child.send_signal(signum)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, forward)
    _RESTORE.append(previous)


def end_of_job(timeout_s: float = 300.0) -> None:
    """After a job that started processes: wait for them, close the process group, and clear the
    launch environment, so that the next job of a sweep starts processes of its own."""
    if not _CHILDREN:
        return
    for child in _CHILDREN:
        try:
            child.wait(timeout=timeout_s)
        except Exception:  # a child that hangs must not hang the sweep
            child.kill()
    _CHILDREN.clear()
    while _RESTORE:
        signal.signal(signal.SIGTERM, _RESTORE.pop())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for name in _LAUNCH_ENV:
        os.environ.pop(name, None)


def build_strategy(hardware: DictConfig) -> str | Strategy:
    """``hardware.strategy``: ``auto`` (one device), ``ddp`` or ``fsdp``."""
    name = str(hardware.get("strategy", "auto") or "auto")
    if name == "auto":
        if world_size(hardware) > 1:
            return DDPStrategy()
        return "auto"
    if name == "ddp":
        return DDPStrategy(find_unused_parameters=bool(hardware.get("find_unused_parameters", False)))
    if name == "fsdp":
        from bertlab.encoder.bert import TransformerLayer

        return FSDPStrategy(
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

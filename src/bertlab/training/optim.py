"""AdamW with BERT's weight-decay rule, and a warmup-then-decay learning-rate schedule (linear, cosine
or constant after the warmup)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

from bertlab.errors import BertlabError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and biases and LayerNorm parameters (never decayed).

    A parameter is exempt when it is a bias or belongs to a LayerNorm, as in BERT's original
    optimizer (``exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]``).
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights appear once
        if id(p) in no_decay_ids or name.endswith("bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class OptimizerSettings:
    """``conf/optimizer/adamw.yaml``, and ``fused`` from the hardware config (speed only)."""

    name: Literal["adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] | None = None  # None: (0.9, 0.999)
    eps: float = 1e-6
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int | None = None  # None: warmup_ratio of the total steps
    warmup_ratio: float = 0.06
    final_lr_fraction: float = 0.0
    # a phase of a multi-phase run: the schedule spans all phases and this one starts at an offset
    step_offset: int = 0
    total_steps: int | None = None
    fused: bool | None = None  # None: the fused kernel on CUDA

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> OptimizerSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise BertlabError(f"optimizer: unknown setting(s) {unknown}; known: {sorted(known)}")
        settings = cls(**cfg)
        if settings.name != "adamw":
            raise BertlabError(f"optimizer.name={settings.name!r} is not supported (adamw)")
        if settings.schedule not in SCHEDULES:
            raise BertlabError(
                f"optimizer.schedule={settings.schedule!r} is not one of {', '.join(SCHEDULES)}"
            )
        return settings

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        return int(round(float(self.warmup_ratio) * total_steps))


def build_optimizer(model: nn.Module, settings: OptimizerSettings) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {
        "lr": float(settings.lr),
        "betas": tuple(settings.betas or (0.9, 0.999)),
        "eps": float(settings.eps),
    }
    fused = settings.fused
    if fused is None:
        fused = torch.cuda.is_available() and all(p.is_cuda for p in model.parameters())
    if fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups(model, float(settings.weight_decay)), **kwargs)


def warmup_then(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    final_lr_fraction: float = 0.0,
    step_offset: int = 0,
    schedule: str = "linear",
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rises linearly from 0 to its peak over ``warmup_steps``, then follows
    ``schedule`` down to ``final_lr_fraction`` of the peak at ``total_steps``: a straight line
    (``linear``, BERT's), half a cosine (``cosine``), or stays at the peak (``constant``).
    ``step_offset`` starts the schedule part-way (a later phase of a multi-phase run continues the
    same schedule)."""
    if schedule not in SCHEDULES:
        raise BertlabError(f"optimizer.schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor(local_step: int) -> float:
        step = local_step + step_offset
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        remaining = max(0, total_steps - step) / max(1, total_steps - warmup_steps)  # 1 -> 0
        if schedule == "cosine":
            remaining = 0.5 * (1.0 - math.cos(math.pi * remaining))
        return final_lr_fraction + (1.0 - final_lr_fraction) * remaining

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def configure(model: nn.Module, cfg: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """What a LightningModule's ``configure_optimizers`` returns."""
    settings = OptimizerSettings.of(cfg)
    optimizer = build_optimizer(model, settings)
    total_steps = int(settings.total_steps or total_steps)
    scheduler = warmup_then(
        optimizer,
        settings.warmup_for(total_steps),
        total_steps,
        float(settings.final_lr_fraction),
        int(settings.step_offset or 0),
        settings.schedule,
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""AdamW with BERT's weight-decay rule and a linear warmup-then-decay schedule."""

from __future__ import annotations

from typing import Any

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


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name = cfg.get("name", "adamw")
    if name != "adamw":
        raise BertlabError(f"optimizer.name={name!r} is not supported (adamw)")
    kwargs: dict[str, Any] = {
        "lr": float(cfg["lr"]),
        "betas": tuple(cfg.get("betas", (0.9, 0.999))),
        "eps": float(cfg.get("eps", 1e-6)),
    }
    fused = cfg.get("fused")
    if fused is None:
        fused = torch.cuda.is_available() and all(p.is_cuda for p in model.parameters())
    if fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups(model, float(cfg.get("weight_decay", 0.01))), **kwargs)


def warmup_steps_for(cfg: dict[str, Any], total_steps: int) -> int:
    if cfg.get("warmup_steps") is not None:
        return int(cfg["warmup_steps"])
    return int(round(float(cfg.get("warmup_ratio", 0.0)) * total_steps))


def linear_warmup_decay(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    final_lr_fraction: float = 0.0,
    step_offset: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rises linearly from 0 to its peak over ``warmup_steps``, then falls linearly
    to ``final_lr_fraction`` of the peak at ``total_steps``. ``step_offset`` starts the schedule
    part-way (a later phase of a multi-phase run continues the same schedule)."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor(local_step: int) -> float:
        step = local_step + step_offset
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(0, total_steps - step) / max(1, total_steps - warmup_steps)
        return final_lr_fraction + (1.0 - final_lr_fraction) * remaining

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def configure(model: nn.Module, cfg: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """What a LightningModule's ``configure_optimizers`` returns."""
    optimizer = build_optimizer(model, cfg)
    # A phase of a multi-phase run: the schedule spans all phases and this one starts at an offset.
    total_steps = int(cfg.get("total_steps") or total_steps)
    scheduler = linear_warmup_decay(
        optimizer,
        warmup_steps_for(cfg, total_steps),
        total_steps,
        float(cfg.get("final_lr_fraction", 0.0)),
        int(cfg.get("step_offset") or 0),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""Hyperparameters as plain Python values, so checkpoints load with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def plain(value: Any) -> Any:
    """Mappings to dicts and sequences to lists, recursively (e.g. an omegaconf DictConfig)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(v) for v in value]
    return value

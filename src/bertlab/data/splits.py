"""A validation split held out of the training data when no validation file is given.

``data.validation_split`` is a fraction (``0.1``) or a number of rows (``500``). The held-out rows
are drawn with the data seed, so the same settings hold out the same rows; for classification they
are stratified by label (each label keeps its share, by largest remainders), so a rare class is not
left out of validation by chance.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from bertlab.errors import BertlabError

__all__ = ["HeldOut", "hold_out"]


@dataclass
class HeldOut:
    """Row indices (into the training rows, in their order) kept for training and held out."""

    train: list[int]
    validation: list[int]


def _size(value: float | int, n: int) -> int:
    """How many rows ``value`` holds out of ``n``: a float is a fraction, an int a number of rows."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BertlabError(
            f"data.validation_split={value!r} must be a fraction in (0, 1) or a number of rows"
        )
    if isinstance(value, float):
        if not 0.0 < value < 1.0:
            raise BertlabError(
                f"data.validation_split={value} must be a fraction in (0, 1) or a number of rows"
            )
        size = round(value * n)
    else:
        size = value
    if not 1 <= size < n:
        raise BertlabError(
            f"data.validation_split={value} holds out {size} of {n} training rows; "
            "at least 1 must be held out and 1 kept"
        )
    return size


def hold_out(
    num_rows: int, value: float | int, seed: int, strata: Sequence[Hashable] | None = None
) -> HeldOut:
    """Split ``num_rows`` training rows into kept and held-out indices (both sorted). ``strata``: a
    label per row to stratify by (None: a plain seeded draw)."""
    size = _size(value, num_rows)
    rng = np.random.default_rng([seed, 0x5EED])  # its own stream: the training order is not touched
    if strata is None:
        held = rng.choice(num_rows, size=size, replace=False)
    else:
        groups: dict[Hashable, list[int]] = {}
        for i, label in enumerate(strata):
            groups.setdefault(label, []).append(i)
        keys = sorted(groups, key=str)
        exact = np.array([size * len(groups[k]) / num_rows for k in keys])
        counts = np.floor(exact).astype(int)
        # Largest remainders first, ties by label order, until the sizes add up.
        for j in np.argsort(-(exact - counts), kind="stable")[: size - int(counts.sum())]:
            counts[j] += 1
        held = np.concatenate(
            [rng.choice(np.asarray(groups[k]), size=int(c), replace=False) for k, c in zip(keys, counts)]
        )
    mask = np.zeros(num_rows, dtype=bool)
    mask[held] = True
    return HeldOut(np.flatnonzero(~mask).tolist(), np.flatnonzero(mask).tolist())

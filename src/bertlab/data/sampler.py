"""A shuffling sampler that knows where it is, so training can stop and resume mid-epoch.

The order of epoch ``e`` is a permutation seeded by ``(seed, e)``; the sampler counts the indices it
has handed out. Its state is two integers, and restoring it continues the same permutation at the
same place: no batch is repeated or skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.consumed = 0  # indices of the current epoch already handed out (this rank)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def _order(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        # Each rank takes every world_size-th index (the tail that does not divide is dropped).
        usable = self.num_samples - self.num_samples % self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        start = self.consumed
        for position in range(start, len(order)):
            self.consumed = position + 1
            yield int(order[position])
        # A finished epoch starts the next one from its beginning.
        self.epoch += 1
        self.consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self.seed = int(state.get("seed", self.seed))


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position is part of Lightning's checkpoint.

    Lightning saves ``state_dict()`` of a stateful train dataloader and calls ``load_state_dict`` on
    resume. The position counts batches the training loop has *received*: with worker processes
    the sampler runs ahead (prefetching), so the sampler's own counter cannot be used.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs a ResumableSampler")
        self._batches_received = 0
        self._epoch_seen = self.sampler.epoch
        self._restored: dict[str, int] | None = None

    @property
    def resumable_sampler(self) -> ResumableSampler:
        return self.batch_sampler.sampler

    def __iter__(self) -> Iterator[Any]:
        sampler = self.resumable_sampler
        if self._restored is not None:
            # Lightning may already have called set_epoch for this epoch; the saved position wins
            # unless it belongs to an earlier epoch.
            if int(self._restored["epoch"]) >= sampler.epoch:
                sampler.load_state_dict(self._restored)
            self._restored = None
        epoch = sampler.epoch
        self._batches_received = sampler.consumed // self.batch_size if self.batch_size else 0
        collate = self.collate_fn
        if hasattr(collate, "epoch"):
            collate.epoch = epoch
        for batch in super().__iter__():
            self._batches_received += 1
            self._epoch_seen = epoch
            yield batch

    def state_dict(self) -> dict[str, int]:
        s = self.resumable_sampler
        consumed = min(self._batches_received * (self.batch_size or 1), len(s))
        if consumed >= len(s) - (len(s) % self.batch_size if self.drop_last and self.batch_size else 0):
            # The epoch is over: resume at the start of the next one.
            return {"epoch": self._epoch_seen + 1, "consumed": 0, "seed": s.seed}
        return {"epoch": self._epoch_seen, "consumed": consumed, "seed": s.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._restored = dict(state)


def seed_worker(worker_id: int) -> None:
    """Workers draw no randomness of their own (masking is seeded per sequence); keep torch quiet."""
    torch.manual_seed(torch.initial_seed() % 2**32)

"""A shuffling sampler that knows where it is, so training can stop and resume mid-epoch.

The order of epoch ``e`` is a permutation seeded by ``(seed, e)``; the sampler counts the indices it
has handed out. Its state is two integers, and restoring it continues the same permutation at the
same place: no batch is repeated or skipped.

Under data parallelism each rank walks its own share of the epoch's order. With ``block_size`` set
to the micro-batch size, the order is cut into micro-batches and rank ``r`` of ``w`` takes micro-batches
``r, r + w, r + 2w, ...``: the micro-batches of one optimizer step are then the same on any number of
processes (with gradient accumulation making up the difference), so a run gives the same updates on
1 or N processes. The position a checkpoint holds is counted over all ranks, so a checkpoint written
by N processes resumes on M.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from bertlab.errors import BertlabError


class EpochPosition:
    """The state of a sampler that walks a per-epoch order: the epoch, how many items of its order
    have been handed out, and the seed. Saving and restoring these three resumes the walk exactly."""

    epoch: int
    consumed: int
    seed: int

    def _walk(self, order: Sequence[Any]) -> Iterator[Any]:
        for position in range(self.consumed, len(order)):
            self.consumed = position + 1
            yield order[position]
        # A finished epoch starts the next one from its beginning.
        self.epoch += 1
        self.consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self.seed = int(state.get("seed", self.seed))


class ResumableSampler(EpochPosition, Sampler[int]):
    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        block_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size or block_size < 1:
            raise ValueError(f"rank={rank}, world_size={world_size}, block_size={block_size}")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.block_size = block_size  # consecutive indices a rank takes at a time (its micro-batch)
        self.epoch = 0
        self.consumed = 0  # indices of the current epoch already handed out (this rank)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def _order(self) -> np.ndarray:
        # The order is the one array that grows with the corpus: 4 bytes an index while they fit in
        # int32 (10.9M instances: 44 MB). Shuffling an arange is what Generator.permutation(n) does,
        # so the order is the same as with permutation's int64 (checkpoints resume unchanged).
        dtype = np.int32 if self.num_samples <= np.iinfo(np.int32).max else np.int64
        order = np.arange(self.num_samples, dtype=dtype)
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        # Each rank takes every world_size-th block of block_size indices (a tail that does not
        # fill a block on every rank is dropped); with one block per index this is rank::world_size.
        per_rank = self._blocks_per_rank()
        blocks = order[: per_rank * self.world_size * self.block_size]
        return blocks.reshape(per_rank, self.world_size, self.block_size)[:, self.rank].reshape(-1)

    def _blocks_per_rank(self) -> int:
        return (self.num_samples // self.block_size) // self.world_size

    def __len__(self) -> int:
        return self._blocks_per_rank() * self.block_size

    def __iter__(self) -> Iterator[int]:
        for index in self._walk(self._order()):
            yield int(index)


class LengthGroupedSampler(ResumableSampler):
    """A :class:`ResumableSampler` whose epoch order puts windows of similar length together.

    The seeded permutation is cut into chunks of ``chunk_batches`` batches of ``batch_size`` (one
    device's micro-batch); each chunk is sorted by length and its batches are shuffled (seeded), so
    padding is small and the order stays random and a function of ``(seed, epoch)`` -- hence
    resumable. The order does not depend on the number of processes: rank ``r`` of ``w`` takes
    micro-batches ``r, r + w, ...`` of it (a tail that does not fill one on every rank is dropped), so
    an optimizer step runs the same micro-batches on ``w`` processes as one process accumulating ``w``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        chunk_batches: int = 50,
    ) -> None:
        super().__init__(len(lengths), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size)
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.chunk_batches = chunk_batches

    def _order(self) -> np.ndarray:
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(self.num_samples)
            group = self.batch_size
            chunk = group * self.chunk_batches
            pieces = []
            for c in range(0, len(order), chunk):
                part = order[c : c + chunk]
                part = part[np.argsort(-self.lengths[part], kind="stable")]
                batches = [part[i : i + group] for i in range(0, len(part), group)]
                for i in rng.permutation(len(batches)):
                    pieces.append(batches[i])
            order = np.concatenate(pieces) if pieces else order
        else:
            order = np.arange(self.num_samples)
        if self.world_size == 1:
            return order
        # Whole micro-batches, round robin: the blocks of ResumableSampler(block_size=batch_size).
        per_rank = self._micro_batches_per_rank()
        blocks = order[: per_rank * self.world_size * self.batch_size]
        return blocks.reshape(per_rank, self.world_size, self.batch_size)[:, self.rank].reshape(-1)

    def _micro_batches_per_rank(self) -> int:
        return (self.num_samples // self.batch_size) // self.world_size

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.num_samples
        return self._micro_batches_per_rank() * self.batch_size


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is part of Lightning's checkpoint.

    Lightning saves ``state_dict()`` of a stateful train dataloader and calls ``load_state_dict``
    on resume. The position is counted in batches: batches the training loop has *started* when a
    loop tells the loader (:meth:`note_batch_started`, called by bertlab's ``RunIdentity``
    callback), else batches handed out. Neither the sampler's own counter (worker processes make
    it run ahead) nor batches handed out (Lightning fetches one batch ahead) would be exact.

    It takes a :class:`ResumableSampler` and a ``batch_size`` (the sampler's position is in samples).

    The saved ``consumed`` counts over all ranks (this rank's position times ``world_size``): a
    checkpoint written by N processes resumes on M, as long as the position divides evenly (it
    does at every optimizer step when the global batch is the same).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Starting an iterator draws a base seed; from a generator of its own, so that it does not
        # move torch's global random state (dropout's) differently in a resumed run.
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(*args, **kwargs)
        self._source, self._unit = self.batch_sampler.sampler, self.batch_size
        for attr in ("epoch", "consumed", "seed", "load_state_dict"):
            if not hasattr(self._source, attr):
                raise TypeError(f"ResumableDataLoader needs a resumable sampler (no {attr!r})")
        self._epoch_seen = self._source.epoch
        self._received = 0
        self._start_position = 0
        self._started: int | None = None
        self._restored: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        source = self._source
        if self._restored is not None:
            # Lightning may already have called set_epoch for this epoch; the saved position wins
            # unless it belongs to an earlier epoch.
            if int(self._restored["epoch"]) >= source.epoch:
                source.load_state_dict(self._per_rank(self._restored))
            self._restored = None
        self._epoch_seen = source.epoch
        self._start_position = source.consumed // self._unit
        self._received = self._start_position
        self._started = None
        if hasattr(self.collate_fn, "epoch"):
            self.collate_fn.epoch = source.epoch  # dynamic masking draws anew each epoch
        for batch in super().__iter__():
            self._received += 1
            yield batch

    def note_batch_started(self) -> None:
        """The training loop started one more batch of this epoch."""
        if self._started is None:
            self._started = self._start_position  # batches done before this iteration began
        self._started += 1

    @property
    def _world(self) -> int:
        return int(getattr(self._source, "world_size", 1))

    def _per_rank(self, state: dict[str, int]) -> dict[str, int]:
        """A saved state (positions over all ranks) as this rank's position."""
        world, step = self._world, self._world * self._unit
        consumed = int(state["consumed"])
        if consumed % step:
            unit = "samples" if self._unit > 1 else "batches"
            raise BertlabError(
                f"the checkpoint's data position ({consumed} {unit} of epoch {state['epoch']}) does not "
                f"divide among {world} processes of {self._unit} (the run was saved between two "
                "optimizer steps or with another global batch): resume it with the same hardware"
            )
        return {**state, "consumed": consumed // world}

    def state_dict(self) -> dict[str, int]:
        done = self._started if self._started is not None else self._received
        if done >= len(self):
            # The epoch is over: resume at the start of the next one.
            return {"epoch": self._epoch_seen + 1, "consumed": 0, "seed": self._source.seed}
        consumed = done * self._unit * self._world
        return {"epoch": self._epoch_seen, "consumed": consumed, "seed": self._source.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._restored = dict(state)


class FixedBatchSampler(Sampler[list[int]]):
    """The same batches every time: rows sorted by length (longest first) when ``by_length``, else in
    file order. For evaluation and prediction, where order does not matter (rows carry ``index``)."""

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, by_length: bool = True) -> None:
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(-lengths, kind="stable") if by_length else np.arange(len(lengths))
        self.batch_size = batch_size
        self.batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def rank_world(trainer: Any) -> tuple[int, int]:
    """``(global rank, world size)`` of a LightningDataModule's trainer; ``(0, 1)`` outside one."""
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size

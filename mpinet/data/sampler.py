"""Which samples each rank takes at each step: training (shuffled, resumable) and evaluation.

Plain Python/NumPy, no MPI inside: rank and world size are passed in, and every rank computes
the same schedule from the same numbers, so the ranks never need to talk about data.

Training (``DistributedSampler``), per epoch e:
  * order = a permutation of range(N) that depends only on (seed, e) — never on the world size;
  * a global step takes the next G = batch_size * world_size entries, order[consumed:consumed+G];
  * rank r takes its contiguous share of that chunk. Full chunks give every rank batch_size; a
    short last chunk is split as evenly as possible (a rank may get 0 samples, and still yields
    an empty batch, so every rank runs the same number of steps: no collective is left waiting);
  * ``consumed`` counts global samples taken this epoch. It is the whole resume state with
    seed and epoch, and it does not depend on the world size, so a state saved on 4 ranks
    continues on 2 with order[consumed:], each remaining sample exactly once (elastic resume).

Evaluation (``shard_indices`` / ``ShardSampler``): each rank a disjoint contiguous part, no
padding, so reducing sums and counts counts every test sample exactly once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..random import SHUFFLE_STREAM, keyed_permutation


def even_split(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share when n items are split as evenly as possible.

    The first n % world_size ranks get one item more.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_indices(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Evaluation shard of this rank: disjoint contiguous int64 indices, no padding, union = all."""
    _check_rank(rank, world_size)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    start, stop = even_split(num_samples, world_size, rank)
    return np.arange(start, stop, dtype=np.int64)


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


@dataclass(frozen=True)
class Batch:
    """One step's share of this rank.

    indices: (n_local,) int64 data set indices (may be empty on a short last step)
    global_count: samples in this step summed over all ranks; weight a rank's mean gradient by
        len(indices) / global_count before the allreduce-sum to get the global mean exactly
    epoch, offset: the epoch and where this step's chunk starts in the epoch's order
    state: the sampler state *after* this step — what a checkpoint taken once this step is
        trained must save (None for evaluation)
    """

    indices: np.ndarray
    global_count: int
    epoch: int
    offset: int
    state: dict | None

    @property
    def local_count(self) -> int:
        return int(self.indices.shape[0])


class DistributedSampler:
    """Shuffled, rank-sharded, resumable training order. See the module docstring.

    batch_size is per rank; the global batch is batch_size * world_size.

    State moves forward as batches are handed out: after the last step of epoch e the state is
    (epoch e + 1, consumed 0). ``set_epoch(e)`` jumps to the start of epoch e, except that it
    keeps the position when the sampler is already in epoch e — so a state restored from a
    mid-epoch checkpoint survives the usual ``set_epoch(epoch)`` at the top of the epoch loop.
    ``len(sampler)`` is the number of steps the next iteration yields (the remaining steps of
    the current epoch); ``steps_per_epoch`` is a whole epoch's.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False):
        _check_rank(rank, world_size)
        if num_samples <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples}: the data set is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size (per rank) must be > 0, got {batch_size}")
        if drop_last and num_samples < batch_size * world_size:
            raise ValueError(f"drop_last with {num_samples} samples and a global batch of "
                             f"{batch_size} x {world_size} ranks = {batch_size * world_size} "
                             "leaves no step; lower batch_size or use drop_last=False")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        self.consumed = 0
        self._order_cache: tuple[tuple[int, int], np.ndarray] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """(N,) int64: the epoch's sample order — a function of (seed, epoch) only."""
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        key = (self.seed, epoch)
        if self._order_cache is None or self._order_cache[0] != key:
            order = keyed_permutation((SHUFFLE_STREAM, *key), self.num_samples)
            order.flags.writeable = False  # batches are views of it: nobody may reorder the epoch
            self._order_cache = (key, order)
        return self._order_cache[1]

    def _steps_from(self, consumed: int) -> int:
        remaining = self.num_samples - consumed
        g = self.global_batch_size
        return remaining // g if self.drop_last else math.ceil(remaining / g)

    @property
    def steps_per_epoch(self) -> int:
        return self._steps_from(0)

    def __len__(self) -> int:
        return self._steps_from(self.consumed)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self.consumed = int(epoch), 0

    def state_dict(self) -> dict:
        """{"seed", "epoch", "consumed"}: plain ints, JSON-serialisable, world-size independent."""
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position, at this sampler's world size and batch size."""
        missing = {"seed", "epoch", "consumed"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; expected keys seed, epoch, "
                             "consumed (from DistributedSampler.state_dict()), got "
                             f"{sorted(state)}")
        seed, epoch, consumed = int(state["seed"]), int(state["epoch"]), int(state["consumed"])
        if epoch < 0 or not 0 <= consumed <= self.num_samples:
            raise ValueError(f"sampler state epoch={epoch}, consumed={consumed} does not fit a "
                             f"data set of {self.num_samples} samples (need epoch >= 0, 0 <= "
                             f"consumed <= {self.num_samples}); was it saved for another data set?")
        self.seed, self.epoch, self.consumed = seed, epoch, consumed
        if len(self) == 0:  # nothing left of that epoch at this batch size: start the next one
            self.epoch, self.consumed = epoch + 1, 0

    def __iter__(self):
        """Yield this rank's ``Batch`` for each remaining step of the current epoch."""
        epoch, pos = self.epoch, self.consumed
        order = self.epoch_order(epoch)
        n_steps = self._steps_from(pos)
        n, g = self.num_samples, self.global_batch_size
        for step in range(n_steps):
            chunk = min(g, n - pos)
            start, stop = even_split(chunk, self.world_size, self.rank)
            indices = order[pos + start:pos + stop]
            offset, pos = pos, pos + chunk
            # The state after this step; the epoch is over after its last step.
            self.epoch, self.consumed = (epoch + 1, 0) if step == n_steps - 1 else (epoch, pos)
            yield Batch(indices, chunk, epoch, offset, self.state_dict())


class ShardSampler:
    """Evaluation batches over ``shard_indices``: every sample once, no padding.

    Every rank runs the same number of steps, ceil(largest shard / batch_size); a rank whose
    shard has run out yields empty batches, so a per-step collective never waits forever.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int):
        _check_rank(rank, world_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size (per rank) must be > 0, got {batch_size}")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shard = shard_indices(num_samples, rank, world_size)
        spans = [even_split(num_samples, world_size, r) for r in range(world_size)]
        self._shard_sizes = np.array([stop - start for start, stop in spans])  # (world_size,)

    def __len__(self) -> int:
        return math.ceil(int(self._shard_sizes.max()) / self.batch_size)

    def __iter__(self):
        b = self.batch_size
        for step in range(len(self)):
            global_count = int(np.clip(self._shard_sizes - step * b, 0, b).sum())
            yield Batch(self.shard[step * b:(step + 1) * b], global_count, 0, step * b, None)

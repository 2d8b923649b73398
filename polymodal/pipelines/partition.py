"""Who reads which sample, in which order: pure functions of (index, seed, epoch, world size,
rank, workers, worker), computed on sample references before any byte is read.

An epoch is a virtual sequence of positions. Each source's shards are put in a per-epoch order
(shuffled by seed and epoch); a mixture of sources interleaves them by weight (`Mixture`). The
sequence is padded to a multiple of the world size by repeating its first samples, marked as
repeats, and cut into one contiguous range per rank (same length for every rank, so every rank
yields the same number of batches); a rank's range is cut into one contiguous run of whole
batches per DataLoader worker. Contiguous ranges mean each reader reads its shards
sequentially. Everything here costs O(shards), never O(samples), except `references`, which
maps one worker's own positions, chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def epoch_rng(seed: int, epoch: int, *salt: int) -> np.random.Generator:
    """A generator for (seed, epoch, ...): the same numbers on every rank and worker."""
    return np.random.default_rng([seed, epoch, *salt])


@dataclass(frozen=True)
class SourceOrder:
    """One source's samples in an epoch's order: its shards permuted, each read in order."""

    counts: np.ndarray  # samples per shard, in the index's order
    order: np.ndarray  # shard indices in the epoch's reading order
    starts: np.ndarray  # first position of each ordered shard; starts[-1] = total

    @classmethod
    def build(
        cls, counts: Sequence[int] | np.ndarray, seed: int, epoch: int, shuffle: bool, salt: int = 0
    ):
        sizes = np.asarray(counts, dtype=np.int64)
        order = np.arange(len(sizes))
        if shuffle:
            order = epoch_rng(seed, epoch, salt).permutation(len(sizes))
        # in place: a million shards' plan is two int64 arrays (16 MB), no temporaries
        starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.take(sizes, order, out=starts[1:])
        np.cumsum(starts[1:], out=starts[1:])
        return cls(sizes, order, starts)

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, sample within shard) of positions; positions past the end wrap around."""
        positions = np.asarray(positions, dtype=np.int64) % max(self.total, 1)
        slot = np.searchsorted(self.starts, positions, side="right") - 1
        return self.order[slot], positions - self.starts[slot]


@dataclass(frozen=True)
class Mixture:
    """Interleave sources by weight, deterministically: source `i` takes `sizes[i]` of the
    epoch's positions, spread evenly. Source 0 against the rest is a two-way Bresenham split
    (position q of r is source 0's iff ⌊(q+1)s/r⌋ > ⌊qs/r⌋, its ⌊qs/r⌋-th), the rest split the
    same way recursively, so any range of positions maps to sources without listing the
    positions before it."""

    sizes: tuple[int, ...]

    @classmethod
    def from_weights(cls, totals: Sequence[int], weights: Sequence[float] | None) -> Mixture:
        """Epoch sizes per source: all of each source by default; with weights, the epoch keeps
        the sources' total length and splits it by weight (largest remainders)."""
        if weights is None:
            return cls(tuple(int(t) for t in totals))
        length = sum(totals)
        share = np.asarray(weights, dtype=float) / float(sum(weights)) * length
        sizes = np.floor(share).astype(int)
        for i in np.argsort(-(share - sizes), kind="stable")[: length - sizes.sum()]:
            sizes[i] += 1
        return cls(tuple(int(s) for s in sizes))

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def split(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, position within the source) of every position in [start, stop)."""
        positions = np.arange(start, stop, dtype=np.int64)
        sources = np.zeros(len(positions), dtype=np.int64)
        within = positions.copy()
        local = positions.copy()  # position within the remaining (not yet assigned) sources
        open_ = np.ones(len(positions), dtype=bool)
        for i, size in enumerate(self.sizes[:-1]):
            rest = sum(self.sizes[i:])
            if rest == 0:
                break
            # two-way split "source i" vs "the rest": p is source i's iff the count steps at p
            mine = open_ & ((local + 1) * size // rest > local * size // rest)
            sources[mine] = i
            within[mine] = (local[mine] * size) // rest
            local = np.where(open_ & ~mine, local - (local * size) // rest, local)
            open_ &= ~mine
        last = len(self.sizes) - 1
        sources[open_] = last
        within[open_] = local[open_]
        return sources, within


def rank_range(total: int, world_size: int, rank: int) -> tuple[int, int]:
    """A rank's positions in the padded epoch: ceil(total / world) of them for every rank."""
    per_rank = math.ceil(total / world_size) if total else 0
    return rank * per_rank, (rank + 1) * per_rank


def worker_range(per_rank: int, batch_size: int, num_workers: int, worker: int) -> tuple[int, int]:
    """A worker's positions within its rank's range: a contiguous run of whole batches (the
    last worker takes the final partial batch)."""
    batches = math.ceil(per_rank / batch_size)
    per_worker = [batches // num_workers + (w < batches % num_workers) for w in range(num_workers)]
    first = sum(per_worker[:worker]) * batch_size
    return min(first, per_rank), min(first + per_worker[worker] * batch_size, per_rank)


def batch_worker(batches_per_worker: Sequence[int], batch: int) -> int:
    """The worker behind a rank's batch number `batch`, in DataLoader order: round robin from
    worker 0 over the workers that still have batches. O(workers²) per call and no list of
    batches, so an epoch of any length costs nothing to plan."""
    level, left = 0, batch
    while True:
        active = [w for w, n in enumerate(batches_per_worker) if n > level]
        if not active:
            raise IndexError(f"batch {batch} is past the {sum(batches_per_worker)} of the epoch")
        top = min(batches_per_worker[w] for w in active)
        if left < (top - level) * len(active):
            return active[left % len(active)]
        left -= (top - level) * len(active)
        level = top


@dataclass(frozen=True)
class Reference:
    """One sample to read: its source, shard and place in the shard, and whether it is a
    padding repeat."""

    source: int
    shard: int
    index: int
    repeated: bool


def references(
    sources: Sequence[SourceOrder], mixture: Mixture, start: int, stop: int, chunk: int = 4096
) -> Iterator[Reference]:
    """The references of positions [start, stop) of the padded epoch, in position order.

    Positions at or past `mixture.total` are padding: they repeat the epoch from its start
    (more than once for a dataset smaller than the world). Within a source, positions past its
    length cycle through it again (a source weighted above its size).
    """
    for lo in range(start, stop, chunk):
        positions = np.arange(lo, min(stop, lo + chunk), dtype=np.int64)
        yield from references_at(sources, mixture, positions, positions >= mixture.total)


def references_at(
    sources: Sequence[SourceOrder],
    mixture: Mixture,
    positions: np.ndarray,
    repeated: np.ndarray,
) -> Iterator[Reference]:
    """The references of any epoch positions (runs of consecutive ones are mapped at once),
    flagged `repeated` where given: an ordinary epoch's padding, or a rest of one's."""
    if not len(positions):
        return
    wrapped = positions % max(mixture.total, 1)
    runs = np.split(np.arange(len(wrapped)), np.flatnonzero(np.diff(wrapped) != 1) + 1)
    pieces = [mixture.split(int(wrapped[r[0]]), int(wrapped[r[-1]]) + 1) for r in runs]
    src = np.concatenate([p[0] for p in pieces])
    within = np.concatenate([p[1] for p in pieces])
    shard, index = np.empty_like(src), np.empty_like(src)
    for s in np.unique(src):
        mask = src == s
        shard[mask], index[mask] = sources[s].locate(within[mask])
    columns = (src.tolist(), shard.tolist(), index.tolist(), np.asarray(repeated).tolist())
    for s, shard_id, i, r in zip(*columns, strict=True):
        yield Reference(s, shard_id, i, bool(r))

"""Who reads which sample, in which order: pure functions of (index, seed, epoch, world size,
rank, workers, worker), computed on sample references before any byte is read.

An epoch is one or more lanes of positions (`Layout`). Each source gives its epoch's samples in
an order of shards (`SourceOrder`, shuffled by seed and epoch; see `mixtures` for sources taken
more or less than once); a lane interleaves sources evenly (`Mixture`): one lane of every
source (mixed batches), or a lane per source (stratified). A lane is padded to a multiple of
the world size by repeating its first samples, marked as repeats, and cut into one contiguous
range per rank (same length for every rank, so every rank yields the same number of batches);
a rank's batches take each lane's share (`FixedComposition`), and a rank's batches are cut into
one contiguous run per DataLoader worker. Contiguous ranges mean each reader reads its shards
sequentially. Everything here costs O(shards), never O(samples), except `references`, which
maps one worker's own positions, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


def epoch_rng(seed: int, epoch: int, *salt: int) -> np.random.Generator:
    """A generator for (seed, epoch, ...): the same numbers on every rank and worker."""
    return np.random.default_rng([seed, epoch, *salt])


@dataclass(frozen=True)
class SourceOrder:
    """One pass over a source: its shards permuted, each read in order."""

    counts: np.ndarray  # samples per shard, in the index's order
    order: np.ndarray  # shard indices in the pass's reading order
    starts: np.ndarray  # first position of each ordered shard; starts[-1] = total

    @classmethod
    def build(
        cls, counts: Sequence[int] | np.ndarray, rng: np.random.Generator | None
    ) -> SourceOrder:
        """The shards in a permutation drawn from `rng`, or in index order without one."""
        sizes = np.asarray(counts, dtype=np.int64)
        order = np.arange(len(sizes)) if rng is None else rng.permutation(len(sizes))
        # in place: a million shards' plan is two int64 arrays (16 MB), no temporaries
        starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.take(sizes, order, out=starts[1:])
        np.cumsum(starts[1:], out=starts[1:])
        return cls(sizes, order, starts)

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    @property
    def size(self) -> int:
        return self.total

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, sample within shard) of positions; positions past the end wrap around."""
        positions = np.asarray(positions, dtype=np.int64) % max(self.total, 1)
        slot = np.searchsorted(self.starts, positions, side="right") - 1
        return self.order[slot], positions - self.starts[slot]


@dataclass(frozen=True)
class Mixture:
    """Interleave sources deterministically: source `i` takes `sizes[i]` of the epoch's
    positions, spread evenly. Source 0 against the rest is a two-way Bresenham split
    (position q of r is source 0's iff ⌊(q+1)s/r⌋ > ⌊qs/r⌋, its ⌊qs/r⌋-th), the rest split the
    same way recursively, so any range of positions maps to sources without listing the
    positions before it. `ids` names the sources (default 0, 1, ...): a stratified lane is
    the mixture of its one source."""

    sizes: tuple[int, ...]
    ids: tuple[int, ...] | None = None

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
        if self.ids is not None:
            sources = np.asarray(self.ids, dtype=np.int64)[sources]
        return sources, within


def shuffle_seed(seed: Sequence[int], rank: int, worker: int, lane: int) -> list[int]:
    """The seed of one reader's shuffle buffer over one lane: (seed, epoch), rank and worker,
    and the lane after the first (so a one-lane stream keeps the seeds it always had)."""
    return [*seed, rank, worker, *([lane] if lane else [])]


def largest_remainder(totals: np.ndarray | int, shares: np.ndarray) -> np.ndarray:
    """Integers that sum to each row's total in proportion to its `shares`: the floors, then
    one more for the largest remainders (ties to the lower index). 1-D shares give 1-D."""
    shares = np.asarray(shares, dtype=float)
    flat = shares.ndim == 1
    rows = np.atleast_2d(shares)
    totals = np.broadcast_to(np.asarray(totals, dtype=np.int64), rows.shape[:1])
    exact = rows / rows.sum(1, keepdims=True) * totals[:, None]
    out = np.floor(exact).astype(np.int64)
    missing = totals - out.sum(1)
    order = np.argsort(-(exact - out), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(rows.shape[1])[None].repeat(len(rows), 0), axis=1)
    out += ranks < missing[:, None]
    return out[0] if flat else out


class Composition(Protocol):
    """How many positions of each lane every batch of a rank takes."""

    batches: int
    lanes: int

    def before(self, batch: int) -> np.ndarray:
        """Positions of each lane in the rank's batches before `batch` (0..batches)."""
        ...

    def sizes(self, first: int, stop: int) -> np.ndarray:
        """`[stop - first, lanes]`: each batch's positions per lane."""
        ...


class FixedComposition:
    """Every batch of a rank holds each lane's share: a rank takes `per_rank[i]` positions of
    lane i in ⌈Σ per_rank / per_batch⌉ batches, every batch but the last full. The full
    batches share ⌊full·per_batch·sᵢ⌉ (largest remainder) of lane i: each holds bᵢ of it or
    bᵢ + 1, the extra ones dealt round the batches in turn (exactly per_batch·sᵢ when that is a
    whole number); the last batch holds what is left. One lane: batches of `per_batch`. Any
    batch's counts are a closed form, O(lanes)."""

    def __init__(self, per_rank: Sequence[int], per_batch: int) -> None:
        self.per_rank = np.asarray(per_rank, dtype=np.int64)
        self.lanes = len(self.per_rank)
        total = int(self.per_rank.sum())
        self.batches = -(-total // per_batch)
        self.full = total // per_batch
        targets = np.zeros(self.lanes, dtype=np.int64)
        if self.full:
            targets = largest_remainder(self.full * per_batch, self.per_rank)
        self.base = targets // max(self.full, 1)
        extras = targets - self.base * self.full
        self.extra_ends = np.cumsum(extras)  # lane i deals extras [ends[i-1], ends[i])
        self.extra_starts = self.extra_ends - extras

    def _dealt(self, upto: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """Extras among the first `upto` dealt that land in batches before `batch`."""
        full = max(self.full, 1)
        return (upto // full) * batch + np.minimum(upto % full, batch)

    def before_many(self, batches: np.ndarray) -> np.ndarray:
        b = np.asarray(batches, dtype=np.int64)[:, None]
        out = (
            self.base[None] * b
            + self._dealt(self.extra_ends[None], b)
            - self._dealt(self.extra_starts[None], b)
        )
        return np.where(b > self.full, self.per_rank[None], out)

    def before(self, batch: int) -> np.ndarray:
        return self.before_many(np.array([batch]))[0]

    def sizes(self, first: int, stop: int) -> np.ndarray:
        return np.diff(self.before_many(np.arange(first, stop + 1)), axis=0)


@dataclass(frozen=True)
class Layout:
    """One epoch, or the rest of one, cut into ranks, batches and workers.

    Its positions form lanes: one lane with every source interleaved (mixed batches), or one
    lane per source (stratified). Lane i holds `lengths[i]` real positions; each rank takes
    `per_rank[i]` consecutive ones (past the end: padding repeats, so that every rank yields as
    many batches), and its batches take them as `composition` says. A DataLoader worker takes
    a contiguous run of a rank's batches, so each reader reads contiguous runs of every lane.
    """

    lengths: tuple[int, ...]
    per_rank: tuple[int, ...]
    composition: Composition

    @classmethod
    def fixed(cls, lengths: Sequence[int], world: int, per_batch: int) -> Layout:
        """Lanes split evenly over `world` ranks (the last padded), each batch holding each
        lane's share."""
        per_rank = tuple(-(-int(n) // world) for n in lengths)
        return cls(tuple(int(n) for n in lengths), per_rank, FixedComposition(per_rank, per_batch))

    @property
    def batches(self) -> int:
        """Batches every rank yields."""
        return self.composition.batches

    def worker_batches(self, worker: int, workers: int) -> tuple[int, int]:
        """A worker's run of its rank's batches: as even as can be, the first ones longer."""
        share, extra = divmod(self.batches, workers)
        first = worker * share + min(worker, extra)
        return first, first + share + (worker < extra)

    def ranges(self, rank: int, first: int, stop: int) -> list[tuple[int, int]]:
        """Per lane, the positions [start, stop) that batches [first, stop) of `rank` take."""
        lo, hi = self.composition.before(first), self.composition.before(stop)
        base = [rank * m for m in self.per_rank]
        return [(b + int(a), b + int(z)) for b, a, z in zip(base, lo, hi, strict=True)]


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
    draw: int = 0  # which of the sample's draws in the epoch (its source's pass)


class Locator(Protocol):
    """A source's positions of an epoch → (shard, sample within the shard); `size` samples
    make one pass over it."""

    @property
    def size(self) -> int: ...

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def references(
    sources: Sequence[Locator], mixture: Mixture, start: int, stop: int, chunk: int = 4096
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
    sources: Sequence[Locator],
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
    shard, index, draw = np.empty_like(src), np.empty_like(src), np.empty_like(src)
    for s in np.unique(src):
        mask = src == s
        shard[mask], index[mask] = sources[s].locate(within[mask])
        draw[mask] = within[mask] // max(sources[s].size, 1)
    columns = (src.tolist(), shard.tolist(), index.tolist(), np.asarray(repeated).tolist())
    for s, shard_id, i, r, d in zip(*columns, draw.tolist(), strict=True):
        yield Reference(s, shard_id, i, bool(r), d)

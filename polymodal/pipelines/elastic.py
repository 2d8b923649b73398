"""Elastic resume: the rest of an epoch saved at W1 ranks × K1 workers, re-partitioned over
W2 × K2.

Every rank delivers the same number of batches, and which positions a (rank, worker) has
emitted after n batches is a pure function of the plan (its slice, its shuffle buffer's order
on integers, see `stages.shuffle.BufferOrder`). So a saved state's epoch, batch count, world
size and worker count say exactly which positions of the epoch were delivered by every rank,
with no state from the other ranks. `Remainder.after` lists the others, old reader by old
reader: what its buffer held, then the run it had not reached. That list is the sequence the
rest of the epoch reads, cut over the new ranks and workers like an ordinary epoch (padded with
marked repeats to equal batch counts per rank), each new reader through its own shuffle buffer.
A state saved inside such a rest-of-epoch resumes again the same way (`parent`).

Cost: replaying each old reader's buffer order up to its saved point, O(samples delivered) on
integers, once per resume; the remainder is held as runs, O(buffer) per old reader plus one
run per contiguous tail.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .partition import rank_range, worker_range
from .stages.shuffle import BufferOrder


def reader_range(
    length: int, world: int, rank: int, workers: int, worker: int, per_batch: int
) -> tuple[int, int, int]:
    """(start, stop, batches) of one (rank, worker) over a sequence of `length` positions
    padded to equal ranks: the partition every epoch and every rest of an epoch uses."""
    first, last = rank_range(length, world, rank)
    start, stop = worker_range(last - first, per_batch, workers, worker)
    return first + start, first + stop, -(-(stop - start) // per_batch)


def batches_done(per_worker: Sequence[int], batches: int) -> list[int]:
    """How many of a rank's first `batches` batches each worker made, in the DataLoader's
    round-robin order (`partition.batch_worker`), in O(workers²)."""
    done, level, left = [0] * len(per_worker), 0, batches
    while left > 0:
        active = [w for w, n in enumerate(per_worker) if n > level]
        if not active:
            break
        top = min(per_worker[w] for w in active)
        if left >= (top - level) * len(active):
            for w in active:
                done[w] += top - level
            left -= (top - level) * len(active)
            level = top
        else:
            rounds, extra = divmod(left, len(active))
            for i, w in enumerate(active):
                done[w] += rounds + (i < extra)
            left = 0
    return done


@dataclass(frozen=True)
class Remainder:
    """The positions of an epoch still to deliver, as runs in reading order: run k is epoch
    positions `starts[k]` .. `starts[k] + lengths[k]`."""

    starts: np.ndarray
    lengths: np.ndarray

    @property
    def length(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    @functools.cached_property
    def ends(self) -> np.ndarray:
        """One past each run's last remainder index (computed once: every read asks)."""
        return np.cumsum(self.lengths)

    def positions(self, indices: np.ndarray) -> np.ndarray:
        """The epoch positions of remainder indices (each in [0, length))."""
        ends = self.ends
        run = np.searchsorted(ends, indices, side="right")
        return self.starts[run] + (indices - (ends[run] - self.lengths[run]))

    def runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Remainder indices [lo, hi) as runs of epoch positions."""
        ends = self.ends
        out = []
        k = int(np.searchsorted(ends, lo, side="right"))
        while lo < hi and k < len(ends):
            begin = int(ends[k] - self.lengths[k])
            take = min(hi, int(ends[k])) - lo
            out.append((int(self.starts[k]) + lo - begin, take))
            lo += take
            k += 1
        return out

    @classmethod
    def after(
        cls,
        total: int,
        saved: Mapping[str, Any],
        per_batch: int,
        buffer: int,
        seed: Sequence[int],
        parent: Remainder | None = None,
    ) -> Remainder:
        """What is left of an epoch of `total` positions (or of `parent`, a rest of one) when
        every rank of `saved["world"]` × `saved["workers"]` had delivered `saved["batches"]`
        batches of `per_batch` samples through buffers of `buffer` (0 positions past the end:
        padding is never owed). `seed` + (rank, worker) seeds each old reader's buffer."""
        world, workers, batches = saved["world"], max(1, saved["workers"]), saved["batches"]
        length = total if parent is None else parent.length
        runs: list[tuple[int, int]] = []

        def keep(lo: int, hi: int) -> None:
            hi = min(hi, length)  # past the end: padding repeats, delivered or not
            if lo < hi:
                runs.extend([(lo, hi - lo)] if parent is None else parent.runs(lo, hi))

        for rank in range(world):
            slices = [
                reader_range(length, world, rank, workers, w, per_batch) for w in range(workers)
            ]
            done = batches_done([s[2] for s in slices], batches)
            for worker, (start, stop, _) in enumerate(slices):
                order = BufferOrder(stop - start, buffer, [*seed, rank, worker])
                for _ in range(min(done[worker] * per_batch, stop - start)):
                    order.step()
                for held in sorted(order.slots):
                    keep(start + held, start + held + 1)
                keep(start + order.read, stop)
        merged: list[list[int]] = []
        for start, n in runs:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1][1] += n
            else:
                merged.append([start, n])
        array = np.asarray(merged, dtype=np.int64).reshape(-1, 2)
        return cls(array[:, 0].copy(), array[:, 1].copy())

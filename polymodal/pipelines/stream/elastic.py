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

Length buckets (`stages.buckets`) give a group of `lookahead` planned batches in an order
that depends on the samples' lengths, which only the rank that read them knows. A group an
old reader had begun (`saved["lookahead"]`) is owed but for the samples it had given, which
every rank's state lists (`saved["begun"]`: per old rank and worker, their places in the
group's plan order; a trainer's checkpoint holds every rank's). Without them (one rank's state
alone) the group is owed whole: its batches given before the resize come again, at most
`lookahead - 1` per old reader, and the loader says so.

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

from polymodal.pipelines.stream.partition import Layout, shuffle_seed
from polymodal.pipelines.stream.stages.shuffle import BufferOrder


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

    @classmethod
    def of(cls, runs: Sequence[tuple[int, int]]) -> Remainder:
        """From (start, length) runs in reading order, touching ones merged."""
        merged: list[list[int]] = []
        for start, n in runs:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1][1] += n
            else:
                merged.append([start, n])
        array = np.asarray(merged, dtype=np.int64).reshape(-1, 2)
        return cls(array[:, 0].copy(), array[:, 1].copy())

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


@dataclass(frozen=True)
class Rest:
    """The rest of an epoch after a resize: per lane of its layout, the positions still to
    deliver (`Remainder`s), which the new run cuts like an epoch of lanes of those lengths."""

    lanes: tuple[Remainder, ...]
    world: int  # the world size the epoch was planned at (under a schedule, its counts)

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(lane.length for lane in self.lanes)

    @classmethod
    def after(
        cls,
        layout: Layout,
        saved: Mapping[str, Any],
        buffer: int,
        seed: Sequence[int],
        parent: Rest | None = None,
    ) -> Rest:
        """What is left of an epoch cut as `layout` (or of `parent`, a rest of one, cut so)
        when every rank of `saved["world"]` × `saved["workers"]` had delivered
        `saved["batches"]` batches through buffers of `buffer` (positions past a lane's end
        are padding, never owed). `seed` + (rank, worker, lane) seeds each old reader's
        buffer, as `shuffle_seed` does for the stream."""
        world, workers, batches = saved["world"], max(1, saved["workers"]), saved["batches"]
        runs: list[list[tuple[int, int]]] = [[] for _ in layout.lengths]

        def keep(lane: int, lo: int, hi: int) -> None:
            hi = min(hi, layout.lengths[lane])  # past the end: padding, delivered or not
            if lo < hi:
                runs[lane].extend(
                    [(lo, hi - lo)] if parent is None else parent.lanes[lane].runs(lo, hi)
                )

        spans = [layout.worker_batches(w, workers) for w in range(workers)]
        done = batches_done([stop - first for first, stop in spans], batches)
        group, begun = saved.get("lookahead", 0), saved.get("begun")  # length buckets
        composition = layout.composition
        for rank in range(world):
            for worker, (first, stop) in enumerate(spans):
                ranges = layout.ranges(rank, first, stop)
                orders = [
                    BufferOrder(end - start, buffer, shuffle_seed(seed, rank, worker, lane))
                    for lane, (start, end) in enumerate(ranges)
                ]
                given = done[worker]
                whole = given if not group or given == stop - first else given - given % group
                emitted = composition.before(first + whole) - composition.before(first)
                for order, count in zip(orders, emitted.tolist(), strict=True):
                    for _ in range(count):
                        order.step()
                if whole < given:  # a begun group: the samples it had not given are owed
                    rows = composition.sizes(first + whole, min(first + whole + group, stop))
                    places = [  # the group's samples in plan order, as the stream read them
                        (lane, ranges[lane][0] + position)
                        for row in rows.tolist()
                        for lane, count in enumerate(row)
                        for position in orders[lane].take(count)
                    ]
                    sent = set(begun[rank][worker]) if begun else set()
                    for n, (lane, position) in enumerate(places):
                        if n not in sent:
                            keep(lane, position, position + 1)
                for lane, (order, (start, end)) in enumerate(zip(orders, ranges, strict=True)):
                    for held in sorted(order.slots):
                        keep(lane, start + held, start + held + 1)
                    keep(lane, start + order.read, end)
        planned = saved["world"] if parent is None else parent.world
        return cls(tuple(Remainder.of(lane) for lane in runs), planned)

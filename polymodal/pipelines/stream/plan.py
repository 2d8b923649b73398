"""The stream's plan, apart from any byte: which references each (rank, worker) gives in which
batch, for any epoch or rest of one. `Stream` reads and decodes what this gives; tests and
benchmarks run it alone, on sample references, in microseconds.

`StreamPlan` holds what the order depends on (per source, samples per shard; the mixture's
rules; batch size, seed, shuffle buffer). `WorkerOrder` is one reader's batches: a shuffle
buffer per lane over its run of the lane (`stages.Shuffle`), emptied into batches of the
composition the layout gives. Its state is the buffers' (`state_dict`), so a resumed reader
re-reads at most one buffer of each lane.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polymodal.pipelines.stream.elastic import Rest
from polymodal.pipelines.stream.mixtures import MixturePlan, SourceEpoch
from polymodal.pipelines.stream.partition import (
    Layout,
    Mixture,
    Reference,
    references_at,
    shuffle_seed,
)
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.stream.stages.shuffle import Shuffle

CHUNK = 4096  # references mapped at once, and batch compositions computed at once


@dataclass
class WorkerSlice:
    """One (rank, worker)'s share of an epoch: its run of the rank's batches, and per lane
    the positions [start, stop) they take."""

    first: int
    stop: int
    ranges: list[tuple[int, int]]

    @property
    def batches(self) -> int:
        return self.stop - self.first


class StreamPlan:
    """The pure plan of a stream (module docstring): a function of its arguments, the epoch,
    and the world size, rank, workers and worker asking."""

    def __init__(
        self,
        counts: Sequence[np.ndarray],
        mixture: MixturePlan,
        seed: int,
        shuffle: bool,
        buffer_size: int,
    ) -> None:
        self.counts, self.mixture = list(counts), mixture
        self.seed, self.shuffle, self.buffer_size = seed, shuffle, buffer_size
        self.per_batch = mixture.per_batch
        self._rests: dict[tuple[int, str], Rest] = {}

    def layout(self, epoch: int, world: int, rest: Rest | None = None, workers: int = 1) -> Layout:
        """How `epoch` (or the `rest` of it left by a resized run) is cut into ranks, batches
        and workers: O(sources)."""
        if rest is not None:
            return Layout.fixed(rest.lengths, world, self.per_batch)
        return self.mixture.layout(epoch, world, workers)

    def orders(self, epoch: int, world: int) -> list[SourceEpoch]:
        """Each source's samples of `epoch` in reading order: built once per reader and
        epoch, O(shards)."""
        return [
            self.mixture.source_epoch(i, counts, self.seed, epoch, self.shuffle, world)
            for i, counts in enumerate(self.counts)
        ]

    def lanes(self, epoch: int, world: int) -> list[Mixture]:
        """How each lane's positions map to sources: every source interleaved in one lane, or
        (stratified) one lane per source."""
        counts = self.mixture.counts(epoch, world)
        if self.mixture.batching == "mixed":
            return [Mixture(counts)]
        return [Mixture((n,), (i,)) for i, n in enumerate(counts)]

    def slice(self, place: Place, rest: Rest | None = None, epoch: int = 0) -> WorkerSlice:
        """One reader's batches of `epoch` (or of a `rest` of it) and the positions of each
        lane they take."""
        layout = self.layout(epoch, place.world, rest, place.workers)
        first, stop = layout.worker_batches(place.worker, place.workers)
        return WorkerSlice(first, stop, layout.ranges(place.rank, first, stop))

    def remainder(self, epoch: int, saved: Mapping[str, Any] | None) -> Rest | None:
        """The rest of `epoch` after a state saved at another world size or worker count
        (`saved`: its world, workers and batches, and the rest it was itself in, `parent`);
        see `elastic`. Cached: every worker of a resumed epoch asks."""
        if saved is None:
            return None
        key = (epoch, json.dumps(saved, sort_keys=True))
        if key not in self._rests:
            parent = self.remainder(epoch, saved.get("parent"))
            self._rests = {
                key: Rest.after(
                    self.layout(epoch, saved["world"], parent, max(1, saved["workers"])),
                    saved,
                    self.buffer_size if self.shuffle else 1,
                    (self.seed, epoch),
                    parent,
                )
            }
        return self._rests[key]

    def worker_order(self, epoch: int, place: Place, rest: Rest | None = None) -> WorkerOrder:
        return WorkerOrder(self, epoch, place, rest)


class WorkerOrder:
    """One reader's batches of references (module docstring); `stages` are its shuffle
    buffers, one per lane, to save and restore with the rest of the reader's chain."""

    def __init__(self, plan: StreamPlan, epoch: int, place: Place, rest: Rest | None) -> None:
        self.plan, self.epoch, self.world, self.rest = plan, epoch, place.world, rest
        self.layout = plan.layout(epoch, place.world, rest, place.workers)
        self.part = plan.slice(place, rest, epoch)
        self.shuffles = [
            Shuffle(
                stop - start,
                plan.buffer_size,
                shuffle_seed((plan.seed, epoch), place.rank, place.worker, lane),
                plan.shuffle,
            )
            for lane, (start, stop) in enumerate(self.part.ranges)
        ]

    @property
    def stages(self) -> dict[str, Shuffle]:
        """The buffers by state name: `shuffle`, then `shuffle.1`, ... for more lanes."""
        return {"shuffle" + (f".{n}" if n else ""): s for n, s in enumerate(self.shuffles)}

    def batches(
        self,
        read: Callable[[Iterator[Reference]], Iterator[tuple[Reference, Any]]],
        done: int = 0,
    ) -> Iterator[list[tuple[Reference, Any]]]:
        """The reader's batches after its first `done`, as (reference, item) lists; `read`
        turns references, in the order given, into items (the stream reads the samples)."""
        planned = self.world if self.rest is None else self.rest.world  # the epoch's own
        orders = self.plan.orders(self.epoch, planned)
        lanes = self.plan.lanes(self.epoch, planned)
        streams = [
            shuffle.shuffle(self._reading(lane, orders, lanes[lane], read))
            for lane, shuffle in enumerate(self.shuffles)
        ]
        for number in range(self.part.first + done, self.part.stop, CHUNK):
            rows = self.layout.composition.sizes(number, min(number + CHUNK, self.part.stop))
            for row in rows.tolist():
                yield [next(streams[lane]) for lane, count in enumerate(row) for _ in range(count)]

    def _reading(
        self,
        lane: int,
        orders: Sequence[SourceEpoch],
        mixture: Mixture,
        read: Callable[[Iterator[Reference]], Iterator[tuple[Reference, Any]]],
    ) -> Callable[[Sequence[int]], Iterator[tuple[Reference, Any]]]:
        """`read(positions)` of one lane for its buffer: the items of increasing positions of
        the reader's run, a run mapped a chunk at a time."""
        start, length = self.part.ranges[lane][0], self.layout.lengths[lane]
        rest = None if self.rest is None else self.rest.lanes[lane]

        def refs(at: np.ndarray) -> Iterator[Reference]:
            padding = at >= length
            if rest is not None:  # the rest of an epoch: its indices to epoch positions
                at = rest.positions(at % max(length, 1))
            return references_at(orders, mixture, at, padding)

        def lane_read(positions: Sequence[int]) -> Iterator[tuple[Reference, Any]]:
            if isinstance(positions, range):
                chunks = (
                    refs(np.arange(lo, min(lo + CHUNK, positions.stop), dtype=np.int64) + start)
                    for lo in range(positions.start, positions.stop, CHUNK)
                )
                return read(ref for chunk in chunks for ref in chunk)
            return read(refs(np.asarray(positions, dtype=np.int64) + start))

        return lane_read

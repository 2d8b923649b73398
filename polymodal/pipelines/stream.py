"""The streaming reader: shards → raw samples → fields → batches, exactly once per epoch over
ranks × workers, in an order that is a pure function of (seed, epoch, world size, workers).

One DataLoader worker runs a chain of small stages, each with `state_dict()` /
`load_state_dict()`:

    Reader   the worker's references (see `partition`), read in order: sequential within a
             shard, a seek by the sidecar's offsets across shards, retries with backoff
    Shuffle  a bounded buffer whose emission order is simulated on integers, so a resumed run
             rebuilds the buffer's contents by re-reading (not decoding) at most its size
    Decode   the field adapters, with a generator per sample seeded from (seed, epoch, key)
    Batch    `collate` of `batch_size` samples; a sample that cannot be read or decoded is
             reported and replaced by a repeat of a good one (marked), so shapes and batch
             counts never change

`StreamLoader` (from `Stream.loader`) runs the chain in `torch.utils.data.DataLoader` workers.
Each batch carries its worker's state; the loader keeps the state of the last batch it handed
out per worker, which is exactly what a resumed run must skip.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from polymodal.adapters import Adapter, Batch, DecodeError, collate, get
from polymodal.datasets.files import (
    DEFAULT_REMOTE,
    HashingReader,
    Remote,
    file_size,
    is_transient,
    local_path,
    open_read,
)
from polymodal.datasets.index import ShardIndex, ShardInfo
from polymodal.datasets.layout import ERROR_KEY, MAX_MEMBER_BYTES, Problem
from polymodal.datasets.reader import shard_samples
from polymodal.errors import UserError
from polymodal.seeds import stable_seed

from .partition import (
    Mixture,
    Reference,
    SourceOrder,
    batch_worker,
    rank_range,
    references,
    worker_range,
)

log = logging.getLogger("polymodal.stream")

SourceSpec = str | Path | Sequence[str | Path] | Sequence[tuple[str | Path, float]]
FieldSpec = Adapter | str | tuple[str, Sequence[str]]


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK / WORLD_SIZE; a
    rank outside [0, world) is an error naming both (it would read nothing but repeats)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ValueError(
            f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
            "must be integers"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} with WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return rank, world


@dataclass
class Skip:
    """A sample that was not delivered, and why; or a shard's worth of them (`samples`), or a
    disagreement with the index found while reading (stage `check`, `samples` 0)."""

    key: str
    stage: str
    reason: str
    url: str = ""
    samples: int = 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "stage": self.stage,
            "reason": self.reason,
            "url": self.url,
        }
        if self.samples != 1:
            out["samples"] = self.samples
        return out


class ShardUnavailable(OSError):
    """A shard could not be opened or read, after retries."""


class ShardChanged(ValueError):
    """The shard on storage is not the one the index describes (not worth another try)."""


class StreamError(UserError, RuntimeError):
    """The stream cannot go on: nothing at all could be read, or a DataLoader worker died or
    hung. Raised in the process that iterates, never inside a worker."""


# ---------------------------------------------------------------------------------------------
# Stages


SKIP_AHEAD = 64  # samples a reader reads past rather than reopen its shard at an offset
BATCH_TIMEOUT = 600.0  # seconds a DataLoader worker may take for one batch before it is hung
FILLER_TRIES = 8  # samples per shard tried when looking for a batch filler
STAGES_WITH_ERRORS = ("read", "decode")  # the stages that take an error policy


@dataclass
class _OpenShard:
    """A shard a reader is in: its samples from `next` on, and, when it was opened at byte 0,
    a hasher that checks its sha256 once the last sample has been read."""

    shard: int
    next: int
    samples: Iterator[dict[str, Any]]
    file: IO[bytes]
    hasher: HashingReader | None


class Reader:
    """Raw samples of references, in the order given, checked against the index on the way.

    Keeps one open shard per source and reads on while the next reference is at most
    `SKIP_AHEAD` samples further in it; otherwise it opens the shard at the reference's sample
    (a seek to its byte offset from the sidecar). What it checks costs no extra read: the file
    size when the shard is opened, and, after the shard's last indexed sample, that no sample
    follows and (for a shard read from its first byte) that the sha256 is the index's; each
    disagreement becomes a note, delivered with the next batch's skips. A transient error
    (timeout, dropped connection) reopens the shard at the sample it reached, up to
    `remote.tries` times; a shard that still fails is reported with its URL, and every
    reference into it is skipped under the `skip` policy. Its state is those failed shards, so
    a resumed run does not retry them.
    """

    def __init__(
        self,
        indexes: Sequence[ShardIndex],
        errors: str,
        remote: Remote = DEFAULT_REMOTE,
        max_member_bytes: int = MAX_MEMBER_BYTES,
    ) -> None:
        self.indexes, self.errors, self.remote = indexes, errors, remote
        self.max_member_bytes = max_member_bytes
        self._open: dict[int, _OpenShard] = {}
        self._failed: dict[tuple[int, int], str] = {}
        self.notes: list[Skip] = []

    def state_dict(self) -> dict[str, Any]:
        return {"failed": [[s, n, reason] for (s, n), reason in sorted(self._failed.items())]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._failed = {(s, n): reason for s, n, reason in state["failed"]}

    def read(self, refs: Iterator[Reference]) -> Iterator[tuple[Reference, dict | Skip]]:
        for ref in refs:
            yield ref, self._sample(ref)

    def close(self) -> None:
        for source in list(self._open):
            self._close(source)

    def _sample(self, ref: Reference) -> dict[str, Any] | Skip:
        index = self.indexes[ref.source]
        shard = index.shards[ref.shard]
        where = (ref.source, ref.shard)
        key = f"{shard.name}#{ref.index}"  # the sample's place, when its key cannot be read
        url = index.url(shard)
        if where in self._failed:
            return Skip(key, "read", self._failed[where], url)

        def attempt() -> dict[str, Any]:
            try:
                return self._next(index, ref)
            except Exception:
                self._close(ref.source)  # a next try opens the shard at this sample
                raise

        try:
            sample = self.remote.call(attempt)
        except StopIteration:
            return self._fail(where, key, url, "fewer samples than the index says")
        except Exception as exc:
            tries = self.remote.tries
            reason = f"cannot read after {tries} tries: {exc}" if is_transient(exc) else None
            return self._fail(where, key, url, reason or _read_failure(exc))
        if ref.index == shard.samples - 1:
            self._check_end(ref.source, shard, url)
        if ERROR_KEY in sample:
            return Skip(sample["__key__"], "read", sample[ERROR_KEY], url)
        return sample

    def _next(self, index: ShardIndex, ref: Reference) -> dict[str, Any]:
        current = self._open.get(ref.source)
        gap = ref.index - current.next if current is not None and current.shard == ref.shard else -1
        if not 0 <= gap <= SKIP_AHEAD:  # far from the open shard's place: open at the sample
            self._close(ref.source)
            current = self._open_at(index, ref)
            self._open[ref.source] = current
            gap = 0
        for _ in range(gap):  # close ahead in the open shard: read on (not decode)
            next(current.samples)
        sample = next(current.samples)
        current.next = ref.index + 1
        return sample

    def _open_at(self, index: ShardIndex, ref: Reference) -> _OpenShard:
        shard = index.shards[ref.shard]
        f = open_read(index.url(shard), stream=index.format == "tar", remote=self.remote)
        try:
            size = file_size(f)
            if size is not None and size != shard.bytes:
                raise ShardChanged(
                    f"the shard is {size:,} bytes, the index says {shard.bytes:,}: it changed "
                    "since it was indexed (`polymodal validate` checks it; index it again)"
                )
            hasher = HashingReader(f) if ref.index == 0 and index.format == "tar" else None
            samples = shard_samples(
                hasher or f, index, shard, ref.index, _ignore_member, self.max_member_bytes
            )
        except BaseException:
            f.close()
            raise
        return _OpenShard(ref.shard, ref.index, samples, f, hasher)

    def _check_end(self, source: int, shard: ShardInfo, url: str) -> None:
        """After a shard's last indexed sample: nothing may follow, and a shard read whole
        must hash to the index's sha256."""
        current = self._open.get(source)
        if current is None:
            return
        try:
            extra = next(current.samples, None)
            if extra is not None:
                self._note(
                    shard,
                    url,
                    f"the shard holds more samples than the {shard.samples:,} the index says "
                    f"(the next is {extra['__key__']!r}): they were not delivered; index it again",
                )
            elif current.hasher is not None:
                current.hasher.drain()
                digest = current.hasher.sha.hexdigest()
                if digest != shard.sha256:
                    self._note(
                        shard,
                        url,
                        f"the shard's sha256 is {digest[:12]}…, the index says "
                        f"{shard.sha256[:12]}…: it was replaced or damaged after indexing, so "
                        "its samples this epoch may not be the indexed ones",
                    )
        except Exception as exc:
            self._note(shard, url, f"damaged after its last indexed sample: {exc}")
        self._close(source)

    def _note(self, shard: ShardInfo, url: str, reason: str) -> None:
        self.notes.append(Skip(shard.name, "check", reason, url, samples=0))

    def _close(self, source: int) -> None:
        current = self._open.pop(source, None)
        if current is not None:
            current.file.close()

    def _fail(self, where: tuple[int, int], key: str, url: str, reason: str) -> Skip:
        if self.errors == "raise":
            raise ShardUnavailable(f"{url}: {reason}")
        self._failed[where] = reason
        self._close(where[0])
        return Skip(key, "read", reason, url)


def _read_failure(exc: BaseException) -> str:
    """Why a shard cannot be read, in words."""
    if isinstance(exc, ShardChanged):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "the shard is missing"
    return f"damaged shard: {exc}"


def _ignore_member(problem: Problem) -> None:
    """Odd tar members (no extension, not files) are not samples; `polymodal index` reports
    them when a dataset is indexed, the stream just passes over them."""


class Shuffle:
    """A shuffle buffer of `size` samples whose order is computed on read positions only.

    The emission order depends on the positions and the generator, never on the data, so the
    state is one number (how many were emitted) and a resumed buffer is rebuilt by replaying
    the order on integers and re-reading what the buffer held: at most `size` samples.
    """

    def __init__(self, length: int, size: int, seed: Sequence[int], enabled: bool = True) -> None:
        self.length, self.size, self.seed, self.enabled = length, size, list(seed), enabled
        self.emitted = 0

    def state_dict(self) -> dict[str, int]:
        return {"emitted": self.emitted}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.emitted = state["emitted"]

    def shuffle(
        self, read: Callable[[Sequence[int]], Iterator[tuple[Reference, dict | Skip]]]
    ) -> Iterator[tuple[Reference, dict | Skip]]:
        """Emit the items of read positions 0..length-1 in buffer order; `read(positions)`
        gives the items of increasing positions. On resume the order is replayed on integers
        to the saved point; the positions the buffer held then are read again (at most `size`
        of them, read and not decoded), then reading goes on."""
        order = BufferOrder(self.length, self.size if self.enabled else 1, self.seed)
        for _ in range(self.emitted):
            order.step()
        held = sorted(order.slots)
        buffer = dict(zip(held, read(held), strict=True))
        items = read(range(order.read, self.length))
        next_position = order.read
        while (position := order.step()) is not None:
            while next_position < order.read:
                buffer[next_position] = next(items)
                next_position += 1
            self.emitted += 1
            yield buffer.pop(position)


class BufferOrder:
    """The classic shuffle buffer, on positions 0..length-1 instead of data: fill `size`
    slots; then each step emits a random slot and puts the next position in its place; at
    the end the remaining slots leave in random order. `slots` holds what the buffer holds
    after each step, `read` how many positions it has taken in."""

    def __init__(self, length: int, size: int, seed: Sequence[int]) -> None:
        self.length, self.size = length, size
        self.rng = np.random.default_rng(list(seed))
        self.slots: list[int] = []
        self.read = 0
        self._draws: list[int] = []
        self._draining = False

    def step(self) -> int | None:
        """The next position to emit, or None at the end."""
        while len(self.slots) < self.size and self.read < self.length:
            self.slots.append(self.read)
            self.read += 1
        if self.read < self.length:
            if not self._draws:  # drawn in blocks: the same numbers, far fewer calls
                self._draws = self.rng.integers(0, self.size, 1024).tolist()[::-1]
            slot = self._draws.pop()
            emitted, self.slots[slot] = self.slots[slot], self.read
            self.read += 1
            return emitted
        if not self._draining:
            self.rng.shuffle(self.slots)
            self._draining = True
        return self.slots.pop() if self.slots else None


class Decode:
    """Raw samples → fields, with the adapters of each field and a per-sample generator."""

    def __init__(self, fields: Mapping[str, Adapter], errors: str, seed: int, epoch: int):
        self.fields, self.errors, self.seed, self.epoch = fields, errors, seed, epoch
        self.skipped = 0

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.skipped = state["skipped"]

    def decode(self, ref: Reference, raw: dict[str, Any] | Skip) -> dict[str, Any] | Skip:
        if isinstance(raw, Skip):
            self.skipped += 1
            return raw
        key = raw["__key__"]
        seed = stable_seed(key, self.seed * 1_000_003 + self.epoch)
        out: dict[str, Any] = {"__key__": key, "__repeated__": ref.repeated}
        for name, adapter in self.fields.items():
            # one generator per field, equally seeded: audio and video cut the same moment
            rng = np.random.default_rng(seed) if adapter.uses_rng else None
            try:
                out[name] = adapter.decode(raw, rng)
            except DecodeError as exc:
                if self.errors == "raise":
                    raise
                self.skipped += 1
                return Skip(key, "decode", f"field {name!r}: {exc.reason}", raw.get("__url__", ""))
        return out


class Batcher:
    """Groups decoded samples into `Batch`es; a skipped sample becomes a marked repeat of a good
    one of the same batch. A batch with no good sample is filled with repeats of `filler()`,
    the dataset's first readable sample (the same in every run, so a resumed run fills it
    alike); when not even that exists, `batch` returns None."""

    def __init__(self, batch_size: int, filler: Callable[[], dict[str, Any] | None]) -> None:
        self.batch_size = batch_size
        self.batches = 0
        self.filler = filler

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.batches = state["batches"]

    def batch(self, items: list[dict[str, Any] | Skip]) -> tuple[Batch | None, list[Skip]]:
        good = [item for item in items if not isinstance(item, Skip)]
        skips = [item for item in items if isinstance(item, Skip)]
        self.batches += 1
        repeat = good[0] if good else self.filler()
        if repeat is None:
            return None, skips
        filler = {**repeat, "__repeated__": True}
        return collate([filler if isinstance(item, Skip) else item for item in items]), skips


# ---------------------------------------------------------------------------------------------
# The stream


@dataclass
class WorkerSlice:
    """One (rank, worker)'s share of an epoch: positions of the padded epoch and batch count."""

    start: int
    stop: int
    batches: int


class Stream:
    """Batches of fields from one or more sharded datasets, for one rank.

    `source`: a dataset folder or URL prefix (`http(s)://`, `s3://`, `file://`), a list of them,
    or a list of `(source, weight)` pairs, mixed by weight into one epoch of the same total
    length. `fields`: field name → adapter (an instance, a registered name, or `(name,
    extensions)`); by default one field per modality of the index's schema. `errors`: `"skip"`
    (count, report, go on) or `"raise"`, for every stage or per stage (`{"read": "raise",
    "decode": "skip"}`). `remote`: timeouts and tries of remote reads. `max_member_bytes`: no
    tar member larger than this is read (its sample is skipped and reported).

    Local shards whose size is not the index's are left out of the plan at construction
    (reported as skipped each epoch; an error under the `raise` read policy): the index does
    not describe them, and an index that claims more than is there must cost nothing to refuse.
    """

    def __init__(
        self,
        source: SourceSpec,
        fields: Mapping[str, FieldSpec] | None = None,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 1000,
        errors: str | Mapping[str, str] = "skip",
        remote: Remote = DEFAULT_REMOTE,
        max_member_bytes: int = MAX_MEMBER_BYTES,
    ) -> None:
        policies = (
            dict.fromkeys(STAGES_WITH_ERRORS, errors)
            if isinstance(errors, str)
            else {**dict.fromkeys(STAGES_WITH_ERRORS, "skip"), **errors}
        )
        if set(policies) != set(STAGES_WITH_ERRORS) or not set(policies.values()) <= {
            "skip",
            "raise",
        }:
            raise ValueError(
                f"errors must be 'skip' or 'raise', or a mapping of "
                f"{list(STAGES_WITH_ERRORS)} to those, got {errors!r}"
            )
        if batch_size < 1 or buffer_size < 1 or max_member_bytes < 1:
            raise ValueError("batch_size, buffer_size and max_member_bytes must be positive")
        self.sources, self.weights = _sources(source)
        self.indexes = [ShardIndex.load(s, remote) for s in self.sources]
        self.fields = _resolve_fields(fields, self.indexes)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.buffer_size, self.errors, self.remote = buffer_size, policies, remote
        self.max_member_bytes = max_member_bytes
        self.excluded = [_size_mismatches(index) for index in self.indexes]
        if policies["read"] == "raise" and any(self.excluded):
            first = next(skip for skips in self.excluded for skip in skips.values())
            raise StreamError(f"{first.url}: {first.reason}")
        for skip in (skip for skips in self.excluded for skip in skips.values()):
            log.warning("left out %s: %s", skip.url, skip.reason)
        self._fillers: dict[int, dict[str, Any] | None] = {}

    # --- the pure plan ---

    def counts(self, source: int) -> list[int]:
        """Samples per shard of a source, as the plan sees them (left-out shards hold none)."""
        excluded = self.excluded[source]
        return [
            0 if n in excluded else s.samples for n, s in enumerate(self.indexes[source].shards)
        ]

    def orders(self, epoch: int) -> tuple[list[SourceOrder], Mixture]:
        orders = [
            SourceOrder.build(self.counts(i), self.seed, epoch, self.shuffle, i)
            for i in range(len(self.indexes))
        ]
        return orders, Mixture.from_weights([o.total for o in orders], self.weights)

    def slice(self, epoch: int, rank: int, world: int, worker: int, workers: int) -> WorkerSlice:
        total = self.orders(epoch)[1].total
        first, last = rank_range(total, world, rank)
        start, stop = worker_range(last - first, self.batch_size, workers, worker)
        return WorkerSlice(first + start, first + stop, math.ceil((stop - start) / self.batch_size))

    def batches_per_epoch(self, world: int | None = None) -> int:
        """Batches every rank yields per epoch (the same for every rank)."""
        world = world or distributed_rank_world()[1]
        total = self.orders(0)[1].total  # the epoch length does not depend on the epoch
        first, last = rank_range(total, world, 0)
        return math.ceil((last - first) / self.batch_size)

    def config(self, world: int, workers: int) -> dict[str, Any]:
        """What the order depends on: a resumed run must match it."""
        return {
            "sources": [str(s) for s in self.sources],
            "weights": self.weights,
            "samples": [sum(self.counts(i)) for i in range(len(self.indexes))],
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "buffer_size": self.buffer_size,
            "world": world,
            "workers": workers,
        }

    # --- one worker's chain ---

    def worker_batches(
        self,
        epoch: int,
        rank: int,
        world: int,
        worker: int = 0,
        workers: int = 1,
        state: Mapping[str, Any] | None = None,
    ) -> Iterator[tuple[Batch, dict[str, Any], list[Skip]]]:
        """(batch, chain state after it, skips in it) for one (rank, worker) and epoch; the
        batch is None when not one sample of the dataset can be read to fill it."""
        orders, mixture = self.orders(epoch)
        part = self.slice(epoch, rank, world, worker, workers)
        reader = Reader(self.indexes, self.errors["read"], self.remote, self.max_member_bytes)
        shuffle = Shuffle(
            part.stop - part.start, self.buffer_size, (self.seed, epoch, rank, worker), self.shuffle
        )
        decode = Decode(self.fields, self.errors["decode"], self.seed, epoch)
        batcher = Batcher(self.batch_size, lambda: self.filler(epoch))
        stages = {"reader": reader, "shuffle": shuffle, "decode": decode, "batch": batcher}
        for name, stage in stages.items():
            if state is not None:
                stage.load_state_dict(state[name])

        def read(positions: Sequence[int]) -> Iterator[tuple[Reference, dict | Skip]]:
            """Items of increasing worker positions; gaps are read past, not opened anew."""
            if not positions:
                return iter(())
            first, last = positions[0], positions[-1] + 1
            refs = references(orders, mixture, part.start + first, part.start + last)
            if not isinstance(positions, range):
                wanted = set(positions)
                refs = (ref for p, ref in zip(range(first, last), refs, strict=True) if p in wanted)
            return reader.read(refs)

        def emit(pending: list[dict[str, Any] | Skip]) -> tuple[Batch | None, dict, list[Skip]]:
            batch, skips = batcher.batch(pending)
            skips, reader.notes = skips + reader.notes, []
            return batch, {n: s.state_dict() for n, s in stages.items()}, skips

        pending: list[dict[str, Any] | Skip] = []
        try:
            for ref, raw in shuffle.shuffle(read):
                pending.append(decode.decode(ref, raw))
                if len(pending) == self.batch_size:
                    yield emit(pending)
                    pending = []
            if pending:
                yield emit(pending)
        finally:
            reader.close()

    def filler(self, epoch: int) -> dict[str, Any] | None:
        """The first sample of the dataset (sources and shards in index order, up to
        `FILLER_TRIES` samples a shard) that reads and decodes: what a batch with no good
        sample is padded with. Cached per epoch (decoding depends on it)."""
        if epoch not in self._fillers:
            self._fillers = {epoch: self._find_filler(epoch)}
        return self._fillers[epoch]

    def _find_filler(self, epoch: int) -> dict[str, Any] | None:
        reader = Reader(self.indexes, "skip", self.remote, self.max_member_bytes)
        decode = Decode(self.fields, "skip", self.seed, epoch)
        try:
            for source in range(len(self.indexes)):
                for shard, count in enumerate(self.counts(source)):
                    for i in range(min(count, FILLER_TRIES)):
                        ref = Reference(source, shard, i, True)
                        item = decode.decode(ref, reader._sample(ref))
                        if not isinstance(item, Skip):
                            return item
                        if (source, shard) in reader._failed:
                            break
        finally:
            reader.close()
        return None

    def __iter__(self) -> Iterator[Batch]:
        """One epoch (epoch 0) in this process, for this rank; `loader()` for more."""
        rank, world = distributed_rank_world()
        for batch, _, skips in self.worker_batches(0, rank, world):
            yield _usable(batch, skips, 0)

    def loader(
        self,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch: int = 2,
        batch_timeout: float = BATCH_TIMEOUT,
    ) -> StreamLoader:
        """The DataLoader-backed iterable over epochs. With workers, a batch that has not
        arrived after `batch_timeout` seconds (a decoder that hangs) is a `StreamError`."""
        return StreamLoader(self, num_workers, pin_memory, prefetch, batch_timeout)


def _size_mismatches(index: ShardIndex) -> dict[int, Skip]:
    """Local shards whose size on disk is not the index's, as skips of all their samples (one
    `stat` per shard; a missing shard is left to the reader, which reports it per sample)."""
    base = local_path(index.base)
    if base is None:
        return {}
    out = {}
    for n, shard in enumerate(index.shards):
        try:
            size = (base / shard.name).stat().st_size
        except OSError:
            continue
        if size != shard.bytes:
            out[n] = Skip(
                f"{shard.name} (all {shard.samples:,} samples)",
                "read",
                f"the shard is {size:,} bytes, the index says {shard.bytes:,}: left out; it "
                "changed since it was indexed (`polymodal validate` checks it; index it again)",
                index.url(shard),
                samples=shard.samples,
            )
    return out


def _sources(source: SourceSpec) -> tuple[list[str], list[float] | None]:
    if isinstance(source, (str, Path)):
        return [str(source)], None
    items = list(source)
    if items and all(isinstance(i, tuple) for i in items):
        return [str(s) for s, _ in items], [float(w) for _, w in items]
    return [str(s) for s in items], None


def _resolve_fields(
    fields: Mapping[str, FieldSpec] | None, indexes: Sequence[ShardIndex]
) -> dict[str, Adapter]:
    """Field name → adapter instance. By default, one field per modality in the schema,
    reading that modality's extensions."""
    if fields is None:
        by_modality: dict[str, list[str]] = {}
        for index in indexes:
            for ext, modality in index.fields.items():
                if modality and ext not in by_modality.setdefault(modality, []):
                    by_modality[modality].append(ext)
        if not by_modality:
            raise ValueError("the index names no modalities: pass fields=")
        return {m: get(m)(extensions=exts) for m, exts in sorted(by_modality.items())}
    out = {}
    for name, spec in fields.items():
        if isinstance(spec, Adapter):
            out[name] = spec
        elif isinstance(spec, str):
            out[name] = get(spec)()
        else:
            adapter_name, extensions = spec
            out[name] = get(adapter_name)(extensions=list(extensions))
    return out


# ---------------------------------------------------------------------------------------------
# DataLoader integration


class _EpochDataset(IterableDataset):
    """What DataLoader workers run: the epoch comes from shared memory (workers persist
    across epochs), resume states from the loader, once."""

    def __init__(self, stream: Stream, rank: int, world: int) -> None:
        super().__init__()
        self.stream, self.rank, self.world = stream, rank, world
        self.epoch = multiprocessing.Value("q", 0)
        self.resume: tuple[int, dict[int, Any]] | None = None

    def __iter__(self) -> Iterator[tuple[int, Batch, dict[str, Any], list[dict[str, str]]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = self.epoch.value
        state = None
        if self.resume is not None and self.resume[0] == epoch:
            state = self.resume[1].get(worker)
        self.resume = None  # this copy resumes once; later epochs start from the beginning
        for batch, new_state, skips in self.stream.worker_batches(
            epoch, self.rank, self.world, worker, workers, state
        ):
            yield worker, batch, new_state, [s.as_dict() for s in skips]


def _usable(batch: Batch | None, skips: list[Skip] | list[dict[str, Any]], epoch: int) -> Batch:
    """The batch, or the `StreamError` that says why there is none (nothing could be read)."""
    if batch is not None:
        return batch
    reasons = sorted({s.reason if isinstance(s, Skip) else s["reason"] for s in skips})
    raise StreamError(
        f"epoch {epoch}: not one sample of the dataset could be read and decoded to fill a "
        f"batch; reasons: {'; '.join(reasons[:3]) or 'none given'}"
    )


def _quiet_sigchld() -> Any:
    """Set PyTorch's SIGCHLD handler aside (main thread only) and return it. Once a worker
    died, the handler raises for it at every child exit until its loader has stopped its other
    workers, which it does only after joining them."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _restore_sigchld(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGCHLD, previous)


def _a_worker_died(iterator: Any, wait: float = 2.0) -> bool:
    """Whether one of a DataLoader iterator's workers has exited (a worker killed while it
    sends a batch shows first as a broken queue, before it is reaped)."""
    workers = getattr(iterator, "_workers", [])
    deadline = time.monotonic() + wait
    while True:
        if any(not w.is_alive() for w in workers):
            return True
        if time.monotonic() > deadline or not workers:
            return False
        time.sleep(0.05)


def _timed_out(exc: BaseException) -> bool:
    """Whether PyTorch says no batch came within the DataLoader's timeout."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader timed out")


def is_dead_worker(exc: BaseException) -> bool:
    """Whether PyTorch says a DataLoader worker process died."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader worker (pid")


def _as_is(item: Any) -> Any:
    """DataLoader's default conversion rebuilds Mappings (a Batch would lose its keys)."""
    return item


class StreamLoader:
    """A DataLoader over a `Stream`, one epoch per iteration, with exact mid-epoch resume.

    `state_dict()` after any batch, in any process later `load_state_dict()`, and iteration
    goes on with exactly the batches the uninterrupted run would have yielded next (keys and
    tensors). `report()` lists the samples skipped this epoch, with keys and reasons.
    """

    def __init__(
        self,
        stream: Stream,
        num_workers: int,
        pin_memory: bool,
        prefetch: int,
        batch_timeout: float = BATCH_TIMEOUT,
    ) -> None:
        if batch_timeout <= 0:
            raise ValueError(f"batch_timeout must be positive, got {batch_timeout}")
        self.batch_timeout = batch_timeout
        self.stream = stream
        self.rank, self.world = distributed_rank_world()
        self.num_workers, self.pin_memory, self.prefetch = num_workers, pin_memory, prefetch
        self.dataset = _EpochDataset(stream, self.rank, self.world)
        self.epoch, self.batches = 0, 0
        self.worker_states: dict[int, Any] = {}
        self.skipped: list[dict[str, Any]] = []
        self._logged: set[str] = set()
        self.report_epoch = 0
        self._loader: DataLoader | None = None

    def __len__(self) -> int:
        return self.stream.batches_per_epoch(self.world)

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = DataLoader(
                self.dataset,
                batch_size=None,
                collate_fn=_as_is,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory and torch.cuda.is_available(),
                prefetch_factor=self.prefetch if self.num_workers else None,
                persistent_workers=self.num_workers > 0,
                timeout=self.batch_timeout if self.num_workers else 0,
            )
        return self._loader

    def __iter__(self) -> Iterator[Batch]:
        """One epoch. Batches are handed out in the planned worker order (`batch_worker`),
        whatever order the workers deliver them in: a resumed loader, whose DataLoader starts
        again at worker 0, still continues the uninterrupted order."""
        self.dataset.epoch.value = self.epoch
        if self.batches == 0:  # a new epoch (not a resumed one): a new report
            self.skipped, self.report_epoch, self._logged = [], self.epoch, set()
            self._note_skips([s.as_dict() for e in self.stream.excluded for s in e.values()])
        workers = max(1, self.num_workers)
        counts = [
            self.stream.slice(self.epoch, self.rank, self.world, w, workers).batches
            for w in range(workers)
        ]
        total = sum(counts)
        waiting: dict[int, deque] = {w: deque() for w in range(workers)}
        delivered = iter(self._data_loader())
        try:
            for worker, batch, state, skips in delivered:
                waiting[worker].append((batch, state, skips))
                while self.batches < total and waiting[due := batch_worker(counts, self.batches)]:
                    batch, state, skips = waiting[due].popleft()
                    self._note_skips(skips)
                    batch = _usable(batch, skips, self.epoch)
                    self.worker_states[due] = state
                    self.batches += 1
                    yield batch
            died = None
        except (RuntimeError, EOFError, ConnectionError) as exc:
            quiet = _quiet_sigchld()  # PyTorch's handler would raise again for the dead one
            if not (is_dead_worker(exc) or _timed_out(exc) or _a_worker_died(delivered)):
                _restore_sigchld(quiet)
                raise
            if _timed_out(exc):
                died = f"no batch came from the workers in {self.batch_timeout:g} s"
                hint = "a decoder hung"
            else:
                died = str(exc) if is_dead_worker(exc) else "a DataLoader worker died mid-batch"
                hint = "out of memory, or a decoder crashed"
        if died is not None:  # out of the except block: nothing keeps `delivered` alive
            getattr(delivered, "_shutdown_workers", lambda: None)()
            _restore_sigchld(quiet)
            del delivered
            self._loader = None
            raise StreamError(
                f"epoch {self.epoch}, after batch {self.batches}: {died} ({hint} on a sample; "
                "the state saved so far resumes)"
            )
        if self.batches != total:
            raise StreamError(f"epoch {self.epoch}: {self.batches} of {total} batches arrived")
        self._summarise()
        self.epoch, self.batches, self.worker_states = self.epoch + 1, 0, {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batches, self.worker_states = epoch, 0, {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "workers": dict(self.worker_states),
            "skipped": list(self.skipped),
            "config": self.stream.config(self.world, self.num_workers),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = self.stream.config(self.world, self.num_workers)
        if state["config"] != expected:
            changed = sorted(k for k in expected if state["config"].get(k) != expected[k])
            raise ValueError(f"cannot resume: the stream's {changed} differ from the saved state")
        self.epoch, self.batches = state["epoch"], state["batches"]
        self.worker_states = {int(w): s for w, s in state["workers"].items()}
        self.skipped, self.report_epoch = list(state["skipped"]), self.epoch
        self.dataset.resume = (self.epoch, dict(self.worker_states))
        self._loader = None  # workers copy the dataset when they start: start fresh ones

    def report(self) -> dict[str, Any]:
        """Samples skipped in the current (or just finished) epoch, with keys and reasons;
        `skipped` counts samples (a left-out shard counts all of its own), `by_stage` records."""
        by_stage = Counter(s["stage"] for s in self.skipped)
        return {
            "epoch": self.report_epoch,
            "skipped": sum(s.get("samples", 1) for s in self.skipped),
            "by_stage": dict(by_stage),
            "samples": list(self.skipped),
        }

    def _note_skips(self, skips: list[dict[str, Any]]) -> None:
        """Keep each skip for the report; log each reason once an epoch."""
        for skip in skips:
            if skip["reason"] not in self._logged:
                self._logged.add(skip["reason"])
                log.warning(
                    "skipped %s (%s): %s", skip["key"] or skip["url"], skip["stage"], skip["reason"]
                )
            self.skipped.append(skip)

    def _summarise(self) -> None:
        if self.skipped:
            report = self.report()
            log.warning(
                "epoch %d: skipped %d samples (%s); loader.report() lists them",
                self.epoch,
                report["skipped"],
                ", ".join(f"{k}: {v}" for k, v in sorted(report["by_stage"].items())),
            )

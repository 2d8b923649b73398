"""The streaming reader: shards → raw samples → fields → batches, exactly once per epoch over
ranks × workers, in an order that is a pure function of (seed, epoch, world size, workers).

One DataLoader worker runs a chain of small stages (`pipelines/stages/`, one per module), each
with `state_dict()` / `load_state_dict()` (the `Stage` protocol) and one verb:

    Reader   the worker's references (see `partition`), read in order: sequential within a
             shard, a seek by the sidecar's offsets across shards, retries with backoff
    Shuffle  a bounded buffer whose emission order is simulated on integers, so a resumed run
             rebuilds the buffer's contents by re-reading (not decoding) at most its size
    Decode   the field adapters, with a generator per sample seeded from (seed, epoch, key)
    Batch    `collate` of `batch_size` items; a sample that cannot be read or decoded is
             reported and replaced by a repeat of a good one (marked), so shapes and batch
             counts never change

With `clips_per_sample` K, every sample read is decoded once into K items (distinct clip starts
and crops): a batch of `batch_size` items holds `batch_size / K` samples, an epoch delivers
every sample exactly once as K items, and the plan, the partition and resume work on samples,
exactly as with K = 1 (a batch never splits a sample's clips).

Fields the dataset keeps materialised (`polymodal preprocess --op materialize`, recorded in its
index) read their decoded arrays instead of the media (`adapters.materialized`); a field whose
options differ from the ones it was materialised with is refused here, naming the option.

`StreamLoader` (`pipelines/loader.py`, from `Stream.loader`) runs the chain in
`torch.utils.data.DataLoader` workers. Each batch carries its worker's state; the loader keeps
the state of the last batch it handed out per worker, which is exactly what a resumed run must
skip.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from polymodal.adapters import Adapter, Batch
from polymodal.adapters.materialized import materialized_fields
from polymodal.datasets.files import (
    DEFAULT_REMOTE,
    Remote,
    local_path,
)
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.layout import MAX_MEMBER_BYTES
from polymodal.datasets.shard_cache import ShardCache
from polymodal.datasets.shardlist import join_shard_lists, open_dataset
from polymodal.pipelines.stream.elastic import Rest
from polymodal.pipelines.stream.fields import FieldSpec, FieldSpecLike, build_adapter
from polymodal.pipelines.stream.loader import (
    BATCH_TIMEOUT,
    DIGEST_SCHEME,
    WORKER_NICE,
    StreamLoader,
)
from polymodal.pipelines.stream.mixtures import (
    RULES,
    MixSource,
    MixturePlan,
    SchedulePoint,
    WeightSchedule,
    describe_rule,
)
from polymodal.pipelines.stream.partition import Reference
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.stream.plan import StreamPlan, WorkerSlice
from polymodal.pipelines.stream.stages import (
    Batcher,
    Decode,
    Reader,
    Skip,
    Stage,
    Step,
    StreamError,
    Transform,
    parse_transform,
    transform_step,
    usable_batch,
)
from polymodal.pipelines.stream.stages.buckets import LengthBuckets, Prepared
from polymodal.pipelines.stream.state import StateError, check_reader_state

log = logging.getLogger("polymodal.stream")

SourceSpec = (
    str
    | Path
    | MixSource
    | Sequence[str | Path | MixSource | Mapping[str, Any] | tuple[str | Path, float]]
)

FILLER_TRIES = 8  # samples per shard tried when looking for a batch filler
SIZE_CHECKED_SHARDS = 65_536  # local shards whose sizes `Stream()` checks (~0.15 s of `stat`s)
STAGES_WITH_ERRORS = ("read", "decode", "transform")  # the stages with an error policy


class MissingMember(ValueError):
    """A field whose members a source does not have: found when the stream is made, from the
    index, not at the first batch."""

    def __init__(self, field: str, source: str, extensions: Sequence[str], has: Sequence[str]):
        self.field, self.source = field, source
        self.detail = (
            f"the dataset {source} has no {' / '.join(extensions)} member (it has: "
            f"{', '.join(has) or 'none'})"
        )
        super().__init__(f"field {field!r}: {self.detail}")


class Stream(IterableDataset):
    """Batches of fields from one or more sharded datasets, for one rank.

    `source`: a dataset folder or URL prefix (`http(s)://`, `s3://`, `file://`), or shards with
    no index (`"shards/shard-{000000..000099}.tar"`, a glob, a list of `.tar` paths or URLs,
    patterns joined by `::`; scanned once into `cache_dir`, see `datasets.shardlist`), or a
    list of sources mixed into one epoch. A source in a list is a path (one whole pass an epoch), a
    `MixSource(path, weight= | repeat= | samples=)` (or a mapping of those keys, or a
    `(path, weight)` pair): `repeat` passes, an exact number of `samples`, or a `weight`, a
    share of what the other rules leave of an `epoch_size` (default: the sources' natural sizes
    under their rules); `mixtures` has the exact rule. `batching="stratified"` gives every batch
    each source's share; `schedule` (points of `SchedulePoint(step, weights, ramp)`) changes
    the weights with the step. `fields`: field name → adapter (an instance, a registered name,
    or `(name, extensions)`); by default one field per modality of the index's schema.
    `errors`: `"skip"` (count, report, go on) or `"raise"`, for every stage or per stage
    (`{"read": "raise", "decode": "skip"}`). `remote`: timeouts and tries of remote reads.
    `max_member_bytes`: no tar member larger than this is read (its sample is skipped and
    reported). `transforms`: the user's functions on decoded samples, in order, as
    `("map", fn)` / `("filter", predicate)` pairs or `"map:module:function"` strings (also
    `stream.map(fn)` / `stream.filter(predicate)`; see `stages.transform`). `packed`: fields
    whose batches are packed (each sample's natural length, one after another with offsets:
    no padding; see `collate`) instead of padded to the longest. `cache_limit`
    (bytes): keep local copies of remote shards in `cache_dir` (default: this machine's cache,
    `datasets.cache`), so later epochs read the disk; see `datasets.shard_cache`.
    `buckets`: `"auto"` (by length) or ascending length `boundaries` batch samples of
    similar length together within `lookahead` planned batches, so that padded batches carry
    little padding; `max_tokens` then cuts those batches by the elements they ship, not by
    count (`batch_size` is their mean); see `stages.buckets`.

    Local shards whose size is not the index's are left out of the plan at construction
    (reported as skipped each epoch; an error under the `raise` read policy): the index does
    not describe them, and an index that claims more than is there must cost nothing to refuse.
    """

    def __init__(
        self,
        source: SourceSpec,
        fields: Mapping[str, FieldSpec | FieldSpecLike] | None = None,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 1000,
        errors: str | Mapping[str, str] = "skip",
        remote: Remote = DEFAULT_REMOTE,
        max_member_bytes: int = MAX_MEMBER_BYTES,
        optional: Collection[str] | None = None,
        meta: Sequence[str] = (),
        clips_per_sample: int = 1,
        epoch_size: int | None = None,
        batching: str = "mixed",
        schedule: WeightSchedule | Sequence[SchedulePoint] | None = None,
        cache_dir: str | Path | None = None,
        cache_limit: int | None = None,
        transforms: Sequence[Step | tuple[str, Callable[..., Any] | str] | str] = (),
        packed: Collection[str] = (),
        buckets: str | Sequence[int] | None = None,
        lookahead: int = 8,
        max_tokens: int | None = None,
    ) -> None:
        policies = _policies(errors)
        _check_sizes(batch_size, buffer_size, max_member_bytes, clips_per_sample)
        self.buckets = _bucket_boundaries(buckets, lookahead, max_tokens, batching)
        self.lookahead, self.max_tokens = lookahead, max_tokens
        self.mix = _sources(source)
        self.sources = [str(s.path) for s in self.mix]
        self.indexes = [open_dataset(s, remote, cache_dir) for s in self.sources]
        self._fields(fields, optional, meta, packed)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.clips_per_sample = clips_per_sample
        self.samples_per_batch = batch_size // clips_per_sample  # what the plan counts in
        self.buffer_size, self.errors, self.remote = buffer_size, policies, remote
        self.max_member_bytes = max_member_bytes
        self.cache = None if cache_limit is None else ShardCache.at(cache_dir, cache_limit)
        self.transforms = [
            parse_transform(t) if isinstance(t, str) else transform_step(*t) for t in transforms
        ]
        self._leave_out_changed_shards()
        self._fillers: dict[int, list[dict[str, Any]] | None] = {}
        # in shared memory: a DataLoader's persistent workers see `set_epoch` (their copies of
        # the stream would otherwise repeat epoch 0's order forever)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # torchdata's protocol: where this copy stands, and the state its next epoch resumes
        self._position: dict[str, Any] | None = None
        self._resume: Mapping[str, Any] | None = None
        if schedule is not None and not isinstance(schedule, WeightSchedule):
            schedule = WeightSchedule(list(schedule), len(self.mix))
        self.mixture = MixturePlan(
            self.mix, self.totals, self.samples_per_batch, epoch_size, batching, schedule
        )
        self.plan = StreamPlan(self.counts, self.mixture, seed, shuffle, buffer_size)
        self.total = self.mixture.epoch_size  # samples in an epoch, over all ranks
        # whether the sources are mixed by declared rules, not just each read once
        declared = any(getattr(s, rule) is not None for s in self.mix for rule in RULES)
        self.declared = declared or (epoch_size, batching, schedule) != (None, "mixed", None)

    def _fields(
        self,
        fields: Mapping[str, FieldSpec | FieldSpecLike] | None,
        optional: Collection[str] | None,
        meta: Sequence[str],
        packed: Collection[str],
    ) -> None:
        """The fields' adapters (materialised where the datasets say so), which of them a
        sample may lack, which are packed, and the metadata members that ride along."""
        self.fields = materialized_fields(
            _resolve_fields(fields, self.indexes), [i.materialized or {} for i in self.indexes]
        )
        if optional is None:  # default fields of a mixed dataset: those some samples lack
            optional = _partial_fields(self.fields, self.indexes) if fields is None else ()
        for kind, names in (("optional", optional), ("packed", packed)):
            unknown = set(names) - set(self.fields)
            if unknown:
                raise ValueError(
                    f"{kind} names {sorted(unknown)}, not fields ({sorted(self.fields)})"
                )
        self.optional, self.meta = sorted(optional), tuple(e.lower().lstrip(".") for e in meta)
        self.packed = sorted(packed)
        for name, adapter in self.fields.items():
            for source, index in zip(self.sources, self.indexes, strict=True):
                if name not in self.optional and not set(index.fields) & set(adapter.extensions):
                    raise MissingMember(name, source, adapter.extensions, sorted(index.fields))

    def _leave_out_changed_shards(self) -> None:
        """Local shards whose size is not the index's are left out of the plan (reported;
        an error under the `raise` read policy); per source, the samples per shard the plan
        sees (`counts`) and their totals."""
        self.excluded = [_size_mismatches(index, n) for n, index in enumerate(self.indexes)]
        if self.errors["read"] == "raise" and any(self.excluded):
            first = next(skip for skips in self.excluded for skip in skips.values())
            raise StreamError(f"{first.url}: {first.reason}")
        for skip in (skip for skips in self.excluded for skip in skips.values()):
            log.warning("left out %s: %s", skip.url, skip.reason)
        self.counts = [_plan_counts(i, e) for i, e in zip(self.indexes, self.excluded, strict=True)]
        self.totals = [int(c.sum()) for c in self.counts]  # samples per source (one pass)

    # --- the pure plan (`plan.StreamPlan`) ---

    def slice(self, place: Place, rest: Rest | None = None, epoch: int = 0) -> WorkerSlice:
        """One reader's batches of `epoch` (or of a `rest` of it) and the positions of each
        lane they take."""
        return self.plan.slice(place, rest, epoch)

    def batches_per_epoch(
        self, world: int | None = None, rest: Rest | None = None, epoch: int = 0
    ) -> int:
        """Batches every rank yields per epoch, or per rest of one (the same for every rank)."""
        return self.plan.layout(epoch, world or Place.detect().world, rest).batches

    def remainder(self, epoch: int, saved: Mapping[str, Any] | None) -> Rest | None:
        """The rest of `epoch` after a state saved at another world size or worker count; see
        `elastic`."""
        return self.plan.remainder(epoch, saved)

    def source_report(
        self, epoch: int, world: int, delivered: Sequence[int], skipped: Sequence[Mapping]
    ) -> list[dict[str, Any]]:
        """Per source, what `StreamLoader.report` says of it (see there)."""
        planned = self.mixture.counts(epoch, world)
        out = []
        for n, source in enumerate(self.mix):
            lost = sum(s.get("samples", 1) for s in skipped if s.get("source", 0) == n)
            out.append(
                {
                    "source": self.sources[n],
                    "rule": describe_rule(source),
                    "planned": planned[n],
                    "delivered": delivered[n],
                    "skipped": lost,
                    "cycle": self.mixture.cycle_progress(n, epoch, world),
                }
            )
        return out

    def checksums(self) -> list[str]:
        """Per source, the digest of its shard table (names, checksums and counts of its
        shards): which data the order is of (the same folder rebuilt from other files is
        another dataset). Written with a columnar index; computed once for an older one."""
        return [f"{DIGEST_SCHEME}{index.table.digest()}" for index in self.indexes]

    def config(self, world: int, workers: int) -> dict[str, Any]:
        """What the order depends on: a resumed run must match it."""
        weights = [s.weight for s in self.mix]
        return {
            "sources": self.sources,
            "datasets": self.checksums(),
            "weights": weights if None not in weights else None,
            # only when declared: states saved before mixtures had rules still resume
            **({"mixture": self.mixture.describe()} if self.declared else {}),
            "samples": self.totals,
            "batch_size": self.batch_size,
            # only when set: states saved before it existed still resume
            **({"clips_per_sample": self.clips_per_sample} if self.clips_per_sample > 1 else {}),
            "shuffle": self.shuffle,
            "seed": self.seed,
            "buffer_size": self.buffer_size,
            # only when set: states saved before buckets existed still resume
            **(
                {
                    "buckets": self.buckets,
                    "lookahead": self.lookahead,
                    "max_tokens": self.max_tokens,
                }
                if self.buckets
                else {}
            ),
            "world": world,
            "workers": workers,
        }

    # --- one worker's chain ---

    def worker_batches(
        self,
        epoch: int,
        place: Place,
        state: Mapping[str, Any] | None = None,
        rest: Rest | None = None,
    ) -> Iterator[tuple[Batch | None, dict[str, Any], list[Skip]]]:
        """(batch, chain state after it, skips in it) for one reader and epoch, or for the
        `rest` of an epoch left by a run of another world size (`remainder`); the batch is
        None when not one sample of the dataset can be read to fill it."""
        order = self.plan.worker_order(epoch, place, rest)
        reader = Reader(
            self.indexes, self.errors["read"], self.remote, self.max_member_bytes, self.cache
        )
        decode = self._decode(self.errors["decode"], epoch)
        transform = Transform(self.transforms, self.errors["transform"])
        batcher = Batcher(lambda: self.filler(epoch), self.optional, self.packed)
        stages: dict[str, Stage] = {"reader": reader, **order.stages, "decode": decode}
        stages.update(transform=transform, batch=batcher)
        if self.buckets:
            seed = (self.seed, epoch, place.rank, place.worker)
            boundaries = self.buckets if isinstance(self.buckets, list) else []
            stages["buckets"] = LengthBuckets(
                self.lookahead, boundaries, seed, self.max_tokens, bool(self.packed)
            )
        for name, stage in stages.items():
            if state is not None and name in state:  # a state from before transforms: none
                stage.load_state_dict(state[name])

        def prepared(items: Iterable[tuple[Reference, Any]]) -> list[Prepared]:
            return [(ref, transform.apply(ref, decode.decode(ref, raw))) for ref, raw in items]

        def again(refs: list[Reference]) -> list[Prepared]:
            """A begun group's samples once more: already counted and reported, so the
            reading and decoding stages' states are put back after it."""
            before = {n: stages[n].state_dict() for n in ("reader", "decode", "transform")}
            items = prepared(reader.read(iter(refs)))
            for name, saved in before.items():
                stages[name].load_state_dict(saved)
            reader.notes = []
            return items

        buckets = stages.get("buckets")
        try:
            if isinstance(buckets, LengthBuckets):
                planned = map(prepared, order.batches(reader.read, buckets.planned))
                groups = buckets.regroup(planned, again)
            else:
                groups = map(prepared, order.batches(reader.read, batcher.batches))
            for samples in groups:
                batch, skips = batcher.batch([items for _, items in samples])
                skips, reader.notes = skips + reader.notes, []
                yield batch, {n: s.state_dict() for n, s in stages.items()}, skips
        finally:
            reader.close()

    def _decode(self, errors: str, epoch: int) -> Decode:
        return Decode(
            self.fields,
            errors,
            self.seed,
            epoch,
            self.optional,
            self.meta,
            clips_per_sample=self.clips_per_sample,
        )

    def filler(self, epoch: int) -> list[dict[str, Any]] | None:
        """The items of the first sample of the dataset (sources and shards in index order, up to
        `FILLER_TRIES` samples a shard) that reads and decodes: what a batch with no good
        sample is padded with. Cached per epoch (decoding depends on it)."""
        if epoch not in self._fillers:
            self._fillers = {epoch: self._find_filler(epoch)}
        return self._fillers[epoch]

    def _find_filler(self, epoch: int) -> list[dict[str, Any]] | None:
        reader = Reader(self.indexes, "skip", self.remote, self.max_member_bytes, self.cache)
        decode = self._decode("skip", epoch)
        transform = Transform(self.transforms, "skip")  # a filler is what a batch could hold
        try:
            for source in range(len(self.indexes)):
                counts = self.counts[source]
                for shard in np.flatnonzero(counts).tolist():
                    for i in range(min(int(counts[shard]), FILLER_TRIES)):
                        ref = Reference(source, shard, i, True)
                        item = transform.apply(ref, decode.decode(ref, reader._sample(ref)))
                        if not isinstance(item, Skip):
                            return item
                        if (source, shard) in reader._failed:
                            break
        finally:
            reader.close()
        return None

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]] | str) -> Stream:
        """Add `fn` (a function or `module:function`) to the transforms: each decoded sample
        (field name → `Field`) becomes `fn(sample)`. Returns the stream, so calls chain."""
        self.transforms.append(transform_step("map", fn))
        return self

    def filter(self, predicate: Callable[[dict[str, Any]], bool] | str) -> Stream:
        """Add a filter: samples for which `predicate(sample)` is false are dropped, counted
        and reported (stage `filter`) and their places in a batch filled by marked repeats,
        so every rank keeps its batch count. Returns the stream."""
        self.transforms.append(transform_step("filter", predicate))
        return self

    @property
    def epoch(self) -> int:
        """The epoch the next `iter(stream)` yields (its order depends on it)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Make the next `iter(stream)` epoch `epoch`, in this process and in the workers of a
        DataLoader over it (persistent ones too)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        """Batches this rank gets per epoch, over all its DataLoader workers."""
        return self.batches_per_epoch()

    def __iter__(self) -> Iterator[Batch]:
        """One epoch (`set_epoch`; 0 by default) of this rank's batches. In a DataLoader worker
        (`DataLoader(stream, batch_size=None, num_workers=N)`) only that worker's share, so the
        workers together deliver every sample of the rank exactly once. `loader()` adds exact
        resume and epochs that advance by themselves; torchdata's `StatefulDataLoader` resumes
        exactly through `state_dict` / `load_state_dict`."""
        place = Place.detect()
        epoch, chain = self.epoch, None
        if self._resume is not None:
            epoch, chain = self._resumed(self._resume, place)
            self._resume = None  # once: the epochs after it start from their beginning
        self._position = {"epoch": epoch, "place": place.key(), "chain": chain}
        for batch, state, skips in self.worker_batches(epoch, place, chain):
            # before the yield: a StatefulDataLoader asks for the state right after a batch
            self._position = {"epoch": epoch, "place": place.key(), "chain": state}
            yield usable_batch(batch, skips, epoch)

    def state_dict(self) -> dict[str, Any]:
        """torchdata's `Stateful` protocol: where this copy of the stream stands (in a
        DataLoader worker, that worker's part): the epoch, the reader it is and its chain's
        state after the last batch it gave. Plain JSON."""
        if self._position is None:
            return {"epoch": self.epoch, "place": None, "chain": None}
        return dict(self._position)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The next `iter(stream)` continues from `state` (of the same reader: same world and
        workers; `loader()` also resumes at another size) instead of re-reading and decoding
        what was delivered before it."""
        if not isinstance(state, Mapping) or not {"epoch", "place", "chain"} <= set(state):
            raise StateError(f"not a Stream state (epoch, place, chain): {str(state)[:90]}")
        self._resume = state

    def _resumed(self, state: Mapping[str, Any], place: Place) -> tuple[int, Any]:
        """The epoch and chain state a loaded `state` starts this reader at."""
        if state["chain"] is None:  # saved before its first batch: the epoch from its start
            return int(state["epoch"]), None
        if state["place"] != place.key():
            raise StateError(
                f"the state is of reader {state['place']}, this is {place.key()}: resume with "
                "the world size and worker count it was saved at (or through `loader()`, "
                "which resumes at any)"
            )
        check_reader_state(state["chain"], self, place, state["epoch"])
        return int(state["epoch"]), state["chain"]

    def loader(
        self,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch: int = 2,
        batch_timeout: float = BATCH_TIMEOUT,
        threads: int | None = None,
        nice: int = WORKER_NICE,
    ) -> StreamLoader:
        """The DataLoader-backed iterable over epochs. With workers, a batch that has not
        arrived after `batch_timeout` seconds (a decoder that hangs) is a `StreamError`; each
        worker runs on `threads` threads (None: its share of the cores), `nice` below this
        process's CPU priority (0: the same)."""
        return StreamLoader(
            self, num_workers, pin_memory, prefetch, batch_timeout, threads, nice=nice
        )


def _plan_counts(index: ShardIndex, excluded: Collection[int]) -> np.ndarray:
    """The index's samples column itself, or a copy with the `excluded` shards zeroed;
    read-only, so a forked worker shares its pages."""
    counts = index.table.samples
    if excluded:
        counts = counts.copy()
        counts[list(excluded)] = 0
        counts.flags.writeable = False
    return counts


def _size_mismatches(index: ShardIndex, source: int) -> dict[int, Skip]:
    """Local shards whose size on disk is not the index's, as skips of all their samples (one
    `stat` per shard; a missing shard is left to the reader, which reports it per sample).

    Only up to `SIZE_CHECKED_SHARDS` shards: a million `stat`s cost 2.5 s of every `Stream()`.
    Past that the reader's own check is the one (it compares the size of each shard it opens,
    free as it holds the file): a changed shard's samples are then skipped where the plan puts
    them, reported with the same reason, rather than left out of the plan."""
    base = local_path(index.location)
    if base is None or len(index.shards) > SIZE_CHECKED_SHARDS:
        return {}
    out = {}
    sizes = index.table.bytes
    folder = f"{base}/"
    for n, name in enumerate(index.table.names.to_pylist()):  # no `ShardInfo`, no `Path`
        try:
            size = os.stat(folder + name).st_size
        except OSError:
            continue
        if size != sizes[n]:
            shard = index.shards[n]
            out[n] = Skip(
                f"{shard.name} (all {shard.samples:,} samples)",
                "read",
                f"the shard is {size:,} bytes, the index says {shard.bytes:,}: left out; it "
                "changed since it was indexed (`polymodal validate` checks it; index it again)",
                index.url(shard),
                samples=shard.samples,
                source=source,
            )
    return out


def _check_sizes(
    batch_size: int, buffer_size: int, max_member_bytes: int, clips_per_sample: int
) -> None:
    if batch_size < 1 or buffer_size < 1 or max_member_bytes < 1:
        raise ValueError("batch_size, buffer_size and max_member_bytes must be positive")
    if clips_per_sample < 1 or batch_size % clips_per_sample:
        raise ValueError(
            f"clips_per_sample must be a positive divisor of batch_size={batch_size} (a "
            f"batch holds whole samples), got {clips_per_sample}"
        )


def _bucket_boundaries(
    buckets: str | Sequence[int] | None, lookahead: int, max_tokens: int | None, batching: str
) -> str | list[int] | None:
    """`buckets` checked: None (off), "auto" or ascending positive length boundaries, with
    the options that go with them."""
    if max_tokens is not None and (buckets is None or max_tokens < 1):
        raise ValueError(f"max_tokens ({max_tokens}): a positive budget, with buckets")
    if buckets is None:
        return None
    if buckets != "auto" and (
        isinstance(buckets, str)
        or not all(isinstance(b, int) and b > 0 for b in buckets)
        or list(buckets) != sorted(set(buckets))
    ):
        raise ValueError(f"buckets: 'auto' or ascending positive lengths, got {buckets!r}")
    if lookahead < 2:
        raise ValueError(f"lookahead: at least 2 batches to regroup, got {lookahead}")
    if batching == "stratified":
        raise ValueError(
            "buckets regroup samples across batches, which would mix the shares stratified "
            "batching gives each batch: use batching='mixed' with buckets"
        )
    return buckets if isinstance(buckets, str) else list(buckets)


def _policies(errors: str | Mapping[str, str]) -> dict[str, str]:
    """The error policy of each stage that has one, from one policy or a mapping of them."""
    policies = (
        dict.fromkeys(STAGES_WITH_ERRORS, errors)
        if isinstance(errors, str)
        else {**dict.fromkeys(STAGES_WITH_ERRORS, "skip"), **errors}
    )
    if set(policies) != set(STAGES_WITH_ERRORS) or not set(policies.values()) <= {"skip", "raise"}:
        raise ValueError(
            f"errors must be 'skip' or 'raise', or a mapping of {list(STAGES_WITH_ERRORS)} to "
            f"those, got {errors!r}"
        )
    return policies


def _sources(source: SourceSpec) -> list[MixSource]:
    """The sources and their rules, from any form `Stream` takes."""
    if isinstance(source, (str, Path, MixSource, Mapping)):
        return [MixSource.of(source)]
    shards = join_shard_lists(list(source))
    if shards is not None:
        return [MixSource(shards)]
    sources = [MixSource.of(item) for item in source]
    if not sources:
        raise ValueError("no source given: pass a dataset folder, a URL or a list of them")
    return sources


def _partial_fields(fields: Mapping[str, Adapter], indexes: Sequence[ShardIndex]) -> list[str]:
    """The fields whose members not every sample has (by the indexes' per-extension counts)."""
    counts = [(index.samples, index.field_counts()) for index in indexes]
    return [
        name
        for name, adapter in fields.items()
        if any(n and max(c.get(e, 0) for e in adapter.extensions) < n for n, c in counts)
    ]


def _resolve_fields(
    fields: Mapping[str, FieldSpec | FieldSpecLike] | None, indexes: Sequence[ShardIndex]
) -> dict[str, Adapter]:
    """Field name → adapter instance (`fields.build_adapter`). By default, one field per
    modality in the schema, reading that modality's extensions."""
    if fields is None:
        by_modality: dict[str, list[str]] = {}
        for index in indexes:
            for ext, modality in index.fields.items():
                if modality and ext not in by_modality.setdefault(modality, []):
                    by_modality[modality].append(ext)
        if not by_modality:
            raise ValueError("the index names no modalities: pass fields=")
        fields = {m: FieldSpec(m, exts) for m, exts in sorted(by_modality.items())}
    return {name: build_adapter(spec, f"field {name!r}") for name, spec in fields.items()}

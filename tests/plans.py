"""The stream's plan run on sample references alone (no shards, no decoding): what every rank
and worker of a `StreamPlan` gives, batch by batch, as the stream's readers give it. Shared by
the mixture and elastic property tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from polymodal.pipelines.stream.mixtures import MixSource, MixturePlan, WeightSchedule
from polymodal.pipelines.stream.partition import Reference, batch_worker
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.stream.plan import StreamPlan


def make_plan(
    shards: Sequence[Sequence[int]],
    rules: Sequence[dict[str, Any]],
    per_batch: int,
    buffer: int = 4,
    seed: int = 0,
    shuffle: bool = True,
    epoch_size: int | None = None,
    batching: str = "mixed",
    schedule: WeightSchedule | None = None,
) -> StreamPlan:
    """A plan over sources of the given shard sizes, each with its rule (`{"weight": 2}`)."""
    sources = [MixSource(f"s{i}", **rule) for i, rule in enumerate(rules)]
    counts = [np.asarray(s, dtype=np.int64) for s in shards]
    mixture = MixturePlan(
        sources, [int(c.sum()) for c in counts], per_batch, epoch_size, batching, schedule
    )
    return StreamPlan(counts, mixture, seed, shuffle, buffer)


def _as_is(refs):
    return ((ref, ref) for ref in refs)


def worker_batches(
    plan: StreamPlan,
    epoch: int,
    rank: int,
    world: int,
    worker: int,
    workers: int,
    rest=None,
    state: dict | None = None,
    done: int = 0,
) -> list[list[Reference]]:
    """One reader's batches (after its first `done`, from `state`), as references."""
    order = plan.worker_order(epoch, Place(rank, world, worker, workers), rest)
    if state is not None:
        for name, stage in order.stages.items():
            stage.load_state_dict(state[name])
    return [[ref for ref, _ in batch] for batch in order.batches(_as_is, done)]


def rank_batches(
    plan: StreamPlan, epoch: int, rank: int, world: int, workers: int, rest=None
) -> list[list[Reference]]:
    """A rank's batches in the order its loader hands them out (round robin over workers)."""
    per_worker = [
        worker_batches(plan, epoch, rank, world, w, workers, rest) for w in range(workers)
    ]
    counts = [len(b) for b in per_worker]
    taken = [0] * workers
    out = []
    for number in range(sum(counts)):
        w = batch_worker(counts, number)
        out.append(per_worker[w][taken[w]])
        taken[w] += 1
    return out


def epoch_batches(
    plan: StreamPlan, epoch: int, world: int, workers: int, rest=None
) -> list[list[list[Reference]]]:
    """Every rank's batches of an epoch (or of a rest of one)."""
    return [rank_batches(plan, epoch, rank, world, workers, rest) for rank in range(world)]


def real(batches: Sequence[Sequence[Reference]]) -> list[tuple[int, int, int, int]]:
    """(source, shard, index, draw) of every sample that is not a padding repeat."""
    return [(r.source, r.shard, r.index, r.draw) for b in batches for r in b if not r.repeated]

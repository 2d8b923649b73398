"""Partitioning is a pure function; these properties hold for any shard layout."""

import math
from collections import Counter
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polymodal.pipelines.stream.partition import (
    FixedComposition,
    Layout,
    Mixture,
    SourceOrder,
    batch_worker,
    epoch_rng,
    largest_remainder,
    references,
)


def _order(counts, seed=0, epoch=0, shuffle=True):
    return SourceOrder.build(counts, epoch_rng(seed, epoch) if shuffle else None)


def _epoch(counts, world, workers, batch, seed=0, epoch=0, shuffle=True):
    """Every (rank, worker)'s references, and each rank's batch count."""
    order = _order(counts, seed, epoch, shuffle)
    mixture = Mixture((order.total,))
    layout = Layout.fixed([order.total], world, batch)
    per_rank_batches, seen = [], []
    for rank in range(world):
        batches = 0
        for worker in range(workers):
            first, stop = layout.worker_batches(worker, workers)
            ((start, end),) = layout.ranges(rank, first, stop)
            refs = list(references([order], mixture, start, end, chunk=7))
            assert math.ceil(len(refs) / batch) == stop - first
            batches += stop - first
            seen.append(((rank, worker), refs))
        per_rank_batches.append(batches)
    return seen, per_rank_batches


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    world=st.integers(1, 8),
    workers=st.integers(1, 4),
    batch=st.integers(1, 9),
    seed=st.integers(0, 3),
)
def test_every_sample_once_and_equal_batches(counts, world, workers, batch, seed):
    seen, per_rank_batches = _epoch(counts, world, workers, batch, seed)
    real = Counter((r.shard, r.index) for _, refs in seen for r in refs if not r.repeated)
    expected = {(s, i) for s, n in enumerate(counts) for i in range(n)}
    assert set(real) == expected and all(v == 1 for v in real.values())
    assert len(set(per_rank_batches)) == 1  # every rank yields the same number of batches
    total = sum(counts)
    repeats = sum(r.repeated for _, refs in seen for r in refs)
    assert repeats == (math.ceil(total / world) * world - total if total else 0)
    for _, refs in seen:  # repeats are real samples, so a repeat can stand in a batch
        assert all(r.index < counts[r.shard] for r in refs)


def test_a_single_shard_with_more_ranks_than_samples():
    seen, per_rank_batches = _epoch([3], world=8, workers=2, batch=4)
    assert per_rank_batches == [1] * 8
    assert sorted((r.index, r.repeated) for _, refs in seen for r in refs) == sorted(
        [(0, False), (1, False), (2, False)] + [(i % 3, True) for i in range(5)]
    )


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 30), min_size=2, max_size=10), epoch=st.integers(0, 5))
def test_order_is_a_pure_function_of_seed_and_epoch(counts, epoch):
    a, _ = _epoch(counts, 2, 2, 4, seed=1, epoch=epoch)
    b, _ = _epoch(counts, 2, 2, 4, seed=1, epoch=epoch)
    assert a == b


def test_shard_order_changes_with_the_epoch_and_reads_shards_sequentially():
    counts = [5] * 20
    first = _order(counts, 0, 0).order.tolist()
    second = _order(counts, 0, 1).order.tolist()
    assert first != second and sorted(first) == list(range(20))
    seen, _ = _epoch(counts, 1, 1, 100)
    refs = seen[0][1]
    assert all(b.index == a.index + 1 for a, b in pairwise(refs) if a.shard == b.shard)


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=5), cut=st.integers(0, 250))
def test_mixture_gives_each_source_its_share_and_any_range_agrees(sizes, cut):
    mixture = Mixture(tuple(sizes))
    sources, within = mixture.split(0, mixture.total)
    for s, size in enumerate(sizes):
        assert sorted(within[sources == s].tolist()) == list(range(size))
    cut = min(cut, mixture.total)
    part_s, part_w = mixture.split(cut, mixture.total)
    assert part_s.tolist() == sources[cut:].tolist() and part_w.tolist() == within[cut:].tolist()


def test_sources_are_interleaved_evenly_and_a_pass_wraps_round():
    mixture = Mixture((550, 550))
    sources, _ = mixture.split(0, 100)
    assert abs(int((sources == 0).sum()) - 50) <= 1  # evenly interleaved, not in blocks
    small = _order([40, 60], shuffle=False)
    shards, index = small.locate(np.arange(98, 103))  # past the end: the source cycles
    assert index.tolist() == [58, 59, 0, 1, 2] and shards.tolist() == [1, 1, 0, 0, 0]


@settings(max_examples=200, deadline=None)
@given(
    per_rank=st.lists(st.integers(0, 60), min_size=1, max_size=4),
    per_batch=st.integers(1, 12),
)
def test_a_fixed_composition_gives_every_batch_each_lanes_share(per_rank, per_batch):
    composition = FixedComposition(per_rank, per_batch)
    total = sum(per_rank)
    assert composition.batches == math.ceil(total / per_batch)
    sizes = composition.sizes(0, composition.batches)
    assert sizes.sum(0).tolist() == per_rank  # every position of every lane, once
    assert (sizes.sum(1)[: total // per_batch] == per_batch).all()  # full batches but the last
    full = sizes[: total // per_batch]
    if len(full):
        target = largest_remainder(len(full) * per_batch, np.asarray(per_rank))
        assert (full.min(0) >= target // len(full)).all()
        assert (full.max(0) <= -(-target // len(full))).all()  # ⌊share⌋ or ⌈share⌉, no more
    for b in range(composition.batches + 1):  # any batch's counts agree with the whole
        assert composition.before(b).tolist() == sizes[:b].sum(0).tolist()


def test_a_stratified_batch_of_halves_and_quarters_is_exact():
    composition = FixedComposition([1000, 500, 500], 32)
    assert {tuple(r) for r in composition.sizes(0, 62).tolist()} == {(16, 8, 8)}
    assert composition.sizes(62, 63).tolist() == [[8, 4, 4]]  # the last, partial


def test_batch_worker_is_dataloader_round_robin():
    assert [batch_worker([3, 2, 2], b) for b in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [batch_worker([1, 0], b) for b in range(1)] == [0]
    assert [batch_worker([1, 3, 2], b) for b in range(6)] == [0, 1, 2, 1, 2, 1]
    with pytest.raises(IndexError):
        batch_worker([1, 1], 2)


def test_batch_worker_plans_an_endless_epoch_in_no_time():
    """An index claiming 10^15 samples must not make the loader list its batches."""
    assert batch_worker([10**15, 10**15 - 1], 2 * 10**15 - 2) == 0
    layout = Layout.fixed([10**15], 1, 4)
    counts = [stop - first for first, stop in (layout.worker_batches(w, 3) for w in range(3))]
    assert sum(counts) == layout.batches == 25 * 10**13

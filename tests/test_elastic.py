"""Elastic resume: a state saved mid-epoch at W1 ranks × K1 workers, resumed at W2 × K2. The
rest of the epoch delivers every sample not yet delivered exactly once, with equal batch counts
per rank, and the next epoch is the ordinary one; as a property over the project's own
partition code, and on real shards through real DataLoader workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_stream import _digest, _fields, _rank_env, _write

from polymodal.pipelines.elastic import Remainder, batches_done, reader_range
from polymodal.pipelines.partition import SourceOrder
from polymodal.pipelines.stages.shuffle import BufferOrder
from polymodal.pipelines.stream import Stream


def _delivered(
    length: int, world: int, workers: int, batches: int, per_batch: int, buffer: int, seed
) -> list[int]:
    """Sequence indices the readers of a plan emitted in each rank's first `batches` batches,
    as the stream's Shuffle emits them (padding included)."""
    out = []
    for rank in range(world):
        slices = [reader_range(length, world, rank, workers, w, per_batch) for w in range(workers)]
        done = batches_done([s[2] for s in slices], batches)
        for worker, (start, stop, _) in enumerate(slices):
            order = BufferOrder(stop - start, buffer, [*seed, rank, worker])
            out += [
                start + order.step() for _ in range(min(done[worker] * per_batch, stop - start))
            ]
    return out


def _read(rest: Remainder, world: int, workers: int, per_batch: int) -> tuple[list[int], set[int]]:
    """Epoch positions the new readers of `rest` deliver (repeats left out), and the batch
    counts of the new ranks."""
    positions, counts = [], set()
    for rank in range(world):
        ranges = [
            reader_range(rest.length, world, rank, workers, w, per_batch) for w in range(workers)
        ]
        counts.add(sum(r[2] for r in ranges))
        for start, stop, _ in ranges:
            indices = np.arange(start, stop)
            positions += rest.positions(indices[indices < rest.length]).tolist()
    return positions, counts


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(0, 12), min_size=1, max_size=8),
    old=st.tuples(st.integers(1, 6), st.integers(1, 3)),
    new=st.tuples(st.integers(1, 6), st.integers(1, 3)),
    again=st.tuples(st.integers(1, 6), st.integers(1, 3)),
    per_batch=st.integers(1, 5),
    buffer=st.integers(1, 8),
    fractions=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_every_sample_exactly_once_across_two_resizes(
    counts, old, new, again, per_batch, buffer, fractions
):
    order = SourceOrder.build(counts, seed=3, epoch=1, shuffle=True)
    total, seed = order.total, (3, 1)
    (w1, k1), (w2, k2), (w3, k3) = old, new, again
    per_rank = reader_range(total, w1, 0, 1, 0, per_batch)[2]
    b1 = round(fractions[0] * per_rank)
    first = [p for p in _delivered(total, w1, k1, b1, per_batch, buffer, seed) if p < total]
    rest = Remainder.after(
        total, {"world": w1, "workers": k1, "batches": b1}, per_batch, buffer, seed
    )
    _, counts2 = _read(rest, w2, k2, per_batch)
    assert len(counts2) == 1  # every new rank yields as many batches
    b2 = round(fractions[1] * counts2.pop())
    second = [
        int(rest.positions(np.array([i]))[0])
        for i in _delivered(rest.length, w2, k2, b2, per_batch, buffer, seed)
        if i < rest.length
    ]
    saved = {"world": w2, "workers": k2, "batches": b2}
    last = Remainder.after(total, saved, per_batch, buffer, seed, parent=rest)
    third, counts3 = _read(last, w3, k3, per_batch)
    assert len(counts3) == 1
    assert sorted(first + second + third) == list(range(total))
    shards, within = order.locate(np.asarray(first + second + third, dtype=np.int64))
    assert len(set(zip(shards.tolist(), within.tolist(), strict=True))) == total


@pytest.mark.parametrize(("w1", "k1", "w2", "k2"), [(4, 2, 2, 1), (2, 1, 8, 2), (3, 0, 5, 2)])
def test_a_resized_run_finishes_the_epoch_exactly_once_then_goes_on_as_usual(
    tmp_path, monkeypatch, w1, k1, w2, k2
):
    data = tmp_path / "data"
    total = _write(data, sizes=[7, 0, 13, 1, 9, 4])

    def loader(rank: int, world: int, workers: int):
        _rank_env(monkeypatch, rank, world)
        return Stream(data, _fields(), batch_size=2, buffer_size=5).loader(workers)

    before, states = [], []
    for rank in range(w1):
        old = loader(rank, w1, k1)
        old.set_epoch(1)
        batches = iter(old)
        for _ in range(len(old) // 2):
            batch = next(batches)
            before += [k for k, r in zip(batch.keys, batch.repeated.tolist(), strict=True) if not r]
        states.append(json.loads(json.dumps(old.state_dict())))
        del batches
    after, counts = [], set()
    for rank in range(w2):
        new = loader(rank, w2, k2)
        new.load_state_dict(states[0] if rank % 2 else states[-1])  # any rank's state will do
        rest = list(new)
        counts.add(len(rest))
        after += [
            k for b in rest for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r
        ]
        assert new.epoch == 2
        fresh = loader(rank, w2, k2)
        fresh.set_epoch(2)
        assert [_digest(b) for b in new] == [_digest(b) for b in fresh]
    assert len(counts) == 1
    assert not set(before) & set(after)
    assert sorted(before + after) == sorted({f"k{i:04d}" for i in range(total)})

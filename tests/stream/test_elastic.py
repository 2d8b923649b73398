"""Elastic resume: a state saved mid-epoch at W1 ranks × K1 workers, resumed at W2 × K2. The
rest of the epoch delivers every sample not yet delivered exactly once, with equal batch counts
per rank, and the next epoch is the ordinary one; as a property over the project's own
partition code, and on real shards through real DataLoader workers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plans import epoch_batches, make_plan, rank_batches, real
from testdata import batch_digest, numbered_pngs, png_fields, set_rank

from polymodal.pipelines.stream.stream import Stream


def _first(plan, epoch, world, workers, batches, rest=None):
    """What every rank of a run delivered in its first `batches` batches."""
    return [
        b
        for rank in range(world)
        for b in rank_batches(plan, epoch, rank, world, workers, rest)[:batches]
    ]


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
    plan = make_plan([counts], [{}], per_batch, buffer, seed=3)
    (w1, k1), (w2, k2), (w3, k3) = old, new, again
    b1 = round(fractions[0] * plan.layout(1, w1).batches)
    first = _first(plan, 1, w1, k1, b1)
    saved = {"world": w1, "workers": k1, "batches": b1}
    rest = plan.remainder(1, saved)
    second_all = epoch_batches(plan, 1, w2, k2, rest)
    assert len({len(batches) for batches in second_all}) == 1  # as many batches every rank
    b2 = round(fractions[1] * len(second_all[0]))
    second = _first(plan, 1, w2, k2, b2, rest)
    last = plan.remainder(1, {"world": w2, "workers": k2, "batches": b2, "parent": saved})
    third_all = epoch_batches(plan, 1, w3, k3, last)
    assert len({len(batches) for batches in third_all}) == 1
    third = [b for batches in third_all for b in batches]
    delivered = real(first + second + third)
    assert len(delivered) == len(set(delivered)) == sum(counts)
    assert sorted(delivered) == sorted(real(b for r in epoch_batches(plan, 1, 1, 1) for b in r))


@pytest.mark.parametrize(("w1", "k1", "w2", "k2"), [(4, 2, 2, 1), (2, 1, 8, 2), (3, 0, 5, 2)])
def test_a_resized_run_finishes_the_epoch_exactly_once_then_goes_on_as_usual(
    tmp_path, monkeypatch, w1, k1, w2, k2
):
    data = tmp_path / "data"
    total = numbered_pngs(data, sizes=[7, 0, 13, 1, 9, 4])

    def loader(rank: int, world: int, workers: int):
        set_rank(monkeypatch, rank, world)
        return Stream(data, png_fields(), batch_size=2, buffer_size=5).loader(workers)

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
        assert [batch_digest(b) for b in new] == [batch_digest(b) for b in fresh]
    assert len(counts) == 1
    assert not set(before) & set(after)
    assert sorted(before + after) == sorted({f"k{i:04d}" for i in range(total)})

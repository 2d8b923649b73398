"""Length buckets (`Stream(buckets=...)`): on real flac clips of their natural lengths, batches
of similar lengths carry far less padding, with the same batches per rank, every sample once,
and exact resume through real DataLoader workers, at the same size and resized."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from testdata import batch_digest, set_rank

from polymodal.adapters import get
from polymodal.datasets.build import build
from polymodal.datasets.synthetic import encode_audio
from polymodal.pipelines.stream.stages.buckets import balanced_sizes
from polymodal.pipelines.stream.state import StateError
from polymodal.pipelines.stream.stream import Stream

RATE = 8000


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """60 noisy tones of 0.1 to 1.0 s (uniform), flac at 8 kHz, in shards of 8."""
    root = tmp_path_factory.mktemp("lengths")
    rng = np.random.default_rng(0)
    for i in range(60):
        t = np.arange(round(rng.uniform(0.1, 1.0) * RATE)) / RATE
        wave = 0.4 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 0.05, len(t))
        out = root / "clips" / f"c{i % 3}" / f"tone{i:03d}.flac"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_audio(wave[:, None].astype(np.float32), RATE))
    build(root / "clips", root / "data", shard_samples=8, progress=False, print_=lambda _: None)
    return root / "data"


def _stream(data: Path, **options) -> Stream:
    audio = get("audio")(sample_rate=RATE, duration="full", max_seconds=1.0, extensions=["flac"])
    return Stream(data, {"audio": audio}, batch_size=4, buffer_size=8, **options)


def _keys(batches) -> list[str]:
    return [k for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]


def _padding(batches) -> float:
    real, shipped = map(sum, zip(*(b.elements(["audio"]) for b in batches), strict=True))
    return 1 - real / shipped


def test_buckets_cut_the_padding_and_keep_every_batch_and_sample(clips):
    padded = list(_stream(clips))
    bucketed = list(_stream(clips, buckets="auto", lookahead=5))
    assert [b.size for b in bucketed] == [b.size for b in padded]
    assert sorted(_keys(bucketed)) == sorted(_keys(padded))
    assert len(set(_keys(bucketed))) == 60
    assert _padding(bucketed) < 0.1 < 0.3 < _padding(padded)
    # boundaries: each batch on one side of 0.5 s, but for one batch per group at most
    halves = list(_stream(clips, buckets=[RATE // 2], lookahead=5))
    lengths = [b["audio"].mask.sum(1) for b in halves]
    mixed = sum(bool((n < RATE // 2).any() and (n >= RATE // 2).any()) for n in lengths)
    assert mixed <= -(-len(halves) // 5)
    assert sorted(_keys(halves)) == sorted(_keys(padded))


def _shipped(batch) -> int:
    return batch.elements(["audio"])[1]


def test_a_token_budget_cuts_batches_by_elements_not_count(clips, caplog):
    by_count = list(_stream(clips, buckets="auto", lookahead=5))
    by_elements = list(_stream(clips, buckets="auto", lookahead=5, max_tokens=3 * RATE))
    assert len(by_elements) == len(by_count)
    assert sorted(_keys(by_elements)) == sorted(_keys(by_count))
    assert len({b.size for b in by_elements}) > 2  # short clips: more of them a batch
    assert max(map(_shipped, by_elements)) <= 3 * RATE < max(map(_shipped, by_count))
    with caplog.at_level(logging.WARNING):
        tight = list(_stream(clips, buckets="auto", lookahead=5, max_tokens=RATE))
    assert "cannot make 5 batches of at most 8000 elements" in caplog.text
    assert sorted(_keys(tight)) == sorted(_keys(by_count))
    with pytest.raises(ValueError, match="with buckets"):
        _stream(clips, max_tokens=RATE)


@given(
    st.lists(st.integers(1, 50), min_size=1, max_size=9).map(sorted),
    st.integers(1, 9),
    st.booleans(),
)
def test_balanced_sizes_ship_the_least_largest_batch(lengths, parts, packed):
    parts = min(parts, len(lengths))
    sizes, least = balanced_sizes(lengths, parts, packed)
    assert len(sizes) == parts and min(sizes) >= 1 and sum(sizes) == len(lengths)

    def largest(cut):  # what the cut's largest batch ships
        ends = np.cumsum(cut)
        runs = [lengths[e - n : e] for n, e in zip(cut, ends, strict=True)]
        return max(sum(r) if packed else len(r) * r[-1] for r in runs)

    every_cut = [  # brute force: every way to cut into `parts` non-empty runs
        [b - a for a, b in zip((0, *c), (*c, len(lengths)), strict=True)]
        for c in itertools.combinations(range(1, len(lengths)), parts - 1)
    ]
    assert largest(sizes) == least == min(map(largest, every_cut))


@pytest.mark.parametrize("taken", [3, 5, 7])  # inside a group, at its end, in the next one
def test_a_bucketed_loader_resumes_to_the_same_batches(clips, taken):
    whole = _stream(clips, buckets="auto", lookahead=5).loader(2)
    expected = [batch_digest(b) for b in whole]
    first = _stream(clips, buckets="auto", lookahead=5).loader(2)
    batches = iter(first)
    before = [batch_digest(next(batches)) for _ in range(taken)]
    state = json.loads(json.dumps(first.state_dict()))
    del batches
    resumed = _stream(clips, buckets="auto", lookahead=5).loader(2)
    resumed.load_state_dict(state)
    assert before + [batch_digest(b) for b in resumed] == expected


@pytest.mark.parametrize("every_rank", [True, False])
def test_a_resized_bucketed_run_delivers_the_rest_of_the_epoch(
    clips, monkeypatch, caplog, every_rank
):
    """Resized inside a group: with every old rank's worker states (what a trainer's
    checkpoint holds) each sample exactly once; with one rank's alone, none missed and only
    the begun groups' given batches again, said in the log."""
    states, before = [], []
    for rank in range(2):
        set_rank(monkeypatch, rank, 2)
        old = _stream(clips, buckets="auto", lookahead=3).loader(1)
        batches = iter(old)
        before += _keys([next(batches) for _ in range(4)])  # a group given, one begun
        states.append(json.loads(json.dumps(old.state_dict())))
        del batches
    state = {**states[1], "ranks": [s["workers"] for s in states]} if every_rank else states[1]
    set_rank(monkeypatch, 0, 1)
    new = _stream(clips, buckets="auto", lookahead=3).loader(2)
    with caplog.at_level(logging.WARNING):
        new.load_state_dict(state)
    after = _keys(list(new))
    assert len(after) == len(set(after))
    assert sorted(set(before + after)) == sorted(set(_keys(_stream(clips))))
    twice = [k for k, n in Counter(before + after).items() if n > 1]
    if every_rank:
        assert not twice and not caplog.text
    else:
        assert "delivered again whole (1 batches" in caplog.text
        assert 0 < len(twice) <= 2 * 4  # each old rank's one begun batch, at most


def test_bad_buckets_and_lying_states_are_refused(clips):
    with pytest.raises(ValueError, match="ascending positive lengths"):
        _stream(clips, buckets=[4000, 2000])
    with pytest.raises(ValueError, match="at least 2 batches"):
        _stream(clips, buckets="auto", lookahead=1)
    with pytest.raises(ValueError, match="stratified"):
        _stream([clips, clips], buckets="auto", batching="stratified")
    loader = _stream(clips, buckets="auto", lookahead=5).loader(0)
    next(iter(loader))
    state = json.loads(json.dumps(loader.state_dict()))
    state["workers"]["0"]["buckets"]["group"][0][1] = 99
    with pytest.raises(StateError, match=r"buckets.group\[0\]: no sample"):
        _stream(clips, buckets="auto", lookahead=5).loader(0).load_state_dict(state)
    state = json.loads(json.dumps(loader.state_dict()))
    lying = dict(state["workers"]["0"], buckets={**state["workers"]["0"]["buckets"], "sent": [99]})
    with pytest.raises(StateError, match=r"ranks\[0\]\.0\.buckets\.sent: not places"):
        resized = _stream(clips, buckets="auto", lookahead=5).loader(2)
        resized.load_state_dict({**state, "ranks": [{"0": lying}]})
    with pytest.raises(StateError, match=r"ranks\[0\]: 'w' is not a worker number"):
        resized.load_state_dict({**state, "ranks": [{"w": state["workers"]["0"]}]})

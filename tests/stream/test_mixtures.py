"""Mixtures keep their promise: each source gives exactly its rule's count every epoch, a source
taken less than whole gives a different part of itself each epoch (every sample once before
any again), stratified batches hold each source's share, and the Stream's guarantees (equal
batches per rank, bitwise resume, elastic resume) hold for mixtures as for one source. As
properties of the plan over sample references, and through the real loader on real shards."""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from plans import epoch_batches, make_plan, real, worker_batches
from testdata import batch_digest, numbered_pngs, png_fields

from polymodal.adapters import get
from polymodal.cli import main
from polymodal.datasets.build import build
from polymodal.datasets.index import ShardIndex
from polymodal.pipelines.stream.mixtures import (
    MixSource,
    MixtureError,
    SchedulePoint,
    WeightSchedule,
)
from polymodal.pipelines.stream.partition import largest_remainder
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.stream.stream import Stream
from polymodal.pipelines.train.demo import make_clips

RULE = st.one_of(
    st.just({}),
    st.floats(0.1, 3).map(lambda w: {"weight": round(w, 2)}),
    st.floats(0.1, 2.6).map(lambda r: {"repeat": round(r, 2)}),
    st.integers(0, 30).map(lambda n: {"samples": n}),
)
SOURCES = st.lists(
    st.tuples(st.lists(st.integers(0, 9), min_size=1, max_size=4), RULE), min_size=1, max_size=3
)


def _expected_counts(sizes, rules, epoch_size):
    """Each source's count per epoch by the rule, computed here from the rule's words."""
    counts, weighted = [], []
    for i, (size, rule) in enumerate(zip(sizes, rules, strict=True)):
        if "weight" in rule:
            weighted.append(i)
            counts.append(0)
        elif "samples" in rule:
            counts.append(rule["samples"])
        else:
            counts.append(math.floor(rule.get("repeat", 1.0) * size + 0.5))
    epoch = epoch_size or sum(
        size if "weight" in rule else c for size, rule, c in zip(sizes, rules, counts, strict=True)
    )
    if weighted:
        weights = np.array([rules[i]["weight"] for i in weighted])
        for i, n in zip(weighted, largest_remainder(epoch - sum(counts), weights), strict=True):
            counts[i] = int(n)
    return counts


def _plan_or_skip(shards, rules, per_batch, **kwargs):
    try:
        return make_plan(shards, rules, per_batch, **kwargs)
    except MixtureError:
        assume(False)


@settings(max_examples=150, deadline=None)
@given(
    sources=SOURCES,
    epoch_size=st.one_of(st.none(), st.integers(1, 60)),
    world=st.integers(1, 3),
    workers=st.integers(1, 3),
    per_batch=st.integers(1, 6),
    buffer=st.integers(1, 5),
    batching=st.sampled_from(["mixed", "stratified"]),
    seed=st.integers(0, 3),
)
def test_counts_cycles_and_compositions(
    sources, epoch_size, world, workers, per_batch, buffer, batching, seed
):
    shards, rules = [s for s, _ in sources], [r for _, r in sources]
    plan = _plan_or_skip(
        shards, rules, per_batch, buffer=buffer, seed=seed, epoch_size=epoch_size, batching=batching
    )
    sizes = [sum(s) for s in shards]
    counts = _expected_counts(sizes, rules, epoch_size)
    epochs = 6
    cycle_parts: list[list[set]] = [[] for _ in sizes]
    for epoch in range(epochs):
        ranks = epoch_batches(plan, epoch, world, workers)
        assert len({len(batches) for batches in ranks}) == 1  # equal batches per rank
        delivered = real(b for batches in ranks for b in batches)
        assert len(delivered) == len(set(delivered))  # every draw of a sample once
        per_source = Counter(source for source, *_ in delivered)
        assert [per_source[i] for i in range(len(sizes))] == counts  # the rule, exactly
        for i, (size, n) in enumerate(zip(sizes, counts, strict=True)):
            samples = Counter((shard, index) for s, shard, index, _ in delivered if s == i)
            whole = n // size if size else 0
            # each sample whole times, or once more: the rule repeats, nothing else does
            assert set(samples.values()) <= {whole, whole + 1} - {0}
            cycle_parts[i].append(
                {(shard, index) for s, shard, index, d in delivered if s == i and d == whole}
            )
        if batching == "stratified":
            layout = plan.layout(epoch, world)
            rows = layout.composition.sizes(0, layout.batches).tolist()
            for batches in ranks:
                got = [[sum(r.source == i for r in b) for i in range(len(sizes))] for b in batches]
                assert sorted(got) == sorted(rows)  # every rank's batches: the composition
    for i, (size, n) in enumerate(zip(sizes, counts, strict=True)):
        partial = n % size if size else 0
        if not partial:
            continue
        parts = cycle_parts[i]
        apart = min(size // partial, epochs)  # these epochs take disjoint parts of the cycle
        assert sum(len(p) for p in parts[:apart]) == len(set().union(*parts[:apart]))
        if -(-size // partial) <= epochs:  # a whole cycle: every sample
            assert len(set().union(*parts[: -(-size // partial)])) == size


@settings(max_examples=80, deadline=None)
@given(
    sources=SOURCES,
    world=st.integers(1, 3),
    workers=st.integers(1, 3),
    resized=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    per_batch=st.integers(1, 5),
    buffer=st.integers(1, 5),
    batching=st.sampled_from(["mixed", "stratified"]),
    epoch=st.integers(0, 3),
    fraction=st.floats(0, 1),
    ramp=st.one_of(st.none(), st.tuples(st.integers(1, 12), st.sampled_from(["step", "linear"]))),
    data=st.data(),
)
def test_resume_at_any_batch_same_world_and_resized(
    sources, world, workers, resized, per_batch, buffer, batching, epoch, fraction, ramp, data
):
    shards, rules = [s for s, _ in sources], [r for _, r in sources]
    schedule = None
    if ramp is not None:  # weights from the first source's alone to an even mixture
        first = tuple(float(i == 0) for i in range(len(sources)))
        points = [SchedulePoint(0, first), SchedulePoint(ramp[0], (1.0,) * len(sources), ramp[1])]
        schedule, rules, batching = (
            WeightSchedule(points, len(sources)),
            [{}] * len(rules),
            "stratified",
        )
    plan = _plan_or_skip(
        shards, rules, per_batch, buffer=buffer, batching=batching, schedule=schedule
    )
    worker = data.draw(st.integers(0, workers - 1))
    whole = worker_batches(plan, epoch, 0, world, worker, workers)
    done = round(fraction * len(whole))
    order = plan.worker_order(epoch, Place(0, world, worker, workers))
    batches = order.batches(lambda refs: ((r, r) for r in refs))
    for _ in range(done):
        next(batches)
    state = {name: stage.state_dict() for name, stage in order.stages.items()}
    resumed = worker_batches(plan, epoch, 0, world, worker, workers, state=state, done=done)
    assert resumed == whole[done:]  # bitwise the batches the uninterrupted reader gives
    # resized: every rank delivered `done` batches at world × workers, the rest at the new size
    ranks = epoch_batches(plan, epoch, world, workers)
    saved = {"world": world, "workers": workers, "batches": done}
    rest = plan.remainder(epoch, saved)
    after = epoch_batches(plan, epoch, *resized, rest)
    assert len({len(batches) for batches in after}) == 1
    before = real(b for batches in ranks for b in batches[:done])
    left = real(b for batches in after for b in batches)
    assert sorted(before + left) == sorted(real(b for batches in ranks for b in batches))


def test_a_schedule_gives_every_batch_its_steps_share():
    schedule = WeightSchedule(
        [SchedulePoint(0, (1.0, 0.0)), SchedulePoint(8, (1.0, 3.0), "linear")], sources=2
    )
    plan = make_plan([[30], [50]], [{}, {}], 8, batching="stratified", schedule=schedule)
    per_epoch = plan.layout(0, 1).batches
    steps = []
    for epoch in range(3):
        (batches,) = epoch_batches(plan, epoch, 1, 2)
        assert len(batches) == per_epoch
        for number, batch in enumerate(batches):
            step = epoch * per_epoch + number
            second = sum(r.source for r in batch)
            t = min(step / 8, 1.0)
            want = largest_remainder(len(batch), np.array([1 - t * 0.75, t * 0.75]))[1]
            assert second == want, (step, second, want)
            steps.append(second)
        delivered = real(batches)
        assert len(set(delivered)) == len(delivered)
    assert steps[0] == 0 and steps[-1] == 6  # from all of source 0 to three quarters source 1


def test_bad_declarations_are_one_line_errors():
    sizes = [[10], [10]]
    with pytest.raises(MixtureError, match="one rule per source, got weight and repeat"):
        MixSource("a", weight=1, repeat=2)
    with pytest.raises(MixtureError, match="the weights sum to 0"):
        make_plan(sizes, [{"weight": 0}, {"weight": 0}], 4)
    with pytest.raises(MixtureError, match="weight must be at least 0"):
        make_plan(sizes, [{"weight": -1}, {}], 4)
    with pytest.raises(MixtureError, match="more than an epoch of epoch_size=15"):
        make_plan(sizes, [{"samples": 20}, {"weight": 1}], 4, epoch_size=15)
    with pytest.raises(MixtureError, match="the schedule goes backwards"):
        WeightSchedule([SchedulePoint(5, (1, 1)), SchedulePoint(5, (1, 2))], 2)
    with pytest.raises(
        MixtureError, match=r"less than one sample; raise the batch size to at least 11"
    ):
        make_plan([[100], [10]], [{}, {}], 4, batching="stratified")
    with pytest.raises(MixtureError, match="has none to read"):
        make_plan([[0], [10]], [{"samples": 3}, {}], 4)
    with pytest.raises(MixtureError, match="nothing fills the rest"):
        make_plan(sizes, [{}, {"repeat": 1}], 4, epoch_size=50)


def _keys_by_source(batches) -> Counter:
    return Counter(
        k[0] for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r
    )


def test_a_down_weighted_source_gives_all_of_itself_over_its_cycle(tmp_path):
    """The first case of the issue: a = 46 samples in 3 shards at weight 1 beside c at 5 gave
    the same 22 of a's samples every epoch; now a's 11 a epoch walk all 46 in 5 epochs."""
    numbered_pngs(tmp_path / "a", sizes=[20, 16, 10], prefix="a")
    numbered_pngs(tmp_path / "b", sizes=[23], prefix="b")
    numbered_pngs(tmp_path / "c", sizes=[7], prefix="c")
    stream = Stream(
        [(tmp_path / "a", 1), (tmp_path / "b", 1), (tmp_path / "c", 5)],
        {"label": get("label")()},
        batch_size=8,
        buffer_size=16,
    )
    loader = stream.loader(num_workers=2)
    seen_a, epochs = [], []
    for _ in range(12):
        batches = list(loader)
        keys = [
            k for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r
        ]
        assert _keys_by_source(batches) == {"a": 11, "b": 11, "c": 54}
        seen_a.append({k for k in keys if k.startswith("a")})
        epochs.append(loader.report()["sources"])
    assert len(set().union(*seen_a[:5])) == 46  # every one of a's samples within its cycle
    assert sum(len(s) for s in seen_a[:4]) == len(set().union(*seen_a[:4]))  # none twice
    assert epochs[0][0]["delivered"] == 11 and epochs[0][2]["delivered"] == 54
    assert epochs[4][0]["cycle"] == {"pass": 1, "through": 9, "of": 46}


def test_an_up_weighted_mixture_drops_nothing_twice(tmp_path):
    """The second case: b = 23 at weight 1 beside a = 37 at 2 lost the same 3 samples each
    epoch; now b's 20 an epoch cover it in 2 epochs, and a passes whole once and 3 more."""
    numbered_pngs(tmp_path / "a", sizes=[20, 17], prefix="a")
    numbered_pngs(tmp_path / "b", sizes=[12, 11], prefix="b")
    stream = Stream(
        [(tmp_path / "a", 2.0), (tmp_path / "b", 1.0)],
        {"label": get("label")()},
        batch_size=6,
        buffer_size=10,
    )
    loader = stream.loader(num_workers=2)
    b_seen = []
    for _ in range(2):
        batches = list(loader)
        keys = [
            k for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r
        ]
        assert _keys_by_source(batches) == {"a": 40, "b": 20}
        a_keys = Counter(k for k in keys if k.startswith("a"))
        assert len(a_keys) == 37 and sorted(Counter(a_keys.values()).items()) == [(1, 34), (2, 3)]
        b_keys = [k for k in keys if k.startswith("b")]
        assert len(set(b_keys)) == 20
        b_seen.append(set(b_keys))
    assert len(b_seen[0] | b_seen[1]) == 23


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Real h264/aac clips in two datasets (train, val) to mix."""
    root = tmp_path_factory.mktemp("mix")
    make_clips(root / "clips", samples=40, classes=2)
    build(
        root / "clips",
        root / "data",
        split="val=0.3",
        shard_samples=8,
        progress=False,
        print_=lambda _: None,
    )
    return root / "data"


def _mixture_toml(data: Path, run: Path, mixture: str) -> str:
    return (
        textwrap.dedent(f"""
        run_dir = "{run}"
        epochs = 2
        eval_every_epoch = false
        {mixture}
        [data]
        num_classes = 2
        batch_size = 8
        batching = "stratified"
        [data.fields.audio]
        adapter = "audio"
        extensions = ["mp4"]
        options = {{sample_rate = 8000, duration = 0.25}}
        encoder = {{samples_per_patch = 200, num_bands = 4}}
        [model]
        num_latents = 4
        latent_dim = 16
        num_self_attends_per_block = 1
        self_heads = 2
    """)
        .replace("{train}", str(data / "train"))
        .replace("{val}", str(data / "val"))
    )


@pytest.mark.slow
def test_a_config_trains_on_a_mixture_and_reports_each_source(tmp_path, clips, capsys):
    mixture = """
        [[data.train]]
        path = "{train}"
        weight = 3
        [[data.train]]
        path = "{val}"
        samples = 8
        [[data.schedule]]
        step = 0
        weights = [1, 1]
        [[data.schedule]]
        step = 3
        weights = [3, 1]
        ramp = "linear"
    """
    config = tmp_path / "mix.toml"
    config.write_text(_mixture_toml(clips, tmp_path / "run", mixture))
    # a schedule sets every source's share: `samples` beside it is refused, in one line
    assert main(["train", str(config)]) == 2
    assert "data.train: source" in capsys.readouterr().err
    config.write_text(_mixture_toml(clips, tmp_path / "run", mixture.replace("samples = 8", "")))
    assert main(["train", str(config)]) == 0
    err = capsys.readouterr().err
    assert "epoch 2 (step" in err and " · train " in err and " · val " in err
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    counts = [r for r in records if "source/train/delivered" in r]
    assert len(counts) == 2  # one record an epoch
    epoch = ShardIndex.load(clips / "train").samples + ShardIndex.load(clips / "val").samples
    assert all(r["source/train/delivered"] + r["source/val/delivered"] >= epoch for r in counts)
    assert counts[1]["source/train/delivered"] > counts[0]["source/train/delivered"]  # ramped up


def test_bad_mixture_configs_are_one_line_errors(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    cases = {
        '[[data.train]]\npath = "a"\nweight = 1\nrepeat = 2\n': "data.train: source a: one rule",
        "[data]\ntrain = 5\n": "data.train: expected str or a list of tables, got 5",
        '[data]\ntrain = "a"\nbatching = "zigzag"\n': "data.batching: expected mixed or stratified",
        (
            '[[data.train]]\npath = "a"\n[[data.train]]\npath = "b"\n'
            "[[data.schedule]]\nstep = 5\nweights = [1, 1]\n"
            "[[data.schedule]]\nstep = 2\nweights = [1, 2]\n"
        ): "data.schedule: schedule point 1 (step 2): the schedule goes backwards",
    }
    for text, message in cases.items():
        config.write_text(text + '[data.fields.audio]\nadapter = "audio"\n')
        assert main(["train", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_a_stratified_mixture_resumes_bitwise_through_real_workers(tmp_path):
    numbered_pngs(tmp_path / "a", sizes=[20, 12, 10], prefix="a")
    numbered_pngs(tmp_path / "b", sizes=[14], prefix="b")

    def loader():
        sources = [MixSource(tmp_path / "a", weight=3), MixSource(tmp_path / "b", weight=1)]
        stream = Stream(sources, png_fields(), batch_size=8, buffer_size=6, batching="stratified")
        return stream.loader(num_workers=2)

    first = loader()
    first.set_epoch(3)
    batches = list(first)
    whole = [batch_digest(b) for b in batches]
    # 42 and 14 samples at 3 : 1, batches of 8: every batch three quarters a, a quarter b
    assert [b.sources.tolist().count(0) for b in batches] == [6] * 7
    for cut in (1, 3):
        partial = loader()
        partial.set_epoch(3)
        batches = iter(partial)
        for _ in range(cut):
            next(batches)
        state = json.loads(json.dumps(partial.state_dict()))
        del batches
        resumed = loader()
        resumed.load_state_dict(state)
        assert [batch_digest(b) for b in resumed] == whole[cut:]

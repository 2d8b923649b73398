import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from testdata import SHARD_SIZES, TESTS, batch_digest, numbered_pngs, png_fields, set_rank

from polymodal.adapters import get
from polymodal.datasets.files import Remote
from polymodal.pipelines.stream.loader import WORKER_NICE
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.stream.plan import StreamPlan
from polymodal.pipelines.stream.stages.shuffle import BufferOrder
from polymodal.pipelines.stream.stream import MissingMember, Stream


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "data"
    numbered_pngs(path)
    return path


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("world", [1, 3])
def test_exactly_once_over_ranks_and_workers(dataset, monkeypatch, workers, world):
    total = sum(SHARD_SIZES)
    keys, batches = [], []
    for rank in range(world):
        set_rank(monkeypatch, rank, world)
        loader = Stream(dataset, png_fields(), batch_size=4, buffer_size=8).loader(workers)
        epoch = list(loader)
        batches.append(len(epoch))
        assert len(epoch) == len(loader)
        for batch in epoch:
            keys += [k for k, r in zip(batch.keys, batch.repeated.tolist(), strict=True) if not r]
            label = batch["label"].values[:, 0, 0].tolist()
            pixel = batch["image"].values[:, 0, 0].tolist()
            assert [int(k[1:]) % 10 for k in batch.keys] == label  # fields belong to their key
            assert [int(k[1:]) % 256 for k in batch.keys] == pixel
    assert sorted(keys) == [f"k{i:04d}" for i in range(total)]
    assert len(set(batches)) == 1


def test_order_is_deterministic_and_changes_by_epoch(dataset):
    def order(seed: int, epochs: int = 2) -> list[list[str]]:
        loader = Stream(dataset, png_fields(), batch_size=5, seed=seed).loader(0)
        return [[k for b in loader for k in b.keys] for _ in range(epochs)]

    first, again = order(1), order(1)
    assert first == again and first[0] != first[1] and order(2)[0] != first[0]


def test_unshuffled_stream_is_storage_order(dataset):
    keys = [k for b in Stream(dataset, png_fields(), batch_size=6, shuffle=False) for k in b.keys]
    assert keys == [f"k{i:04d}" for i in range(sum(SHARD_SIZES))]


RESUME_CHILD = textwrap.dedent(
    """
    import hashlib, json, os, sys
    sys.path.insert(0, {tests!r})
    from testdata import batch_digest, png_fields
    from polymodal.pipelines.stream.stream import MissingMember, Stream

    jobs = json.loads(open(sys.argv[1]).read())
    out = []
    for job in jobs:
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(job["rank"]), str(job["world"])
        stream = Stream(job["data"], png_fields(), batch_size=3, buffer_size=10)
        loader = stream.loader(job["workers"])
        loader.load_state_dict(job["state"])
        out.append([batch_digest(b) for b in loader])
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_resume_in_a_new_process_is_bitwise_exact(dataset, monkeypatch, tmp_path):
    """State after batch k, a fresh process, load_state_dict: the following batches equal the
    uninterrupted run's, keys and tensors, for workers 0-2 and world sizes 1-4."""
    rng = np.random.default_rng(0)
    jobs, expected = [], []
    for workers in (0, 1, 2):
        for world in (1, 2, 3, 4):
            rank = int(rng.integers(0, world))
            set_rank(monkeypatch, rank, world)
            stream = Stream(dataset, png_fields(), batch_size=3, buffer_size=10)
            loader = stream.loader(workers)
            list(loader)  # epoch 0: resume in epoch 1, whose order differs
            full = [batch_digest(b) for b in loader]
            k = int(rng.integers(0, len(full)))
            loader.set_epoch(1)
            batches = iter(loader)
            for _ in range(k + 1):
                next(batches)
            state = json.loads(json.dumps(loader.state_dict()))  # it must survive JSON
            jobs.append(
                {
                    "data": str(dataset),
                    "rank": rank,
                    "world": world,
                    "workers": workers,
                    "state": state,
                }
            )
            expected.append(full[k + 1 :])
    job_file = tmp_path / "jobs.json"
    job_file.write_text(json.dumps(jobs))
    child = tmp_path / "child.py"
    child.write_text(RESUME_CHILD.format(tests=str(TESTS)))
    out = subprocess.run(
        [sys.executable, str(child), str(job_file)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "RANK": "0"},
    ).stdout
    got = json.loads(out.splitlines()[-1])
    for job, want, have in zip(jobs, expected, got, strict=True):
        assert have == want, (job["workers"], job["world"], job["state"]["batches"])


def test_resume_reads_at_most_the_buffer_and_decodes_nothing_skipped(dataset, monkeypatch):
    set_rank(monkeypatch, 0, 1)
    stream = Stream(dataset, png_fields(), batch_size=4, buffer_size=6)
    full = list(stream.worker_batches(0, Place()))
    decoded = []
    adapter = stream.fields["image"]
    original = adapter.decode_bytes

    def counting(data, ext, rng):
        decoded.append(1)
        return original(data, ext, rng)

    adapter.decode_bytes = counting
    rest = list(stream.worker_batches(0, Place(), state=full[6][1]))
    assert [b.keys for b, _, _ in rest] == [b.keys for b, _, _ in full[7:]]
    assert len(decoded) == sum(len(b.keys) for b, _, _ in rest)  # only what is delivered


def test_resume_restores_the_buffer_without_replaying_the_epoch(dataset, monkeypatch):
    """The state holds the buffer's order itself: resuming late in an epoch steps the order
    only for the batch it makes, not once per sample already emitted."""
    set_rank(monkeypatch, 0, 1)
    loader = Stream(dataset, png_fields(), batch_size=2, buffer_size=4).loader(0)
    batches = iter(loader)
    for _ in range(12):
        next(batches)
    expected = batch_digest(next(batches))
    loader = Stream(dataset, png_fields(), batch_size=2, buffer_size=4).loader(0)
    batches = iter(loader)
    for _ in range(12):
        next(batches)
    state = json.loads(json.dumps(loader.state_dict()))
    steps = []
    step = BufferOrder.step
    monkeypatch.setattr(BufferOrder, "step", lambda self: steps.append(1) or step(self))
    resumed = Stream(dataset, png_fields(), batch_size=2, buffer_size=4).loader(0)
    resumed.load_state_dict(state)
    assert batch_digest(next(iter(resumed))) == expected
    assert len(steps) <= 3  # two samples' steps (and the one past them), not 24 + 2


def test_resume_refuses_another_configuration(dataset):
    loader = Stream(dataset, png_fields(), batch_size=4).loader(0)
    next(iter(loader))
    state = loader.state_dict()
    other = Stream(dataset, png_fields(), batch_size=5).loader(0)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(state)


def test_resume_refuses_another_rank_batch_size_or_dataset_naming_the_values(
    dataset, monkeypatch, tmp_path
):
    set_rank(monkeypatch, 1, 4)
    loader = Stream(dataset, png_fields(), batch_size=2).loader(0)
    next(iter(loader))
    state = json.loads(json.dumps(loader.state_dict()))
    set_rank(monkeypatch, 0, 4)
    with pytest.raises(ValueError, match=r"this state is rank 1's, this is rank 0 of 4"):
        Stream(dataset, png_fields(), batch_size=2).loader(0).load_state_dict(state)
    set_rank(monkeypatch, 1, 4)
    with pytest.raises(ValueError, match=r"batch_size \(saved 2, now 3\)"):
        Stream(dataset, png_fields(), batch_size=3).loader(0).load_state_dict(state)
    other = tmp_path / "other"  # the same shape of data, other samples
    numbered_pngs(other, prefix="o")
    state["config"]["sources"] = [str(other)]
    with pytest.raises(ValueError, match=r"datasets \(saved \['table-sha256:[0-9a-f]{64}'\], now"):
        Stream(other, png_fields(), batch_size=2).loader(0).load_state_dict(state)
    state["config"]["datasets"] = ["0" * 64]  # a state from before table digests: not checked
    Stream(other, png_fields(), batch_size=2).loader(0).load_state_dict(state)


def test_a_rank_outside_the_world_is_an_error(dataset):
    stream = Stream(dataset, png_fields(), batch_size=2)
    with pytest.raises(ValueError, match="rank 4 of world size 4"):
        next(stream.worker_batches(0, Place(4, 4)))
    with pytest.raises(ValueError, match="worker 2 of 2"):
        stream.slice(Place(0, 1, 2, 2))


def test_bad_samples_mid_shard_are_skipped_and_reported(tmp_path, caplog):
    data = tmp_path / "bad"
    total = numbered_pngs(data, sizes=[10, 10], bad={3, 14})
    loader = Stream(data, png_fields(), batch_size=4, shuffle=False).loader(0)
    batches = list(loader)
    report = loader.report()
    delivered = [
        k for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r
    ]
    assert sorted(delivered) == [f"k{i:04d}" for i in range(total) if i not in (3, 14)]
    assert all(len(b.keys) == 4 for b in batches)  # a repeat stands in, marked
    assert report["skipped"] == 2 and report["by_stage"] == {"decode": 2}
    assert {s["key"] for s in report["samples"]} == {"k0003", "k0014"}
    assert all("image" in s["reason"] for s in report["samples"])
    assert "skipped 2 samples" in caplog.text
    with pytest.raises(Exception, match="k0003"):
        list(Stream(data, png_fields(), batch_size=4, shuffle=False, errors="raise"))
    per_stage = Stream(data, png_fields(), batch_size=4, shuffle=False, errors={"read": "raise"})
    assert len(list(per_stage)) == 5  # decode errors still skipped: only reading raises
    with pytest.raises(ValueError, match="errors must be"):
        Stream(data, png_fields(), errors={"decode": "ignore"})


def test_a_missing_shard_is_reported_at_once(tmp_path):
    """A missing file is not a transient error: no backoff is spent on it."""
    data = tmp_path / "missing"
    numbered_pngs(data, sizes=[5, 6, 5])
    (data / "shard-001.tar").unlink()
    remote = Remote(tries=3, backoff=1.0)
    loader = Stream(data, png_fields(), batch_size=4, shuffle=False, remote=remote).loader(0)
    start = time.perf_counter()
    keys = [k for b in loader for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]
    assert time.perf_counter() - start < 1.0  # no backoff
    assert keys == [f"k{i:04d}" for i in (*range(5), *range(11, 16))]
    strict = Stream(
        data, png_fields(), batch_size=4, shuffle=False, errors={"read": "raise", "decode": "skip"}
    )
    with pytest.raises(OSError, match=r"shard-001\.tar"):
        list(strict)
    report = loader.report()
    assert report["skipped"] == 6 and all(
        s["url"].endswith("shard-001.tar") for s in report["samples"]
    )


def test_shuffle_quality_on_a_dataset_sorted_by_class(tmp_path):
    """Output position against storage position: Spearman correlation near 0 (1 unshuffled).

    With 60 shards a single epoch's correlation scatters by about 1/sqrt(60) around 0, so the
    test takes the mean over six seeds."""
    data = tmp_path / "sorted"
    numbered_pngs(data, sizes=[10] * 60)

    def rho(seed: int, shuffle: bool = True) -> float:
        stream = Stream(
            data,
            {"label": get("label")()},
            batch_size=10,
            buffer_size=50,
            seed=seed,
            shuffle=shuffle,
        )
        storage = np.array([int(k[1:]) for b in stream for k in b.keys])
        return np.corrcoef(np.argsort(np.argsort(storage)), np.arange(len(storage)))[0, 1]

    assert rho(0, shuffle=False) == pytest.approx(1.0)
    assert np.mean([abs(rho(seed)) for seed in range(6)]) < 0.12


def test_mixing_sources_by_weight(tmp_path):
    numbered_pngs(tmp_path / "a", sizes=[30, 30], prefix="a")
    numbered_pngs(tmp_path / "b", sizes=[10], prefix="b")
    fields = {"label": get("label")()}
    stream = Stream([(tmp_path / "a", 1.0), (tmp_path / "b", 1.0)], fields, batch_size=7)
    keys = [k for b in stream for k in b.keys]
    assert len(keys) == 70
    assert sum(k.startswith("b") for k in keys) == 35  # b cycles: 10 samples, 35 draws
    assert len({k for k in keys if k.startswith("a")}) == 35
    plain = Stream([tmp_path / "a", tmp_path / "b"], fields, batch_size=7)
    assert sorted(k for b in plain for k in b.keys) == sorted(
        [f"a{i:04d}" for i in range(60)] + [f"b{i:04d}" for i in range(10)]
    )


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_memory_stays_flat_across_epochs_with_persistent_workers(tmp_path):
    data = tmp_path / "epochs"
    numbered_pngs(data, sizes=[40] * 5)
    loader = Stream(data, png_fields(), batch_size=8, buffer_size=32).loader(num_workers=2)

    def total_rss() -> int:
        children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
        return _rss_kb(os.getpid()) + sum(_rss_kb(int(c)) for c in children)

    for _ in range(2):
        list(loader)
    before = total_rss()
    for _ in range(6):
        list(loader)
    growth = total_rss() - before
    assert loader.epoch == 8
    assert growth < 20_000, f"RSS grew by {growth} kB over 6 epochs"


def test_http_stream_equals_disk(dataset):
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(dataset.parent),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        port = int(line.split("port ")[1].split()[0])
        url = f"http://127.0.0.1:{port}/{dataset.name}"
        remote = [batch_digest(b) for b in Stream(url, png_fields(), batch_size=4)]
        local = [batch_digest(b) for b in Stream(dataset, png_fields(), batch_size=4)]
        file_url = [batch_digest(b) for b in Stream(dataset.as_uri(), png_fields(), batch_size=4)]
        assert remote == local == file_url and len(local) == 14
        loader = Stream(url, png_fields(), batch_size=4).loader(0)
        batches = iter(loader)
        for _ in range(5):
            next(batches)
        resumed = Stream(url, png_fields(), batch_size=4).loader(0)
        resumed.load_state_dict(loader.state_dict())
        assert [batch_digest(b) for b in resumed] == local[5:]
    finally:
        server.terminate()
        server.wait()


def test_the_epoch_plan_is_built_once_per_worker_and_never_in_the_main_process(
    dataset, monkeypatch
):
    """The plan (each source's permuted shard order) costs O(shards): a worker builds it
    once an epoch, and the main process, which only needs the epoch's length, never does."""
    built = []
    original = StreamPlan.orders

    def counted(self, epoch, world):
        built.append(epoch)
        return original(self, epoch, world)

    monkeypatch.setattr(StreamPlan, "orders", counted)
    stream = Stream(dataset, png_fields(), batch_size=5)
    loader = stream.loader(0)
    assert len(loader) > 1 and built == []  # lengths and slices: no plan
    for _ in range(2):
        assert sum(1 for _batch in loader) == len(loader)
    assert built == [0, 1]  # one worker (in process), one plan per epoch


def test_a_field_the_data_lacks_is_refused_when_the_stream_is_made(dataset):
    fields = {**png_fields(), "audio": get("audio")(extensions=["flac", "wav"])}
    with pytest.raises(MissingMember, match=r"field 'audio': the dataset .* has no flac / wav"):
        Stream(dataset, fields)
    assert Stream(dataset, fields, optional=["audio"]).total == sum(SHARD_SIZES)


class _SampleLog:
    """A stream transform that writes `line(sample)` to a file for each sample it passes (a
    file: it runs in the DataLoader workers)."""

    def __init__(self, path: Path, line: Callable[[dict], str]) -> None:
        self.path, self.line = path, line

    def __call__(self, sample: dict) -> dict:
        with open(self.path, "a") as f:
            f.write(f"{self.line(sample)}\n")
        return sample


def test_workers_begin_the_next_epoch_while_the_last_batch_is_used(dataset, tmp_path):
    """With workers, the next epoch's samples are decoded while the consumer still holds the
    last batch of this one (they would otherwise wait, idle, for the next iteration); the
    epochs keep their batches, each sample once an epoch and the order of an uninterrupted
    run, and `set_epoch` afterwards still gives the epoch it names."""
    log = tmp_path / "decoded.txt"
    fields = png_fields()
    stream = Stream(dataset, fields, batch_size=4, buffer_size=8)
    loader = stream.map(_SampleLog(log, lambda s: f"{time.monotonic()} {s['__key__']}")).loader(1)
    first = [list(b.keys) for b in loader]
    held_from = time.monotonic()  # the consumer steps on the epoch's last batch
    time.sleep(1.0)
    asked = time.monotonic()
    second = [list(b.keys) for b in loader]
    times = [float(line.split()[0]) for line in log.read_text().splitlines()]
    assert any(held_from < t < asked for t in times)  # decoded while the last batch was held
    total = sum(SHARD_SIZES)
    for epoch in (first, second):
        keys = [k for batch in epoch for k in batch]
        assert sorted(set(keys)) == [f"k{i:04d}" for i in range(total)]
    fresh = Stream(dataset, fields, batch_size=4, buffer_size=8).loader(0)
    assert [[list(b.keys) for b in fresh] for _ in range(2)] == [first, second]
    loader.set_epoch(0)
    assert [list(b.keys) for b in loader] == first


def test_workers_decode_below_the_consumers_cpu_priority(dataset, tmp_path):
    """By default every worker runs at nice +19 from its parent, so that a training step has
    the cores when it wants them; `nice=0` keeps the parent's priority. The consumer keeps its
    own, and a nice outside 0-19 is refused."""
    own = os.nice(0)
    for nice, want in ((None, min(19, own + WORKER_NICE)), (0, own), (7, min(19, own + 7))):
        log = tmp_path / f"nice-{nice}.txt"
        note = _SampleLog(log, lambda _: f"{os.getpid()} {os.nice(0)}")  # process, priority
        stream = Stream(dataset, png_fields(), batch_size=4).map(note)
        list(stream.loader(2) if nice is None else stream.loader(2, nice=nice))
        seen = {tuple(map(int, line.split())) for line in log.read_text().splitlines()}
        assert len({pid for pid, _ in seen}) == 2, seen  # both workers decoded
        assert {priority for _, priority in seen} == {want}
    assert WORKER_NICE == 19 and os.nice(0) == own
    with pytest.raises(ValueError, match="nice must be 0 to 19, got 20"):
        Stream(dataset, png_fields(), batch_size=4).loader(2, nice=20)

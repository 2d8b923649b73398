"""A million shards: the index's open, memory, plan, state and resume costs at 10k / 100k / 1M
shards, each step measured in a fresh process, against the version-1 layout as a baseline.

    .venv/bin/python benchmarks/bench_index.py [--shards 10000 100000 1000000] [--repeats 3]

The synthetic index is written through the project's own writer (`ShardIndex.save`): shard 0 is
a real tar of 64 label-only samples, the others are listed but absent (1,000 samples each, so
1M shards are ~1B samples), which is what a dataset that lost shards looks like. Measured, each
in a fresh Python (after its imports), medians of `--repeats`:

- open: `ShardIndex.load` time and resident growth (RSS: the shard table's mapped pages count);
- the baseline: the version-1 layout's load as it was (`json.loads`, then one `ShardInfo` per
  entry, without its checks, so the baseline is, if anything, flattered);
- a forked worker: its own growth (private pages: what forking costs the machine; the mapped
  table is shared) and RSS growth after computing one reader's epoch plan at 8 ranks × 8
  workers (the baseline's worker walks its shard list, as the old plan did);
- one reader's plan (`StreamPlan.orders` + its slice), the `Stream`'s construction (one
  `stat` per local shard up to 65,536 shards, none past that: the reader checks sizes), and
  `StreamLoader.state_dict()` after a few batches;
- a mixture's plan: three sources of that many shards (the same index three times, under
  `weight`, a fractional `repeat` and `samples`, so each has whole passes and a cycle) at epoch
  5, mixed and stratified: one reader's orders, slice and first batch of references, in a
  fork, against three single-source plans;
- resume: the time from `load_state_dict` to the next batch, for states saved after 4 and
  after 400 batches (O(buffer + shards skipped): the two should match);
- skips: the main process's CPU time for an epoch in which 80,000 samples of 80 lost shards
  are skipped, with 2 workers (the skips are recorded in the main process), and the
  `state_dict()` holding all of them; the baseline is the same epoch with no shard lost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from polymodal.adapters import get
from polymodal.datasets.index import ShardIndex, ShardInfo
from polymodal.datasets.shard_table import ShardTable
from polymodal.datasets.writer import ShardWriter
from polymodal.pipelines.stream.mixtures import MixSource
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.stream.stream import Stream

PER_SHARD = 1000  # samples each absent shard claims
WORLD, WORKERS = 8, 8  # the node a worker's plan is computed for
REAL = 64  # samples in shard 0, the one real shard


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def private_mb() -> float:
    """Pages only this process holds (anonymous or copied-on-write): what a fork costs."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]
    )
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024


def fields() -> dict:
    return {"label": get("label")()}


# --- writing the synthetic datasets ---------------------------------------------------------


def write_dataset(folder: Path, shards: int, per_shard: int = PER_SHARD, real: int = REAL) -> None:
    """Shard 0 real (`real` samples), the rest absent, the index written by `ShardIndex.save`;
    beside it, the same index in the version-1 layout (`v1/index.json`) for the baseline."""
    with ShardWriter(folder, max_samples=real) as writer:
        for n in range(real):
            writer.write({"__key__": f"k{n:05d}", "cls": str(n % 10)})
    real = ShardIndex.load(folder)
    first = real.shards[0]
    rest = range(1, shards)
    table = ShardTable.from_columns(
        [first.name, *(f"shard-{n:07d}.tar" for n in rest)],
        [first.samples, *(per_shard for _ in rest)],
        [first.bytes, *(per_shard * 1024 for _ in rest)],
        [bytes.fromhex(first.sha256), *(hashlib.sha256(b"%d" % n).digest() for n in rest)],
        [first.fields, *({"cls": per_shard} for _ in rest)],
    )
    index = ShardIndex("tar", real.fields, table, real.labels, base=str(folder))
    index.save(folder)
    doc = json.loads(index.header(""))
    del doc["table"]
    doc["version"] = 1
    names, samples, sizes = table.names.to_pylist(), table.samples.tolist(), table.bytes.tolist()
    doc["shards"] = [
        {"name": n, "samples": s, "bytes": b, "sha256": hashlib.sha256(n.encode()).hexdigest()}
        for n, s, b in zip(names, samples, sizes, strict=True)
    ]
    (folder / "v1").mkdir()
    (folder / "v1" / "index.json").write_text(json.dumps(doc, indent=1))


# --- the measurements, each run in a fresh process --------------------------------------------


def old_load(folder: Path) -> list[ShardInfo]:
    """The version-1 load as it was: the whole document parsed, one dataclass per entry."""
    return [ShardInfo(**e) for e in json.loads((folder / "index.json").read_bytes())["shards"]]


def in_fork(work: Any) -> dict[str, float]:
    """Run `work()` in a forked child; its private and resident growth, and its seconds."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        before, rss = private_mb(), rss_mb()
        started = time.perf_counter()
        work()
        out = {"seconds": time.perf_counter() - started}
        out |= {"private_mb": private_mb() - before, "rss_mb": rss_mb() - rss}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        result = json.loads(f.read())
    os.waitpid(pid, 0)
    return result


def measure(kind: str, folder: Path) -> dict[str, float]:
    logging.disable(logging.WARNING)
    rss = rss_mb()
    started = time.perf_counter()
    if kind == "baseline":
        shards = old_load(folder / "v1")
        out = {"open_s": time.perf_counter() - started, "open_mb": rss_mb() - rss}
        worker = in_fork(lambda: [s.samples for s in shards])  # what the old plan walked
        return out | {f"worker_{k}": v for k, v in worker.items()}
    if kind == "open":
        index = ShardIndex.load(folder)
        out = {"open_s": time.perf_counter() - started, "open_mb": rss_mb() - rss}
        assert index.samples > 0
        stream = Stream(folder, fields(), batch_size=64, seed=1)
        out["stream_s"] = time.perf_counter() - started

        def plan() -> None:
            stream.plan.orders(0, WORLD)
            stream.slice(Place(WORLD - 1, WORLD, WORKERS - 1, WORKERS))

        worker = in_fork(plan)
        return out | {f"worker_{k}": v for k, v in worker.items()}
    if kind.startswith("mixture"):
        samples = ShardIndex.load(folder).samples
        rules = [
            MixSource(folder, weight=2.0),
            MixSource(folder, repeat=1.3),
            MixSource(folder, samples=samples // 3),
        ]
        batching = kind.removeprefix("mixture-")
        mixed = Stream(rules, fields(), batch_size=64, seed=1, batching=batching)

        def first_batch() -> None:
            order = mixed.plan.worker_order(5, Place(WORLD - 1, WORLD, WORKERS - 1, WORKERS))
            next(order.batches(lambda refs: ((r, r) for r in refs)))

        return {"plan_s": in_fork(first_batch)["seconds"]}
    os.environ.update(RANK="0", WORLD_SIZE=str(WORLD))  # a rank of the node
    stream = Stream(folder, fields(), batch_size=64, seed=1, buffer_size=1000)
    if kind == "state":
        loader = stream.loader(0)
        batches = iter(loader)
        for _ in range(4):
            next(batches)
        timings, saving = [], []
        for _ in range(20):
            t = time.perf_counter()
            state = loader.state_dict()
            timings.append(time.perf_counter() - t)
            json.dumps(state)
            saving.append(time.perf_counter() - t)
        out = {"state_ms": 1000 * statistics.median(timings)}
        out["state_json_ms"] = 1000 * statistics.median(saving)
        for after in (4, 400):
            loader = stream.loader(0)
            batches = iter(loader)
            for _ in range(after):
                next(batches)
            state = json.loads(json.dumps(loader.state_dict()))
            resumed = Stream(folder, fields(), batch_size=64, seed=1, buffer_size=1000).loader(0)
            t = time.perf_counter()
            resumed.load_state_dict(state)
            next(iter(resumed))
            out[f"resume_{after}_s"] = time.perf_counter() - t
        return out
    if kind == "skips":
        os.environ.update(RANK="0", WORLD_SIZE="1")
        loader = Stream(folder, fields(), batch_size=64, shuffle=False).loader(2)
        recording = {"s": 0.0}
        note = loader._note_skips

        def timed_note(skips: list) -> None:  # the main process's recording, timed alone
            t = time.process_time()
            note(skips)
            recording["s"] += time.process_time() - t

        loader._note_skips = timed_note  # type: ignore[method-assign]
        cpu = time.process_time()
        for _ in loader:
            pass
        out = {"epoch_cpu_s": time.process_time() - cpu, "skipped": loader.report()["skipped"]}
        out["recording_s"] = recording["s"]
        t = time.perf_counter()
        loader.state_dict()
        return out | {"state_ms": 1000 * (time.perf_counter() - t)}
    raise ValueError(kind)


def fresh(kind: str, folder: Path) -> dict[str, float]:
    """`measure(kind, folder)` in a new Python process."""
    done = subprocess.run(
        [sys.executable, __file__, "--measure", kind, str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def medians(kind: str, folder: Path, repeats: int) -> dict[str, float]:
    runs = [fresh(kind, folder) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shards in args.shards:
            folder = Path(tmp) / f"n{shards}"
            started = time.perf_counter()
            write_dataset(folder, shards)
            written = time.perf_counter() - started
            ours = medians("open", folder, args.repeats) | medians("state", folder, args.repeats)
            for batching in ("mixed", "stratified"):
                ours[batching] = medians(f"mixture-{batching}", folder, args.repeats)["plan_s"]
            old = medians("baseline", folder, 1)
            size = (folder / "index.arrow").stat().st_size + (folder / "index.json").stat().st_size
            rows.append(
                (shards, written, size, (folder / "v1/index.json").stat().st_size, ours, old)
            )
            print(f"{shards:,} shards done", file=sys.stderr)
        lost = Path(tmp) / "lost"
        write_dataset(lost, 81)
        clean = Path(tmp) / "clean"  # as many samples, all of them there
        write_dataset(clean, 1, real=REAL + 80 * PER_SHARD)
        skips = medians("skips", lost, args.repeats)
        base = medians("skips", clean, args.repeats)
    print(f"\nmedians of {args.repeats} fresh processes; baseline: version-1 layout, one run\n")
    print(
        f"{'shards':>10} {'write s':>8} {'index MB':>9} {'v1 MB':>7} {'open s':>7} {'v1 s':>6} "
        f"{'ratio':>6} {'open MB':>8} {'v1 MB':>7} {'fork MB':>8} {'v1 fork':>8} {'fork RSS':>8} "
        f"{'plan s':>7} {'stream s':>8} {'state ms':>8} {'+json ms':>8} {'resume@4':>8} "
        f"{'resume@400':>10}"
    )
    for shards, written, size, v1_size, ours, old in rows:
        print(
            f"{shards:>10,} {written:>8.2f} {size / 2**20:>9.1f} {v1_size / 2**20:>7.1f} "
            f"{ours['open_s']:>7.3f} {old['open_s']:>6.2f} {ours['open_s'] / old['open_s']:>6.3f} "
            f"{ours['open_mb']:>8.1f} {old['open_mb']:>7.1f} {ours['worker_private_mb']:>8.1f} "
            f"{old['worker_private_mb']:>8.1f} {ours['worker_rss_mb']:>8.1f} "
            f"{ours['worker_seconds']:>7.3f} {ours['stream_s']:>8.2f} {ours['state_ms']:>8.3f} "
            f"{ours['state_json_ms']:>8.2f} "
            f"{ours['resume_4_s']:>8.3f} {ours['resume_400_s']:>10.3f}"
        )
    print(
        "\na mixture of three sources of that many shards (weight 2, repeat 1.3, samples N/3) at "
        "epoch 5: one reader's plan and first batch, s (ratio to 3 single-source plans)\n"
    )
    print(f"{'shards':>10} {'mixed s':>8} {'ratio':>6} {'stratified s':>12} {'ratio':>6}")
    for shards, _, _, _, ours, _ in rows:
        single = 3 * ours["worker_seconds"]
        print(
            f"{shards:>10,} {ours['mixed']:>8.3f} {ours['mixed'] / single:>6.2f} "
            f"{ours['stratified']:>12.3f} {ours['stratified'] / single:>6.2f}"
        )
    print(
        f"\n80 lost shards of 1,000 samples, 2 workers: {skips['skipped']:,.0f} skips recorded, "
        f"main-process CPU {skips['epoch_cpu_s']:.2f} s for the epoch against "
        f"{base['epoch_cpu_s']:.2f} s with none lost (ratio "
        f"{skips['epoch_cpu_s'] / base['epoch_cpu_s']:.2f}); state_dict() with them all: "
        f"{skips['state_ms']:.1f} ms; of the CPU, recording the skips: {skips['recording_s']:.3f} s"
    )


if __name__ == "__main__":
    main()

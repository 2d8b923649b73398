"""Preprocessing jobs: read a dataset's shards, apply a chain of ops to every sample, write a new
dataset.

A job is one task per input shard. A task reads its shard, runs each sample through the ops,
and writes the survivors to an output shard named after the input's position
(`shard-000042.tar` from the 43rd input shard; one per split when the chain splits), each
written under a temporary name and renamed when complete. Then it writes its record: what went
in and out, what was rejected or filtered and why, how long each op took. When every task has a
record, the job writes `rejects.jsonl`, `filtered.jsonl`, `summary.json` and, last, each
output's `index.json`.

So a job killed at any point (driver or worker) and run again finds the tasks that have
records and runs only the others; their shards come out byte-identical (ops are deterministic,
see `ops.media`), and no sample is dropped or written twice. The job's fingerprint (input
shards' checksums, ops and options) is kept in the output, so a rerun with other ops never
mixes its shards with an earlier job's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from polymodal.adapters.materialized import decoded_member
from polymodal.datasets.index import REJECTS_NAME
from polymodal.datasets.output import dataset_files, prepare_output

__all__ = ["REJECTS_NAME", "JobReport", "run", "summary"]
from polymodal.datasets.engines import Engine, make_engine
from polymodal.datasets.files import OwnerLock, check_separate, remove_temporaries, write_atomic
from polymodal.datasets.index import INDEX_NAME, ShardIndex, ShardInfo, merge_labels
from polymodal.datasets.layout import Problem
from polymodal.datasets.reader import read_shard
from polymodal.datasets.shard import TarShard, shard_name
from polymodal.datasets.writer import schema
from polymodal.pipelines.preprocess.ops import Filtered, Op, Sample, make_op
from polymodal.pipelines.preprocess.ops.materialize import Materialize
from polymodal.pipelines.preprocess.ops.select import Split

JOB_DIR = ".polymodal-job"  # task records, per job fingerprint
FILTERED_NAME = "filtered.jsonl"
SUMMARY_NAME = "summary.json"
OpSpec = Op | str | Mapping[str, Any] | Callable[[Sample], Any]


@dataclass
class ShardTask:
    """One input shard and everything a worker needs to turn it into output shards."""

    base: str
    shard_format: str
    shard: ShardInfo
    number: int
    ops: list[Op]
    outputs: dict[str, Path] = field(default_factory=dict)  # split ("" without) → folder
    record: Path = Path()  # where the task's record goes (set for every task of a job)
    errors: str = "skip"

    def samples(self, on_problem: Callable[[Problem], None]) -> Iterator[Sample]:
        """The input samples, each with `__origin__` (its input key) and `__shard__`."""
        index = ShardIndex(self.shard_format, {}, [self.shard], base=self.base)
        for sample in read_shard(index, self.shard, on_problem=on_problem):
            sample.pop("__url__", None)
            sample["__origin__"], sample["__shard__"] = sample["__key__"], self.shard.name
            yield sample


@dataclass
class TaskRecord:
    """What one task did; kept as JSON so a rerun can report on tasks it did not run."""

    shard: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # split → ShardInfo
    samples_in: int = 0
    samples_out: int = 0
    created: int = 0  # extra samples made by ops that turn one into several (clips)
    rejected: list[dict[str, str]] = field(default_factory=list)
    filtered: list[dict[str, str]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # op (and read / write) → time

    def count(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def run_task(task: ShardTask) -> TaskRecord:
    """Process one input shard (in a worker): see the module docstring."""
    record = TaskRecord(task.shard.name, bytes_in=task.shard.bytes)
    writers: dict[str, TarShard] = {}

    def unreadable(problem: Problem) -> None:
        record.unreadable.append({**problem.as_dict(), "op": "read"})

    try:
        samples = task.samples(unreadable)
        while True:
            started = time.perf_counter()
            try:
                sample = next(samples, None)
            except Exception as exc:  # a damaged shard: keep what came before, report the rest
                where = f"{task.shard.name} after {record.samples_in} samples"
                unreadable(Problem(where, f"{type(exc).__name__}: {exc}"))
                sample = None
            record.count("read", time.perf_counter() - started)
            if sample is None:
                break
            record.samples_in += 1
            items = [sample]
            for op in task.ops:
                items = _apply(op, items, record, task.errors)
            started = time.perf_counter()
            for item in items:
                _write(item, task, writers, record)
            record.count("write", time.perf_counter() - started)
        for split, writer in writers.items():
            info = writer.finish()
            record.outputs[split] = asdict(info)
            record.bytes_out += info.bytes
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    if task.record is not None:
        write_atomic(task.record, json.dumps(asdict(record), sort_keys=True).encode())
    return record


def _apply(op: Op, items: list[Sample], record: TaskRecord, errors: str) -> list[Sample]:
    """`op` over `items`: the samples it returns, rejects and drops noted in `record`."""
    out: list[Sample] = []
    for item in items:
        started = time.perf_counter()
        try:
            result = op(item)
        except Filtered as exc:
            record.filtered.append({"key": item["__key__"], "op": op.name, "reason": exc.reason})
            continue
        except Exception as exc:
            if errors == "raise":
                raise
            reason = str(exc) or type(exc).__name__
            record.rejected.append({"key": item["__key__"], "op": op.name, "reason": reason})
            continue
        finally:
            record.count(op.name, time.perf_counter() - started)
        results = [result] if isinstance(result, dict) else list(result or [])
        if not results:
            record.filtered.append({"key": item["__key__"], "op": op.name, "reason": "dropped"})
        record.created += max(0, len(results) - 1)
        out += results
    return out


def _write(item: Sample, task: ShardTask, writers: dict[str, TarShard], record: TaskRecord) -> None:
    split = item.get("__split__", "")
    if split not in task.outputs:
        raise ValueError(f"sample {item['__key__']!r}: no output for split {split!r}")
    if split not in writers:
        name = shard_name("shard", task.number, "tar")
        writers[split] = TarShard(task.outputs[split], name)
    try:
        writers[split].add(item)
    except ValueError as exc:  # a member name that would not read back (checked before writing)
        if task.errors == "raise":
            raise
        record.rejected.append({"key": str(item["__key__"]), "op": "write", "reason": str(exc)})
        return
    record.samples_out += 1


def scan_task(task: ShardTask) -> list[tuple[str, str, Any]]:
    """The first pass of an op that must see the whole input (dedupe): `(shard, key, value)`
    per sample, `task.ops` holding that one op."""
    (op,) = task.ops
    out = []
    for sample in task.samples(lambda problem: None):  # the main pass reports problems
        out.append((task.shard.name, sample["__origin__"], op.scan(sample)))
    return out


@dataclass
class JobReport:
    """What a job did, over all its tasks (this run's and earlier runs')."""

    datasets: dict[str, str]
    shards: int
    tasks_run: int
    samples_in: int = 0
    samples_out: int = 0
    created: int = 0
    rejected: int = 0
    filtered: int = 0
    unreadable: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    op_seconds: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # kind → "op: reason" → n
    ops: list[dict[str, Any]] = field(default_factory=list)
    engine: str = ""

    @property
    def balanced(self) -> bool:
        """Every sample accounted for: in + created = out + rejected + filtered."""
        return self.samples_in + self.created == self.samples_out + self.rejected + self.filtered


def run(
    src: str | Path,
    dst: str | Path,
    ops: Sequence[OpSpec],
    *,
    engine: str | Engine = "local",
    workers: int | None = None,
    address: str | None = None,
    overwrite: bool = False,
    errors: str = "skip",
    progress: bool = True,
) -> JobReport:
    """Run the ops over dataset `src` (a folder or URL with `index.json`) into folder `dst`.

    `ops`: op instances, `"name:key=value,..."` strings, `{"op": name, ...}` tables or plain
    functions (see `polymodal.pipelines.preprocess.ops`). `engine`: `"local"` (a process pool of
    `workers`), `"ray"` (a local Ray of `workers` CPUs, or the cluster at `address`), or an
    engine instance. `errors="raise"` stops at the first sample an op cannot process instead of
    rejecting it. Returns the job's report, also written to `dst/summary.json`.
    """
    started = time.perf_counter()
    if errors not in ("skip", "raise"):
        raise ValueError(f"errors must be 'skip' or 'raise', got {errors!r}")
    index = ShardIndex.load(src)
    chain = [make_op(op) for op in ops]
    if not chain:
        raise ValueError("a job needs at least one op")
    splits = [op for op in chain if isinstance(op, Split)]
    if len(splits) > 1:
        raise ValueError("a job can split once")
    dst = Path(dst)
    check_separate([index.base], dst, folders=True)  # before anything is claimed or cleared
    with OwnerLock(dst, "preprocess"):  # a second job into `dst` is refused, naming the first
        return _run_into(
            index,
            chain,
            dst,
            engine,
            workers,
            address,
            overwrite,
            errors,
            progress,
            started,
            str(src),
        )


def _run_into(
    index: ShardIndex,
    chain: list[Op],
    dst: Path,
    engine: str | Engine,
    workers: int | None,
    address: str | None,
    overwrite: bool,
    errors: str,
    progress: bool,
    started: float,
    src: str,
) -> JobReport:
    """The job's shards, records, indexes and summary in `dst`, which this process owns."""
    splits = [op for op in chain if isinstance(op, Split)]
    specs = [op.spec() for op in chain]
    fp = _fingerprint(index, specs)
    outputs = {name: dst / name for name in splits[0].names} if splits else {"": dst}
    _claim(dst, fp, outputs, overwrite)
    records_dir = dst / JOB_DIR / fp[:16]
    records_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        ShardTask(index.location, index.format, shard, n, chain, outputs, records_dir / _record(n))
        for n, shard in enumerate(index.shards)
    ]
    pending = [t for t in tasks if not t.record.exists()]
    for task in pending:
        task.errors = errors
    runner = make_engine(engine, workers, address)
    if pending:
        with runner:
            _plan_scans(runner, index, chain, tasks)
            _run_tasks(runner, pending, progress)
    records = [TaskRecord(**json.loads(t.record.read_bytes())) for t in tasks]
    report = _report(records, outputs, len(pending), specs, repr(runner))
    report.seconds = time.perf_counter() - started
    _write_outputs(dst, index, chain, outputs, records, report, fp, src)
    return report


def _claim(dst: Path, fp: str, outputs: Mapping[str, Path], overwrite: bool) -> None:
    """Make `dst` this job's: refuse (or, with `overwrite`, clear) another job's output, and
    record which folders this job writes, so a later job knows what to check or clear."""
    job_file = dst / JOB_DIR / "job.json"
    previous = json.loads(job_file.read_bytes()) if job_file.exists() else None
    if previous is not None and previous["fingerprint"] != fp and not overwrite:
        raise FileExistsError(
            f"{dst} holds the output of another job (other input, ops or options); "
            "remove it or pass overwrite (--overwrite)"
        )
    if "" not in outputs and (dst / INDEX_NAME).exists() and not overwrite:
        raise FileExistsError(f"{dst} holds a dataset; remove it or pass overwrite (--overwrite)")
    stale = {dst / name for name in (previous or {}).get("outputs", [])} - set(outputs.values())
    if overwrite:
        stale |= {dst} if "" not in outputs else set()
        shutil.rmtree(dst / JOB_DIR, ignore_errors=True)
    for directory in stale:
        for path in dataset_files(directory, plan=True):
            path.unlink()
        if directory != dst and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    for directory in outputs.values():
        prepare_output(directory, fp, overwrite)
    job_file.parent.mkdir(parents=True, exist_ok=True)
    doc = {"fingerprint": fp, "outputs": sorted(str(p.relative_to(dst)) for p in outputs.values())}
    write_atomic(job_file, json.dumps(doc).encode())


def _fingerprint(index: ShardIndex, specs: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256(json.dumps(specs, sort_keys=True).encode())
    for shard in index.shards:
        digest.update(f"{shard.name}:{shard.sha256}|".encode())
    return digest.hexdigest()


def _record(number: int) -> str:
    return f"task-{number:06d}.json"


def _plan_scans(engine: Engine, index: ShardIndex, chain: list[Op], tasks: list[ShardTask]) -> None:
    """Run the first pass of each op that scans the whole input, and hand it the results."""
    for op in chain:
        if not op.scans:
            continue
        scan_tasks = [
            ShardTask(index.location, index.format, t.shard, t.number, [op]) for t in tasks
        ]
        results = _collect(engine, scan_task, scan_tasks)
        op.plan([results[t.number] for t in scan_tasks])


def _collect(engine: Engine, fn: Callable[[ShardTask], Any], tasks: list[ShardTask]) -> dict:
    results: dict[int, Any] = {}
    engine.map(fn, tasks, lambda task, out: results.__setitem__(task.number, out))
    return results


def _run_tasks(engine: Engine, tasks: list[ShardTask], progress: bool) -> None:
    total = sum(t.shard.samples for t in tasks)
    bar = tqdm(total=total, unit="sample", disable=not progress, desc="preprocess")
    done = {"shards": 0, "bytes": 0}

    def on_done(task: ShardTask, record: TaskRecord) -> None:
        done["shards"] += 1
        done["bytes"] += record.bytes_out
        bar.set_postfix_str(
            f"shards {done['shards']}/{len(tasks)}, {done['bytes'] / 2**20:.1f} MB out",
            refresh=False,
        )
        bar.update(task.shard.samples)

    engine.map(run_task, tasks, on_done)
    bar.close()


def _report(
    records: list[TaskRecord],
    outputs: Mapping[str, Path],
    tasks_run: int,
    specs: list[dict[str, Any]],
    engine: str,
) -> JobReport:
    report = JobReport({k: str(v) for k, v in outputs.items()}, len(records), tasks_run)
    reasons: dict[str, Counter[str]] = {
        "rejected": Counter(),
        "filtered": Counter(),
        "unreadable": Counter(),
    }
    for r in records:
        report.samples_in += r.samples_in
        report.samples_out += r.samples_out
        report.created += r.created
        report.rejected += len(r.rejected)
        report.filtered += len(r.filtered)
        report.unreadable += len(r.unreadable)
        report.bytes_in += r.bytes_in
        report.bytes_out += r.bytes_out
        for stage, seconds in r.seconds.items():
            report.op_seconds[stage] = report.op_seconds.get(stage, 0.0) + seconds
        for kind in reasons:
            reasons[kind].update(f"{x['op']}: {x['reason']}" for x in getattr(r, kind))
    report.reasons = {kind: dict(c.most_common()) for kind, c in reasons.items() if c}
    report.ops, report.engine = specs, engine
    return report


def _write_outputs(
    dst: Path,
    index: ShardIndex,
    chain: list[Op],
    outputs: Mapping[str, Path],
    records: list[TaskRecord],
    report: JobReport,
    fp: str,
    src: str,
) -> None:
    """Reports first, then each output's index, last: an output with an index is complete.
    What the source materialised carries on, with what this job's ops materialised."""
    remove_temporaries(dst, [REJECTS_NAME, FILTERED_NAME, SUMMARY_NAME])  # beside the splits
    rejects = [x for r in records for x in r.unreadable + r.rejected]
    filtered = [x for r in records for x in r.filtered]
    write_atomic(dst / REJECTS_NAME, "".join(json.dumps(x) + "\n" for x in rejects).encode())
    write_atomic(dst / FILTERED_NAME, "".join(json.dumps(x) + "\n" for x in filtered).encode())
    write_atomic(dst / SUMMARY_NAME, (json.dumps(asdict(report), indent=1) + "\n").encode())
    materialized = dict(index.materialized or {})
    for op in chain:
        if isinstance(op, Materialize):
            materialized.update(op.records())
    rules = {ext: m for ext, m in index.fields.items() if m}  # the source's rules carry on
    rules |= {decoded_member(name): r["adapter"] for name, r in materialized.items()}
    for split, directory in outputs.items():
        remove_temporaries(directory)  # from a worker killed mid-task, since rerun
        infos = [ShardInfo(**r.outputs[split]) for r in records if split in r.outputs]
        out = ShardIndex("tar", schema(infos, rules), infos, merge_labels(infos), index.classes)
        out.build = {"fingerprint": fp, "source": src, "ops": report.ops}
        out.materialized = materialized or None
        out.save(directory)


def summary(report: JobReport) -> str:
    """The report as a few lines for people."""
    where = ", ".join(f"{name or 'dataset'}: {path}" for name, path in report.datasets.items())
    rate = report.samples_in / report.seconds if report.seconds and report.tasks_run else 0.0
    made = f" (+{report.created:,} made by ops)" if report.created else ""
    lines = [
        f"{report.samples_in:,} samples in{made} → {report.samples_out:,} out, "
        f"{report.filtered:,} filtered, {report.rejected:,} rejected"
        + (f", {report.unreadable:,} unreadable inputs" if report.unreadable else ""),
        f"{report.bytes_in / 2**20:,.1f} MB in → {report.bytes_out / 2**20:,.1f} MB out; "
        f"{report.tasks_run:,} of {report.shards:,} shards processed now, in "
        f"{report.seconds:.1f} s ({rate:,.0f} samples/s) on {report.engine}",
        "time per op (summed over workers): "
        + ", ".join(f"{op} {s:.2f} s" for op, s in report.op_seconds.items()),
    ]
    for kind, counts in report.reasons.items():
        top = "; ".join(f"{reason} × {n}" for reason, n in list(counts.items())[:5])
        more = f" (and {len(counts) - 5} more reasons)" if len(counts) > 5 else ""
        lines.append(f"{kind}: {top}{more}")
    lines.append(where)
    return "\n".join(lines)

"""Building a sharded dataset from a folder tree, a manifest, or a Hugging Face Parquet export.

A build is a plan, then tasks that write its shards, then the index:

1. **Plan** (a pure function of the source and the options): list the samples, with where each
   member's bytes come from and how many there are, reject what cannot be used, shuffle with
   the seed, assign splits by key hash, cut each split into shards by count and bytes.
2. **Tasks**: each task writes a run of consecutive shards (a local process pool with
   `workers > 1`), each under a temporary name and renamed when complete, with its sidecar.
3. **Index**: `rejects.jsonl`, the shard table (`index.arrow`), then `index.json` last, in each
   split's folder.

Because the plan is pure and each shard is atomic, a build killed at any moment and run again
with the same arguments finds the finished shards, writes only the missing ones, and ends with
the same bytes as an uninterrupted build. The plan's fingerprint is kept in the output, so a
run with other arguments or changed sources never mixes its shards with an earlier run's.
"""

from __future__ import annotations

import json
import logging
import tarfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from tqdm import tqdm

from polymodal.adapters.registry import available

from .card import CARD_NAME, write_card
from .engines import Engine, make_engine
from .files import (
    DEFAULT_REMOTE,
    HashingReader,
    OwnerLock,
    Remote,
    check_separate,
    describe_failure,
    is_remote,
    join,
    local_path,
    open_read,
    remove_temporaries,
    write_atomic,
)
from .index import (
    REJECTS_NAME,
    ShardIndex,
    ShardInfo,
    ShardStats,
    find_duplicates,
    merge_labels,
    write_sidecar,
)
from .layout import ERROR_KEY, Problem, read_tar_samples
from .output import fingerprint, finished_shard, prepare_output
from .pool import run_tasks
from .shard import TAR_BLOCK, Shard, shard_name
from .sources import PlannedSample, SourcePlan, plan_source
from .splits import assign_splits, cut_runs, cut_shards, parse_splits
from .writer import open_shard, schema

log = logging.getLogger("polymodal.build")

RUN_BYTES = 64 * 2**20  # shards one task writes in a row, at most (`shard_runs`)


@dataclass
class BuildReport:
    """What a build did; `datasets` maps each split (or "") to its folder."""

    datasets: dict[str, Path]
    samples: int
    shards: int
    bytes: int
    written_shards: int
    rejects: int
    seconds: float


@dataclass
class ShardTask:
    """Everything one worker needs to write one shard (picklable)."""

    directory: Path
    name: str
    shard_format: str
    extensions: list[str]
    samples: list[PlannedSample]
    classes: list[str] | None = None  # the label names a Parquet shard's metadata carries


COMMITS = 4  # shards a writer commits at once (see `write_shards`)


def write_shards(tasks: list[ShardTask]) -> list[ShardInfo]:
    """Write a run of planned shards atomically, each committed (hash, fsync, sidecar,
    rename) on a thread while the next ones are written, `COMMITS` at a time: a commit
    hashes the shard and then mostly waits on the disk, and with one at a time the writer
    waited on the commits (4 MB shards, 1 worker, `benchmarks/bench_build.py`: 0.43-0.48×
    a tarfile copy with one commit at a time and the hash on the writer, 0.60-0.62× with
    two and the hash on the commit thread, alternated; four against two, 24 builds each in
    turns: 0.68 -> 0.60 s and 0.73 -> 0.64 s, and eight no faster than four). Returns only
    when every shard of the run is in place, so the driver never indexes a shard that is not
    on disk; a failed commit leaves the shards committed beside it complete, and nothing of
    itself.

    A member that became unreadable since planning drops its sample, reported in the shard's
    sidecar (so a resumed build reports it too)."""
    infos: list[ShardInfo] = []
    with ThreadPoolExecutor(max_workers=COMMITS, thread_name_prefix="shard-commit") as committer:
        committing: deque[Future[ShardInfo]] = deque()
        for task in tasks:
            shard, info = _sealed_shard(task, writeback=len(tasks) == 1)
            if len(committing) == COMMITS:
                try:
                    infos.append(committing.popleft().result())
                except BaseException:
                    shard.abort()
                    raise
            committing.append(committer.submit(shard.commit, info))
        while committing:
            infos.append(committing.popleft().result())
    return infos


def _sealed_shard(task: ShardTask, writeback: bool) -> tuple[Shard, ShardInfo]:
    """One planned shard written and hashed under its temporary name (`Shard.seal`);
    `writeback`: see `Shard`."""
    args = (task.directory, task.name, task.shard_format, task.extensions, task.classes)
    shard = open_shard(*args, writeback=writeback)
    problems = []
    try:
        for sample in task.samples:
            try:
                body = {ext: ref.read() for ext, ref in sample.members}
            except OSError as exc:
                problems.append(Problem(sample.key, f"unreadable: {exc}", sample.key).as_dict())
                continue
            shard.add({"__key__": sample.key, **body})
        return shard, shard.seal(problems)
    except BaseException:
        shard.abort()
        raise


def build(
    src: str | Path,
    out: str | Path,
    *,
    shard_format: str = "tar",
    shard_bytes: int | None = 256 * 2**20,
    shard_samples: int | None = None,
    workers: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    split: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    fields: Mapping[str, str] | None = None,
    allow_paths: str | Path | None = None,
    print_: Callable[[str], None] = print,
    engine: str | Engine = "local",
    address: str | None = None,
) -> BuildReport:
    """Build `out` from `src`; see the module docstring. Rejected inputs go to
    `out/rejects.jsonl`; with splits, each split is a dataset in `out/SPLIT/`. `engine` runs
    the shard tasks: `"local"` (a pool of `workers` processes) or `"ray"` (a local Ray of
    `workers` CPUs, or the cluster at `address`, whose nodes see `out` at the same path); the
    output is byte-identical either way. `fields` sets
    the modality of extensions the registry leaves ambiguous (`{"npy": "pointcloud"}`);
    `allow_paths` the folder path-only Parquet cells may point into. A source that names its
    splits (Hub-style Parquet shards) is built into one folder per split."""
    started = time.perf_counter()
    fields = check_field_rules(fields or {})
    out = Path(out)
    plan = _planned(Path(src), out, Path(allow_paths) if allow_paths else None, split)
    samples = plan.samples
    if shuffle:
        samples = [samples[i] for i in np.random.default_rng(seed).permutation(len(samples))]
    options = {
        "format": shard_format,
        "shard_bytes": shard_bytes,
        "shard_samples": shard_samples,
        "shuffle": shuffle,
        "seed": seed if shuffle else None,
        "split": split,
        **({"fields": fields} if fields else {}),  # absent when unset: old fingerprints hold
    }
    with OwnerLock(out, "build"):  # a second build into `out` is refused, naming the first
        report = _build_into(
            out,
            plan,
            samples,
            options,
            overwrite,
            progress,
            fields,
            print_,
            make_engine(engine, workers, address),
        )
    report.seconds = time.perf_counter() - started
    return report


def _planned(src: Path, out: Path, allow_paths: Path | None, split: str | None) -> SourcePlan:
    """The source's samples, once `out` is known to overlap none of what the build reads (the
    folder, or a manifest and every file it lists)."""
    if src.is_dir():
        check_separate([src], out, folders=True)
    plan = plan_source(src, allow_paths)
    if plan.split_of is not None and split:
        named = ", ".join(sorted(set(plan.split_of.values())))
        raise ValueError(f"{src} names its own splits ({named}): drop --split")
    if not src.is_dir() or plan.split_of is not None:  # it and every file it lists are read
        listed = {ref.path for s in plan.samples for _, ref in s.members if ref.path}
        files: list[str | Path] = [*([] if src.is_dir() else [src]), *sorted(listed)]
        check_separate(files, out, folders=False)
    return plan


def _build_into(
    out: Path,
    plan: SourcePlan,
    samples: list[PlannedSample],
    options: dict[str, Any],
    overwrite: bool,
    progress: bool,
    fields: Mapping[str, str],
    print_: Callable[[str], None],
    runner: Engine,
) -> BuildReport:
    """The shards, indexes, card and rejects of a build whose output `out` this process
    owns."""
    rejects = [p.as_dict() for p in plan.problems]
    report = BuildReport({}, 0, 0, 0, 0, 0, 0.0)
    remove_temporaries(out, [REJECTS_NAME, CARD_NAME])  # a killed run's, beside the splits
    if plan.split_of is not None:
        groups = {
            name: [s for s in samples if plan.split_of[s.key] == name]
            for name in sorted(set(plan.split_of.values()))
        }
    else:
        groups = assign_splits(samples, parse_splits(options["split"]))
    for name, members in groups.items():
        directory = out / name if name else out
        shards = cut_shards(members, options["shard_samples"], options["shard_bytes"])
        fp = fingerprint({**options, "split_name": name}, shards)
        report.datasets[name] = directory
        if not prepare_output(directory, fp, overwrite):
            print_(f"{directory}: already built from these sources with these options")
            index = ShardIndex.load(directory)
        else:
            index, infos, written = _write_split(
                directory, shards, options["format"], runner, progress, fields, plan.classes
            )
            report.written_shards += written
            index.classes, index.build = plan.classes, {"fingerprint": fp, **options}
            index.save(directory)
            rejects += [p for info in infos for p in info.problems]
        report.samples += index.samples
        report.shards += len(index.shards)
        report.bytes += index.bytes
    if any(report.datasets):  # splits: a card at the root names each split's shards
        globs = {name: f"{name}/*.{options['format']}" for name in report.datasets}
        summary = f"{report.samples:,} samples in splits {', '.join(globs)}."
        write_card(out, globs, summary, index.card_features())
    report.rejects = len(rejects)
    write_atomic(out / REJECTS_NAME, "".join(json.dumps(r) + "\n" for r in rejects).encode())
    return report


def shard_runs(
    tasks: list[ShardTask], slots: int, run_bytes: int = RUN_BYTES
) -> list[list[ShardTask]]:
    """The shard tasks in runs of consecutive shards (`write_shards`), each of up to
    `run_bytes`, and never fewer than four runs a slot of the engine while there are tasks
    enough, so that every worker stays busy to the end."""
    most = -(-len(tasks) // (4 * max(1, slots)))
    return cut_runs(tasks, most, run_bytes, lambda t: sum(s.tar_size for s in t.samples))


def _write_split(
    directory: Path,
    shards: list[list[PlannedSample]],
    shard_format: str,
    runner: Engine,
    progress: bool,
    fields: Mapping[str, str],
    classes: list[str] | None = None,
) -> tuple[ShardIndex, list[ShardInfo], int]:
    """Write the shards of one split that are not finished yet; the index, its shards' facts
    (with the inputs each dropped) and how many shards were written now."""
    extensions = sorted({ext for shard in shards for s in shard for ext, _ in s.members})
    infos: dict[str, ShardInfo] = {}
    tasks = []
    for number, shard in enumerate(shards):
        name = shard_name("shard", number, shard_format)
        done = finished_shard(directory, name)
        if done is not None:
            infos[name] = done
        else:
            tasks.append(ShardTask(directory, name, shard_format, extensions, shard, classes))
    total = sum(len(t.samples) for t in tasks)
    bar = tqdm(total=total, unit="sample", disable=not progress or not tasks, desc=directory.name)
    written = {"bytes": 0, "start": time.perf_counter()}

    def on_done(run: list[ShardTask], run_infos: list[ShardInfo]) -> None:
        for task, info in zip(run, run_infos, strict=True):
            infos[task.name] = info
            written["bytes"] += info.bytes
            bar.update(len(task.samples))
        rate = written["bytes"] / max(time.perf_counter() - written["start"], 1e-9) / 2**20
        bar.set_postfix_str(f"{written['bytes'] / 2**20:.1f} MB, {rate:.1f} MB/s", refresh=False)

    try:
        if tasks:
            with runner:
                runner.map(write_shards, shard_runs(tasks, runner.slots), on_done)
    finally:
        bar.close()
    ordered = [infos[shard_name("shard", n, shard_format)] for n in range(len(shards))]
    index = ShardIndex(
        shard_format, schema(ordered, fields), ordered, merge_labels(ordered), base=str(directory)
    )
    return index, ordered, len(tasks)


# ---------------------------------------------------------------------------------------------
# Existing WebDataset shards: index them in place


@dataclass(frozen=True)
class ScanTask:
    """One tar shard to index (picklable): where it is, its name, where its sidecar goes."""

    url: str
    name: str
    sidecars: Path
    remote: Remote = DEFAULT_REMOTE


def scan_tar(task: ScanTask) -> ShardInfo | Problem:
    """Index one tar shard, read once front to back (a dropped connection reads it again,
    within the remote's tries): count, offsets, sha256, fields, labels; write its sidecar.

    Bad members (no extension, not a file, unsafe path) are recorded in the sidecar and
    skipped; a damaged or truncated archive, or one that stays unreachable, is returned as a
    Problem and gets no sidecar.
    """
    try:
        stats, reader, problems = task.remote.call(lambda: _scan(task))
    except (tarfile.ReadError, ValueError) as exc:
        return Problem(task.name, str(exc))
    except Exception as exc:  # the network or the disk, after the tries: reported, never raised
        return Problem(task.name, describe_failure(exc, task.remote))
    if reader.size % TAR_BLOCK or reader.tail != bytes(2 * TAR_BLOCK):
        return Problem(task.name, "truncated tar: no end-of-archive blocks")
    info = stats.info(task.name, reader.size, reader.sha.hexdigest(), problems)
    write_sidecar(task.sidecars, info, stats.offsets, stats.keys)
    return info


def _scan(task: ScanTask) -> tuple[ShardStats, HashingReader, list[dict[str, str]]]:
    problems: list[dict[str, str]] = []
    stats = ShardStats()
    with open_read(task.url, stream=True, remote=task.remote) as f:
        reader = HashingReader(f, 2 * TAR_BLOCK)
        for offset, sample in read_tar_samples(reader, task.name, 0, problems_to(problems)):
            stats.add(sample, offset, sample["__key__"])
            if ERROR_KEY in sample:
                problems.append(Problem(task.name, sample[ERROR_KEY], sample["__key__"]).as_dict())
        reader.drain()
    return stats, reader, problems


def problems_to(sink: list[dict[str, str]]) -> Callable[[Problem], None]:
    return lambda problem: sink.append(problem.as_dict())


def check_field_rules(fields: Mapping[str, str]) -> dict[str, str]:
    """User rules `extension → adapter name`, normalised; an unknown adapter is an error."""

    known = available()
    rules = {ext.lower().lstrip("."): name for ext, name in fields.items()}
    for ext, name in rules.items():
        if name not in known:
            raise ValueError(
                f"--field {ext}={name}: no adapter named {name!r} (known: {', '.join(known)})"
            )
    return rules


def index_shards(
    directory: str | Path,
    workers: int = 1,
    progress: bool = True,
    fields: Mapping[str, str] | None = None,
    out: str | Path | None = None,
    remote: Remote = DEFAULT_REMOTE,
) -> BuildReport:
    """Index the WebDataset tar shards in `directory`: a sidecar per shard, then
    `rejects.jsonl` (bad members, damaged or unreachable shards) and `index.json` (the good
    shards). In place by default; with `out`, the shards are only read (a read-only or remote
    folder: `http(s)://`, `s3://`), each once as a stream, and the sidecars and the index go
    to `out`, which names where the shards are. `fields` sets the modality of extensions the
    registry leaves ambiguous (`npy`, `json`)."""
    fields = check_field_rules(fields or {})
    started = time.perf_counter()
    source = str(directory)
    if out is None and is_remote(source):
        raise ValueError(f"{source} is remote: pass out (--out DIR) for the index")
    target = Path(out) if out is not None else Path(source)
    names = _tar_names(source, remote)
    if not names:
        raise FileNotFoundError(f"{source}: no .tar shards to index")
    if out is not None:
        local = local_path(source)
        check_separate([] if local is None else [local], target, folders=True)
    with OwnerLock(target, "index"):
        return index_into(source, target, names, workers, progress, fields, out, remote, started)


def index_into(
    source: str,
    target: Path,
    names: list[str],
    workers: int,
    progress: bool,
    fields: Mapping[str, str],
    out: str | Path | None,
    remote: Remote,
    started: float,
) -> BuildReport:
    """Scan the shards `names` of `source` into sidecars and an index in `target`, which
    this process owns."""
    tasks = [ScanTask(join(source, name), name, target, remote) for name in names]
    results: dict[str, ShardInfo | Problem] = {}
    bar = tqdm(total=len(tasks), unit="shard", disable=not progress, desc="index")

    def on_done(task: ScanTask, result: ShardInfo | Problem) -> None:
        results[task.name] = result
        bar.update(1)

    run_tasks(scan_tar, tasks, workers, on_done)
    bar.close()
    infos = [r for n in names if isinstance(r := results[n], ShardInfo)]
    rejects = [r for n in names for r in _shard_rejects(results[n])]
    write_atomic(target / REJECTS_NAME, "".join(json.dumps(r) + "\n" for r in rejects).encode())
    index = ShardIndex("tar", schema(infos, fields), infos, merge_labels(infos), base=str(target))
    if out is not None:
        index.shards_at = source if is_remote(source) else str(Path(source).resolve())
    index.duplicates = find_duplicates(index)
    if index.duplicates:
        log.warning(
            "%s: %d samples repeat the key of an earlier sample (the first: %s#%d, its key is "
            "in %s too); readers skip them, reported",
            target,
            len(index.duplicates),
            *index.duplicates[0],
        )
    previous = _previous_index(target)
    if previous is not None:  # what the shards cannot say: keep it
        index.classes, index.materialized = previous.classes, previous.materialized
        if previous.materialized:
            log.info(
                "%s: kept the record of materialised fields %s",
                target,
                ", ".join(sorted(previous.materialized)),
            )
    index.save(target)
    return BuildReport(
        {"": target},
        index.samples,
        len(infos),
        index.bytes,
        len(infos),
        len(rejects),
        time.perf_counter() - started,
    )


def _tar_names(source: str, remote: Remote) -> list[str]:
    """The `*.tar` shards directly in a local folder or under a URL prefix, by name."""
    local = local_path(source)
    if local is not None:
        return sorted(p.name for p in local.glob("*.tar"))
    fs, root = fsspec.core.url_to_fs(source, **remote.storage_options(source))
    found = remote.call(lambda: fs.glob(root.rstrip("/") + "/*.tar"))
    return sorted(str(path).rsplit("/", 1)[-1] for path in found)


def _previous_index(directory: Path) -> ShardIndex | None:
    """The index being replaced, if any: indexing again (after adding or repairing shards)
    must not lose what the shards cannot say, the class names and which fields are kept
    decoded (`materialized`)."""
    try:
        return ShardIndex.load(directory)
    except (OSError, ValueError):
        return None


def _shard_rejects(result: ShardInfo | Problem) -> list[dict[str, str]]:
    return [result.as_dict()] if isinstance(result, Problem) else result.problems


def summary(report: BuildReport) -> str:
    where = ", ".join(f"{name or 'dataset'}: {path}" for name, path in report.datasets.items())
    rate = report.samples / report.seconds if report.seconds else 0.0
    return (
        f"{report.samples:,} samples in {report.shards:,} shards, {report.bytes / 2**20:,.1f} MB "
        f"({report.written_shards:,} shards written now) in {report.seconds:.1f} s "
        f"({rate:,.0f} samples/s); {report.rejects:,} rejected inputs. {where}"
    )

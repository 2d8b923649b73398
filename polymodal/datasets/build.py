"""Building a sharded dataset from a folder tree, a manifest, or a Hugging Face Parquet export.

A build is a plan, then one task per shard, then the index:

1. **Plan** (a pure function of the source and the options): list the samples, with where each
   member's bytes come from and how many there are, reject what cannot be used, shuffle with
   the seed, assign splits by key hash, cut each split into shards by count and bytes.
2. **Tasks**: each shard is written by one task (a local process pool with `workers > 1`) under
   a temporary name and renamed when complete, with its sidecar.
3. **Index**: `rejects.jsonl`, then `index.json` last, in each split's folder.

Because the plan is pure and each shard is atomic, a build killed at any moment and run again
with the same arguments finds the finished shards, writes only the missing ones, and ends with
the same bytes as an uninterrupted build. The plan's fingerprint is kept in the output, so a
run with other arguments or changed sources never mixes its shards with an earlier run's.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from polymodal.seeds import stable_fraction

from .files import HashingReader, check_separate, remove_temporaries, write_atomic
from .index import (
    INDEX_NAME,
    ShardIndex,
    ShardInfo,
    ShardStats,
    decode_sidecar,
    merge_labels,
    sidecar_name,
    write_sidecar,
)
from .layout import ERROR_KEY, Problem, check_key, read_tar_samples, split_name
from .writer import TAR_BLOCK, open_shard, shard_name, tar_sample_size

PLAN_NAME = ".polymodal-build.json"  # the fingerprint of the build that owns this folder
REJECTS_NAME = "rejects.jsonl"
LABELS_CSV = "labels.csv"
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Ref:
    """Where one member's bytes come from: a file, inline bytes, or a Parquet cell."""

    size: int
    path: str = ""
    mtime_ns: int = 0
    data: bytes = b""
    row_group: int = -1
    row: int = -1
    column: str = ""

    def read(self) -> bytes:
        if self.row_group >= 0:
            return _parquet_cell(self.path, self.row_group, self.row, self.column)
        if self.path:
            with open(self.path, "rb") as f:
                return f.read()
        return self.data

    def identity(self) -> list[Any]:
        """What the fingerprint sees: content hash for inline bytes, location and stat else."""
        if self.path:
            return [self.path, self.row_group, self.row, self.column, self.size, self.mtime_ns]
        return [hashlib.sha256(self.data).hexdigest()]


@dataclass(frozen=True)
class PlannedSample:
    key: str
    members: tuple[tuple[str, Ref], ...]

    @property
    def tar_size(self) -> int:
        return tar_sample_size(self.key, {ext: ref.size for ext, ref in self.members})


@dataclass
class SourcePlan:
    """What a source holds: usable samples, rejected inputs, and class names if known."""

    samples: list[PlannedSample]
    problems: list[Problem] = field(default_factory=list)
    classes: list[str] | None = None


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


# ---------------------------------------------------------------------------------------------
# Sources


def plan_source(src: Path) -> SourcePlan:
    """Read a source's listing: a folder tree, a CSV / JSONL / Parquet manifest, or a Hugging
    Face datasets Parquet export (a Parquet file with `huggingface` schema metadata)."""
    src = Path(src)
    if src.is_dir():
        return plan_folder(src)
    if src.suffix == ".parquet" and b"huggingface" in (pq.read_schema(src).metadata or {}):
        return plan_hf_parquet(src)
    if src.suffix in MANIFEST_SUFFIXES:
        return plan_manifest(src)
    raise ValueError(
        f"{src}: not a folder, a manifest ({', '.join(MANIFEST_SUFFIXES)}) or a "
        "Hugging Face Parquet export"
    )


def _known(ext: str) -> bool:
    from polymodal.adapters import is_known

    return is_known(ext)


def _known_chain(ext: str) -> bool:
    """Whether an extension is one some adapter reads whole (`depth.png` once a plugin
    registers it) or every dot-separated part of it is (`jpg`, `cls.txt`; `seg.png` is not)."""
    from polymodal.adapters import extension_table

    return ext in extension_table() or all(_known(part) for part in ext.split("."))


def dotted_stem_reason(name: str, key: str, ext: str) -> str | None:
    """Why a file whose name has dots beyond a known extension chain cannot join a sample.

    WebDataset takes the key up to the first dot of a name, so `holiday.2019.jpg` and
    `holiday.2020.jpg` would both be members of one sample `holiday`; the key cannot keep its
    dots either (a reader would split there again). Such files are refused, never merged.
    """
    if _known_chain(ext):
        return None
    base = name.rsplit("/", 1)[-1]
    suggestion = base.rsplit(".", 1)[0].replace(".", "_") + "." + ext.rsplit(".", 1)[-1]
    return (
        f"dotted file name: as WebDataset reads it, key {key!r} with extension {ext!r} would "
        f"merge with every other {key.rsplit('/', 1)[-1]!r}.* file; rename it "
        f"(e.g. {suggestion!r}) or list it in a manifest with a key column"
    )


def plan_folder(root: Path) -> SourcePlan:
    """Files sharing a key (path up to the first dot of the name) form a sample, when the rest
    of the name is a chain of known extensions (`clip.mp4`, `clip.cls`); other dotted names are
    refused with the reason (`dotted_stem_reason`), never merged.

    Labels come from `labels.csv` (columns `key,label`) at the root, else from `.cls` files
    next to the media, else from class sub-folders (`root/dog/001.jpg`) when no sample lies at
    the top level.
    """
    problems: list[Problem] = []
    groups: dict[str, dict[str, Ref]] = {}
    top = str(root)
    for dirpath, dirnames, filenames in os.walk(top):  # strings, not Paths: 10⁶ files add up
        dirnames.sort()
        prefix = os.path.relpath(dirpath, top).replace(os.sep, "/") + "/"
        for filename in sorted(filenames):
            rel = filename if prefix == "./" else prefix + filename
            if rel in (LABELS_CSV, REJECTS_NAME, INDEX_NAME, PLAN_NAME):
                continue
            parts = split_name(rel)
            if parts is None or not _known(parts[1]):
                problems.append(Problem(rel, "unsupported file type"))
                continue
            dotted = dotted_stem_reason(rel, *parts)
            if dotted is not None:
                problems.append(Problem(rel, dotted, parts[0]))
                continue
            path = os.path.join(dirpath, filename)
            try:
                stat = os.stat(path)
                if not os.access(path, os.R_OK):
                    raise PermissionError(13, "permission denied")
            except OSError as exc:
                problems.append(Problem(rel, f"unreadable: {exc.strerror or exc}"))
                continue
            key, ext = parts
            sample = groups.setdefault(key, {})
            if ext in sample:
                problems.append(Problem(rel, f"duplicate extension {ext!r}", key))
                continue
            sample[ext] = Ref(size=stat.st_size, path=path, mtime_ns=stat.st_mtime_ns)
    classes = None
    labels_csv = root / LABELS_CSV
    if labels_csv.exists():
        with open(labels_csv, newline="", encoding="utf-8") as f:
            labels = {row["key"]: row["label"] for row in csv.DictReader(f)}
        classes = _label_members(groups, labels, problems)
    elif groups and all("/" in key and "cls" not in m for key, m in groups.items()):
        labels = {key: key.split("/", 1)[0] for key in groups}
        if len(set(labels.values())) > 1:
            classes = _label_members(groups, labels, problems)
    samples = [PlannedSample(key, tuple(sorted(m.items()))) for key, m in sorted(groups.items())]
    return SourcePlan(samples, problems, classes)


def _label_members(
    groups: dict[str, dict[str, Ref]], labels: Mapping[str, str], problems: list[Problem]
) -> list[str] | None:
    """Add a `cls` member to every sample from `labels` (key → class id or name).

    Names are numbered in sorted order and returned as the class list; integer labels are kept.
    """
    values = {str(v).strip() for v in labels.values()}
    classes = None if all(v.isdigit() for v in values) else sorted(values)
    ids = {name: str(i) for i, name in enumerate(classes or [])}
    for key, members in groups.items():
        if key not in labels:
            problems.append(Problem(key, "no label for this sample", key))
            continue
        label = str(labels[key]).strip()
        text = ids.get(label, label).encode()
        members["cls"] = Ref(size=len(text), data=text)
    for key in [k for k in groups if k not in labels]:
        del groups[key]
    return classes


PATH_COLUMNS = ("path", "file")


def _is_path_column(name: str) -> bool:
    return name in PATH_COLUMNS or name.endswith(tuple(f"_{c}" for c in PATH_COLUMNS))


def plan_manifest(manifest: Path) -> SourcePlan:
    """One row per sample. Columns: `key` (optional), file paths in `path` / `file` /
    `*_path` / `*_file` (relative to the manifest; the member extension is the file's), `label`
    (becomes `cls`), and any other column, whose name is the extension and value the content."""
    rows = _manifest_rows(manifest)
    problems: list[Problem] = []
    groups: dict[str, dict[str, Ref]] = {}
    labels: dict[str, str] = {}
    for number, row in enumerate(rows):
        members: dict[str, Ref] = {}
        key = row.get("key") or row.get("__key__")
        bad = None
        for column, value in row.items():
            if column in ("key", "__key__") or value is None or value == "":
                continue
            if _is_path_column(column):
                path = Path(value) if Path(value).is_absolute() else manifest.parent / value
                parts = split_name(path.name)
                if not path.is_file():
                    bad = Problem(str(value), "file not found", key)
                    break
                if parts is None or not _known(parts[1]):
                    bad = Problem(str(value), "unsupported file type", key)
                    break
                key = key or parts[0]
                stat = path.stat()
                members[parts[1]] = Ref(stat.st_size, str(path), stat.st_mtime_ns)
            elif column == "label":
                labels[str(number)] = str(value)
            else:
                data = _cell_bytes(value)
                members[column.lower()] = Ref(size=len(data), data=data)
        key = str(key or f"{number:09d}")
        if bad is None:
            bad = _key_problem(key, members, groups)
        if bad is not None:
            problems.append(bad)
            labels.pop(str(number), None)
            continue
        if str(number) in labels:
            labels[key] = labels.pop(str(number))
        groups[key] = members
    classes = _label_members(groups, labels, problems) if labels else None
    samples = [PlannedSample(key, tuple(sorted(m.items()))) for key, m in groups.items()]
    return SourcePlan(samples, problems, classes)


def _key_problem(key: str, members: dict[str, Ref], seen: Mapping[str, Any]) -> Problem | None:
    if key in seen:
        return Problem(key, "duplicate key", key)
    if not members:
        return Problem(key, "row has no members", key)
    try:
        for ext in members:
            check_key(key, ext)
    except ValueError as exc:
        return Problem(key, str(exc), key)
    return None


def _manifest_rows(manifest: Path) -> Iterator[dict[str, Any]]:
    if manifest.suffix == ".csv":
        with open(manifest, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
    elif manifest.suffix == ".jsonl":
        with open(manifest, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    else:
        for batch in pq.ParquetFile(manifest).iter_batches(batch_size=1024):
            yield from batch.to_pylist()


def _cell_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False).encode()
    return str(value).encode()


_MAGIC = [
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG", "png"),
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"fLaC", "flac"),
    (b"OggS", "ogg"),
    (b"ID3", "mp3"),
    (b"\xff\xfb", "mp3"),
    (b"\xff\xf3", "mp3"),
]


def _sniff(data: bytes, kind: str) -> str:
    """A file extension from the first bytes (HF columns often carry no path)."""
    if data[:4] == b"RIFF":
        return {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}.get(data[8:12], "bin")
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return "jpg" if kind == "Image" else "wav"


def plan_hf_parquet(path: Path) -> SourcePlan:
    """A Parquet file written by Hugging Face `datasets`: Image / Audio columns are
    `struct<bytes, path>`, ClassLabel columns integers with their names in the schema's
    `huggingface` metadata. Image/Audio → their file type, ClassLabel → `cls`, strings →
    `txt` (or `COLUMN.txt` when there are several), anything else → `COLUMN.json`."""
    pf = pq.ParquetFile(path)
    mtime_ns = path.stat().st_mtime_ns
    meta = json.loads(pf.schema_arrow.metadata[b"huggingface"])
    features = meta.get("info", {}).get("features", {})
    strings = [c for c, f in features.items() if f.get("dtype") in ("string", "large_string")]
    classes = None
    problems: list[Problem] = []
    samples: list[PlannedSample] = []
    first_row = 0
    for group in range(pf.num_row_groups):
        table = pf.read_row_group(group)
        for i, row in enumerate(table.to_pylist()):
            number = first_row + i
            key = str(row.get("__key__") or row.get("id") or f"{number:09d}")
            members: dict[str, Ref] = {}
            for column, feature in features.items():
                kind = feature.get("_type")
                value = row.get(column)
                if value is None:
                    continue
                if kind in ("Image", "Audio"):
                    data = value.get("bytes")
                    if not data:
                        problems.append(Problem(f"{path}:{number}:{column}", "no bytes", key))
                        continue
                    name_ext = split_name(Path(value.get("path") or "").name)
                    ext = name_ext[1] if name_ext and _known(name_ext[1]) else _sniff(data, kind)
                    members[ext] = Ref(
                        len(data), str(path), mtime_ns, row_group=group, row=i, column=column
                    )
                elif kind == "ClassLabel":
                    classes = classes or feature.get("names")
                    members["cls"] = Ref(size=len(str(value)), data=str(value).encode())
                elif column in strings:
                    ext = "txt" if len(strings) == 1 else f"{column.lower()}.txt"
                    members[ext] = Ref(size=len(value.encode()), data=value.encode())
                else:
                    data = json.dumps(value, ensure_ascii=False).encode()
                    members[f"{column.lower()}.json"] = Ref(size=len(data), data=data)
            bad = _key_problem(key, members, {s.key for s in samples})
            if bad is not None:
                problems.append(bad)
                continue
            samples.append(PlannedSample(key, tuple(sorted(members.items()))))
        first_row += table.num_rows
    return SourcePlan(samples, problems, classes)


@lru_cache(maxsize=2)
def _parquet_group(path: str, row_group: int, column: str) -> list[Any]:
    return pq.ParquetFile(path).read_row_group(row_group, columns=[column]).column(0).to_pylist()


def _parquet_cell(path: str, row_group: int, row: int, column: str) -> bytes:
    value = _parquet_group(path, row_group, column)[row]
    return value["bytes"] if isinstance(value, dict) else value


# ---------------------------------------------------------------------------------------------
# Plan → shards


def parse_splits(text: str | None) -> dict[str, float]:
    """`"val=0.1,test=0.05"` → fractions; the rest is `train`."""
    if not text:
        return {}
    splits = {}
    for part in text.split(","):
        name, _, fraction = part.partition("=")
        splits[name.strip()] = float(fraction)
    return check_splits(splits)


def check_splits(splits: Mapping[str, float]) -> dict[str, float]:
    if sum(splits.values()) >= 1 or any(f <= 0 for f in splits.values()) or "train" in splits:
        raise ValueError(
            f"splits {dict(splits)}: fractions must be positive, sum below 1, not 'train'"
        )
    return dict(splits)


def split_of(key: str, splits: Mapping[str, float]) -> str:
    """The split a key falls in: the named splits take consecutive ranges of `stable_fraction`
    of the sizes given, `train` the rest."""
    total = 0.0
    u = stable_fraction(key)
    for name, fraction in splits.items():
        total += fraction
        if u < total:
            return name
    return "train"


def assign_splits(
    samples: list[PlannedSample], splits: Mapping[str, float]
) -> dict[str, list[PlannedSample]]:
    if not splits:
        return {"": samples}
    out: dict[str, list[PlannedSample]] = {"train": [], **{name: [] for name in splits}}
    for sample in samples:
        out[split_of(sample.key, splits)].append(sample)
    return out


def cut_shards(
    samples: list[PlannedSample], max_samples: int | None, max_bytes: int | None
) -> list[list[PlannedSample]]:
    """Consecutive runs of samples, each within the count and byte caps (a sample larger than
    `max_bytes` gets a shard of its own)."""
    shards: list[list[PlannedSample]] = []
    current: list[PlannedSample] = []
    size = 0
    for sample in samples:
        grow = sample.tar_size
        full = max_samples is not None and len(current) >= max_samples
        full = full or (max_bytes is not None and size + grow > max_bytes)
        if current and full:
            shards.append(current)
            current, size = [], 0
        current.append(sample)
        size += grow
    if current:
        shards.append(current)
    return shards


@dataclass
class ShardTask:
    """Everything one worker needs to write one shard (picklable)."""

    directory: Path
    name: str
    shard_format: str
    extensions: list[str]
    samples: list[PlannedSample]


def write_shard(task: ShardTask) -> ShardInfo:
    """Write one planned shard atomically; a member that became unreadable since planning
    drops its sample, reported in the shard's sidecar (so a resumed build reports it too)."""
    shard = open_shard(task.directory, task.name, task.shard_format, task.extensions)
    problems = []
    try:
        for sample in task.samples:
            try:
                body = {ext: ref.read() for ext, ref in sample.members}
            except OSError as exc:
                problems.append(Problem(sample.key, f"unreadable: {exc}", sample.key).as_dict())
                continue
            shard.add({"__key__": sample.key, **body})
        return shard.finish(problems)
    except BaseException:
        shard.abort()
        raise


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: list[Any],
    workers: int,
    on_done: Callable[[Any, Any], None],
    retries: int = 0,
) -> None:
    """Run `fn` over `tasks` on a local process pool (in this process with `workers <= 1`),
    calling `on_done(task, result)` as each finishes, in completion order.

    A worker that dies (killed, out of memory) breaks the whole pool; up to `retries` times a
    new pool then runs the tasks that had not finished, so `fn` must be safe to run twice
    (every task here writes its outputs atomically under names of its own).
    """
    if workers <= 1:
        for task in tasks:
            on_done(task, fn(task))
        return
    context = _pool_context(fn)
    remaining = list(tasks)
    for attempt in range(retries + 1):
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending = {pool.submit(fn, task): task for task in remaining}
            broken = None
            while pending and broken is None:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if isinstance(future.exception(), BrokenProcessPool):
                        broken = future.exception()
                        continue
                    on_done(pending.pop(future), future.result())
        if broken is None:
            return
        remaining = list(pending.values())
        if attempt == retries:
            raise broken
        print(
            f"a worker process died ({broken}); running {len(remaining)} unfinished tasks again",
            file=sys.stderr,
        )


def _pool_context(fn: Callable[[Any], Any]) -> multiprocessing.context.BaseContext:
    """`fork` when this process runs no native thread pools (the `polymodal build` command):
    it starts in milliseconds. Once torch or PyAV are loaded (a notebook, a trainer, the
    validate command), a forked child can deadlock on a lock some pool thread held at the
    fork, so workers come from a clean `forkserver` that imports `fn`'s module once."""
    if "torch" not in sys.modules and "av" not in sys.modules:
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([fn.__module__])
    return context


def fingerprint(options: Mapping[str, Any], shards: list[list[PlannedSample]]) -> str:
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for shard in shards:
        for sample in shard:
            parts = [sample.key, [[ext, *ref.identity()] for ext, ref in sample.members]]
            digest.update(json.dumps(parts).encode())
        digest.update(b"|")
    return digest.hexdigest()


def finished_shard(directory: Path, name: str) -> ShardInfo | None:
    """A shard with its final name is complete (renamed last); its sidecar holds its facts."""
    sidecar = directory / sidecar_name(name)
    if not (directory / name).exists() or not sidecar.exists():
        return None
    return decode_sidecar(sidecar.read_bytes())[0]


def _previous_fingerprint(directory: Path) -> str | None:
    """The fingerprint of what `directory` holds: a finished build's, or an unfinished one's."""
    for name, doc_key in ((PLAN_NAME, None), (INDEX_NAME, "build")):
        path = directory / name
        if path.exists():
            doc = json.loads(path.read_bytes())
            doc = (doc.get(doc_key) or {}) if doc_key else doc
            return doc.get("fingerprint")
    return None


def prepare_output(directory: Path, fp: str, overwrite: bool) -> bool:
    """Make `directory` ready for the build with fingerprint `fp`; False when already built.

    Shards of another build (other sources or options) are never mixed in: that is an error
    unless `overwrite`, which removes them first.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ours = [p for p in directory.iterdir() if p.name.startswith("shard-") or p.name == INDEX_NAME]
    previous = _previous_fingerprint(directory)
    if overwrite:
        for path in ours:
            path.unlink()
    elif previous == fp and (directory / INDEX_NAME).exists():
        return False
    elif ours and previous != fp:
        raise FileExistsError(
            f"{directory} holds shards of another build (other sources or options); "
            "remove them or pass overwrite"
        )
    remove_temporaries(directory)
    write_atomic(directory / PLAN_NAME, json.dumps({"fingerprint": fp}).encode())
    return True


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
    print_: Callable[[str], None] = print,
) -> BuildReport:
    """Build `out` from `src`; see the module docstring. Rejected inputs go to
    `out/rejects.jsonl`; with splits, each split is a dataset in `out/SPLIT/`. `fields` sets
    the modality of extensions the registry leaves ambiguous (`{"npy": "pointcloud"}`)."""
    started = time.perf_counter()
    fields = check_field_rules(fields or {})
    out = Path(out)
    src = Path(src)
    if src.is_dir():
        check_separate([src], out, folders=True)
    plan = plan_source(src)
    if not src.is_dir():  # a manifest: it and every file it lists are what the build reads
        listed = {ref.path for s in plan.samples for _, ref in s.members if ref.path}
        check_separate([src, *sorted(listed)], out, folders=False)
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
    rejects = [p.as_dict() for p in plan.problems]
    report = BuildReport({}, 0, 0, 0, 0, 0, 0.0)
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out, [REJECTS_NAME])  # a killed run's, beside the split folders
    for name, members in assign_splits(samples, parse_splits(split)).items():
        directory = out / name if name else out
        shards = cut_shards(members, shard_samples, shard_bytes)
        fp = fingerprint({**options, "split_name": name}, shards)
        report.datasets[name] = directory
        if not prepare_output(directory, fp, overwrite):
            print_(f"{directory}: already built from these sources with these options")
            index = ShardIndex.load(directory)
        else:
            index, written = _write_split(
                directory, shards, shard_format, workers, progress, fields
            )
            report.written_shards += written
            index.classes, index.build = plan.classes, {"fingerprint": fp, **options}
            index.save(directory)
        rejects += [p for info in index.shards for p in info.problems]
        report.samples += index.samples
        report.shards += len(index.shards)
        report.bytes += index.bytes
    report.rejects = len(rejects)
    write_atomic(out / REJECTS_NAME, "".join(json.dumps(r) + "\n" for r in rejects).encode())
    report.seconds = time.perf_counter() - started
    return report


def _write_split(
    directory: Path,
    shards: list[list[PlannedSample]],
    shard_format: str,
    workers: int,
    progress: bool,
    fields: Mapping[str, str],
) -> tuple[ShardIndex, int]:
    """Write the shards of one split that are not finished yet; the index and how many shards
    were written now."""
    extensions = sorted({ext for shard in shards for s in shard for ext, _ in s.members})
    infos: dict[str, ShardInfo] = {}
    tasks = []
    for number, shard in enumerate(shards):
        name = shard_name("shard", number, shard_format)
        done = finished_shard(directory, name)
        if done is not None:
            infos[name] = done
        else:
            tasks.append(ShardTask(directory, name, shard_format, extensions, shard))
    total = sum(len(t.samples) for t in tasks)
    bar = tqdm(total=total, unit="sample", disable=not progress or not tasks, desc=directory.name)
    written = {"bytes": 0, "start": time.perf_counter()}

    def on_done(task: ShardTask, info: ShardInfo) -> None:
        infos[task.name] = info
        written["bytes"] += info.bytes
        rate = written["bytes"] / max(time.perf_counter() - written["start"], 1e-9) / 2**20
        bar.set_postfix_str(f"{written['bytes'] / 2**20:.1f} MB, {rate:.1f} MB/s", refresh=False)
        bar.update(len(task.samples))

    try:
        run_tasks(write_shard, tasks, workers, on_done)
    finally:
        bar.close()
    ordered = [infos[shard_name("shard", n, shard_format)] for n in range(len(shards))]
    index = ShardIndex(
        shard_format, schema(ordered, fields), ordered, merge_labels(ordered), base=str(directory)
    )
    return index, len(tasks)


# ---------------------------------------------------------------------------------------------
# Existing WebDataset shards: index them in place


def scan_tar(path: Path) -> ShardInfo | Problem:
    """Index one foreign tar shard: count, offsets, sha256, fields, labels; write its sidecar.

    Bad members (no extension, not a file, unsafe path) are recorded in the sidecar and
    skipped; a damaged or truncated archive is returned as a Problem and gets no sidecar.
    """
    problems: list[dict[str, str]] = []
    stats = ShardStats()
    with open(path, "rb") as f:
        reader = HashingReader(f, 2 * TAR_BLOCK)
        try:
            for offset, sample in read_tar_samples(reader, path.name, 0, problems_to(problems)):
                stats.add(sample, offset)
                if ERROR_KEY in sample:
                    problem = Problem(path.name, sample[ERROR_KEY], sample["__key__"])
                    problems.append(problem.as_dict())
            reader.drain()
        except (tarfile.ReadError, ValueError) as exc:
            return Problem(path.name, str(exc))
    if reader.size % TAR_BLOCK or reader.tail != bytes(2 * TAR_BLOCK):
        return Problem(path.name, "truncated tar: no end-of-archive blocks")
    info = stats.info(path.name, reader.size, reader.sha.hexdigest(), problems)
    write_sidecar(path.parent, info, stats.offsets)
    return info


def problems_to(sink: list[dict[str, str]]) -> Callable[[Problem], None]:
    return lambda problem: sink.append(problem.as_dict())


def schema(infos: list[ShardInfo], fields: Mapping[str, str] | None = None) -> dict[str, str]:
    """index.json's extension → modality map for the members the shards hold: the user's rules
    (`fields`, e.g. `{"npy": "pointcloud"}`) first, then the registry's defaults; "" where
    neither says (the stream then needs a field for it in the config)."""
    from polymodal.adapters import modality_of

    return {
        ext: modality_of(ext, fields) or "" for ext in sorted({e for i in infos for e in i.fields})
    }


def check_field_rules(fields: Mapping[str, str]) -> dict[str, str]:
    """User rules `extension → adapter name`, normalised; an unknown adapter is an error."""
    from polymodal.adapters import available

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
) -> BuildReport:
    """Index the WebDataset tar shards in `directory` in place: a sidecar per shard, then
    `rejects.jsonl` (bad members, damaged shards) and `index.json` (the good shards).
    `fields` sets the modality of extensions the registry leaves ambiguous (`npy`, `json`)."""
    fields = check_field_rules(fields or {})
    started = time.perf_counter()
    directory = Path(directory)
    tars = sorted(directory.glob("*.tar"))
    if not tars:
        raise FileNotFoundError(f"{directory}: no .tar shards to index")
    results: dict[Path, ShardInfo | Problem] = {}
    bar = tqdm(total=len(tars), unit="shard", disable=not progress, desc="index")

    def on_done(path: Path, result: ShardInfo | Problem) -> None:
        results[path] = result
        bar.update(1)

    run_tasks(scan_tar, tars, workers, on_done)
    bar.close()
    infos = [r for p in tars if isinstance(r := results[p], ShardInfo)]
    rejects = [r for p in tars for r in _shard_rejects(results[p])]
    write_atomic(directory / REJECTS_NAME, "".join(json.dumps(r) + "\n" for r in rejects).encode())
    index = ShardIndex(
        "tar", schema(infos, fields), infos, merge_labels(infos), base=str(directory)
    )
    index.classes = _previous_classes(directory)
    index.save(directory)
    return BuildReport(
        {"": directory},
        index.samples,
        len(infos),
        index.bytes,
        len(infos),
        len(rejects),
        time.perf_counter() - started,
    )


def _previous_classes(directory: Path) -> list[str] | None:
    """The class names of the index being replaced, if any: indexing again (after adding or
    repairing shards) must not lose what the labels mean."""
    try:
        return ShardIndex.load(directory).classes
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

"""What is inside a dataset: counts from the index, media statistics from a bounded sample,
a contact sheet to look at, and a full validation.

`inspect_dataset` costs O(shards) plus a few dozen samples, whatever the dataset's size;
`validate_dataset` reads every byte and decodes every sample, one task per shard.
"""

from __future__ import annotations

import statistics
import tarfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np

from polymodal.adapters.registry import get

from .files import HashingReader, TooLarge, open_read
from .index import (
    InvalidIndex,
    ShardIndex,
    ShardInfo,
    decode_sidecar,
    key_hash,
    read_sidecar,
    sidecar_disagreement,
    sidecar_name,
)
from .layout import ERROR_KEY, Problem, read_tar_samples
from .parquet import read_parquet_samples
from .reader import read_shard

PROBE_SHARDS = 8  # how many shards the bounded sample is spread over


def bounded_sample(
    index: ShardIndex, limit: int, problems: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Up to `limit` samples, taken from the starts of up to `PROBE_SHARDS` evenly spread
    shards, so statistics see more than the first shard without reading the dataset. A shard
    that cannot be read (empty, damaged, missing) is passed over, said in `problems`."""
    shards = [s for s in index.shards if s.samples]
    if not shards or limit <= 0:
        return
    picks = sorted(
        {round(i) for i in np.linspace(0, len(shards) - 1, min(PROBE_SHARDS, len(shards)))}
    )
    per_shard = -(-limit // len(picks))
    taken = 0
    for pick in picks:
        try:
            for n, sample in enumerate(read_shard(index, shards[pick], on_problem=lambda p: None)):
                if n >= per_shard or taken >= limit:
                    break
                taken += 1
                yield sample
        except (
            OSError,
            ValueError,
            tarfile.ReadError,
        ) as exc:  # inspect describes, validate judges
            if problems is not None:
                problems.append(f"{shards[pick].name}: not read ({exc})")


def probe(modality: str, ext: str, data: bytes) -> dict[str, float]:
    """Cheap metadata of one member, from its modality's adapter (the `probe` hook)."""

    return get(modality)(extensions=[ext]).probe(data, ext) if modality else {}


def _summarise(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def inspect_dataset(source: str, sample_limit: int = 64) -> dict[str, Any]:
    """Counts from the index and per-field media statistics from a bounded sample."""
    index = ShardIndex.load(source)
    counts = index.field_counts()
    probes: dict[str, dict[str, list[float]]] = {}
    problems: list[str] = []
    probed = 0
    for sample in bounded_sample(index, sample_limit, problems):
        probed += 1
        for ext, modality in index.fields.items():
            if ext not in sample:
                continue
            try:
                values = probe(modality, ext, sample[ext])
            except Exception as exc:  # report and go on: inspect describes, validate judges
                problems.append(f"{sample['__key__']}.{ext}: {exc}")
                continue
            for name, value in values.items():
                probes.setdefault(ext, {}).setdefault(name, []).append(float(value))
    labels = index.labels
    if index.classes:
        from polymodal.adapters.label import class_name

        labels = {class_name(index.classes, k): v for k, v in labels.items()}
    return {
        "source": source,
        "format": index.format,
        "samples": index.samples,
        "shards": len(index.shards),
        "bytes": index.bytes,
        "fields": {
            ext: {
                "modality": modality,
                "count": counts.get(ext, 0),
                "stats": {name: _summarise(v) for name, v in probes.get(ext, {}).items()},
            }
            for ext, modality in index.fields.items()
        },
        "labels": labels,
        "classes": index.classes,
        "probed_samples": probed,
        "probe_problems": problems[:20],
    }


def format_report(report: dict[str, Any]) -> str:
    """The inspect report as text for a terminal."""
    lines = [
        f"{report['source']}: {report['samples']:,} samples in {report['shards']:,} "
        f"{report['format']} shards, {report['bytes'] / 2**20:,.1f} MB",
        "fields:",
    ]
    for ext, f in report["fields"].items():
        lines.append(f"  {ext:10s} {f['modality'] or '-':11s} {f['count']:>10,} samples")
        for name, s in f["stats"].items():
            lines.append(
                f"    {name:9s} min {s['min']:<10.4g} median {s['median']:<10.4g} "
                f"max {s['max']:.4g}"
            )
    if report["labels"]:
        lines.append("labels:")
        top = max(report["labels"].values())
        for label, n in sorted(report["labels"].items(), key=lambda kv: -kv[1])[:30]:
            lines.append(f"  {label[:24]:24s} {n:>8,} {'█' * max(1, round(30 * n / top))}")
    lines.append(f"(media statistics from {report['probed_samples']} samples)")
    lines += [f"  could not probe {p}" for p in report["probe_problems"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Validation


def validate_shard(args: tuple[ShardIndex, ShardInfo]) -> tuple[list[dict[str, str]], list[str]]:
    """Every problem of one shard, as sentences: missing, damaged, split samples, size /
    checksum / count against the index, the sidecar against the index and the shard, samples
    that do not decode. Also the shard's keys, for the duplicate check across shards."""
    index, shard = args
    from polymodal.adapters import DecodeError, get

    decoders = {ext: get(m)(extensions=[ext]) for ext, m in index.fields.items() if m}
    problems: list[dict[str, str]] = []

    def bad(key: str, field: str, reason: str) -> None:
        problems.append({"shard": shard.name, "key": key, "field": field, "reason": reason})

    url = index.url(shard)
    keys: list[str] = []
    offsets: list[int] = []
    try:
        with ExitStack() as stack:
            reader = HashingReader(stack.enter_context(open_read(url)))
            if index.format == "tar":
                samples = read_tar_samples(reader, url, 0, _member_problem(bad))
            else:  # Parquet needs a seekable file of its own; `reader` only hashes
                parquet = stack.enter_context(open_read(url, stream=False))
                samples = read_parquet_samples(parquet, url)
            for offset, sample in samples:
                keys.append(sample["__key__"])
                offsets.append(offset)
                if ERROR_KEY in sample:
                    bad(sample["__key__"], "", sample[ERROR_KEY])
                    continue
                for ext, decoder in decoders.items():
                    if ext in sample:
                        try:
                            decoder.decode(sample)
                        except DecodeError as exc:
                            bad(exc.key, ext, exc.reason)
            reader.drain()
    except FileNotFoundError:
        bad("", "", "the shard is missing")
        return problems, keys
    except Exception as exc:  # a damaged shard is reported, the others go on
        bad("", "", f"the shard cannot be read to its end: {exc}")
        return problems, keys
    if len(keys) != shard.samples:
        bad("", "", f"the shard holds {len(keys):,} samples, the index says {shard.samples:,}")
    if reader.size != shard.bytes:
        bad("", "", f"the shard is {reader.size:,} bytes, the index says {shard.bytes:,}")
    elif reader.sha.hexdigest() != shard.sha256:
        bad(
            "",
            "",
            f"the shard's sha256 ({reader.sha.hexdigest()[:12]}…) is not the index's "
            f"({shard.sha256[:12]}…): its content changed after it was indexed",
        )
    sidecar = _sidecar_problem(index, shard, offsets, keys)
    if sidecar is not None:
        bad("", "", sidecar)
    return problems, keys


def _sidecar_problem(
    index: ShardIndex, shard: ShardInfo, offsets: list[int], keys: list[str]
) -> str | None:
    """What is wrong with a shard's sidecar, in a sentence, or None."""
    name = sidecar_name(shard.name)
    try:
        sidecar = decode_sidecar(read_sidecar(index.base, shard))
    except FileNotFoundError:
        return (
            f"its sidecar {name} is missing: readers cannot seek in the shard "
            "(`polymodal index` rewrites it)"
        )
    except (InvalidIndex, TooLarge) as exc:
        return f"its sidecar {name} is not a sidecar ({exc})"
    disagreement = sidecar_disagreement(shard, sidecar, index.format)
    if disagreement is not None:
        return f"its sidecar {name} disagrees with the index: {disagreement}"
    stored = sidecar.offsets
    if sidecar.keys is not None and sidecar.keys.tolist() != [key_hash(k) for k in keys]:
        return f"its sidecar {name} names other keys than the shard holds: it changed"
    if index.format == "tar" and stored.tolist() != offsets:
        first = next(
            (i for i, (a, b) in enumerate(zip(stored.tolist(), offsets, strict=False)) if a != b),
            min(len(stored), len(offsets)),
        )
        return (
            f"its sidecar {name} points sample {first} to the wrong byte: readers would seek wrong"
        )
    return None


def _member_problem(bad: Callable[[str, str, str], None]) -> Callable[[Problem], None]:
    return lambda p: bad(p.key or "", p.where, p.reason)


def validate_dataset(
    source: str, workers: int = 1, on_shard: Callable[[ShardInfo], None] | None = None
) -> list[dict[str, str]]:
    """Check every shard against the index and decode every sample with its field's adapter,
    and that no key is in two shards; returns the problems (empty when the dataset is sound).

    The duplicate check holds every key once (O(samples) memory): validate reads everything
    anyway, and a duplicate is delivered twice by every reader."""
    from .pool import run_tasks

    index = ShardIndex.load(source)
    results: dict[str, list[dict[str, str]]] = {}
    first_shard: dict[str, str] = {}

    def done(task: tuple[ShardIndex, ShardInfo], result: tuple[list, list[str]]) -> None:
        problems, keys = result
        name = task[1].name
        for key in keys:
            other = first_shard.setdefault(key, name)
            if other != name:  # within a shard, a repeated key is a split sample: read errors
                reason = f"duplicate key: {other} holds a sample with this key too"
                problems.append({"shard": name, "key": key, "field": "", "reason": reason})
        results[name] = problems
        if on_shard is not None:
            on_shard(task[1])

    run_tasks(validate_shard, [(index, s) for s in index.shards], workers, done)
    return _table_problems(index) + [p for s in index.shards for p in results[s.name]]


def _table_problems(index: ShardIndex) -> list[dict[str, str]]:
    """A shard table whose columns do not hash to the digest it and its header name (opening
    one trusts the digest: hashing the whole table is validate's job)."""
    table = index.table
    if not table.stored_digest or table.content_digest == table.stored_digest:
        return []
    reason = (
        f"the shard table's content hashes to {table.content_digest[:12]}…, its header "
        f"names {table.stored_digest[:12]}…: it was changed after it was written; index again"
    )
    return [{"shard": table.where, "key": "", "field": "", "reason": reason}]


def problem_sentence(problem: dict[str, str]) -> str:
    """One validation problem as a line a person reads."""
    where = problem["shard"]
    if problem.get("key"):
        where += f": sample {problem['key']!r}"
    if problem.get("field"):
        where += f" ({problem['field']})"
    return f"{where}: {problem['reason']}"

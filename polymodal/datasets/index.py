"""`index.json` and the per-shard sidecars: what a dataset holds, without reading its shards.

A dataset is a folder (or URL prefix) of shards plus `index.json`: format version, shard
format, the field schema (extension → modality), the label histogram, and per shard its name,
sample count, byte size, sha256 and field counts. Loading it costs O(shards).

Per-sample byte offsets would make the index O(samples) — a billion entries at internet scale —
so each shard has a small sidecar, `NAME.idx`, read only by a reader that seeks in that shard:
one JSON line with the shard's facts (so a resumed build can reuse a finished shard without
hashing it again), then one little-endian uint64 per sample, the byte offset of the sample's
first tar member header (Parquet shards need none: their footer lists the row groups).

Writers write shards and sidecars first and `index.json` last: a dataset with an index is
complete.

An index is read as untrusted input: `from_json` refuses (`InvalidIndex`, naming the shard)
entries whose name leaves the dataset folder, whose counts are not non-negative integers, whose
sample count cannot fit in its bytes (a tar sample takes at least one 512-byte header), whose
checksum is not a sha256, and duplicate names. So the cost of refusing a lying index is
O(shards), whatever it claims.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.errors import UserError

from .card import write_card
from .files import DEFAULT_REMOTE, Remote, join, read_bytes, write_atomic

INDEX_NAME = "index.json"
PLAN_NAME = ".polymodal-build.json"  # the fingerprint of the job that owns a dataset folder
REJECTS_NAME = "rejects.jsonl"  # the inputs a job could not use, with their reasons
FORMAT_NAME = "polymodal-index"
FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".idx"
MAX_INDEX_BYTES = 2**30  # ~5 million shards of ~200 bytes each
SIDECAR_HEAD_BYTES = 2**20  # a sidecar's JSON line, its problems list included
MIN_TAR_SAMPLE_BYTES = 512  # one member header: no tar sample is smaller
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class InvalidIndex(UserError, ValueError):
    """`index.json` (or a sidecar) is malformed or claims what cannot be true."""


@dataclass
class ShardInfo:
    """One shard's facts, as the index and its sidecar hold them."""

    name: str
    samples: int
    bytes: int
    sha256: str
    fields: dict[str, int] = field(default_factory=dict)  # extension → samples that have it
    labels: dict[str, int] = field(default_factory=dict)  # `cls` value → count (sidecar only)
    problems: list[dict[str, str]] = field(default_factory=list)  # dropped inputs (sidecar only)

    def index_entry(self) -> dict[str, Any]:
        entry = asdict(self)
        del entry["labels"], entry["problems"]  # the index stays O(shards): see the docstring
        return entry


@dataclass
class ShardStats:
    """What is counted while a shard is written or scanned, to become its `ShardInfo`."""

    samples: int = 0
    offsets: list[int] = field(default_factory=list)
    fields: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    def add(self, sample: Mapping[str, Any], offset: int | None = None) -> None:
        """Count one sample (its extensions, its `cls` label) and note its byte offset."""
        self.samples += 1
        if offset is not None:
            self.offsets.append(offset)
        for ext in sample:
            if not ext.startswith("__"):
                self.fields[ext] = self.fields.get(ext, 0) + 1
        if "cls" in sample:
            label = bytes(sample["cls"]).decode("utf-8", errors="replace").strip()
            self.labels[label] = self.labels.get(label, 0) + 1

    def info(self, name: str, size: int, sha256: str, problems: list[dict[str, str]]) -> ShardInfo:
        fields, labels = dict(sorted(self.fields.items())), dict(sorted(self.labels.items()))
        return ShardInfo(name, self.samples, size, sha256, fields, labels, problems)


def sidecar_name(shard_name: str) -> str:
    """`.NAME.idx` beside the shard: a hidden file, which Hugging Face's loaders pass by (they
    would read `NAME.tar.idx` as one more tar). Datasets written before keep `NAME.idx`."""
    folder, slash, base = shard_name.rpartition("/")
    return f"{folder}{slash}.{base}{SIDECAR_SUFFIX}"


def legacy_sidecar_name(shard_name: str) -> str:
    return shard_name + SIDECAR_SUFFIX


def encode_sidecar(info: ShardInfo, offsets: np.ndarray | list[int]) -> bytes:
    head = json.dumps(asdict(info), sort_keys=True, separators=(",", ":")).encode()
    return head + b"\n" + np.asarray(offsets, dtype="<u8").tobytes()


def decode_sidecar(data: bytes) -> tuple[ShardInfo, np.ndarray]:
    """A sidecar's facts and offsets; `InvalidIndex` for anything that is not one."""
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise InvalidIndex("sidecar has no header line")
    try:
        info = ShardInfo(**json.loads(head))
    except (ValueError, TypeError) as exc:
        raise InvalidIndex(f"sidecar header is not a shard record: {exc}") from None
    if len(body) % 8:
        raise InvalidIndex(f"sidecar body of {len(body)} bytes is not a list of uint64 offsets")
    return info, np.frombuffer(body, dtype="<u8")


def write_sidecar(directory: Path, info: ShardInfo, offsets: np.ndarray | list[int]) -> None:
    write_atomic(directory / sidecar_name(info.name), encode_sidecar(info, offsets))


@dataclass
class ShardIndex:
    """A dataset's `index.json`; `base` is where it was loaded from (a folder or URL prefix),
    where the sidecars are too. `shards_at` names where the shards are when that is somewhere
    else (an index made of read-only shards on HTTP or S3); empty, they are beside it."""

    format: str
    fields: dict[str, str]
    shards: list[ShardInfo]
    labels: dict[str, int] = field(default_factory=dict)
    classes: list[str] | None = None
    build: dict[str, Any] | None = None
    base: str = ""
    shards_at: str = ""
    # field → {"adapter", "options"}: the fields kept decoded (`adapters.materialized`)
    materialized: dict[str, Any] | None = None

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def field_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for shard in self.shards:
            for ext, n in shard.fields.items():
                counts[ext] = counts.get(ext, 0) + n
        return dict(sorted(counts.items()))

    @property
    def location(self) -> str:
        """The folder or URL prefix the shards are in."""
        return self.shards_at or self.base

    def url(self, shard: ShardInfo) -> str:
        return join(self.location, shard.name)

    def offsets(self, shard: ShardInfo) -> np.ndarray:
        """The shard's per-sample offsets, read from its sidecar and checked against the
        index: same checksum, one offset per sample, increasing, inside the shard."""
        info, offsets = decode_sidecar(read_sidecar(self.base, shard))
        problem = sidecar_disagreement(shard, info, offsets, self.format)
        if problem is not None:
            raise InvalidIndex(f"{shard.name}: {problem}")
        return offsets

    def to_json(self) -> builtins.bytes:
        doc = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "shard_format": self.format,
            "samples": self.samples,
            "bytes": self.bytes,
            "fields": self.fields,
            "labels": dict(sorted(self.labels.items())),
            "classes": self.classes,
            "build": self.build,
            **({"shards_at": self.shards_at} if self.shards_at else {}),
            **({"materialized": self.materialized} if self.materialized else {}),
            "shards": [s.index_entry() for s in self.shards],
        }
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()

    def save(self, directory: Path) -> None:
        """Write the dataset card, then `index.json`, atomically; call it after every shard
        and sidecar is in place."""
        summary = f"{self.samples:,} samples in {len(self.shards):,} {self.format} shards."
        if not self.shards_at:  # a card names shards beside it
            write_card(directory, {"train": f"*.{self.format}"}, summary)
        write_atomic(Path(directory) / INDEX_NAME, self.to_json())

    @classmethod
    def from_json(cls, data: builtins.bytes, base: str = "") -> ShardIndex:
        where = join(base, INDEX_NAME) if base else INDEX_NAME
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise InvalidIndex(f"{where}: not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise InvalidIndex(f"{where}: not a polymodal index")
        if doc.get("version", 0) > FORMAT_VERSION:
            raise InvalidIndex(
                f"{where}: index version {doc['version']} is newer than this polymodal"
            )
        shard_format = doc.get("shard_format")
        if shard_format not in ("tar", "parquet"):
            raise InvalidIndex(
                f"{where}: shard_format must be tar or parquet, got {shard_format!r}"
            )
        if not isinstance(doc.get("shards"), list) or not isinstance(doc.get("fields"), dict):
            raise InvalidIndex(f"{where}: needs a 'shards' list and a 'fields' table")
        shards, names = [], set()
        for number, entry in enumerate(doc["shards"]):
            shard = _checked_entry(entry, shard_format, f"{where}: shard {number}")
            if shard.name in names:
                raise InvalidIndex(f"{where}: shard {shard.name!r} is listed twice")
            names.add(shard.name)
            shards.append(shard)
        index = cls(
            format=shard_format,
            fields=doc["fields"],
            shards=shards,
            labels=doc.get("labels") or {},
            classes=doc.get("classes"),
            build=doc.get("build"),
            base=base,
            shards_at=_checked_location(doc.get("shards_at", ""), where),
            materialized=_checked_materialized(doc.get("materialized"), where),
        )
        if "samples" in doc and doc["samples"] != index.samples:
            raise InvalidIndex(
                f"{where}: says {doc['samples']} samples, its shards add up to {index.samples}"
            )
        return index

    @classmethod
    def load(cls, source: str | Path, remote: Remote = DEFAULT_REMOTE) -> ShardIndex:
        """Load `source/index.json`; `source` is a local folder or an fsspec URL prefix.

        A missing index is a `FileNotFoundError` that says what a dataset folder holds."""
        base = str(source).rstrip("/")
        try:
            data = read_bytes(join(base, INDEX_NAME), remote, MAX_INDEX_BYTES)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{base}: no dataset here (no {INDEX_NAME}; `polymodal build` makes one from "
                "media files, `polymodal index` from existing tar shards)"
            ) from None
        return cls.from_json(data, base)


def read_sidecar(base: str, shard: ShardInfo) -> bytes:
    """A shard's sidecar, refused when larger than its header and one offset per sample can
    be (so a garbage sidecar costs no more than a good one)."""
    limit = SIDECAR_HEAD_BYTES + 8 * shard.samples
    try:
        return read_bytes(join(base, sidecar_name(shard.name)), limit=limit)
    except FileNotFoundError:  # a dataset written before sidecars were hidden
        return read_bytes(join(base, legacy_sidecar_name(shard.name)), limit=limit)


def _checked_location(value: Any, where: str) -> str:
    """`shards_at`: a URL or an absolute path (a relative one would depend on the reader)."""
    if not isinstance(value, str) or (value and "://" not in value and not value.startswith("/")):
        raise InvalidIndex(f"{where}: shards_at must be a URL or an absolute path, got {value!r}")
    return value


def _checked_materialized(value: Any, where: str) -> dict[str, Any] | None:
    """`materialized`: field name → a table naming the adapter and its options."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(entry, dict)
        and isinstance(entry.get("adapter"), str)
        and isinstance(entry.get("options", {}), dict)
        for entry in value.values()
    ):
        raise InvalidIndex(f"{where}: materialized must map fields to {{adapter, options}}")
    return value


def shard_name_problem(name: Any) -> str | None:
    """Why a shard name from an index must not be opened: it must be a plain relative path
    inside the dataset (no scheme, no leading '/', no '..', no backslash)."""
    if not isinstance(name, str) or not name:
        return f"name {name!r} is not a file name"
    if "://" in name or name.startswith(("/", "~")) or "\\" in name or "\x00" in name:
        return f"name {name!r} is not a path inside the dataset folder"
    if ".." in name.split("/") or "." in name.split("/"):
        return f"name {name!r} climbs out of the dataset folder"
    return None


def _checked_entry(entry: Any, shard_format: str, where: str) -> ShardInfo:
    if not isinstance(entry, dict):
        raise InvalidIndex(f"{where}: not a table")
    problem = shard_name_problem(entry.get("name"))
    if problem is not None:
        raise InvalidIndex(f"{where}: {problem}")
    where = f"{where} ({entry['name']})"
    for count in ("samples", "bytes"):
        value = entry.get(count)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidIndex(f"{where}: {count} must be a non-negative integer, got {value!r}")
    if shard_format == "tar" and entry["samples"] * MIN_TAR_SAMPLE_BYTES > entry["bytes"]:
        raise InvalidIndex(
            f"{where}: {entry['samples']:,} samples cannot fit in {entry['bytes']:,} bytes "
            f"(a tar sample takes at least {MIN_TAR_SAMPLE_BYTES})"
        )
    if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
        raise InvalidIndex(f"{where}: sha256 {entry.get('sha256')!r} is not a sha256 digest")
    fields = entry.get("fields", {})
    if not isinstance(fields, dict) or not all(
        isinstance(v, int) and 0 <= v <= entry["samples"] for v in fields.values()
    ):
        raise InvalidIndex(f"{where}: field counts must be integers from 0 to its sample count")
    try:
        return ShardInfo(**entry)
    except TypeError as exc:
        raise InvalidIndex(f"{where}: {exc}") from None


def sidecar_disagreement(
    shard: ShardInfo, info: ShardInfo, offsets: np.ndarray, shard_format: str = "tar"
) -> str | None:
    """How a shard's sidecar disagrees with its index entry, in words, or None."""
    if info.name != shard.name:
        return f"the sidecar is for {info.name!r}"
    if (info.sha256, info.bytes, info.samples) != (shard.sha256, shard.bytes, shard.samples):
        return (
            f"the sidecar describes {info.samples:,} samples in {info.bytes:,} bytes "
            f"(sha256 {info.sha256[:12]}…), the index {shard.samples:,} samples in "
            f"{shard.bytes:,} bytes (sha256 {shard.sha256[:12]}…)"
        )
    if shard_format == "tar":
        if len(offsets) != shard.samples:
            return f"the sidecar has {len(offsets):,} offsets for {shard.samples:,} samples"
        if len(offsets) and (
            np.any(np.diff(offsets.astype(np.int64)) <= 0) or int(offsets[-1]) >= shard.bytes
        ):
            return "the sidecar's offsets are not increasing positions inside the shard"
    return None


def merge_labels(infos: list[ShardInfo]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for info in infos:
        for label, n in info.labels.items():
            labels[label] = labels.get(label, 0) + n
    return dict(sorted(labels.items()))

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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import join, read_bytes, write_atomic

INDEX_NAME = "index.json"
FORMAT_NAME = "polymodal-index"
FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".idx"


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
    return shard_name + SIDECAR_SUFFIX


def encode_sidecar(info: ShardInfo, offsets: np.ndarray | list[int]) -> bytes:
    head = json.dumps(asdict(info), sort_keys=True, separators=(",", ":")).encode()
    return head + b"\n" + np.asarray(offsets, dtype="<u8").tobytes()


def decode_sidecar(data: bytes) -> tuple[ShardInfo, np.ndarray]:
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise ValueError("sidecar has no header line")
    info = ShardInfo(**json.loads(head))
    return info, np.frombuffer(body, dtype="<u8")


def write_sidecar(directory: Path, info: ShardInfo, offsets: np.ndarray | list[int]) -> None:
    write_atomic(directory / sidecar_name(info.name), encode_sidecar(info, offsets))


@dataclass
class ShardIndex:
    """A dataset's `index.json`; `base` is where it was loaded from (a folder or URL prefix)."""

    format: str
    fields: dict[str, str]
    shards: list[ShardInfo]
    labels: dict[str, int] = field(default_factory=dict)
    classes: list[str] | None = None
    build: dict[str, Any] | None = None
    base: str = ""

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

    def url(self, shard: ShardInfo) -> str:
        return join(self.base, shard.name)

    def offsets(self, shard: ShardInfo) -> np.ndarray:
        """The shard's per-sample offsets, read from its sidecar."""
        info, offsets = decode_sidecar(read_bytes(join(self.base, sidecar_name(shard.name))))
        if info.sha256 != shard.sha256 or (self.format == "tar" and len(offsets) != info.samples):
            raise ValueError(f"{shard.name}: sidecar does not match the index")
        return offsets

    def to_json(self) -> bytes:
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
            "shards": [s.index_entry() for s in self.shards],
        }
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()

    def save(self, directory: Path) -> None:
        """Write `index.json` atomically; call it after every shard and sidecar is in place."""
        write_atomic(Path(directory) / INDEX_NAME, self.to_json())

    @classmethod
    def from_json(cls, data: bytes, base: str = "") -> ShardIndex:
        doc = json.loads(data)
        if doc.get("format") != FORMAT_NAME:
            raise ValueError(f"{base or 'index'}: not a polymodal index")
        if doc.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{base}: index version {doc['version']} is newer than this polymodal")
        return cls(
            format=doc["shard_format"],
            fields=doc["fields"],
            shards=[ShardInfo(**s) for s in doc["shards"]],
            labels=doc.get("labels") or {},
            classes=doc.get("classes"),
            build=doc.get("build"),
            base=base,
        )

    @classmethod
    def load(cls, source: str | Path) -> ShardIndex:
        """Load `source/index.json`; `source` is a local folder or an fsspec URL prefix."""
        base = str(source).rstrip("/")
        return cls.from_json(read_bytes(join(base, INDEX_NAME)), base)


def merge_labels(infos: list[ShardInfo]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for info in infos:
        for label, n in info.labels.items():
            labels[label] = labels.get(label, 0) + n
    return dict(sorted(labels.items()))

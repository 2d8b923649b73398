"""One shard's facts (`ShardInfo`), how they are counted (`ShardStats`), and the rules a shard
entry of an untrusted index must keep: what both the index and its shard table check."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from polymodal.errors import UserError

KEY_HASH = "blake2b-8"  # how a sidecar hashes sample keys


def key_hash(key: str) -> int:
    """The 64-bit hash of a sample key a sidecar keeps (blake2b, 8 bytes, little-endian)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


MIN_TAR_SAMPLE_BYTES = 512  # one member header: no tar sample is smaller


class InvalidIndex(UserError, ValueError):
    """`index.json` (its shard table, or a sidecar) is malformed or claims what cannot be true."""


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


@dataclass
class ShardStats:
    """What is counted while a shard is written or scanned, to become its `ShardInfo`."""

    samples: int = 0
    offsets: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)  # the samples' key hashes (`key_hash`)
    fields: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    def add(
        self, sample: Mapping[str, Any], offset: int | None = None, key: str | None = None
    ) -> None:
        """Count one sample (its extensions, its `cls` label) and note, in a tar shard, its
        byte offset and the hash of its `key`."""
        self.samples += 1
        if offset is not None:
            self.offsets.append(offset)
            self.keys.append(key_hash(str(key)))
        for ext in sample:
            if not ext.startswith("__"):
                self.fields[ext] = self.fields.get(ext, 0) + 1
        if "cls" in sample:
            label = bytes(sample["cls"]).decode("utf-8", errors="replace").strip()
            self.labels[label] = self.labels.get(label, 0) + 1

    def info(self, name: str, size: int, sha256: str, problems: list[dict[str, str]]) -> ShardInfo:
        fields, labels = dict(sorted(self.fields.items())), dict(sorted(self.labels.items()))
        return ShardInfo(name, self.samples, size, sha256, fields, labels, problems)


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

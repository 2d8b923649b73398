"""`index.json`, its shard table and the per-shard sidecars: what a dataset holds, without
reading its shards.

A dataset is a folder (or URL prefix) of shards plus its index. `index.json` is the small
header: format version, shard format, the field schema (extension → modality), the label
histogram, totals, and the name and digest of the shard table. The table (`index.arrow`, see
`shard_table`) holds per shard its name, sample count, byte size, sha256 and field counts, as
memory-mapped columns: opening a million-shard index reads the header and maps the file.
Version-1 indexes, whose `index.json` lists the shards itself, still read (into the same
columns); `polymodal index --upgrade` rewrites one in the columnar layout.

Per-sample byte offsets would make the index O(samples) — a billion entries at internet scale —
so each shard has a small sidecar, `NAME.idx`, read by a reader when it opens that shard: one
JSON line with the shard's facts (so a resumed build can reuse a finished shard without
hashing it again), then one little-endian uint64 per sample, the byte offset of the sample's
first tar member header (Parquet shards need none: their footer lists the row groups), and
(`"keys": "blake2b-8"` in the line) one uint64 per sample, a hash of its key. Every sample a
reader takes from a shard must start at its offset and carry its key: a shard replaced or
edited since it was indexed is caught at the first sample that differs, whoever reads it.
Keys that two shards share are found when foreign shards are indexed and listed in the
header (`duplicates`): a reader skips the later ones, reported, so a key comes once.

Writers write shards and sidecars first, then the shard table, and `index.json` last: a dataset
with an index is complete, and the header names the digest of its table.

An index is read as untrusted input: it refuses (`InvalidIndex`, naming the shard) entries
whose name leaves the dataset folder, whose counts are negative, whose sample count cannot fit
in its bytes (a tar sample takes at least one 512-byte header), whose checksum is not a sha256,
and duplicate names; the checks run over whole columns, so refusing a lying index costs what
reading a good one does.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .card import tar_features, write_card
from .files import DEFAULT_REMOTE, Remote, join, local_path, read_bytes, write_atomic
from .shard_info import KEY_HASH as KEY_HASH
from .shard_info import MIN_TAR_SAMPLE_BYTES as MIN_TAR_SAMPLE_BYTES
from .shard_info import InvalidIndex as InvalidIndex
from .shard_info import ShardInfo as ShardInfo
from .shard_info import ShardStats as ShardStats
from .shard_info import key_hash as key_hash
from .shard_info import shard_name_problem as shard_name_problem
from .shard_table import TABLE_NAME as TABLE_NAME
from .shard_table import ShardTable

INDEX_NAME = "index.json"
PLAN_NAME = ".polymodal-build.json"  # the fingerprint of the job that owns a dataset folder
REJECTS_NAME = "rejects.jsonl"  # the inputs a job could not use, with their reasons
FORMAT_NAME = "polymodal-index"
FORMAT_VERSION = 2  # 1: the shards listed in index.json; 2: in the shard table
SIDECAR_SUFFIX = ".idx"
MAX_INDEX_BYTES = 2**30  # a version-1 index: ~5 million shards of ~200 bytes each
MAX_TABLE_BYTES = 2**34  # a shard table read whole from a remote dataset (~100 million shards)
SIDECAR_HEAD_BYTES = 2**20  # a sidecar's JSON line, its problems list included


def sidecar_name(shard_name: str) -> str:
    """`.NAME.idx` beside the shard: a hidden file, which Hugging Face's loaders pass by (they
    would read `NAME.tar.idx` as one more tar). Datasets written before keep `NAME.idx`."""
    folder, slash, base = shard_name.rpartition("/")
    return f"{folder}{slash}.{base}{SIDECAR_SUFFIX}"


def legacy_sidecar_name(shard_name: str) -> str:
    return shard_name + SIDECAR_SUFFIX


@dataclass(frozen=True)
class Sidecar:
    """A shard's sidecar: its facts, each sample's byte offset and, in sidecars written
    since keys were kept, each sample's key hash (`key_hash`)."""

    info: ShardInfo
    offsets: np.ndarray
    keys: np.ndarray | None = None


def encode_sidecar(
    info: ShardInfo, offsets: np.ndarray | list[int], keys: np.ndarray | list[int] | None = None
) -> bytes:
    record = {**asdict(info), **({"keys": KEY_HASH} if keys is not None else {})}
    head = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    body = np.asarray(offsets, dtype="<u8").tobytes()
    if keys is not None:
        body += np.asarray(keys, dtype="<u8").tobytes()
    return head + b"\n" + body


def decode_sidecar(data: bytes) -> Sidecar:
    """A sidecar's facts, offsets and key hashes; `InvalidIndex` for anything that is not
    one."""
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise InvalidIndex("sidecar has no header line")
    try:
        record = json.loads(head)
        hashed = record.pop("keys", None) if isinstance(record, dict) else None
        info = ShardInfo(**record)
    except (ValueError, TypeError) as exc:
        raise InvalidIndex(f"sidecar header is not a shard record: {exc}") from None
    if hashed not in (None, KEY_HASH):
        raise InvalidIndex(f"sidecar keys are hashed as {hashed!r}, not {KEY_HASH}")
    words = np.frombuffer(body, dtype="<u8") if not len(body) % 8 else None
    if words is None or (hashed and len(words) % 2):
        raise InvalidIndex(f"sidecar body of {len(body)} bytes is not a list of uint64 offsets")
    if hashed:
        half = len(words) // 2
        return Sidecar(info, words[:half], words[half:])
    return Sidecar(info, words)


def write_sidecar(
    directory: Path,
    info: ShardInfo,
    offsets: np.ndarray | list[int],
    keys: np.ndarray | list[int] | None = None,
) -> None:
    write_atomic(directory / sidecar_name(info.name), encode_sidecar(info, offsets, keys))


@dataclass
class ShardIndex:
    """A dataset's index; `base` is where it was loaded from (a folder or URL prefix), where
    the sidecars are too. `shards_at` names where the shards are when that is somewhere else
    (an index made of read-only shards on HTTP or S3); empty, they are beside it.

    `shards` may be given as a list of `ShardInfo`; it is kept as a `ShardTable` (a sequence
    of `ShardInfo` whose columns the plan reads without building one)."""

    format: str
    fields: dict[str, str]
    shards: Sequence[ShardInfo]
    labels: dict[str, int] = field(default_factory=dict)
    classes: list[str] | None = None
    build: dict[str, Any] | None = None
    base: str = ""
    shards_at: str = ""
    # field → {"adapter", "options"}: the fields kept decoded (`adapters.materialized`)
    materialized: dict[str, Any] | None = None
    # keys two shards share: [shard, sample, the shard that has the key first], skipped
    duplicates: list[list[Any]] = field(default_factory=list)
    version: int = FORMAT_VERSION  # the layout it was read from

    def __post_init__(self) -> None:
        if not isinstance(self.shards, ShardTable):
            self.shards = ShardTable.from_infos(self.shards)

    @property
    def table(self) -> ShardTable:
        assert isinstance(self.shards, ShardTable)
        return self.shards

    @property
    def samples(self) -> int:
        return int(self.table.samples.sum())

    @property
    def bytes(self) -> int:
        return int(self.table.bytes.sum())

    def field_counts(self) -> dict[str, int]:
        return {ext: int(counts.sum()) for ext, counts in sorted(self.table.fields.items())}

    @property
    def location(self) -> str:
        """The folder or URL prefix the shards are in."""
        return self.shards_at or self.base

    def url(self, shard: ShardInfo) -> str:
        return join(self.location, shard.name)

    def sidecar(self, shard: ShardInfo) -> Sidecar:
        """The shard's sidecar, checked against the index: same checksum, one offset (and
        key hash) per sample, offsets increasing inside the shard."""
        sidecar = decode_sidecar(read_sidecar(self.base, shard))
        problem = sidecar_disagreement(shard, sidecar, self.format)
        if problem is not None:
            raise InvalidIndex(f"{shard.name}: {problem}")
        return sidecar

    def offsets(self, shard: ShardInfo) -> np.ndarray:
        """The shard's per-sample byte offsets (`sidecar`)."""
        return self.sidecar(shard).offsets

    def skipped(self) -> dict[tuple[int, int], str]:
        """(shard, sample) → the shard that holds the key first, for every duplicate."""
        names = {name: n for n, name in enumerate(self.table.names.to_pylist())}
        return {(names[shard], int(i)): first for shard, i, first in self.duplicates}

    def header(self, digest: str) -> builtins.bytes:
        """`index.json` for a shard table of digest `digest`."""
        doc = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "shard_format": self.format,
            "samples": self.samples,
            "bytes": self.bytes,
            "table": {"name": TABLE_NAME, "shards": len(self.shards), "digest": digest},
            "fields": self.fields,
            "labels": dict(sorted(self.labels.items())),
            "classes": self.classes,
            "build": self.build,
            **({"shards_at": self.shards_at} if self.shards_at else {}),
            **({"materialized": self.materialized} if self.materialized else {}),
            **({"duplicates": self.duplicates} if self.duplicates else {}),
        }
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()

    def card_features(self) -> str:
        """The column types the dataset card names for Hugging Face (tar shards: the class
        names; Parquet shards carry theirs in the file)."""
        return tar_features(self.fields, self.classes) if self.format == "tar" else ""

    def save(self, directory: Path, card: bool = True) -> None:
        """Write the dataset card (with `card`), the shard table, then `index.json`, each
        atomically; call it after every shard and sidecar is in place."""
        summary = f"{self.samples:,} samples in {len(self.shards):,} {self.format} shards."
        if card and not self.shards_at:  # a card names shards beside it
            write_card(directory, {"train": f"*.{self.format}"}, summary, self.card_features())
        digest = self.table.write(Path(directory) / TABLE_NAME)
        write_atomic(Path(directory) / INDEX_NAME, self.header(digest))
        self.version = FORMAT_VERSION

    @classmethod
    def from_json(
        cls, data: builtins.bytes, base: str = "", remote: Remote = DEFAULT_REMOTE
    ) -> ShardIndex:
        """The index whose `index.json` is `data`, its shard table read from `base`."""
        where = join(base, INDEX_NAME) if base else INDEX_NAME
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise InvalidIndex(f"{where}: not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise InvalidIndex(f"{where}: not a polymodal index")
        version = doc.get("version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InvalidIndex(f"{where}: index version {version!r} is newer than this polymodal")
        shard_format = doc.get("shard_format")
        if shard_format not in ("tar", "parquet"):
            raise InvalidIndex(
                f"{where}: shard_format must be tar or parquet, got {shard_format!r}"
            )
        if not isinstance(doc.get("fields"), dict):
            raise InvalidIndex(f"{where}: needs a 'fields' table")
        if version >= 2:
            table = _open_table(doc.get("table"), base, where, remote)
        elif isinstance(doc.get("shards"), list):
            table = ShardTable.from_entries(doc["shards"], where)
        else:
            raise InvalidIndex(f"{where}: needs a 'shards' list")
        problem = table.problem(shard_format)
        if problem is not None:
            raise InvalidIndex(f"{where}: {problem}")
        index = cls(
            format=shard_format,
            fields=doc["fields"],
            shards=table,
            labels=doc.get("labels") or {},
            classes=doc.get("classes"),
            build=doc.get("build"),
            base=base,
            shards_at=_checked_location(doc.get("shards_at", ""), where),
            materialized=_checked_materialized(doc.get("materialized"), where),
            version=version,
        )
        index.duplicates = _checked_duplicates(doc.get("duplicates", []), index, where)
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
        return cls.from_json(data, base, remote)


def _open_table(spec: Any, base: str, where: str, remote: Remote) -> ShardTable:
    """The shard table a version-2 header names, checked to be the one written with it."""
    if not (
        isinstance(spec, dict)
        and shard_name_problem(spec.get("name")) is None
        and isinstance(spec.get("shards"), int)
        and isinstance(spec.get("digest"), str)
    ):
        raise InvalidIndex(f"{where}: 'table' must name the shard table, its shards and digest")
    url = join(base, spec["name"]) if base else spec["name"]
    path = local_path(url)
    try:
        source = path if path is not None else read_bytes(url, remote, MAX_TABLE_BYTES)
        if path is not None and path.stat().st_size > MAX_TABLE_BYTES:
            raise InvalidIndex(f"{url}: larger than {MAX_TABLE_BYTES:,} bytes")
    except FileNotFoundError:
        raise InvalidIndex(f"{where}: its shard table {url} is missing") from None
    table = ShardTable.open(source, url)
    if table.stored_digest != spec["digest"] or len(table) != spec["shards"]:
        raise InvalidIndex(
            f"{url}: not the shard table {INDEX_NAME} was written with ({len(table):,} shards, "
            f"digest {table.stored_digest[:12]!r}; the header names {spec['shards']:,}, "
            f"{spec['digest'][:12]!r}): another job wrote one of them; index the dataset again"
        )
    return table


def read_sidecar(base: str, shard: ShardInfo) -> bytes:
    """A shard's sidecar, refused when larger than its header and one offset and key hash per
    sample can be (so a garbage sidecar costs no more than a good one)."""
    limit = SIDECAR_HEAD_BYTES + 16 * shard.samples
    try:
        return read_bytes(join(base, sidecar_name(shard.name)), limit=limit)
    except FileNotFoundError:  # a dataset written before sidecars were hidden
        return read_bytes(join(base, legacy_sidecar_name(shard.name)), limit=limit)


def _checked_location(value: Any, where: str) -> str:
    """`shards_at`: a URL or an absolute path (a relative one would depend on the reader)."""
    if not isinstance(value, str) or (value and "://" not in value and not value.startswith("/")):
        raise InvalidIndex(f"{where}: shards_at must be a URL or an absolute path, got {value!r}")
    return value


MAX_DUPLICATES = 100_000  # keys shared by shards an index lists (more: not a dataset of samples)


def _checked_duplicates(value: Any, index: ShardIndex, where: str) -> list[list[Any]]:
    """`duplicates`: [shard, sample, first shard] entries naming samples of the table."""
    if not isinstance(value, list) or len(value) > MAX_DUPLICATES:
        raise InvalidIndex(f"{where}: duplicates must be a list of at most {MAX_DUPLICATES:,}")
    if not value:
        return []
    counts = dict(zip(index.table.names.to_pylist(), index.table.samples.tolist(), strict=True))
    for entry in value:
        ok = isinstance(entry, list) and len(entry) == 3 and {entry[0], entry[2]} <= set(counts)
        if not (ok and isinstance(entry[1], int) and 0 <= entry[1] < counts[entry[0]]):
            raise InvalidIndex(f"{where}: duplicates entry {entry!r} names no sample")
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


def sidecar_disagreement(
    shard: ShardInfo, sidecar: Sidecar, shard_format: str = "tar"
) -> str | None:
    """How a shard's sidecar disagrees with its index entry, in words, or None."""
    info, offsets = sidecar.info, sidecar.offsets
    if sidecar.keys is not None and len(sidecar.keys) != len(offsets):
        return f"the sidecar has {len(sidecar.keys):,} keys for {len(offsets):,} offsets"
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


def find_duplicates(index: ShardIndex) -> list[list[Any]]:
    """Samples whose key an earlier sample has (in shard order), by the sidecars' key hashes:
    `[shard, sample, the shard with the key first]` each. Holds 8 bytes a sample; more than
    `MAX_DUPLICATES` is a `ValueError` (such a folder is not a dataset of distinct samples)."""
    hashes, shards, samples = [], [], []
    for n, shard in enumerate(index.shards):
        keys = index.sidecar(shard).keys
        if keys is not None and len(keys):
            hashes.append(keys)
            shards.append(np.full(len(keys), n, dtype=np.int64))
            samples.append(np.arange(len(keys), dtype=np.int64))
    if not hashes:
        return []
    every = np.concatenate(hashes)
    order = np.argsort(every, kind="stable")  # equal keys: the earliest sample first
    ranked = every[order]
    repeats = np.flatnonzero(ranked[1:] == ranked[:-1]) + 1
    if len(repeats) > MAX_DUPLICATES:
        raise ValueError(
            f"{len(repeats):,} samples repeat the key of another sample (more than "
            f"{MAX_DUPLICATES:,}): give the samples distinct keys"
        )
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    first = order[starts[np.searchsorted(starts, repeats, side="right") - 1]]
    shard_of, sample_of = np.concatenate(shards), np.concatenate(samples)
    names = index.table.names.to_pylist()
    found = [
        [names[shard_of[i]], int(sample_of[i]), names[shard_of[f]]]
        for i, f in zip(order[repeats].tolist(), first.tolist(), strict=True)
    ]
    return sorted(found, key=lambda entry: (entry[0], entry[1]))


def merge_labels(infos: list[ShardInfo]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for info in infos:
        for label, n in info.labels.items():
            labels[label] = labels.get(label, 0) + n
    return dict(sorted(labels.items()))

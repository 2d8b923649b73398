"""Writing shards: one shard file at a time (`TarShard`, `ParquetShard`), or a stream of
samples cut into shards by count and bytes (`ShardWriter`).

Each shard is written under a temporary name (`NAME.PID.tmp`), hashed while it is written,
then its sidecar is written and the shard renamed to `NAME`: a shard with its final name is
complete, and so is its sidecar. `ShardWriter` writes `index.json` last. Tar bytes are
deterministic (fixed mtime, owner and mode; members in webdataset's order), so the same samples
always give the same shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from polymodal.adapters.registry import modality_of

from .index import ShardIndex, ShardInfo, merge_labels
from .parquet import ParquetShard
from .shard import Shard, TarShard, members, shard_name, tar_sample_size


def schema(infos: list[ShardInfo], fields: Mapping[str, str] | None = None) -> dict[str, str]:
    """index.json's extension → modality map for the members the shards hold: the user's rules
    (`fields`, e.g. `{"npy": "pointcloud"}`) first, then the registry's defaults; "" where
    neither says (the stream then needs a field for it in the config)."""

    seen = sorted({ext for info in infos for ext in info.fields})
    return {ext: modality_of(ext, fields) or "" for ext in seen}


def open_shard(
    directory: Path,
    name: str,
    shard_format: str,
    extensions: Iterable[str],
    classes: Sequence[str] | None = None,
    writeback: bool = True,
) -> Shard:
    """A new shard of `shard_format`; Parquet needs its columns (and class names) up front.
    `writeback`: see `Shard`."""
    if shard_format == "tar":
        return TarShard(directory, name, writeback)
    if shard_format == "parquet":
        return ParquetShard(directory, name, extensions, classes, writeback)
    raise ValueError(f"shard format must be 'tar' or 'parquet', got {shard_format!r}")


class ShardWriter:
    """Write samples into numbered shards, each capped by sample count and bytes; `close()`
    writes `index.json`. Use as a context manager: an exception leaves no index and no
    temporary shard behind.

    Parquet shards need their columns up front: `extensions`, or those of the first sample.
    """

    def __init__(
        self,
        directory: str | Path,
        prefix: str = "shard",
        max_samples: int | None = 10_000,
        max_bytes: int | None = 2**30,
        shard_format: str = "tar",
        extensions: Iterable[str] | None = None,
        fields: Mapping[str, str] | None = None,
        classes: list[str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix, self.format = prefix, shard_format
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.extensions = sorted(extensions) if extensions is not None else None
        self.fields, self.classes = dict(fields or {}), classes
        self.done: list[ShardInfo] = []
        self.shard: Shard | None = None
        self.shard_bytes = 0

    def write(self, sample: Mapping[str, Any]) -> None:
        body = members(sample)
        size = tar_sample_size(str(sample["__key__"]), {e: len(v) for e, v in body.items()})
        if self.shard is not None and self._full(self.shard, size):
            self.done.append(self.shard.finish())
            self.shard = None
        if self.shard is None:
            if self.extensions is None:
                self.extensions = sorted(body)
            name = shard_name(self.prefix, len(self.done), self.format)
            self.shard = open_shard(
                self.directory, name, self.format, self.extensions, self.classes
            )
            self.shard_bytes = 0
        self.shard.add(sample)
        self.shard_bytes += size

    def _full(self, shard: Shard, size: int) -> bool:
        if self.max_samples is not None and shard.stats.samples >= self.max_samples:
            return True
        return self.max_bytes is not None and self.shard_bytes + size > self.max_bytes

    def close(self) -> ShardIndex:
        if self.shard is not None:
            self.done.append(self.shard.finish())
            self.shard = None
        index = ShardIndex(
            format=self.format,
            fields=schema(self.done, self.fields),
            shards=self.done,
            labels=merge_labels(self.done),
            classes=self.classes,
            base=str(self.directory),
        )
        index.save(self.directory)
        return index

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        elif self.shard is not None:
            self.shard.abort()

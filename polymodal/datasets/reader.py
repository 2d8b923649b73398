"""Reading a shard's samples, tar or Parquet, from any sample on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np

from .files import DEFAULT_REMOTE, Remote, open_read, seek_forward
from .index import ShardIndex, ShardInfo
from .layout import MAX_MEMBER_BYTES, Problem, read_tar_samples
from .parquet import read_parquet_samples


def read_shard(
    index: ShardIndex,
    shard: ShardInfo,
    start: int = 0,
    on_problem: Callable[[Problem], None] | None = None,
    remote: Remote = DEFAULT_REMOTE,
) -> Iterator[dict[str, Any]]:
    """The samples of `shard` from its `start`-th on (local paths and fsspec URLs)."""
    url = index.url(shard)
    with open_read(url, stream=index.format == "tar", remote=remote) as f:
        for _, sample in shard_samples(f, index, shard, start, on_problem):
            yield sample


def shard_samples(
    f: IO[bytes],
    index: ShardIndex,
    shard: ShardInfo,
    start: int = 0,
    on_problem: Callable[[Problem], None] | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    offsets: np.ndarray | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(place, sample)` of the samples of `shard`, opened as `f`, from its `start`-th on;
    the place is a tar sample's byte offset, a Parquet sample's row. `offsets`: the shard's
    sidecar offsets, when the caller has them.

    A tar shard is moved to the byte offset of sample `start` (from the sidecar), so what comes
    before is not read where the file can seek (local, s3) and not parsed where it cannot
    (streamed HTTP); a Parquet shard skips whole row groups.
    """
    url = index.url(shard)
    if index.format == "parquet":
        yield from read_parquet_samples(f, url, start)
        return
    offset = 0
    if start:
        offsets = index.offsets(shard) if offsets is None else offsets
        if start >= len(offsets):
            return
        offset = int(offsets[start])
        seek_forward(f, offset)
    yield from read_tar_samples(f, url, offset, on_problem, max_member_bytes)

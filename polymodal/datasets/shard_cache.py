"""Local copies of remote shards, so a second epoch over HTTP or S3 reads the disk: what
MosaicML streaming and litdata keep, with a size limit.

A shard is downloaded whole the first time a reader opens it, into `cache_root()/shards`,
named by the sha256 the index records for it: the copy is moved into place only after its
bytes hash to that digest and its size is the index's, so a file there is verified by its
name, and a killed download leaves only a temporary file (`NAME.PID.tmp`) that never looks
whole. One process of the machine downloads a shard while the others that want it wait (a
lock per shard), then all read the same copy. Each use touches the copy; when the copies pass
`limit` bytes the least recently used go (a reader that has one open keeps reading it: POSIX
keeps a deleted file until it is closed). A shard larger than the limit is read from the
network as without a cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, waiting_lock
from .files import (
    DEFAULT_REMOTE,
    TMP_SUFFIX,
    HashingReader,
    Remote,
    atomic_open,
    open_read,
    remove_temporaries,
)
from .shard_info import ShardInfo

log = logging.getLogger("polymodal.datasets")

CHUNK = 2**20
SUFFIXES = (".tar", ".parquet")


class CacheMismatch(ValueError):
    """A download whose bytes are not the shard the index describes (not worth a retry)."""


@dataclass(frozen=True)
class ShardCache:
    """Copies of remote shards in `folder`, at most `limit` bytes of them."""

    folder: Path
    limit: int

    @classmethod
    def at(cls, cache_dir: str | Path | None, limit: int) -> ShardCache:
        if limit < 1:
            raise ValueError(f"cache_limit must be a positive number of bytes, got {limit}")
        return cls(cache_root(cache_dir) / "shards", limit)

    def local(self, url: str, shard: ShardInfo, remote: Remote = DEFAULT_REMOTE) -> Path | None:
        """The verified local copy of `shard` (downloading it first if needed), or None for a
        shard the limit cannot hold."""
        if shard.bytes > self.limit:
            return None
        suffix = next((s for s in SUFFIXES if url.endswith(s)), "")
        path = self.folder / f"{shard.sha256}{suffix}"
        with waiting_lock(self.folder / "locks" / f"{shard.sha256}.lock"):
            if path.exists() and path.stat().st_size == shard.bytes:
                os.utime(path)  # used now: the last to go
                return path
            self._download(url, shard, path, remote)
        self._evict(keep=path)
        return path

    def _download(self, url: str, shard: ShardInfo, path: Path, remote: Remote) -> None:
        """`url` into `path`, atomically, if its bytes are the shard the index describes."""
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_temporaries(path.parent, [path.name])  # what a killed download left
        with open_read(url, stream=True, remote=remote) as f, atomic_open(path) as out:
            hashed = HashingReader(f)
            while chunk := hashed.read(CHUNK):
                out.write(chunk)
            if hashed.size != shard.bytes or hashed.sha.hexdigest() != shard.sha256:
                raise CacheMismatch(
                    f"{url}: downloaded {hashed.size:,} bytes that are not the shard the index "
                    f"describes ({shard.bytes:,} bytes, sha256 {shard.sha256[:12]}…): it "
                    "changed since it was indexed"
                )
        log.info("cached %s (%d bytes)", url, shard.bytes)

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used copies until the rest fit the limit."""
        with waiting_lock(self.folder / "locks" / "evict.lock"):
            copies = []
            for entry in os.scandir(self.folder):
                if entry.is_file() and not entry.name.endswith(TMP_SUFFIX):
                    stat = entry.stat()
                    copies.append((stat.st_mtime_ns, stat.st_size, Path(entry.path)))
            total = sum(size for _, size, _ in copies)
            for _, size, copy in sorted(copies):
                if total <= self.limit:
                    break
                if copy != keep:
                    copy.unlink(missing_ok=True)
                    total -= size

"""One shard being written, tar or Parquet alike: its temporary file, a hash and byte count of
what passes, its statistics, and the atomic finish (fsync, sidecar, rename: a shard with its
final name is complete)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .files import tmp_path
from .index import ShardInfo, ShardStats, write_sidecar
from .layout import check_key

TAR_BLOCK = 512


def members(sample: Mapping[str, Any]) -> dict[str, bytes]:
    """The member extensions and bytes of a raw sample (`__key__` etc. left out), after
    checking that each member name reads back as the same key and extension."""
    key = str(sample["__key__"])
    out = {}
    for ext, value in sample.items():
        if ext.startswith("_"):
            continue
        check_key(key, ext)
        out[ext] = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return out


def tar_sample_size(key: str, sizes: Mapping[str, int]) -> int:
    """Bytes a sample takes in a tar: a header per member (plus a PAX header for long or
    non-ASCII names) and the data padded to 512. Used to plan shards before writing them."""
    total = 0
    for ext, size in sizes.items():
        name = f"{key}.{ext}"
        pax = len(name.encode()) > 100 or not name.isascii()
        total += TAR_BLOCK * (1 + 2 * pax) + -(-size // TAR_BLOCK) * TAR_BLOCK
    return total


class _HashingFile(io.RawIOBase):
    """Write-through wrapper that hashes and counts what passes (no second read of a shard).

    Closing it leaves the wrapped file open: the shard fsyncs and renames that one itself.
    """

    def __init__(self, f: IO[bytes]) -> None:
        super().__init__()
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size


class Shard:
    """What tar and Parquet shards share: the temporary file, stats, the atomic finish."""

    suffix = ""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = Path(directory), name
        self.path = self.directory / name
        self._file = open(tmp_path(self.path), "wb")  # noqa: SIM115 (closed by finish/abort)
        self.out = _HashingFile(self._file)
        self.stats = ShardStats()

    def add(self, sample: Mapping[str, Any]) -> None:
        """Append one sample (its members and `__key__`)."""
        raise NotImplementedError

    def _close_body(self) -> None:
        raise NotImplementedError

    def finish(self, problems: list[dict[str, str]] | None = None) -> ShardInfo:
        """Complete the shard: close, fsync, write the sidecar, rename into place. `problems`
        are inputs dropped while writing it, kept in the sidecar for the build's report."""
        self._close_body()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        info = self.stats.info(self.name, self.out.size, self.out.sha.hexdigest(), problems or [])
        write_sidecar(self.directory, info, self.stats.offsets, self.stats.keys)
        os.replace(tmp_path(self.path), self.path)
        return info

    def abort(self) -> None:
        """Discard the shard: nothing of it stays on disk."""
        with contextlib.suppress(Exception):  # closing may fail half-way; the file goes anyway
            self._close_body()
        self._file.close()
        tmp_path(self.path).unlink(missing_ok=True)


class TarShard(Shard):
    """A WebDataset tar shard being written.

    Members go in as webdataset's `TarWriter` writes them (extensions in sorted order, mode
    0444), with mtime 0 and no owner names so that equal samples give equal bytes. It is not
    used itself because importing webdataset imports torch (1.4 s in every worker process).
    """

    suffix = ".tar"

    def __init__(self, directory: Path, name: str) -> None:
        super().__init__(directory, name)
        self.tar = tarfile.open(fileobj=self.out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def add(self, sample: Mapping[str, Any]) -> None:
        body = members(sample)
        if not body:
            raise ValueError(f"sample {sample.get('__key__')!r} has no members")
        offset = self.tar.offset
        key = str(sample["__key__"])
        for ext in sorted(body):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(body[ext]), 0o444, 0
            self.tar.addfile(info, io.BytesIO(body[ext]))
        self.stats.add(body, offset, key)

    def _close_body(self) -> None:
        self.tar.close()


def shard_name(prefix: str, number: int, shard_format: str) -> str:
    return f"{prefix}-{number:06d}.{shard_format}"

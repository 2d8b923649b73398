"""One shard being written, tar or Parquet alike: its temporary file, a byte count of what
passes, its statistics, its hash, and the atomic finish (fsync, sidecar, rename: a shard with its
final name is complete)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .files import start_writeback, tmp_path
from .index import ShardInfo, ShardStats, write_sidecar
from .layout import TAR_BLOCK, check_key


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


# a shard's bytes are sent on to the disk this often while it is written (see `start_writeback`)
WRITEBACK_BYTES = 2**20


class _CountingFile(io.RawIOBase):
    """Write-through wrapper that counts what passes and sends it on to the disk a MB at a
    time (`writeback`). It does not hash: `Shard.commit` hashes the finished file, read back
    from the page cache, on the thread that commits it (see `file_sha256`).

    Closing it leaves the wrapped file open: the shard fsyncs and renames that one itself.
    """

    def __init__(self, f: IO[bytes], writeback: bool = True) -> None:
        super().__init__()
        self.f, self.size = f, 0
        self.unsynced, self.writeback = 0, writeback

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")  # pyarrow hands over buffers of other formats
        self.size += len(data)
        written = self.f.write(data)
        self.unsynced += len(data)
        if self.writeback and self.unsynced >= WRITEBACK_BYTES:  # the disk writes meanwhile
            self.f.flush()
            start_writeback(self.f.fileno())
            self.unsynced = 0
        return written

    def tell(self) -> int:
        return self.size


def file_sha256(path: Path) -> str:
    """The sha256 of a written file, read back. Hashing the file once it is complete, rather
    than each write as it passes, lets `build.write_shards` hash a shard on its commit thread
    while the next shard is written: hashed as it passed, on the writer's thread, sha256 was a
    third of a 1-worker build (0.33 of 0.98 s for 526 MB, `benchmarks/bench_build.py`'s data),
    and on a thread of its own per write it handed the GIL back and forth with the writer
    (0.67-0.72× a tarfile copy against 0.69-0.95× inline). The read back comes from the page
    cache; hashlib releases the GIL over each 256 KB."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Shard:
    """What tar and Parquet shards share: the temporary file, stats, the atomic finish."""

    suffix = ""

    def __init__(self, directory: Path, name: str, writeback: bool = True) -> None:
        """`writeback`: send each MB on to the disk as soon as it is written, so the disk
        works while the next is made; a shard committed beside the next one's writing
        (`build.write_shards`) leaves it all to its commit, which keeps that submission
        work off the writer (4 MB shards, 1 worker: 0.64 -> 0.79× a tarfile copy, alternated
        in one process; 256 MB shards, each alone in its run, were as fast or faster with
        it: 1.29 against 1.00×, 0.86 against 0.85×, in two runs)."""
        self.directory, self.name = Path(directory), name
        self.path = self.directory / name
        self._file = open(tmp_path(self.path), "wb")  # noqa: SIM115 (closed by finish/abort)
        self.out = _CountingFile(self._file, writeback)
        self.stats = ShardStats()
        self._sealed = False

    def add(self, sample: Mapping[str, Any]) -> None:
        """Append one sample (its members and `__key__`)."""
        raise NotImplementedError

    def _close_body(self) -> None:
        raise NotImplementedError

    def finish(self, problems: list[dict[str, str]] | None = None) -> ShardInfo:
        """Complete the shard: `seal`, then `commit`. `problems` are inputs dropped while
        writing it, kept in the sidecar for the build's report."""
        return self.commit(self.seal(problems))

    def seal(self, problems: list[dict[str, str]] | None = None) -> ShardInfo:
        """End the body: every byte is written, none yet hashed, durable or in place (the
        info's `sha256` is empty). What is left (`commit`) hashes the file and waits on the
        disk, so a writer of many shards can commit one while it writes the next
        (`build.write_shards`)."""
        self._close_body()
        self._sealed = True
        self._file.flush()
        start_writeback(self._file.fileno())
        return self.stats.info(self.name, self.out.size, "", problems or [])

    def commit(self, info: ShardInfo) -> ShardInfo:
        """Make the sealed shard complete: hash it (while the disk writes it), fsync, write
        the sidecar, rename into place; on failure nothing of it stays. Returns the info with
        its hash."""
        try:
            info = dataclasses.replace(info, sha256=file_sha256(tmp_path(self.path)))
            os.fsync(self._file.fileno())
            self._file.close()
            write_sidecar(self.directory, info, self.stats.offsets, self.stats.keys)
            os.replace(tmp_path(self.path), self.path)
        except BaseException:
            self.abort()
            raise
        return info

    def abort(self) -> None:
        """Discard the shard: nothing of it stays on disk."""
        if not self._sealed:
            with contextlib.suppress(Exception):  # closing may fail half-way; the file goes
                self._close_body()
        self._file.close()
        tmp_path(self.path).unlink(missing_ok=True)


class TarShard(Shard):
    """A WebDataset tar shard being written.

    Members go in as webdataset's `TarWriter` writes them (extensions in sorted order, mode
    0444), with mtime 0 and no owner names so that equal samples give equal bytes: the bytes
    `tarfile` writes in PAX format, header by header (`member_header`). It is not used itself
    because importing webdataset imports torch (1.4 s in every worker process).
    """

    suffix = ".tar"

    def add(self, sample: Mapping[str, Any]) -> None:
        body = members(sample)
        if not body:
            raise ValueError(f"sample {sample.get('__key__')!r} has no members")
        offset = self.out.size
        key = str(sample["__key__"])
        for ext in sorted(body):
            data = body[ext]
            self.out.write(member_header(f"{key}.{ext}", len(data)))
            self.out.write(data)
            self.out.write(bytes(-len(data) % TAR_BLOCK))
        self.stats.add(body, offset, key)

    def _close_body(self) -> None:
        """tarfile's end of archive: two zero blocks, then zeros to a whole record."""
        end = self.out.size + 2 * TAR_BLOCK
        self.out.write(bytes(2 * TAR_BLOCK + -end % tarfile.RECORDSIZE))


def _tarfile_header(name: str, size: int) -> bytes:
    """tarfile's own header (PAX format) of a regular member: mode 0444, mtime 0, no owner."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _ustar_template() -> tuple[bytes, int]:
    """tarfile's header of a member with an empty name and size 0, with the name, size and
    checksum fields blanked as the checksum counts them, and that sum."""
    header = bytearray(_tarfile_header("", 0))
    header[0:100], header[124:136], header[148:156] = bytes(100), bytes(12), b" " * 8
    return bytes(header), sum(header)


_TEMPLATE, _TEMPLATE_SUM = _ustar_template()
_MAX_USTAR_SIZE = 8**11  # the size field's 11 octal digits; at or over it, a PAX size


def member_header(name: str, size: int) -> bytes:
    """The header tarfile writes for a regular member `name` of `size` bytes (mode 0444,
    mtime 0, PAX format): a ustar block, made here from a template for an ASCII name of at
    most 100 bytes, else tarfile's own (a PAX record first). Why not `TarFile.addfile`: it
    copies the TarInfo and builds every field for every member, the largest part of a build's
    CPU after the copy itself (bench_build.py)."""
    encoded = name.encode("utf-8", "surrogateescape")
    if not (name.isascii() and len(encoded) <= 100 and size < _MAX_USTAR_SIZE):
        return _tarfile_header(name, size)
    digits = b"%011o\0" % size
    header = bytearray(_TEMPLATE)
    header[0 : len(encoded)] = encoded
    header[124:136] = digits
    header[148:155] = b"%06o\0" % (_TEMPLATE_SUM + sum(encoded) + sum(digits))
    return bytes(header)


def shard_name(prefix: str, number: int, shard_format: str) -> str:
    return f"{prefix}-{number:06d}.{shard_format}"

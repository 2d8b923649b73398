"""Where bytes live: atomic local writes, and reads from local paths or URLs through fsspec.

Every file a dataset consists of is written under a temporary name and renamed when complete,
so a killed job leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec

TMP_SUFFIX = ".tmp"


class HashingReader:
    """Read-through wrapper that hashes and counts what passes and keeps the last `tail_size`
    bytes, so checking a shard's checksum and end costs no second read."""

    def __init__(self, f: IO[bytes], tail_size: int = 1024) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0
        self.tail, self.tail_size = b"", tail_size

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        self.tail = (self.tail + data[-self.tail_size :])[-self.tail_size :]
        return data

    def drain(self) -> None:
        """Read (and hash) whatever is left."""
        while self.read(2**20):
            pass


def tmp_path(path: Path) -> Path:
    """`NAME.PID.tmp`: a writer of its own per process, so that a leftover worker of a killed
    job, still finishing a task, can never rename a rerun's half-written file into place."""
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextmanager
def atomic_open(path: Path) -> Any:
    """Open a temporary file beside `path` for binary writing; on success fsync and rename it
    to `path`."""
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def join(base: str, name: str) -> str:
    """`base/name` for a local folder or a URL prefix."""
    return base.rstrip("/") + "/" + name


def open_read(url: str, stream: bool = True) -> IO[bytes]:
    """Open a local path or any fsspec URL (`http(s)://`, `s3://`, `file://`) for reading.

    With `stream`, HTTP is streamed (`block_size=0`): many servers (`python -m http.server`,
    some CDNs) ignore Range requests, and tar shards are read front to back anyway;
    `seek_forward` covers the rare reader that starts mid-shard. Parquet needs random access:
    `stream=False` (and a server that honours Range).
    """
    if stream and url.startswith(("http://", "https://")):
        return fsspec.open(url, "rb", block_size=0).open()
    return fsspec.open(url, "rb").open()


def seek_forward(f: IO[bytes], offset: int) -> None:
    """Move a freshly opened file to `offset`: a seek where the file can, else read past."""
    try:
        f.seek(offset)
        return
    except (OSError, ValueError):
        pass
    left = offset
    while left > 0:
        chunk = f.read(min(left, 2**20))
        if not chunk:
            raise EOFError(f"file ends before byte {offset}")
        left -= len(chunk)


def read_bytes(url: str) -> bytes:
    with open_read(url) as f:
        return f.read()

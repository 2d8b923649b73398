"""The WebDataset layout rules, in one place: member names, samples, and reading a tar safely.

A sample is the run of adjacent tar members that share a key. The key is the member path up to
the first dot of its basename, the extension is the rest, lower-cased (`a/b/clip.left.mp4` →
key `a/b/clip`, extension `left.mp4`) — exactly webdataset's `base_plus_ext` and
`group_by_keys` (the tests hold us to them), so that shards written by webdataset, img2dataset
or video2dataset read the same here. A member that repeats an extension within its sample is
an error naming the key.

Reading never extracts anything to disk, and a member that is not a regular file or whose path
is absolute or climbs out with `..` is reported and skipped, never followed. What a member may
cost is checked from its header before a byte of it is read: a member over `max_member_bytes`
(1 GiB by default) or a GNU sparse member (a few KB on disk that would expand to its "real"
size, e.g. 1 GB of zeros) is not read; its sample is still yielded, with the reason under
`ERROR_KEY`, so sample counts and offsets stay those of the shard and the sample is reported.
A key that comes back after another sample's members (a sample split in two) is an error: a
reader would deliver two samples under one key.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol, cast

# webdataset's `tariterators.base_plus_ext` expression, kept here so that reading and writing
# shards does not import webdataset: it imports torch, 1.4 s in every worker process.
_KEY_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


MAX_MEMBER_BYTES = 2**30  # no tar member is read into memory beyond this
ERROR_KEY = "__error__"  # a sample that must not be used carries the reason here
TAR_BLOCK = 512
_USTAR = b"ustar\x0000"  # a POSIX ustar header's magic and version


def split_name(name: str) -> tuple[str, str] | None:
    """`(key, extension)` of a member path, or None when it has no extension."""
    match = _KEY_EXTENSION.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def check_key(key: str, ext: str) -> None:
    """Refuse a key/extension pair that would not read back as itself from a tar.

    The key's basename must not contain a dot (a reader would split there), the extension must
    not contain a slash, and neither may escape the shard's namespace.
    """
    name = f"{key}.{ext}"
    if split_name(name) != (key, ext.lower()) or unsafe_reason(name) is not None:
        raise ValueError(
            f"sample key {key!r} with extension {ext!r} does not round-trip through the "
            "WebDataset layout (no dots in the key's basename, no '..', no leading '/')"
        )


def unsafe_reason(name: str) -> str | None:
    """Why a member path must not be trusted (absolute, or climbing out with `..`), or None."""
    if name.startswith("/"):
        return "absolute member path"
    if ".." in name.split("/"):
        return "member path climbs out with '..'"
    return None


class DuplicateExtensionError(ValueError):
    """Two members of one sample share an extension (webdataset refuses these too)."""


class SplitSampleError(ValueError):
    """A sample's members are not adjacent: its key comes back after another sample."""


@dataclass
class Problem:
    """A member or file that could not be used, and why; reported, never silently dropped."""

    where: str
    reason: str
    key: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"path": self.where, "reason": self.reason}
        if self.key is not None:
            out["key"] = self.key
        return out


class Readable(Protocol):
    """What a tar is read from: a file, or a wrapper that hashes what passes."""

    def read(self, n: int = -1, /) -> bytes: ...


def member_refusal(info: tarfile.TarInfo, max_member_bytes: int) -> str | None:
    """Why a regular member must not be read into memory, from its header alone."""
    if info.issparse():
        return f"GNU sparse member (would expand to {info.size:,} bytes): not read"
    if info.size > max_member_bytes:
        return f"member of {info.size:,} bytes, over max_member_bytes={max_member_bytes:,}"
    return None


COMPRESSORS = {"gzip": "gzip", "zstd": "zstd", "bzip2": "bzip2", "xz": "xz", "lz4": "lz4"}
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x04\x22\x4d\x18": "lz4",
}


def compression(head: bytes) -> str | None:
    """The compressor whose magic number `head` (a file's first bytes) starts with, or None."""
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


class _Head:
    """A read-through file that keeps its first bytes, to name a compressed shard."""

    def __init__(self, f: Readable) -> None:
        self.f, self.first = f, b""

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if len(self.first) < 8:
            self.first = (self.first + data)[:8]
        return data


def read_tar_samples(
    fileobj: Readable,
    url: str,
    start: int = 0,
    on_problem: Callable[[Problem], None] | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Samples of a tar stream as `(offset, sample)`, `offset` being the byte position of the
    sample's first member header (what the index stores, so a reader can seek there).

    `fileobj` is read sequentially from its current position, which is byte `start` of the
    shard. Members without an extension, non-files and unsafe paths go to `on_problem` (or
    raise `ValueError` without one). A member refused by `member_refusal` is not read and its
    sample carries `ERROR_KEY`. A damaged archive raises `tarfile.ReadError` naming the shard
    and the byte; a split sample raises `SplitSampleError`.
    """

    def report(problem: Problem) -> None:
        if on_problem is None:
            raise ValueError(f"{problem.where}: {problem.reason}")
        on_problem(problem)

    current: dict[str, Any] | None = None
    finished: set[str] = set()  # keys already yielded: O(samples of one shard) strings
    offset = start
    head = _Head(fileobj)
    try:
        for at, info, read in tar_members(head, start):
            parts = _member_parts(info)
            if parts is None:  # a folder: normal in tars made by hand
                continue
            if isinstance(parts, str):
                report(Problem(f"{url}:{info.name}", parts))
                continue
            key, ext = parts
            if current is None or key != current["__key__"]:
                if current is not None:
                    finished.add(current["__key__"])
                    yield offset, current
                if key in finished:
                    raise SplitSampleError(
                        f"{url}: sample {key!r} comes back at byte {at} after another "
                        "sample: the members of a sample must be adjacent"
                    )
                offset = at
                current = {"__key__": key, "__url__": url}
            _read_member(info, read, current, key, ext, url, max_member_bytes)
    except tarfile.ReadError as exc:
        raise _damaged(url, head, offset, exc) from exc
    if current is not None:
        yield offset, current


Member = tuple[int, tarfile.TarInfo, Callable[[], bytes]]


def tar_members(f: Readable, start: int = 0) -> Iterator[Member]:
    """`(offset, header, read)` of each member of a tar stream read from byte `start`:
    `read()` gives the member's data (read only when called; what is not read is skipped).

    Plain members (a POSIX ustar header of a regular file, as our shards and webdataset's
    have throughout) are parsed here; from the first other header on (PAX or GNU records,
    folders, links, the end of the archive, damage) the rest of the stream is tarfile's, with
    all its checks. Why not tarfile throughout: its header parsing is most of the cost of
    reading small samples (4,000 headers: 0.10 s by tarfile, 0.03 s here; bench_stream)."""
    offset = start
    while True:
        header = f.read(TAR_BLOCK)
        plain = _plain_member(header)
        if plain is None:
            if offset > start and not _readable_header(header):
                return  # as tarfile ends a stream at a header it cannot read, past the first
            yield from _tarfile_members(_Prepended(header, f), offset)
            return
        name, size = plain
        info = tarfile.TarInfo(name)
        info.size, info.offset = size, offset
        taken = 0

        def read(size: int = size) -> bytes:
            nonlocal taken
            taken = size
            return _read_exactly(f, size)

        yield offset, info, read
        _skip(f, size - taken + -size % TAR_BLOCK)
        offset += TAR_BLOCK + size + -size % TAR_BLOCK


def _plain_member(header: bytes) -> tuple[str, int] | None:
    """`(name, size)` of a POSIX ustar header of a regular file with a good checksum and
    octal numbers, as tarfile reads it (utf-8 names, prefix joined); None for anything else."""
    if len(header) != TAR_BLOCK or header[257:265] != _USTAR or header[156] not in b"0\x00":
        return None
    try:
        checksum = int(_field(header[148:156]) or b"0", 8)
        size = int(_field(header[124:136]) or b"0", 8)
    except ValueError:
        return None
    if checksum != sum(header) - sum(header[148:156]) + 8 * 32:
        return None
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    name = f"{prefix}/{name}" if prefix else name
    if header[156] == 0 and name.endswith("/"):  # an old-style folder: tarfile's to read
        return None
    return name, size


def _readable_header(header: bytes) -> bool:
    """Whether tarfile reads `header` as a member (not the end, nor damage)."""
    try:
        tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _field(raw: bytes) -> bytes:
    """A numeric header field as tarfile reads it (its `nti`, which typeshed does not
    publish): up to the first NUL, spaces stripped."""
    return raw.split(b"\0", 1)[0].strip()


def _read_exactly(f: Readable, n: int) -> bytes:
    """`n` bytes of a member's data, or the error tarfile gives for a stream cut short."""
    data = f.read(n)
    if len(data) != n:
        raise tarfile.ReadError("unexpected end of data")
    return data


def _skip(f: Readable, n: int) -> None:
    """Read and drop `n` bytes in bounded pieces (a refused member is never held whole)."""
    while n > 0:
        got = len(f.read(min(n, 2**20)))
        if not got:
            raise tarfile.ReadError("unexpected end of data")
        n -= got


class _Prepended:
    """A stream with bytes already read put back in front of it."""

    def __init__(self, first: bytes, f: Readable) -> None:
        self.first, self.f = first, f

    def read(self, n: int = -1) -> bytes:
        if not self.first:
            return self.f.read(n)
        if n < 0:
            data, self.first = self.first + self.f.read(), b""
            return data
        data, self.first = self.first[:n], self.first[n:]
        return data + self.f.read(n - len(data)) if len(data) < n else data


def _tarfile_members(f: Readable, start: int) -> Iterator[Member]:
    """tarfile's reading of the rest of a stream, which is byte `start` of the tar."""
    with tarfile.open(fileobj=cast(IO[bytes], f), mode="r|") as tar:
        for info in tar:
            # the data straight from the stream, which sits at the member's data (as
            # `extractfile` would, without its two file objects per member); the iterator
            # skips what is not read and the padding after it
            def read(info: tarfile.TarInfo = info) -> bytes:
                return _read_exactly(cast(Readable, tar.fileobj), info.size)

            yield start + info.offset, info, read


def _member_parts(info: tarfile.TarInfo) -> tuple[str, str] | str | None:
    """`(key, extension)` of a member a sample is made of, `None` for a folder (skipped
    quietly), or the reason the member cannot be part of a sample."""
    reason = unsafe_reason(info.name)
    if reason is not None:
        return reason
    if info.isdir():
        return None
    if not info.isfile():
        return f"not a regular file (type {info.type!r})"
    return split_name(info.name) or "member name has no extension"


def _read_member(
    info: tarfile.TarInfo,
    read: Callable[[], bytes],
    sample: dict[str, Any],
    key: str,
    ext: str,
    url: str,
    max_member_bytes: int,
) -> None:
    """Put one member's bytes into `sample`, or its refusal under `ERROR_KEY` without reading
    it (an oversized member is never allocated)."""
    if ext in sample:
        raise DuplicateExtensionError(
            f"{url}:{info.name}: sample {key!r} has two members with extension {ext!r}"
        )
    refusal = member_refusal(info, max_member_bytes)
    if refusal is not None:
        sample[ERROR_KEY] = f"{key}.{ext}: {refusal}"
        sample[ext] = b""
        return
    sample[ext] = read()


def _damaged(url: str, head: _Head, offset: int, exc: tarfile.ReadError) -> tarfile.ReadError:
    """The error for a tar that cannot be read on: a compressed shard says so and how to
    decompress it; anything else names the last good sample's byte."""
    packed = compression(head.first) if offset == 0 else None
    if packed is not None:
        return tarfile.ReadError(
            f"{url}: the shard is {packed}-compressed; polymodal reads plain tar shards "
            f"(decompress it first, e.g. `{COMPRESSORS[packed]} -d`)"
        )
    return tarfile.ReadError(f"{url}: damaged or truncated tar after byte {offset}: {exc}")

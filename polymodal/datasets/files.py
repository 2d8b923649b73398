"""Where bytes live: atomic local writes, reads from local paths or URLs through fsspec, and
the rules that keep jobs from eating their own inputs.

Every file a dataset consists of is written under a temporary name and renamed when complete,
so a killed job leaves nothing that looks complete. Remote reads have a connect timeout, must
keep making progress (`min_rate` bytes a second over every `read_timeout` window, so a server
that trickles is as stalled as one that froze), and get a bounded number of tries with
exponential backoff for every transient failure (`Remote`); `failure` names what went wrong in
one word, so a server that is down is never reported as a missing file.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar, cast

import fsspec

from polymodal.errors import UserError

TMP_SUFFIX = ".tmp"
BLOCK_BYTES = 5 * 2**20  # fsspec's HTTP block: what one random-access request fetches
T = TypeVar("T")


@dataclass(frozen=True)
class Remote:
    """How remote reads (HTTP, S3) behave: seconds to connect, the window in which a read must
    make progress (`read_timeout`: no byte for that long, or fewer than `min_rate` bytes a
    second over it, is a stall), and tries with exponential backoff (`backoff`, then twice
    that, ...) for every transient failure (`failure`).

    The defaults report a stalled source within a minute: a try that stalls ends within two
    windows (the window, then at most one more wait for a byte), so 3 tries of 2 × 8 s plus
    0.5 + 1 s of backoff take 49.5 s (`worst_case_seconds`).
    """

    connect_timeout: float = 10.0
    read_timeout: float = 8.0
    tries: int = 3
    backoff: float = 0.5
    min_rate: float = 16 * 1024  # bytes a second, over each read_timeout window
    # fsspec storage options for every remote read (S3 `key` / `secret`,
    # `client_kwargs.endpoint_url`, HTTP `headers`, ...), merged over the timeouts
    fs_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.read_timeout <= 0 or self.backoff < 0:
            raise ValueError(f"timeouts must be positive and backoff non-negative: {self}")
        if self.min_rate < 0:
            raise ValueError(f"min_rate must be at least 0 bytes a second, got {self.min_rate}")
        if self.tries < 1:
            raise ValueError(f"tries must be at least 1, got {self.tries}")

    @property
    def worst_case_seconds(self) -> float:
        """How long a source that stalls (accepts connections, then sends nothing, or too
        little) or cannot be reached takes to be reported."""
        backoffs = sum(self.backoff * 2**i for i in range(self.tries - 1))
        per_try = max(self.connect_timeout, 2 * self.read_timeout)
        return self.tries * per_try + backoffs

    def storage_options(self, url: str, stream: bool = True) -> dict[str, Any]:
        """fsspec options that put these timeouts on the filesystem `url` belongs to. A
        request for a block (`stream=False`: Parquet's random access) must end by a deadline:
        the block at `min_rate`, plus the windows; a stream is watched by `Progress`."""
        ours: dict[str, Any] = {}
        if url.startswith(("http://", "https://")):
            import aiohttp

            total = None
            if not stream and self.min_rate:
                total = self.connect_timeout + 2 * self.read_timeout + BLOCK_BYTES / self.min_rate
            timeout = aiohttp.ClientTimeout(
                total=total, sock_connect=self.connect_timeout, sock_read=self.read_timeout
            )
            ours = {"client_kwargs": {"timeout": timeout}}
        elif url.startswith(("s3://", "s3a://")):
            config = {"connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout}
            ours = {"config_kwargs": {**config, "retries": {"max_attempts": 1}}}
        elif not is_remote(url):
            return {}
        for key, value in self.fs_options.items():  # the user's, one level deep
            both = isinstance(value, dict) and isinstance(ours.get(key), dict)
            ours[key] = {**ours[key], **value} if both else value
        return ours

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()`, tried up to `tries` times while it raises a transient error."""
        for attempt in range(1, self.tries + 1):
            try:
                return fn()
            except Exception as exc:
                if attempt == self.tries or not is_transient(exc):
                    raise
            self.pause(attempt)
        raise AssertionError("unreachable")

    def pause(self, attempt: int) -> None:
        """Sleep the backoff due after failed try number `attempt`."""
        time.sleep(self.backoff * 2 ** (attempt - 1))


DEFAULT_REMOTE = Remote()


def is_remote(url: str | Path) -> bool:
    """Whether `url` names a remote location (any scheme but `file://`)."""
    text = str(url)
    return "://" in text and not text.startswith("file://")


def local_path(url: str | Path) -> Path | None:
    """The local path behind `url`, or None for a remote one."""
    if is_remote(url):
        return None
    return Path(str(url).removeprefix("file://"))


class OverlapError(UserError, ValueError):
    """A job's output is, contains or sits inside one of its inputs."""


def check_separate(inputs: Iterable[str | Path], output: str | Path, *, folders: bool) -> None:
    """Refuse an output that overlaps an input, before anything is written or removed.

    With `folders`, each input is a folder read whole: the output must be neither the folder,
    nor inside it (its shards would be read back as input on a rerun), nor around it (an
    overwrite would delete it). Otherwise each input is a single file, which the output must
    not be or contain. Remote inputs cannot overlap a local output.
    """
    out = Path(output).resolve()
    for source in inputs:
        path = local_path(source)
        if path is None:
            continue
        src = path.resolve()
        if src == out:
            raise OverlapError(f"the output {output} is the input {source}")
        if src in out.parents and folders:
            raise OverlapError(
                f"the output {output} is inside the input {source}: "
                "its files would be read back as input; write it elsewhere"
            )
        if out in src.parents:
            raise OverlapError(
                f"the output {output} contains the input {source}: "
                "an overwrite would delete what the job reads; write it elsewhere"
            )


class HashingReader:
    """Read-through wrapper that hashes and counts what passes and, when asked, keeps the last
    `tail_size` bytes, so checking a shard's checksum and end costs no second read. (A reader
    that needs no tail skips keeping one: it reads a tar a header or a member at a time.)"""

    def __init__(self, f: IO[bytes], tail_size: int = 0) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0
        self.tail, self.tail_size = b"", tail_size

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        if self.tail_size:
            self.tail = (self.tail + data[-self.tail_size :])[-self.tail_size :]
        return data

    def drain(self) -> None:
        """Read (and hash) whatever is left."""
        while self.read(2**20):
            pass


def _sync_file_range() -> Any:
    """libc's `sync_file_range` (Linux; Python's `os` does not bind it), or None."""
    if sys.platform != "linux":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writing dirty pages out; do not wait


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk without waiting for them, so that the
    fsync that makes it durable waits only for what is left while the disk works beside the
    writer. A hint: a no-op where the call is missing, and an error it meets is the fsync's
    to report."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def tmp_path(path: Path) -> Path:
    """`NAME.PID.tmp`: a writer of its own per process, so that a leftover worker of a killed
    job, still finishing a task, can never rename a rerun's half-written file into place."""
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")


def remove_temporaries(directory: Path, names: Iterable[str] | None = None) -> None:
    """Delete what killed writers left in `directory` (`NAME.PID.tmp`, of `names` only when
    given): such files never look complete, and a rerun writes them anew."""
    patterns = [f"*{TMP_SUFFIX}"] if names is None else [f"{n}.*{TMP_SUFFIX}" for n in names]
    for pattern in patterns:
        for stale in Path(directory).glob(pattern):
            stale.unlink(missing_ok=True)


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


def open_read(url: str, stream: bool = True, remote: Remote = DEFAULT_REMOTE) -> IO[bytes]:
    """Open a local path or any fsspec URL (`http(s)://`, `s3://`, `file://`) for reading, with
    `remote`'s timeouts on remote ones (one try: callers retry through `Remote.call`), each
    read watched for progress (`Progress`).

    With `stream`, HTTP is streamed (`block_size=0`): many servers (`python -m http.server`,
    some CDNs) ignore Range requests, and tar shards are read front to back anyway;
    `seek_forward` covers the rare reader that starts mid-shard. Parquet needs random access:
    `stream=False` (and a server that honours Range).
    """
    options = remote.storage_options(url, stream)
    if stream and url.startswith(("http://", "https://")):
        f = fsspec.open(url, "rb", block_size=0, **options).open()
    else:
        f = fsspec.open(url, "rb", **options).open()
    return cast(IO[bytes], Progress(f, url, remote)) if is_remote(url) else f


class StalledRead(TimeoutError):
    """A remote read that made less progress than its `Remote` asks for."""


class Progress:
    """A remote file whose reads must keep up `remote.min_rate` bytes a second over every
    `remote.read_timeout` seconds spent waiting in them: the transport's own timeout only
    bounds the gap between two bytes, so a server that trickles a byte a second would
    otherwise hold a reader for days. Only time inside `read` counts (a reader that pauses
    between samples is not the server's fault), and a streamed read returns as soon as some
    bytes came or the gap timed out, so the check runs at least once a window."""

    def __init__(self, f: IO[bytes], url: str, remote: Remote) -> None:
        self.f, self.url, self.remote = f, url, remote
        self.waited, self.got = 0.0, 0

    def read(self, n: int = -1) -> bytes:
        started = time.monotonic()
        data = self.f.read(n)
        self.waited += time.monotonic() - started
        self.got += len(data)
        if self.waited >= self.remote.read_timeout:
            if self.got < self.remote.min_rate * self.waited:
                raise StalledRead(
                    f"stalled: {self.got:,} bytes in {self.waited:.1f} s of waiting, under "
                    f"the {self.remote.min_rate:,.0f} bytes/s a read must keep up"
                )
            self.waited, self.got = 0.0, 0
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def file_size(f: IO[bytes]) -> int | None:
    """The size of an open file when it is known without reading it (local, S3, HTTP with a
    Content-Length), else None."""
    size = getattr(f, "size", None)
    if isinstance(size, int):
        return size
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


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


def read_bytes(url: str, remote: Remote = DEFAULT_REMOTE, limit: int | None = None) -> bytes:
    """The whole of a small file (an index, a sidecar); remote reads are retried. A file over
    `limit` bytes is refused after reading one byte past it, whatever its size."""

    def read() -> bytes:
        chunks, size = [], 0
        with open_read(url, remote=remote) as f:  # in chunks: `Progress` checks each
            while chunk := f.read(2**20 if limit is None else min(2**20, limit + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
                if limit is not None and size > limit:
                    break
        data = b"".join(chunks)
        if limit is not None and len(data) > limit:
            raise TooLarge(f"{url}: larger than the {limit:,} bytes such a file may have")
        return data

    if not is_remote(url):
        return read()
    return remote.call(read)


class TooLarge(UserError, ValueError):
    """A file is larger than what it describes can need."""


TRANSIENT = ("unreachable", "stalled", "short read", "server error", "I/O error")


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth another try: every failure but a missing, forbidden or
    damaged file (`failure`)."""
    return failure(exc) in TRANSIENT


def describe_failure(exc: BaseException, remote: Remote) -> str:
    """Why a file cannot be read, in words that start with what failed (`failure`):
    `missing` only for a file that is not there, never for a server that is down."""
    kind = failure(exc)
    detail = str(exc)
    if kind == "stalled" and not detail:  # a transport's timeout says nothing of itself
        detail = f"no byte for {remote.read_timeout:g} s"
    if type(exc).__name__ == "TooManyRedirects":
        detail = "too many redirects"
    detail = detail or type(exc).__name__
    if kind == "missing":
        return "missing: the shard is not there"
    if kind in TRANSIENT:
        return f"{kind} after {remote.tries} tries: {detail}"
    return f"{'damaged shard' if kind == 'damaged' else kind}: {detail}"


def failure(exc: BaseException) -> str:
    """What a read failed of, in the words reports use: `missing` (404, no such file),
    `forbidden` (401/403, no permission), `unreachable` (refused, reset or timed-out
    connection, unknown host), `stalled` (no byte, or too few, for too long), `short read`
    (the body ended before its length), `server error` (5xx), `I/O error` (another OS
    error), or `damaged` (anything else: the bytes themselves). The error's whole chain
    counts: fsspec reports a server that is down as a missing file *caused by* a refused
    connection."""
    chain: list[BaseException] = []
    at: BaseException | None = exc
    while at is not None and at not in chain and len(chain) < 8:
        chain.append(at)
        at = at.__cause__ or (None if at.__suppress_context__ else at.__context__)
    kinds = [_kind(e) for e in chain]
    for kind in ("unreachable", "stalled", "short read", "server error"):
        if kind in kinds:  # a network cause outranks what it was reported as
            return kind
    return next((k for k in kinds if k != "damaged"), "damaged")


def _kind(exc: BaseException) -> str:
    import asyncio

    import aiohttp

    status = getattr(exc, "status", None)
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "unreachable"
    if isinstance(exc, aiohttp.ClientResponseError) and isinstance(status, int):
        if status == 404:
            return "missing"
        if status in (401, 403):
            return "forbidden"
        return "server error" if status >= 500 else "damaged"
    if isinstance(exc, (StalledRead, asyncio.TimeoutError, TimeoutError)):
        if isinstance(exc, aiohttp.ServerTimeoutError) and "onnect" in str(exc):
            return "unreachable"  # the connection itself timed out
        return "stalled"
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, EOFError)):
        return "short read"
    if isinstance(exc, (aiohttp.ClientConnectorError, ConnectionError, socket.gaierror)):
        return "unreachable"
    if isinstance(exc, aiohttp.ClientError):
        return "unreachable"
    name = type(exc).__name__  # botocore's, without importing it
    if name in ("ReadTimeoutError", "ConnectTimeoutError"):
        return "stalled" if name == "ReadTimeoutError" else "unreachable"
    if name in ("EndpointConnectionError", "ConnectionClosedError"):
        return "unreachable"
    if name == "IncompleteReadError":
        return "short read"
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, PermissionError):
        return "forbidden"
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
        return "missing"
    if isinstance(exc, OSError):
        return "I/O error"
    return "damaged"


LOCK_NAME = ".polymodal.lock"
OUTPUT_MARK = ".polymodal-output.json"  # what wrote a folder of results (export, predict)
log = logging.getLogger("polymodal.files")


class FolderInUse(UserError, RuntimeError):
    """Another live process owns the folder a job would write (`OwnerLock`)."""


class OwnerLock:
    """A folder that one process writes: a run directory, a build's or a job's output.

    The lock is a POSIX record lock on `.polymodal.lock` in the folder, holding the owner's
    pid, host, job and start. The kernel drops it when the owner exits, however it exits, so
    a lock file left by a killed job is stale by construction: the next job takes it over and
    says whose it was. A POSIX lock belongs to one process (forked workers do not hold it)
    and works on NFS. A second owner in the same process is refused too.
    """

    _held: ClassVar[set[Path]] = set()

    def __init__(self, folder: str | Path, job: str) -> None:
        self.folder, self.job = Path(folder).resolve(), job
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> OwnerLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.folder in OwnerLock._held:
            raise FolderInUse(f"{self.folder} is already being written by this process")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _owner(os.pread(fd, 4096, 0))
                os.close(fd)
                raise FolderInUse(
                    f"{self.folder} is in use by {owner}: wait for it to finish, or write "
                    "somewhere else"
                ) from None
            try:  # the file may have been removed by an owner that just finished
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            log.warning(
                "%s: taking over the lock of %s, which is gone", self.folder, _owner(previous)
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "job": self.job,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        OwnerLock._held.add(self.folder)
        return self

    def release(self) -> None:
        """Remove the lock file, then let it go (a later owner finds no stale record)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the record lock
        self._fd = None
        OwnerLock._held.discard(self.folder)

    def __enter__(self) -> OwnerLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _owner(record: bytes) -> str:
    """`build (pid 4242 on node-3, since 2026-12-03T10:00:00)` from a lock file's record."""
    try:
        doc = json.loads(record)
        return f"{doc['job']} (pid {doc['pid']} on {doc['host']}, since {doc['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def claim_output(out: str | Path, job: Mapping[str, str], overwrite: bool) -> Path:
    """Make `out` the folder of this `job`'s results (`{"command": ..., "source": ...}`):
    absent, empty, or holding results of the same job before. A folder of anything else
    (another run's export, someone's files) is refused unless `overwrite`; a dataset never,
    since results written into it would be read back as data."""
    out = Path(out)
    if (out / "index.json").exists() or any(out.glob("*.tar")):
        raise OverlapError(f"{out} is a dataset: write the results somewhere else")
    mark = out / OUTPUT_MARK
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        try:
            previous = json.loads(mark.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != dict(job):
            what = (
                f"results of `{previous.get('command')} {previous.get('source')}`"
                if isinstance(previous, dict)
                else "files polymodal did not write"
            )
            raise OverlapError(
                f"{out} holds {what}: pass --overwrite to write over them, or choose another folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(mark, json.dumps(dict(job), sort_keys=True).encode())
    return out

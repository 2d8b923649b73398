"""The read stage: a worker's references → raw samples, sequential within a shard, a seek by
the sidecar's offsets across shards, retries with backoff, every check against the index."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from polymodal.datasets.files import (
    DEFAULT_REMOTE,
    HashingReader,
    Progress,
    Remote,
    describe_failure,
    failure,
    file_size,
    is_remote,
    open_read,
)
from polymodal.datasets.index import ShardIndex, ShardInfo, Sidecar, key_hash, sidecar_name
from polymodal.datasets.layout import ERROR_KEY, MAX_MEMBER_BYTES, Problem, read_tar_samples
from polymodal.datasets.reader import shard_samples
from polymodal.datasets.shard_cache import ShardCache
from polymodal.pipelines.stream.partition import Reference
from polymodal.pipelines.stream.stages.base import ShardChanged, ShardUnavailable, Skip

SKIP_AHEAD = 64  # samples a reader reads past rather than reopen its shard at an offset

# A local shard file's version: (path, device, inode, size, mtime and ctime in ns). Changing a
# file's bytes changes its mtime and ctime, and replacing it its inode; ctime cannot be set
# back by `touch`. Maps to the sha256 its bytes had.
Version = tuple[str, int, int, int, int, int]
# Versions whose sha256 this process computed, while reading them whole (oldest dropped past
# the bound): a persistent DataLoader worker reading the same shards epoch after epoch hashes
# each version once (sha256 was an eighth of the CPU of the decode-once data path).
_VERIFIED: dict[Version, str] = {}
_VERIFIED_LOCK = threading.Lock()  # readers may run in threads of one process
MAX_VERIFIED = 2**16


@dataclass
class _OpenShard:
    """A shard a reader is in: `(place, sample)` from sample `next` on, its sidecar (each
    sample's offset and key hash, to check what is read against), and, when it was opened at
    byte 0, a hasher that checks its sha256 once the last sample has been read."""

    shard: int
    next: int
    samples: Iterator[tuple[int, dict[str, Any]]]
    file: IO[bytes]
    hasher: HashingReader | None
    sidecar: Sidecar | None
    version: Version | None = None


class Reader:
    """Raw samples of references, in the order given, checked against the index on the way.

    Keeps one open shard per source and reads on while the next reference is at most
    `SKIP_AHEAD` samples further in it; otherwise it opens the shard at the reference's sample
    (a seek to its byte offset from the sidecar). What it checks: the file size when the shard
    is opened; that every sample it delivers starts at the offset and carries the key hash the
    sidecar recorded (one small sidecar read per shard opened, one blake2b of the key per
    sample), so a shard replaced since it was indexed fails at its first foreign sample,
    whoever reads it, the rest of it reported as skipped; and, after the shard's last indexed
    sample, that no sample follows and (for a shard read from its first byte) that the sha256
    is the index's, each disagreement a note delivered with the next batch's skips. A local
    file's sha256 is computed once a version of it (`Version`) per process. A sample
    whose key an earlier sample has (`ShardIndex.duplicates`) is skipped, reported, so a key
    comes once an epoch. A transient error
    (timeout, dropped connection) reopens the shard at the sample it reached, up to
    `remote.tries` times; a shard that still fails is reported with its URL, and every
    reference into it is skipped under the `skip` policy, without trying it again. Its state is
    the last failed shard of each source: references come in plan order, in which a shard's
    samples are one run, so the shard a reader failed in last is the only one a later
    reference may still be in. (A state listing every failed shard would grow with each, and
    is taken after every batch: 80,000 lost shards cost minutes.) A resumed run tries again a
    shard that failed before the last (a padding repeat, or a source cycled past its size).
    """

    def __init__(
        self,
        indexes: Sequence[ShardIndex],
        errors: str,
        remote: Remote = DEFAULT_REMOTE,
        max_member_bytes: int = MAX_MEMBER_BYTES,
        cache: ShardCache | None = None,
    ) -> None:
        self.indexes, self.errors, self.remote = indexes, errors, remote
        self.cache = cache
        self.max_member_bytes = max_member_bytes
        self._open: dict[int, _OpenShard] = {}
        self._duplicates = [index.skipped() for index in indexes]
        self._failed: dict[tuple[int, int], str] = {}
        self._last_failed: dict[int, int] = {}  # source → the shard it failed in last
        self.notes: list[Skip] = []

    def state_dict(self) -> dict[str, Any]:
        last = sorted(self._last_failed.items())
        return {"failed": [[s, n, self._failed[s, n]] for s, n in last]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._failed = {(s, n): reason for s, n, reason in state["failed"]}
        self._last_failed = {s: n for s, n, _ in state["failed"]}

    def read(self, refs: Iterator[Reference]) -> Iterator[tuple[Reference, dict | Skip]]:
        for ref in refs:
            yield ref, self._sample(ref)

    def close(self) -> None:
        for source in list(self._open):
            self._close(source)

    def _sample(self, ref: Reference) -> dict[str, Any] | Skip:
        index = self.indexes[ref.source]
        shard = index.shards[ref.shard]
        where = (ref.source, ref.shard)
        key = f"{shard.name}#{ref.index}"  # the sample's place, when its key cannot be read
        url = index.url(shard)
        if where in self._failed:
            return Skip(key, "read", self._failed[where], url, source=ref.source)
        first = self._duplicates[ref.source].get((ref.shard, ref.index))
        if first is not None:
            reason = f"duplicate key: {first} holds a sample with this key first"
            return Skip(key, "read", reason, url, source=ref.source)

        def attempt() -> dict[str, Any]:
            try:
                return self._next(index, ref)
            except Exception:
                self._close(ref.source)  # a next try opens the shard at this sample
                raise

        try:
            sample = self.remote.call(attempt)
        except StopIteration:
            return self._fail(where, key, url, "fewer samples than the index says")
        except Exception as exc:
            return self._fail(where, key, url, read_failure(exc, self.remote))
        if ref.index == shard.samples - 1:
            self._check_end(ref.source, shard, url)
        if ERROR_KEY in sample:
            return Skip(sample["__key__"], "read", sample[ERROR_KEY], url, source=ref.source)
        return sample

    def _next(self, index: ShardIndex, ref: Reference) -> dict[str, Any]:
        current = self._open.get(ref.source)
        gap = ref.index - current.next if current is not None and current.shard == ref.shard else -1
        if current is None or not 0 <= gap <= SKIP_AHEAD:  # far from its place: open at it
            self._close(ref.source)
            current = self._open_at(index, ref)
            self._open[ref.source] = current
            gap = 0
        local = not isinstance(current.file, Progress)  # a remote one may be streamed
        if gap and local and current.hasher is None and current.sidecar is not None:
            # close ahead in a local shard not read whole: seek past the gap (a resumed
            # buffer's held samples lie scattered through their shards), not read and parse it
            current.samples = shard_samples(
                current.file,
                index,
                index.shards[ref.shard],
                ref.index,
                _ignore_member,
                self.max_member_bytes,
                current.sidecar.offsets,
            )
        else:
            for _ in range(gap):  # close ahead: read on (not decode)
                next(current.samples)
        place, sample = next(current.samples)
        current.next = ref.index + 1
        if current.sidecar is not None and index.format == "tar":
            _check_sample(current.sidecar, ref.index, place, sample)
        return sample

    def _open_at(self, index: ShardIndex, ref: Reference) -> _OpenShard:
        shard = index.shards[ref.shard]
        url = index.url(shard)
        if self.cache is not None and is_remote(url):  # a verified local copy, when it fits
            url = str(self.cache.local(url, shard, self.remote) or url)
        f = open_read(url, stream=index.format == "tar", remote=self.remote)
        try:
            size = file_size(f)
            if size is not None and size != shard.bytes:
                raise ShardChanged(
                    f"the shard is {size:,} bytes, the index says {shard.bytes:,}: it changed "
                    "since it was indexed (`polymodal validate` checks it; index it again)"
                )
            sidecar = _sidecar(index, shard, needed=bool(ref.index))
            hasher, version = None, None
            if ref.index == 0 and index.format == "tar":  # read whole: its sha256 is checked
                version = file_version(url, f)
                if version is None or _VERIFIED.get(version) != shard.sha256:
                    hasher = HashingReader(f)
                url, limit = index.url(shard), self.max_member_bytes
                samples = read_tar_samples(hasher or f, url, 0, _ignore_member, limit)
            else:
                offsets = None if sidecar is None else sidecar.offsets
                samples = shard_samples(
                    f, index, shard, ref.index, _ignore_member, self.max_member_bytes, offsets
                )
        except BaseException:
            f.close()
            raise
        return _OpenShard(ref.shard, ref.index, samples, f, hasher, sidecar, version)

    def _check_end(self, source: int, shard: ShardInfo, url: str) -> None:
        """After a shard's last indexed sample: nothing may follow, and a shard read whole
        must hash to the index's sha256."""
        current = self._open.get(source)
        if current is None:
            return
        try:
            extra = next(current.samples, None)
            if extra is not None:
                self._note(
                    source,
                    shard,
                    url,
                    f"the shard holds more samples than the {shard.samples:,} the index says "
                    f"(the next is {extra[1]['__key__']!r}): they were not delivered; index it "
                    "again",
                )
            elif current.hasher is not None:
                current.hasher.drain()
                digest = current.hasher.sha.hexdigest()
                if digest == shard.sha256 and current.version is not None:
                    _remember(current.version, digest)
                if digest != shard.sha256:
                    self._note(
                        source,
                        shard,
                        url,
                        f"the shard's sha256 is {digest[:12]}…, the index says "
                        f"{shard.sha256[:12]}…: it was replaced or damaged after indexing, so "
                        "its samples this epoch may not be the indexed ones",
                    )
        except Exception as exc:
            self._note(source, shard, url, f"damaged after its last indexed sample: {exc}")
        self._close(source)

    def _note(self, source: int, shard: ShardInfo, url: str, reason: str) -> None:
        self.notes.append(Skip(shard.name, "check", reason, url, samples=0, source=source))

    def _close(self, source: int) -> None:
        current = self._open.pop(source, None)
        if current is not None:
            current.file.close()

    def _fail(self, where: tuple[int, int], key: str, url: str, reason: str) -> Skip:
        if self.errors == "raise":
            raise ShardUnavailable(f"{url}: {reason}")
        self._failed[where] = reason
        self._last_failed[where[0]] = where[1]
        self._close(where[0])
        return Skip(key, "read", reason, url, source=where[0])


def file_version(url: str, f: IO[bytes]) -> Version | None:
    """The version of a local shard file (see `Version`); None for a remote one."""
    if is_remote(url):
        return None
    try:
        st = os.fstat(f.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return (url, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _remember(version: Version, digest: str) -> None:
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= MAX_VERIFIED:
            del _VERIFIED[next(iter(_VERIFIED))]
        _VERIFIED[version] = digest


def _sidecar(index: ShardIndex, shard: ShardInfo, needed: bool) -> Sidecar | None:
    """The shard's sidecar, to check samples against; a reader that starts at byte 0 can do
    without one (an index written without sidecars), and the sha256 still checks it."""
    if index.format != "tar":
        return None
    try:
        return index.sidecar(shard)
    except (OSError, ValueError) as exc:  # its remote reads were tried again already
        if needed:
            raise ShardChanged(
                f"its sidecar {sidecar_name(shard.name)} cannot be read ({failure(exc)}: "
                f"{exc}): a reader cannot seek in the shard (`polymodal index` writes it again)"
            ) from None
        return None


def _check_sample(sidecar: Sidecar, n: int, place: int, sample: Mapping[str, Any]) -> None:
    """Sample `n` must start where the sidecar says and carry the key it recorded."""
    if n >= len(sidecar.offsets):
        return  # past the index's samples: `_check_end` reports what follows
    expected = int(sidecar.offsets[n])
    if place != expected:
        raise ShardChanged(
            f"sample {n} starts at byte {place:,}, the index says {expected:,}: the shard "
            "changed since it was indexed (index it again)"
        )
    if sidecar.keys is not None and key_hash(str(sample["__key__"])) != int(sidecar.keys[n]):
        raise ShardChanged(
            f"sample {n} is {sample['__key__']!r}, not the key the index recorded there: the "
            "shard was replaced since it was indexed (index it again)"
        )


def read_failure(exc: BaseException, remote: Remote) -> str:
    """Why a shard cannot be read, in words (`files.describe_failure`)."""
    return str(exc) if isinstance(exc, ShardChanged) else describe_failure(exc, remote)


def _ignore_member(problem: Problem) -> None:
    """Odd tar members (no extension, not files) are not samples; `polymodal index` reports
    them when a dataset is indexed, the stream just passes over them."""

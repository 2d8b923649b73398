"""Shards without an index: what a webdataset user writes first,
`"shards/shard-{000000..000099}.tar"`, a glob, a list of paths or URLs (local, HTTP, S3), or
several patterns joined by `::` as webdataset joins them.

The per-shard facts a Stream plans with (samples, offsets, key hashes, sizes) come from
scanning the shards' tar headers once, in parallel, into an index and sidecars in this
machine's cache (`cache.cache_root()/indexes`), keyed by the shard list (and, for local shards,
each one's size and modification time, so a changed shard is scanned again). From there on a
shard list is a dataset like any other: exact-once epochs, equal batches, bitwise and elastic
resume, every skip reported. An index with shards it could not read is not reused (a server
that was down for a moment must not leave them out for good).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import fsspec
from braceexpand import braceexpand

from .build import index_into
from .cache import cache_root, waiting_lock
from .files import DEFAULT_REMOTE, Remote, is_remote, local_path
from .index import INDEX_NAME, REJECTS_NAME, ShardIndex

log = logging.getLogger("polymodal.datasets")

SEPARATOR = "::"  # webdataset's: several patterns, one source
GLOB_CHARS = "*?["
MAX_SCAN_WORKERS = 8


def is_shard_list(source: str | Path) -> bool:
    """Whether `source` names shards (a `.tar`, a brace pattern, a glob, `a::b`) rather than a
    dataset folder or URL prefix holding `index.json`."""
    text = str(source)
    if SEPARATOR in text:
        return True
    local = local_path(text)
    if local is not None and local.is_dir():
        return False
    tail = text.rstrip("/").rsplit("/", 1)[-1]
    return text.endswith(".tar") or "{" in tail or any(c in tail for c in GLOB_CHARS)


def open_dataset(
    source: str | Path, remote: Remote = DEFAULT_REMOTE, cache_dir: str | Path | None = None
) -> ShardIndex:
    """The index of a dataset folder or URL prefix, or of a shard list (scanned once, then
    cached): every reader opens its sources here."""
    if is_shard_list(source):
        return open_shard_list(str(source), remote, cache_dir)
    return ShardIndex.load(source, remote)


def join_shard_lists(items: Sequence[object]) -> str | None:
    """One source of all `items` when every one names shards (`["a.tar", "b-{0..3}.tar"]`
    is one dataset, as in webdataset), else None (a list of datasets is a mixture)."""
    if items and all(isinstance(i, (str, Path)) and is_shard_list(i) for i in items):
        return SEPARATOR.join(map(str, items))
    return None


def shard_urls(spec: str, remote: Remote = DEFAULT_REMOTE) -> list[str]:
    """The shards `spec` names, in its order: brace patterns expanded, globs matched (sorted),
    local paths made absolute, repeats dropped. Naming no shard, or a file that is not a
    `.tar`, is an error that says which."""
    found: list[str] = []
    for part in spec.split(SEPARATOR):
        for item in braceexpand(part.strip()):
            tail = item.rsplit("/", 1)[-1]
            matches = _glob(item, remote) if any(c in tail for c in GLOB_CHARS) else [item]
            if not matches:
                raise FileNotFoundError(f"{item}: matches no shard")
            found += [m if is_remote(m) else str(Path(m).resolve()) for m in matches]
    urls = list(dict.fromkeys(found))
    not_tar = [u for u in urls if not u.endswith(".tar")]
    if not_tar:
        raise ValueError(f"{not_tar[0]}: not a .tar shard (shard lists name plain tar shards)")
    return urls


def _glob(pattern: str, remote: Remote) -> list[str]:
    if not is_remote(pattern):
        return sorted(glob.glob(pattern.removeprefix("file://")))
    fs, root = fsspec.core.url_to_fs(pattern, **remote.storage_options(pattern))
    protocol = pattern.split("://", 1)[0]
    found = remote.call(lambda: fs.glob(root))
    return sorted(p if "://" in p else f"{protocol}://{p}" for p in map(str, found))


def open_shard_list(
    spec: str,
    remote: Remote = DEFAULT_REMOTE,
    cache_dir: str | Path | None = None,
) -> ShardIndex:
    """The index of the shards `spec` names: the cached one when it still describes them,
    else a fresh scan (one process scans, the others of this machine wait for it)."""
    urls = shard_urls(spec, remote)
    location, names = _one_folder(urls)
    key = _cache_key(location, names)
    folder = cache_root(cache_dir) / "indexes"
    target = folder / key
    with waiting_lock(folder / f"{key}.lock"):
        index = _complete(target, names, remote)
        if index is None:
            workers = min(MAX_SCAN_WORKERS, os.cpu_count() or 1, -(-len(names) // 4))
            log.info("indexing %d shards of %s into %s", len(names), spec, target)
            started = time.perf_counter()
            target.mkdir(parents=True, exist_ok=True)
            index_into(location, target, names, workers, False, {}, target, remote, started)
            index = ShardIndex.load(target, remote)
    missing = [n for n in names if n not in {s.name for s in index.shards}]
    if missing:
        first, reason = _why(target, missing[0])
        if len(missing) == len(names):
            raise FileNotFoundError(
                f"{spec}: none of its {len(names)} shards can be read (the first: {first}: "
                f"{reason})"
            )
        log.warning(
            "%s: left out %d of %d shards that cannot be read (the first: %s: %s); the list "
            "is in %s",
            spec,
            len(missing),
            len(names),
            first,
            reason,
            target / REJECTS_NAME,
        )
    return index


def _one_folder(urls: list[str]) -> tuple[str, list[str]]:
    """`(folder, names)`: the shards of one list sit in one folder (as the sidecars they get
    are named after them)."""
    folders = {u.rsplit("/", 1)[0] for u in urls}
    if len(folders) > 1:
        a, b = sorted(folders)[:2]
        raise ValueError(
            f"the shards of one source must sit in one folder ({a} and {b} differ): give each "
            "folder as a source of its own"
        )
    return folders.pop(), [u.rsplit("/", 1)[1] for u in urls]


def _cache_key(location: str, names: list[str]) -> str:
    """What the cached index is of: the folder, the names in order and, for local shards,
    each one's size and modification time (a rewritten shard is another dataset)."""
    facts: list[object] = [location, names]
    local = local_path(location)
    if local is not None:
        stats = [os.stat(local / name) for name in names if (local / name).exists()]
        facts.append([(s.st_size, s.st_mtime_ns) for s in stats])
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


def _complete(target: Path, names: list[str], remote: Remote) -> ShardIndex | None:
    """The cached index (complete: it is written last) if it holds every shard of the list;
    one that left some out is scanned again, as a server that was down for a moment must not
    leave them out for good."""
    if not (target / INDEX_NAME).exists():
        return None
    index = ShardIndex.load(target, remote)
    return index if len(index.shards) == len(names) else None


def _why(target: Path, name: str) -> tuple[str, str]:
    """Where and why shard `name` was left out, from the scan's rejects."""
    path = target / REJECTS_NAME
    lines = path.read_text().splitlines() if path.exists() else []
    for reject in map(json.loads, filter(None, lines)):
        if reject.get("path") == name:
            return name, reject["reason"]
    return name, "cannot be read"

"""This machine's cache folder, shared by every process of one user: indexes of shard lists
that came without one (`shardlist`), and copies of remote shards (`shard_cache`).

The folder is `$POLYMODAL_CACHE`, else `$XDG_CACHE_HOME/polymodal`, else
`~/.cache/polymodal`. What several processes fill at once (the ranks and workers of a job) is
filled under a blocking lock, written atomically, and checked before it is used.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "POLYMODAL_CACHE"


def cache_root(override: str | Path | None = None) -> Path:
    """The cache folder: `override`, or the environment's, or the user's default."""
    if override is not None:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "polymodal"


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive POSIX lock on `path`, waiting for another holder to finish: the
    second rank to ask for a cached thing waits while the first makes it, then uses it.
    The kernel drops the lock when its holder dies, so a killed holder never blocks a
    later process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock

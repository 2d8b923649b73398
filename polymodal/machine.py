"""What the machine gives this process, for choices that depend on it (threads, workers)."""

from __future__ import annotations

import os


def cores() -> int:
    """CPU cores this process may run on (its affinity, which containers and `taskset` set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

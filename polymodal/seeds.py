"""Stable per-key randomness, one helper for the stream, the preprocessing ops and the splits.

Python's `hash` differs between processes; these do not, so a sample gets the same crop on any
worker, in a resumed run and on a rerun of a job, and the same split in every build.
"""

from __future__ import annotations

import hashlib


def stable_seed(key: str, seed: int | None = None) -> int:
    """A 64-bit seed from a sample key (and a run's `seed`, when draws should change with it)."""
    text = key if seed is None else f"{seed}:{key}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def stable_fraction(key: str, seed: int | None = None) -> float:
    """A number in [0, 1) from a sample key, uniform over keys."""
    return stable_seed(key, seed) / 2**64

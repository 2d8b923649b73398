"""Splits and shards of a plan: which split a sample falls in (by a stable hash of its key,
so a sample never changes split between builds), and where each shard is cut."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from polymodal.seeds import stable_fraction

from .sources import PlannedSample

Item = TypeVar("Item")


def parse_splits(text: str | None) -> dict[str, float]:
    """`"val=0.1,test=0.05"` → fractions; the rest is `train`."""
    if not text:
        return {}
    splits = {}
    for part in text.split(","):
        name, _, fraction = part.partition("=")
        splits[name.strip()] = float(fraction)
    return check_splits(splits)


def check_splits(splits: Mapping[str, float]) -> dict[str, float]:
    if sum(splits.values()) >= 1 or any(f <= 0 for f in splits.values()) or "train" in splits:
        raise ValueError(
            f"splits {dict(splits)}: fractions must be positive, sum below 1, not 'train'"
        )
    return dict(splits)


def split_of(key: str, splits: Mapping[str, float]) -> str:
    """The split a key falls in: the named splits take consecutive ranges of `stable_fraction`
    of the sizes given, `train` the rest."""
    total = 0.0
    u = stable_fraction(key)
    for name, fraction in splits.items():
        total += fraction
        if u < total:
            return name
    return "train"


def assign_splits(
    samples: list[PlannedSample], splits: Mapping[str, float]
) -> dict[str, list[PlannedSample]]:
    if not splits:
        return {"": samples}
    out: dict[str, list[PlannedSample]] = {"train": [], **{name: [] for name in splits}}
    for sample in samples:
        out[split_of(sample.key, splits)].append(sample)
    return out


def cut_shards(
    samples: list[PlannedSample], max_samples: int | None, max_bytes: int | None
) -> list[list[PlannedSample]]:
    """Consecutive runs of samples, each within the count and byte caps (a sample larger than
    `max_bytes` gets a shard of its own)."""
    return cut_runs(samples, max_samples, max_bytes, lambda sample: sample.tar_size)


def cut_runs(
    items: Sequence[Item], max_count: int | None, max_bytes: int | None, size: Callable[[Item], int]
) -> list[list[Item]]:
    """Consecutive runs of `items`, each within the count and byte caps (`size` bytes an item;
    an item over `max_bytes` gets a run of its own)."""
    runs: list[list[Item]] = []
    current: list[Item] = []
    total = 0
    for item in items:
        grow = size(item)
        full = max_count is not None and len(current) >= max_count
        full = full or (max_bytes is not None and total + grow > max_bytes)
        if current and full:
            runs.append(current)
            current, total = [], 0
        current.append(item)
        total += grow
    if current:
        runs.append(current)
    return runs

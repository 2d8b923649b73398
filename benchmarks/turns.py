"""Contenders timed in turns (a, b, c, c, b, a, a, b, c, ...), so that a shared machine's drift
falls on all of them alike: how the benchmarks here compare things measured in one run.
Standard library only, so that a benchmark importing it loads neither torch nor PyAV (see
`bench_build.make_source`)."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Run(Generic[T]):
    """One run of a contender: wall seconds, CPU seconds, and what it returned."""

    wall: float
    cpu: float
    result: T


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended (a
    build's worker pool ends within the build)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def in_turns(
    contenders: Mapping[str, Callable[[], T]],
    repeats: int,
    warm_up: bool = False,
    before: Callable[[], object] | None = None,
) -> dict[str, list[Run[T]]]:
    """`repeats` runs of each contender, taken in turns, the order reversed every other round
    (no contender always follows the same one, whose leftovers, the heap it grew or the disk
    writes it left, would fall on it alone); with `warm_up`, one untimed run of each first
    (page cache, imports, worker start-up paths); `before`, untimed before every run
    (clearing what the last run left, which no contender should pay for)."""
    if warm_up:
        for fn in contenders.values():
            fn()
    runs: dict[str, list[Run[T]]] = {name: [] for name in contenders}
    order = list(contenders.items())
    for round_ in range(repeats):
        for name, fn in order if round_ % 2 == 0 else order[::-1]:
            if before is not None:
                before()
            start, cpu = time.perf_counter(), cpu_seconds()
            result = fn()
            runs[name].append(Run(time.perf_counter() - start, cpu_seconds() - cpu, result))
    return runs


def median_rate(runs: list[Run[int]]) -> float:
    """The median of a contender's items (its result) per wall second."""
    return statistics.median(r.result / r.wall for r in runs)


def round_ratios(runs: list[Run[T]], baseline: list[Run[T]]) -> list[float]:
    """Each round's speed of `runs` over `baseline`'s (the baseline's wall seconds over the
    run's, for contenders doing the same work): the two ran back to back in that round, so a
    drift slower than a round cancels, where a ratio of medians can set one contender's fast
    minute against the other's slow one."""
    return [b.wall / r.wall for r, b in zip(runs, baseline, strict=True)]


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """`median (lowest–highest)` of a contender's per-round figures: how far one run's
    figure can be trusted on this machine."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)} ({fmt.format(low)}–{fmt.format(high)})"


def median_run(runs: list[Run[T]]) -> Run[T]:
    """The run of median wall time (its CPU time with it)."""
    return sorted(runs, key=lambda r: r.wall)[len(runs) // 2]

"""How sources share an epoch: each source's rule, the epoch's exact per-source counts, weight
schedules, and which of its samples a source gives in each epoch.

A source declares at most one rule (`MixSource`); none means one whole pass:
- `repeat`: passes over the source per epoch, fractions allowed (0.25: a quarter of it),
  rounded to the nearest sample;
- `samples`: an exact count per epoch;
- `weight`: a share of what the epoch has left after the other rules (`epoch_size` minus their
  counts), split between the weighted sources in proportion by largest remainder.
`epoch_size` defaults to the sum of the sources' natural sizes under their rules (a weighted
source counts its own size), so weights alone keep the epoch as long as all sources once.

A source taking n = k·N + r samples of its N in an epoch gives k whole passes (each in an
order of its own) and r samples of its *cycle*: one stream of passes that goes on across
epochs, epoch e taking the r samples after those the epochs before it took. So a source taken
less than whole gives a different part of itself each epoch, and every sample once before any
sample again. Each pass of the cycle is the source's cycle order rotated by a seeded amount
that keeps the two sides of a pass boundary apart when one epoch holds both: no sample comes
twice in an epoch unless its rule repeats it.

With a `WeightSchedule` the weights change with the step (the stream's batch count): every
batch holds each source's share at its step (largest remainder), and an epoch's counts are the
sums over its batches. Everything here is a pure function of the declaration, the sources'
sizes, (seed, epoch) and, under a schedule, the world size; costs are O(sources) per epoch, or
O(batches of ramps) once under a linear schedule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.pipelines.stream.partition import Layout, SourceOrder, epoch_rng, largest_remainder

ROTATION = 0x726F74  # salt of a source's cycle order and rotations
BATCHINGS = ("mixed", "stratified")
RAMPS = ("step", "linear")
RULES = ("weight", "repeat", "samples")


class MixtureError(ValueError):
    """A mixture that cannot be planned as declared; the message names the source and rule."""


@dataclass(frozen=True)
class MixSource:
    """One source of a mixture and its rule: at most one of `weight`, `repeat` or `samples`
    (none: one whole pass per epoch)."""

    path: str | Path
    weight: float | None = None
    repeat: float | None = None
    samples: int | None = None

    def __post_init__(self) -> None:
        given = [name for name in RULES if getattr(self, name) is not None]
        if len(given) > 1:
            raise MixtureError(
                f"source {self.path}: one rule per source, got {' and '.join(given)}"
            )
        value = getattr(self, given[0]) if given else None
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MixtureError(f"source {self.path}: {given[0]} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise MixtureError(f"source {self.path}: {given[0]} must be at least 0, got {value}")
        if given[0] == "samples" and value != int(value):
            raise MixtureError(f"source {self.path}: samples must be whole, got {value}")

    @property
    def rule(self) -> tuple[str, float]:
        """(kind, value): `("repeat", 1.0)` for a source that declared nothing."""
        for name in RULES:
            value = getattr(self, name)
            if value is not None:
                return name, float(value)
        return "repeat", 1.0

    @classmethod
    def of(cls, item: Any) -> MixSource:
        """A source from what `Stream` accepts: a path, a `(path, weight)` pair, a mapping with
        `path` and a rule, or a MixSource."""
        if isinstance(item, MixSource):
            return item
        if isinstance(item, tuple):
            path, weight = item
            return cls(path, weight=weight)
        if isinstance(item, Mapping):
            unknown = set(item) - {"path", *RULES}
            if unknown or "path" not in item:
                raise MixtureError(
                    f"a mixture source is {{path, and one of {', '.join(RULES)}}}, got "
                    f"{dict(item)!r}"
                )
            return cls(**item)
        return cls(item)


@dataclass(frozen=True)
class SchedulePoint:
    """The weights from `step` on (`ramp="step"`), or reached at `step` linearly from the
    previous point's (`ramp="linear"`)."""

    step: int
    weights: tuple[float, ...]
    ramp: str = "step"


class WeightSchedule:
    """Weights that change with the step: piecewise constant, or linear between points. Before
    the first point its weights hold, after the last point the last weights."""

    def __init__(self, points: Sequence[SchedulePoint], sources: int) -> None:
        if not points:
            raise MixtureError("a weight schedule needs at least one point")
        for n, point in enumerate(points):
            where = f"schedule point {n} (step {point.step})"
            if point.ramp not in RAMPS:
                raise MixtureError(f"{where}: ramp must be one of {RAMPS}, got {point.ramp!r}")
            if len(point.weights) != sources:
                raise MixtureError(f"{where}: {len(point.weights)} weights for {sources} sources")
            if not all(math.isfinite(w) and w >= 0 for w in point.weights):
                raise MixtureError(f"{where}: weights must be at least 0, got {point.weights}")
            if sum(point.weights) <= 0:
                raise MixtureError(f"{where}: the weights sum to 0: no source to draw from")
            if n and point.step <= points[n - 1].step:
                raise MixtureError(
                    f"{where}: the schedule goes backwards (steps must increase, the point "
                    f"before is at step {points[n - 1].step})"
                )
        if points[0].step < 0:
            raise MixtureError(f"schedule point 0: step must be at least 0, got {points[0].step}")
        self.points = tuple(points)
        self.steps = np.array([p.step for p in points], dtype=np.int64)
        weights = np.array([p.weights for p in points], dtype=float)
        self.shares = weights / weights.sum(1, keepdims=True)

    def describe(self) -> list[dict[str, Any]]:
        return [{"step": p.step, "weights": list(p.weights), "ramp": p.ramp} for p in self.points]

    def pieces(self, first: int, stop: int) -> list[tuple[int, int, bool]]:
        """Steps [first, stop) cut where the schedule changes: (start, stop, linear); the
        shares are constant over a piece that is not linear."""
        cuts = sorted({first, stop, *(int(s) for s in self.steps if first < s < stop)})
        out = []
        for lo, hi in itertools.pairwise(cuts):
            after = int(np.searchsorted(self.steps, lo, side="right"))  # the next point's index
            linear = 0 < after < len(self.points) and self.points[after].ramp == "linear"
            out.append((lo, hi, linear))
        return out

    def at(self, steps: np.ndarray) -> np.ndarray:
        """Normalised shares `[len(steps), sources]` at each step."""
        steps = np.asarray(steps, dtype=np.int64)
        after = np.searchsorted(self.steps, steps, side="right")
        before = np.maximum(after - 1, 0)
        shares = self.shares[before].copy()
        ramps = np.array([p.ramp == "linear" for p in self.points] + [False])
        linear = (after > 0) & (after < len(self.points)) & ramps[np.minimum(after, len(ramps) - 1)]
        if linear.any():
            lo, hi = self.steps[before[linear]], self.steps[after[linear]]
            t = ((steps[linear] - lo) / (hi - lo))[:, None]
            shares[linear] = (1 - t) * self.shares[before[linear]] + t * self.shares[after[linear]]
        return shares


class ScheduledBatches:
    """A rank's batches of one epoch under a weight schedule, in the order the loader hands
    them out: the d-th is step e·batches + d and holds `largest_remainder(size,
    shares(step))` of each source. Constant stretches are one row each, so an epoch's totals
    cost O(schedule points); only `rows` lists every batch."""

    def __init__(self, schedule: WeightSchedule, epoch: int, per_rank: int, per_batch: int) -> None:
        self.batches = -(-per_rank // per_batch)
        full = per_rank // per_batch
        first = epoch * self.batches
        # (batches of the piece, rows: one row for a constant piece, else one per batch)
        self._pieces: list[tuple[int, np.ndarray]] = []
        for lo, hi, linear in schedule.pieces(first, first + full):
            steps = np.arange(lo, hi) if linear else np.array([lo])
            self._pieces.append((hi - lo, largest_remainder(per_batch, schedule.at(steps))))
        if full < self.batches:  # the last batch of a rank, partial
            last = per_rank - full * per_batch
            self._pieces.append((1, largest_remainder(last, schedule.at(np.array([first + full])))))

    def total(self) -> np.ndarray:
        """Samples of each source over the rank's epoch."""
        out = np.zeros(self._pieces[0][1].shape[1], dtype=np.int64)
        for n, rows in self._pieces:
            out += rows.sum(0) if len(rows) > 1 else rows[0] * n
        return out

    def rows(self) -> np.ndarray:
        """`[batches, sources]`: every batch's composition, in hand-out order."""
        return np.concatenate(
            [rows if len(rows) > 1 else rows.repeat(n, 0) for n, rows in self._pieces]
        )


class HandOutOrder:
    """A composition given in the order the loader hands batches out (round robin over the
    workers: a worker's k-th batch is the k·workers + w-th handed out), as the layout's
    batches take it (each worker a contiguous run). O(batches): only schedules need it."""

    def __init__(self, rows: np.ndarray, workers: int) -> None:
        self.batches, self.lanes = rows.shape
        share, extra = divmod(self.batches, workers)
        layout = np.arange(self.batches)
        longer = extra * (share + 1)  # the first `extra` workers make one batch more
        worker = np.where(
            layout < longer, layout // (share + 1), extra + (layout - longer) // max(share, 1)
        )
        k = np.where(layout < longer, layout % (share + 1), (layout - longer) % max(share, 1))
        self._rows = rows[k * workers + worker]
        self._before = np.concatenate(
            [np.zeros((1, self.lanes), np.int64), np.cumsum(self._rows, 0)]
        )

    def before(self, batch: int) -> np.ndarray:
        return self._before[batch]

    def sizes(self, first: int, stop: int) -> np.ndarray:
        return self._rows[first:stop]


@dataclass(frozen=True)
class SourceEpoch:
    """One source's samples in one epoch: `passes`, whole passes each in its own order, then
    the epoch's part of the source's cycle, from `cursor` on."""

    size: int  # N: the source's samples
    passes: tuple[SourceOrder, ...]
    cycle: SourceOrder | None  # the cycle's order, rotated by `offsets` for each pass of it
    cursor: int
    first_cycle: int
    offsets: np.ndarray

    def locate(self, within: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, sample within the shard) of positions in the source's epoch."""
        within = np.asarray(within, dtype=np.int64)
        shards, index = np.empty_like(within), np.empty_like(within)
        whole = len(self.passes) * self.size
        for j, order in enumerate(self.passes):
            mask = (within >= j * self.size) & (within < (j + 1) * self.size)
            if mask.any():
                shards[mask], index[mask] = order.locate(within[mask] - j * self.size)
        rest = within >= whole
        if rest.any():
            if self.cycle is None:
                raise IndexError(f"positions past this epoch's {whole} of the source")
            at = self.cursor + within[rest] - whole
            rotation = self.offsets[at // self.size - self.first_cycle]
            shards[rest], index[rest] = self.cycle.locate((rotation + at % self.size) % self.size)
        return shards, index


class MixturePlan:
    """Per-source epoch counts and epoch orders of a declared mixture (module docstring)."""

    def __init__(
        self,
        sources: Sequence[MixSource],
        sizes: Sequence[int],
        per_batch: int,
        epoch_size: int | None = None,
        batching: str = "mixed",
        schedule: WeightSchedule | None = None,
    ) -> None:
        self.sources, self.sizes = tuple(sources), tuple(int(s) for s in sizes)
        self.per_batch, self.batching, self.schedule = per_batch, batching, schedule
        if batching not in BATCHINGS:
            raise MixtureError(f"batching must be one of {BATCHINGS}, got {batching!r}")
        if epoch_size is not None and (isinstance(epoch_size, bool) or epoch_size < 1):
            raise MixtureError(f"epoch_size must be a positive number of samples, got {epoch_size}")
        if schedule is not None:
            for source in self.sources:
                if source.repeat is not None or source.samples is not None:
                    raise MixtureError(
                        f"source {source.path}: a weight schedule sets every source's share, so "
                        f"a source cannot also declare {source.rule[0]}"
                    )
            if batching != "stratified":
                raise MixtureError(
                    "a weight schedule fixes each batch's composition: it needs batching = "
                    "'stratified'"
                )
        self.epoch_size = epoch_size or self._natural_size()
        self._epoch_counts: dict[tuple[int, int], tuple[int, ...]] = {}
        self._layouts: dict[tuple[int, int, int], Layout] = {}
        self._counts = None if schedule is not None else self._fixed_counts()
        for source, size, n in zip(self.sources, self.sizes, self._counts or (), strict=False):
            if n and not size:
                raise MixtureError(
                    f"source {source.path}: its rule ({describe_rule(source)}) takes {n:,} samples "
                    "an epoch, but it has none to read"
                )
        if schedule is not None:
            empty = [s.path for s, n in zip(self.sources, self.sizes, strict=True) if not n]
            if empty:
                raise MixtureError(f"source {empty[0]}: a scheduled source has no samples")
        elif batching == "stratified":
            self._check_stratified()

    # --- counts ---

    def _natural_size(self) -> int:
        total = 0
        for source, size in zip(self.sources, self.sizes, strict=True):
            kind, value = source.rule
            total += {"weight": size, "repeat": _rounded(value * size), "samples": int(value)}[kind]
        return total

    def _fixed_counts(self) -> tuple[int, ...]:
        counts = [0] * len(self.sources)
        weighted = []
        for i, (source, size) in enumerate(zip(self.sources, self.sizes, strict=True)):
            kind, value = source.rule
            if kind == "weight":
                weighted.append(i)
            else:
                counts[i] = _rounded(value * size) if kind == "repeat" else int(value)
        fixed = sum(counts)
        if fixed > self.epoch_size:
            raise MixtureError(
                f"the repeat / samples rules take {fixed:,} samples, more than an epoch of "
                f"epoch_size={self.epoch_size:,}"
            )
        if not weighted and fixed < self.epoch_size:
            raise MixtureError(
                f"epoch_size={self.epoch_size:,}, but the sources' rules take {fixed:,} samples "
                "and none has a weight: nothing fills the rest (give one a weight)"
            )
        if weighted:
            weights = np.array([self.sources[i].rule[1] for i in weighted])
            if weights.sum() <= 0:
                raise MixtureError(
                    "the weights sum to 0: give at least one weighted source a positive weight"
                )
            shares = largest_remainder(self.epoch_size - fixed, weights)
            for i, n in zip(weighted, shares.tolist(), strict=True):
                counts[i] = n
        return tuple(counts)

    def _check_stratified(self) -> None:
        total = sum(self._counts or ())
        for source, n in zip(self.sources, self._counts or (), strict=True):
            if n and self.per_batch * n < total:
                raise MixtureError(
                    f"source {source.path}: its share {n / total:.4g} of a stratified batch of "
                    f"{self.per_batch} samples is less than one sample; raise the batch size to "
                    f"at least {math.ceil(total / n)} or its share"
                )

    def counts(self, epoch: int, world: int) -> tuple[int, ...]:
        """Samples each source gives in `epoch` (over all ranks)."""
        if self._counts is not None:
            return self._counts
        if (epoch, world) not in self._epoch_counts:
            per_rank = self._scheduled(epoch, world).total()
            self._epoch_counts[epoch, world] = tuple((per_rank * world).tolist())
        return self._epoch_counts[epoch, world]

    def _scheduled(self, epoch: int, world: int) -> ScheduledBatches:
        assert self.schedule is not None
        per_rank = -(-self.epoch_size // world)
        return ScheduledBatches(self.schedule, epoch, per_rank, self.per_batch)

    def layout(self, epoch: int, world: int, workers: int = 1) -> Layout:
        """How `epoch` is cut into ranks, batches and `workers` DataLoader workers
        (`partition.Layout`; only a schedule's depends on the workers, which hand its batches
        out in turn)."""
        counts = self.counts(epoch, world)
        if self.batching == "mixed":
            return Layout.fixed((sum(counts),), world, self.per_batch)
        if self.schedule is None:
            return Layout.fixed(counts, world, self.per_batch)
        key = (epoch, world, workers)
        if key not in self._layouts:  # the last few: every worker and the loader ask alike
            if len(self._layouts) >= 4:
                self._layouts.pop(next(iter(self._layouts)))
            rows = self._scheduled(epoch, world).rows()
            per_rank = tuple(c // world for c in counts)
            self._layouts[key] = Layout(counts, per_rank, HandOutOrder(rows, workers))
        return self._layouts[key]

    # --- which samples ---

    def partials(self, source: int, epochs: int, world: int) -> np.ndarray:
        """Samples the source's cycle gives in each of `epochs` first epochs (what is left
        after its whole passes)."""
        size = self.sizes[source]
        if self._counts is not None:
            return np.full(epochs, self._counts[source] % max(size, 1), dtype=np.int64)
        return np.array(
            [self.counts(e, world)[source] % size for e in range(epochs)], dtype=np.int64
        )

    def source_epoch(
        self,
        source: int,
        shard_counts: np.ndarray,
        seed: int,
        epoch: int,
        shuffle: bool,
        world: int,
    ) -> SourceEpoch:
        """Which samples source `source` gives in `epoch`, in what order (module docstring)."""
        size = self.sizes[source]
        n = self.counts(epoch, world)[source]
        whole, partial = divmod(n, size) if size else (0, 0)
        passes = tuple(
            SourceOrder.build(
                shard_counts,
                epoch_rng(seed, epoch, source, *([j] if j else [])) if shuffle else None,
            )
            for j in range(whole)
        )
        if not partial:
            return SourceEpoch(size, passes, None, 0, 0, np.zeros(1, dtype=np.int64))
        windows = self.partials(source, epoch + 1, world)
        starts = np.concatenate([[0], np.cumsum(windows)])
        cursor = int(starts[epoch])
        first, last = cursor // size, (cursor + partial - 1) // size
        cycle = SourceOrder.build(
            shard_counts, np.random.default_rng([seed, source, ROTATION]) if shuffle else None
        )
        return SourceEpoch(
            size,
            passes,
            cycle,
            cursor,
            first,
            self._offsets(source, seed, shuffle, starts, windows, last)[first:],
        )

    def _offsets(
        self,
        source: int,
        seed: int,
        shuffle: bool,
        starts: np.ndarray,
        windows: np.ndarray,
        last: int,
    ) -> np.ndarray:
        """The rotation of each pass of the cycle up to pass `last`. Pass c+1 is pass c's
        order turned u further, u ≤ N - w, where w is the length of the epoch window holding
        the boundary: its tail of pass c and head of pass c+1 are then apart."""
        size = self.sizes[source]
        if not shuffle or last == 0:
            return np.zeros(last + 1, dtype=np.int64)
        boundaries = np.arange(1, last + 1, dtype=np.int64) * size
        holder = np.searchsorted(starts[1:], boundaries, side="right")  # epoch of each boundary
        width = windows[np.minimum(holder, len(windows) - 1)]
        draws = np.random.default_rng([seed, source, ROTATION, 1]).random(last)
        steps = np.floor(draws * (size - width + 1)).astype(np.int64)
        return np.concatenate([[0], np.cumsum(steps)]) % size

    def cycle_progress(self, source: int, epoch: int, world: int) -> dict[str, int]:
        """Where the source's cycle stands after `epoch`: which pass of it, and how many of
        the pass's samples have been given (what the epoch report shows)."""
        size = self.sizes[source]
        if not size:
            return {"pass": 0, "through": 0, "of": 0}
        given = int(self.partials(source, epoch + 1, world).sum())
        cycle, through = divmod(given, size)
        return {"pass": cycle, "through": through, "of": size}

    def describe(self) -> dict[str, Any]:
        """The declaration, as a resumed run must match it."""
        return {
            "rules": [list(s.rule) for s in self.sources],
            "epoch_size": self.epoch_size,
            "batching": self.batching,
            "schedule": None if self.schedule is None else self.schedule.describe(),
        }


def _rounded(value: float) -> int:
    """The nearest integer, halves up (`round` goes to even)."""
    return math.floor(value + 0.5)


def describe_rule(source: MixSource) -> str:
    """The rule in words: `weight 0.7`, `repeat 2`, `samples 100`."""
    kind, value = source.rule
    return f"{kind} {value:g}"


__all__ = [
    "MixSource",
    "MixtureError",
    "MixturePlan",
    "SchedulePoint",
    "SourceEpoch",
    "WeightSchedule",
]

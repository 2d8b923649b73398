"""The length-bucket stage: samples of similar length batched together, so that a batch padded
to its longest sample pays for little padding.

It takes `lookahead` planned batches at once (a group, their samples decoded), orders the
group's samples by length — the elements the loader ships, `M` of each field's `[M, C]` summed
over fields and clips — or by the bucket of it (`boundaries`: `length < b[0]`, then
`< b[1]`, ...), cuts them into batches of the planned sizes and gives those in a seeded random
order (no long-short cycle every `lookahead` batches). With a token budget (`max_tokens`) the
group is cut by elements instead: as many batches as planned, of as many samples each as keep
the largest batch's shipped elements (count × longest padded, the sum packed) the least it can
be, so a batch of short samples holds more of them than one of long ones and every batch
stays within the budget wherever the group can; a group that cannot is logged, once a reader.
A group holds exactly its planned batches' samples, so every rank keeps its batch count, every
sample is delivered once, and stratified batches are refused (regrouping would mix their
shares).

Why our own: webdataset's and Energon's bucketing group whatever the buffer holds, so their
batches cannot be resumed from the plan; here the plan still says which samples each group
holds, and the order within it is a function of their decoded lengths and the seed.

State: the planned batches taken, the group's references in plan order, how many of its
batches were given and which of its samples (`sent`, what a resize needs: see `elastic`). A
reader resumed inside a group reads and decodes the group again (at most `lookahead` batches)
and gives the rest, as it would have.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import astuple
from typing import Any

import numpy as np

from polymodal.adapters import Field
from polymodal.pipelines.stream.partition import Reference
from polymodal.pipelines.stream.stages.base import Skip

log = logging.getLogger("polymodal.stream")
Prepared = tuple[Reference, list[dict[str, Any]] | Skip]  # a sample's items after decoding


def sample_length(items: list[dict[str, Any]] | Skip) -> int:
    """The elements a sample ships (a skipped sample: 0, as the repeat that replaces it is
    drawn from its batch)."""
    if isinstance(items, Skip):
        return 0
    total = 0
    for item in items:
        for value in item.values():
            if isinstance(value, Field) and value.mask is not None:
                total += int(value.mask.sum())
            elif isinstance(value, Field):
                total += math.prod(value.values.shape[:-1])
    return total


def balanced_sizes(lengths: Sequence[int], parts: int, packed: bool) -> tuple[list[int], int]:
    """The sizes of `parts` consecutive runs of `lengths` (ascending, at least `parts` of
    them) whose largest shipped elements is the least it can be, and that least: a run ships
    its count times its last (longest) length padded, the sum of its lengths packed. Found by
    bisection over what a greedy cut (each run as long as it fits) can keep."""
    prefix = np.cumsum([0, *lengths]).tolist()

    def ships(i: int, j: int) -> int:
        return prefix[j] - prefix[i] if packed else (j - i) * lengths[j - 1]

    def cut(limit: int) -> list[int]:
        sizes, i = [], 0
        while i < len(lengths):
            j = i + 1
            while j < len(lengths) and ships(i, j + 1) <= limit:
                j += 1
            sizes.append(j - i)
            i = j
        return sizes

    low, high = max(lengths, default=0), ships(0, len(lengths))
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if len(cut(middle)) <= parts else (middle + 1, high)
    sizes = cut(low)
    while len(sizes) < parts:  # fewer runs fit: halve the largest (halves ship no more)
        n = sizes.index(max(sizes))
        sizes[n : n + 1] = [sizes[n] - sizes[n] // 2, sizes[n] // 2]
    return sizes, low


class LengthBuckets:
    """Regroups planned batches by length within `lookahead` of them (module docstring);
    `seed` (the stream's seed, epoch and reader) draws the order a group's batches leave in;
    `max_tokens` (with `packed`: the fields ship packed) cuts groups by elements."""

    def __init__(
        self,
        lookahead: int,
        boundaries: Sequence[int],
        seed: Sequence[int],
        max_tokens: int | None = None,
        packed: bool = False,
    ) -> None:
        self.lookahead, self.boundaries, self.seed = lookahead, list(boundaries), list(seed)
        self.max_tokens, self.packed = max_tokens, packed
        self._warned = False
        self.planned = 0  # planned batches taken from the order
        self.group: list[list[int]] = []  # the group's references, in plan order
        self.sizes: list[int] = []  # the group's planned batch sizes
        self.given = 0  # the group's batches given
        self.sent: list[int] = []  # the group's samples given (their places in `group`)

    def state_dict(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "group": self.group,
            "sizes": self.sizes,
            "given": self.given,
            "sent": list(self.sent),  # a copy: a worker's queue pickles it later
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.planned, self.given = int(state["planned"]), int(state["given"])
        self.group, self.sizes = [list(r) for r in state["group"]], list(state["sizes"])
        self.sent = list(state.get("sent", []))

    def regroup(
        self,
        planned: Iterator[list[Prepared]],
        again: Callable[[list[Reference]], list[Prepared]],
    ) -> Iterator[list[Prepared]]:
        """The batches of `planned` (batches of decoded samples, in plan order), regrouped.
        `again(references)` reads and decodes samples once more: a group a resumed reader
        had begun to give."""
        if self.given < len(self.sizes):
            yield from self._give(again([_reference(r) for r in self.group]))
        while batches := [b for _, b in zip(range(self.lookahead), planned, strict=False)]:
            self.planned += len(batches)
            samples = [sample for batch in batches for sample in batch]
            self.group = [[int(v) for v in astuple(ref)] for ref, _ in samples]
            self.sizes, self.given, self.sent = [len(batch) for batch in batches], 0, []
            yield from self._give(samples)

    def _give(self, samples: list[Prepared]) -> Iterator[list[Prepared]]:
        """The group's batches not given yet: its samples by length (plan order on ties) cut
        into its sizes, in the group's seeded order."""
        lengths = [sample_length(items) for _, items in samples]
        keys = [self._key(n) for n in lengths]
        by_length = sorted(range(len(samples)), key=lambda i: (keys[i], i))
        sizes = self.sizes if self.max_tokens is None else self._by_elements(lengths, by_length)
        cuts = np.cumsum([0, *sizes]).tolist()
        batches = [by_length[cuts[n] : cuts[n + 1]] for n in range(len(self.sizes))]
        first = self.planned - len(self.sizes)  # the group's first planned batch
        turns = np.random.default_rng([*self.seed, first]).permutation(len(batches))
        for n in turns[self.given :].tolist():
            self.given += 1
            self.sent += batches[n]
            yield [samples[i] for i in batches[n]]

    def _by_elements(self, lengths: list[int], by_length: list[int]) -> list[int]:
        """The group's batch sizes by elements (`balanced_sizes`), the budget checked."""
        ordered = [lengths[i] for i in by_length]
        if self.boundaries and not self.packed:  # within a bucket, not by length: a bound
            ordered = list(itertools.accumulate(ordered, max))
        sizes, largest = balanced_sizes(ordered, len(self.sizes), self.packed)
        if self.max_tokens is not None and largest > self.max_tokens and not self._warned:
            self._warned = True
            log.warning(
                "length buckets: %d samples cannot make %d batches of at most %d elements (the "
                "largest ships %d); lower batch_size or raise max_tokens",
                len(lengths),
                len(sizes),
                self.max_tokens,
                largest,
            )
        return sizes

    def _key(self, length: int) -> int:
        return bisect.bisect_right(self.boundaries, length) if self.boundaries else length


def _reference(numbers: Sequence[int]) -> Reference:
    """A reference saved as plain numbers (a state is JSON)."""
    source, shard, index, repeated, draw = numbers
    return Reference(source, shard, index, bool(repeated), draw)

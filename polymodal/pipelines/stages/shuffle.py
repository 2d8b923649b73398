"""The shuffle stage: a bounded buffer whose emission order is simulated on integers, so a
resumed run rebuilds its contents by re-reading (not decoding) at most its size."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..partition import Reference
from .base import Skip


class Shuffle:
    """A shuffle buffer of `size` samples whose order is computed on read positions only.

    The emission order depends on the positions and the generator, never on the data, so the
    state is one number (how many were emitted) and a resumed buffer is rebuilt by replaying
    the order on integers and re-reading what the buffer held: at most `size` samples.
    """

    def __init__(self, length: int, size: int, seed: Sequence[int], enabled: bool = True) -> None:
        self.length, self.size, self.seed, self.enabled = length, size, list(seed), enabled
        self.emitted = 0

    def state_dict(self) -> dict[str, int]:
        return {"emitted": self.emitted}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.emitted = state["emitted"]

    def shuffle(
        self, read: Callable[[Sequence[int]], Iterator[tuple[Reference, dict | Skip]]]
    ) -> Iterator[tuple[Reference, dict | Skip]]:
        """Emit the items of read positions 0..length-1 in buffer order; `read(positions)`
        gives the items of increasing positions. On resume the order is replayed on integers
        to the saved point; the positions the buffer held then are read again (at most `size`
        of them, read and not decoded), then reading goes on."""
        order = BufferOrder(self.length, self.size if self.enabled else 1, self.seed)
        for _ in range(self.emitted):
            order.step()
        held = sorted(order.slots)
        buffer = dict(zip(held, read(held), strict=True))
        items = read(range(order.read, self.length))
        next_position = order.read
        while (position := order.step()) is not None:
            while next_position < order.read:
                buffer[next_position] = next(items)
                next_position += 1
            self.emitted += 1
            yield buffer.pop(position)


class BufferOrder:
    """The classic shuffle buffer, on positions 0..length-1 instead of data: fill `size`
    slots; then each step emits a random slot and puts the next position in its place; at
    the end the remaining slots leave in random order. `slots` holds what the buffer holds
    after each step, `read` how many positions it has taken in."""

    def __init__(self, length: int, size: int, seed: Sequence[int]) -> None:
        self.length, self.size = length, size
        self.rng = np.random.default_rng(list(seed))
        self.slots: list[int] = []
        self.read = 0
        self._draws: list[int] = []
        self._draining = False

    def step(self) -> int | None:
        """The next position to emit, or None at the end."""
        while len(self.slots) < self.size and self.read < self.length:
            self.slots.append(self.read)
            self.read += 1
        if self.read < self.length:
            if not self._draws:  # drawn in blocks: the same numbers, far fewer calls
                self._draws = self.rng.integers(0, self.size, 1024).tolist()[::-1]
            slot = self._draws.pop()
            emitted, self.slots[slot] = self.slots[slot], self.read
            self.read += 1
            return emitted
        if not self._draining:
            self.rng.shuffle(self.slots)
            self._draining = True
        return self.slots.pop() if self.slots else None

"""The shuffle stage: a bounded buffer whose emission order is simulated on integers, so a
resumed run restores the order from its state and rebuilds the contents by re-reading (not
decoding) at most the buffer's size: O(buffer), wherever in the epoch it stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from polymodal.pipelines.stream.partition import Reference


class Shuffle:
    """A shuffle buffer of `size` samples whose order is computed on read positions only.

    The emission order depends on the positions and the generator, never on the data, so the
    state is the order's own (what the buffer holds, how far it has read, its generator: O(size)
    numbers) and a resumed buffer is rebuilt by re-reading what it held: at most `size` samples,
    whatever the point of the epoch. A state without the order (saved before it was kept) is
    replayed on integers to its `emitted` count.
    """

    def __init__(self, length: int, size: int, seed: Sequence[int], enabled: bool = True) -> None:
        self.length, self.size, self.seed, self.enabled = length, size, list(seed), enabled
        self.emitted = 0
        self._order: BufferOrder | None = None
        self._saved: Mapping[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        order = None if self._order is None else self._order.state_dict()
        return {"emitted": self.emitted, "order": order}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.emitted, self._saved = state["emitted"], state.get("order")

    def shuffle(
        self, read: Callable[[Sequence[int]], Iterator[tuple[Reference, Any]]]
    ) -> Iterator[tuple[Reference, Any]]:
        """Emit the items of read positions 0..length-1 in buffer order; `read(positions)`
        gives the items of increasing positions. On resume the order is restored to the saved
        point; the positions the buffer held then are read again (at most `size` of them, read
        and not decoded), then reading goes on."""
        order = BufferOrder(self.length, self.size if self.enabled else 1, self.seed)
        if self._saved is not None:
            order.load_state_dict(self._saved)
        else:
            for _ in range(self.emitted):
                order.step()
        self._order = order
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

    def state_dict(self) -> dict[str, Any]:
        """Everything the next steps depend on, as plain numbers (JSON and `weights_only`)."""
        return {
            "slots": list(self.slots),
            "read": self.read,
            "rng": self.rng.bit_generator.state,
            "draws": list(self._draws),
            "draining": self._draining,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.slots, self.read = list(state["slots"]), int(state["read"])
        self.rng.bit_generator.state = state["rng"]
        self._draws, self._draining = list(state["draws"]), bool(state["draining"])

    def take(self, count: int) -> list[int]:
        """The next `count` positions to emit (fewer at the end)."""
        taken: list[int] = []
        while len(taken) < count and (position := self.step()) is not None:
            taken.append(position)
        return taken

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

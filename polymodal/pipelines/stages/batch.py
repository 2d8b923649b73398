"""The batch stage: `collate` of `batch_size` samples; a sample that cannot be read or decoded
is reported and replaced by a repeat of a good one (marked), so shapes and batch counts never
change."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from polymodal.adapters import Batch, collate

from .base import Skip


class Batcher:
    """Groups decoded samples into `Batch`es; a skipped sample becomes a marked repeat of a good
    one of the same batch. A batch with no good sample is filled with repeats of `filler()`,
    the dataset's first readable sample (the same in every run, so a resumed run fills it
    alike); when not even that exists, `batch` returns None."""

    def __init__(
        self,
        batch_size: int,
        filler: Callable[[], dict[str, Any] | None],
        optional: Sequence[str] = (),
    ) -> None:
        self.batch_size, self.filler, self.optional = batch_size, filler, tuple(optional)
        self.batches = 0

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.batches = state["batches"]

    def batch(self, items: list[dict[str, Any] | Skip]) -> tuple[Batch | None, list[Skip]]:
        good = [item for item in items if not isinstance(item, Skip)]
        skips = [item for item in items if isinstance(item, Skip)]
        self.batches += 1
        repeat = good[0] if good else self.filler()
        if repeat is None:
            return None, skips
        filler = {**repeat, "__repeated__": True}
        samples = [filler if isinstance(item, Skip) else item for item in items]
        return collate(samples, self.optional), skips

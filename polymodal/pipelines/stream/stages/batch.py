"""The batch stage: `collate` of one planned batch's samples' items (one each, or K clips
each; the plan decides which samples make a batch, this stage only joins them). A sample that
cannot be read or decoded is reported and replaced by a repeat of a good one (marked), so
shapes and batch counts never change."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from polymodal.adapters import Batch, collate
from polymodal.adapters.collation import BatchMemory
from polymodal.pipelines.stream.stages.base import Skip


class Batcher:
    """Groups decoded samples into `Batch`es; a skipped sample becomes a marked repeat of a good
    one of the same batch. A batch with no good sample is filled with repeats of `filler()`,
    the dataset's first readable sample (the same in every run, so a resumed run fills it
    alike); when not even that exists, `batch` returns None. Fields in `packed` are packed,
    not padded (see `collate`)."""

    def __init__(
        self,
        filler: Callable[[], list[dict[str, Any]] | None],
        optional: Sequence[str] = (),
        packed: Sequence[str] = (),
    ) -> None:
        self.filler, self.optional, self.packed = filler, tuple(optional), tuple(packed)
        self.batches = 0
        self.memory = BatchMemory()  # one reader's epoch: its batches' memory, used again

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.batches = state["batches"]

    def batch(self, samples: list[list[dict[str, Any]] | Skip]) -> tuple[Batch | None, list[Skip]]:
        """One batch of the samples' items (each sample: its items, or a Skip)."""
        good = [items for items in samples if not isinstance(items, Skip)]
        skips = [items for items in samples if isinstance(items, Skip)]
        self.batches += 1
        repeat = good[0] if good else self.filler()
        if repeat is None:
            return None, skips
        filler = [{**item, "__repeated__": True} for item in repeat]
        flat = [i for items in samples for i in (filler if isinstance(items, Skip) else items)]
        return collate(flat, self.optional, self.packed, self.memory), skips

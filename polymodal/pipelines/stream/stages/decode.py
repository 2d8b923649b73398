"""The decode stage: the field adapters, with a generator per sample seeded from (seed,
epoch, key, and which of its draws in the epoch it is), so a resumed run draws the same crops;
optional fields a sample lacks are left out, and metadata members (`json`, `txt`) ride along
decoded, within a bound. With `clips_per_sample` K, each sample is decoded once into K items
(K clips, each with its own generator: distinct starts and crops, audio and video of one clip
cutting the same moment)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from polymodal.adapters import Adapter, DecodeError
from polymodal.adapters.base import load_json
from polymodal.pipelines.stream.partition import Reference
from polymodal.pipelines.stream.stages.base import Skip
from polymodal.seeds import stable_seed

MAX_META_BYTES = 2**16  # a metadata member larger than this skips its sample, reported


class Decode:
    """Raw samples → fields, with the adapters of each field and a per-sample generator."""

    def __init__(
        self,
        fields: Mapping[str, Adapter],
        errors: str,
        seed: int,
        epoch: int,
        optional: Collection[str] = (),
        meta: Sequence[str] = (),
        max_meta_bytes: int = MAX_META_BYTES,
        clips_per_sample: int = 1,
    ):
        self.fields, self.errors, self.seed, self.epoch = fields, errors, seed, epoch
        self.optional, self.meta, self.max_meta_bytes = set(optional), tuple(meta), max_meta_bytes
        self.clips = clips_per_sample
        self.skipped = 0
        # the fields that draw (random crops, clip starts): only they need the sample's seeds
        self.draws = {name for name, adapter in fields.items() if adapter.uses_rng}

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.skipped = state["skipped"]

    def decode(self, ref: Reference, raw: dict[str, Any] | Skip) -> list[dict[str, Any]] | Skip:
        """The sample's `clips_per_sample` items, or its Skip."""
        if isinstance(raw, Skip):
            self.skipped += 1
            return raw
        key = raw["__key__"]
        seeds = self._seeds(key, ref.draw) if self.draws else []
        items: list[dict[str, Any]] = [
            {"__key__": key, "__repeated__": ref.repeated, "__source__": ref.source}
            for _ in range(self.clips)
        ]
        unseeded = [None] * self.clips
        try:
            for name, adapter in self.fields.items():
                if name in self.optional and not any(e in raw for e in adapter.extensions):
                    continue  # an optional field this sample does not have
                # one generator per field, equally seeded: audio and video cut the same moment
                rngs = [_generator(s) for s in seeds] if name in self.draws else unseeded
                for item, field in zip(items, adapter.decode_clips(raw, rngs), strict=True):
                    item[name] = field
            metadata = {ext: self._meta(key, ext, raw[ext]) for ext in self.meta if ext in raw}
        except DecodeError as exc:
            if self.errors == "raise":
                raise
            self.skipped += 1
            reason = f"field {exc.field!r}: {exc.reason}"
            return Skip(key, "decode", reason, raw.get("__url__", ""), source=ref.source)
        if metadata:
            for item in items:
                item["__meta__"] = metadata
        return items

    def _seeds(self, key: str, draw: int) -> list[int]:
        """The seeds of a sample's clips' generators, from the run's seed, the epoch and the
        key (and the draw: a sample given more than once in an epoch, by a source repeated by
        its rule, draws anew each time after the first)."""
        seed = stable_seed(key if not draw else f"{key}@{draw}", self.seed * 1_000_003 + self.epoch)
        # clip 0 draws as a one-clip stream does; the others from seeds of their own
        return [seed] + [stable_seed(f"{key}#{j}", seed) for j in range(1, self.clips)]

    def _meta(self, key: str, ext: str, data: bytes) -> Any:
        """A metadata member as it rides along: JSON decoded, text as a string; bounded."""
        if len(data) > self.max_meta_bytes:
            reason = f"{len(data):,} bytes, over max_meta_bytes={self.max_meta_bytes:,}"
            raise DecodeError(key, ext, reason)
        if ext.rsplit(".", 1)[-1] == "json":
            try:
                return load_json(data, self.max_meta_bytes)
            except ValueError as exc:
                raise DecodeError(key, ext, f"not JSON: {exc}") from None
        return data.decode("utf-8", errors="replace")


def _generator(seed: int) -> np.random.Generator:
    """`np.random.default_rng(seed)`, the same stream in half the time (it skips argument
    checks that cost 20 µs, twice per sample and epoch)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))

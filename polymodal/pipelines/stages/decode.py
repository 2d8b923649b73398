"""The decode stage: the field adapters, with a generator per sample seeded from (seed,
epoch, key), so a resumed run draws the same crops."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from polymodal.adapters import Adapter, DecodeError
from polymodal.seeds import stable_seed

from ..partition import Reference
from .base import Skip


class Decode:
    """Raw samples → fields, with the adapters of each field and a per-sample generator."""

    def __init__(self, fields: Mapping[str, Adapter], errors: str, seed: int, epoch: int):
        self.fields, self.errors, self.seed, self.epoch = fields, errors, seed, epoch
        self.skipped = 0

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.skipped = state["skipped"]

    def decode(self, ref: Reference, raw: dict[str, Any] | Skip) -> dict[str, Any] | Skip:
        if isinstance(raw, Skip):
            self.skipped += 1
            return raw
        key = raw["__key__"]
        seed = stable_seed(key, self.seed * 1_000_003 + self.epoch)
        out: dict[str, Any] = {"__key__": key, "__repeated__": ref.repeated}
        for name, adapter in self.fields.items():
            # one generator per field, equally seeded: audio and video cut the same moment
            rng = np.random.default_rng(seed) if adapter.uses_rng else None
            try:
                out[name] = adapter.decode(raw, rng)
            except DecodeError as exc:
                if self.errors == "raise":
                    raise
                self.skipped += 1
                return Skip(key, "decode", f"field {name!r}: {exc.reason}", raw.get("__url__", ""))
        return out

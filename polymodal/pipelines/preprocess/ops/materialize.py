"""`materialize`: decode every field of a training config once and keep the decoded arrays as
shard members, so that training pays a memory copy per sample instead of a video decode.

    polymodal preprocess SRC DST --op materialize:config=train.toml

Each field of the config's `[data.fields]` whose adapter materialises (video, audio) gets a
`NAME.decoded` member (`codecs.decoded`: the array in its own dtype, zstd-compressed, and the
numbers that place it on the clock); the media members those fields read are dropped, unless
`keep_source`. Other fields (labels, text, images) keep their members as they are. The output's
`index.json` records, per field, the adapter and the options that fixed what was kept, and the
stream refuses a config that differs in one of them.
"""

from __future__ import annotations

import re
from typing import Any

from polymodal.adapters import Adapter
from polymodal.adapters.materialized import decoded_member
from polymodal.codecs.decoded import encode_decoded
from polymodal.pipelines.preprocess.ops.base import Op, Result, Sample, register_op
from polymodal.pipelines.stream.fields import build_adapter, field_specs

_FIELD_NAME = re.compile(r"^[a-z0-9_]+$")  # a member name's first part: no dots, no case


@register_op("materialize")
class Materialize(Op):
    """Keep each materialisable field of `config` (a training TOML or a run's config.json)
    decoded; `level` is zstd's (0: raw, larger and faster to read)."""

    def __init__(self, config: str = "", level: int = 3, keep_source: bool = False) -> None:
        if not config:
            raise ValueError("materialize needs config=PATH (a training config's [data.fields])")
        if not 0 <= level <= 19:
            raise ValueError(f"level must be a zstd level from 0 to 19, got {level}")
        self.fields = field_specs(config)  # the stream's specs, not the training config
        self.level, self.keep_source = level, keep_source
        self._adapters: dict[str, Adapter] | None = None
        self.adapters()  # a config with nothing to keep, or bad names, fails before the job

    def adapters(self) -> dict[str, Adapter]:
        """The config's fields whose adapters materialise, built once per worker."""
        if self._adapters is None:
            built = {
                name: build_adapter(spec, f"data.fields.{name}")
                for name, spec in self.fields.items()
            }
            self._adapters = {n: a for n, a in built.items() if a.materialized_options}
            bad = [n for n in self._adapters if not _FIELD_NAME.match(n)]
            if bad:
                raise ValueError(f"field names {bad} cannot name members (a-z, 0-9, _ only)")
            if not self._adapters:
                raise ValueError("none of the config's fields materialises (video, audio do)")
        return self._adapters

    def records(self) -> dict[str, Any]:
        """What the output's index records: field → adapter and the options that fixed it."""
        return {name: a.materialized_record() for name, a in self.adapters().items()}

    def __call__(self, sample: Sample) -> Result:
        used: set[str] = set()
        for name, adapter in self.adapters().items():
            ext = next((e for e in adapter.extensions if e in sample), None)
            if ext is None and self.fields[name].optional:
                continue  # an optional field this sample does not have: it stays without
            if ext is None:
                raise ValueError(f"field {name!r}: no member {list(adapter.extensions)}")
            array, meta = adapter.materialize(bytes(sample[ext]), ext)
            sample[decoded_member(name)] = encode_decoded(array, meta, self.level)
            used.add(ext)
        if not self.keep_source:
            for ext in used:
                del sample[ext]
        return sample

    def __getstate__(self) -> dict[str, Any]:  # shipped to workers without built adapters
        return {**self.__dict__, "_adapters": None}

"""Fields of a materialised dataset: the adapter a config names, reading the `NAME.decoded`
member that `polymodal preprocess --op materialize` wrote in place of the media.

The dataset's `index.json` records, per field, the adapter and the options that fixed what was
kept (`Adapter.materialized_options`); `materialized_fields` refuses a config whose field
differs in one of them, naming it, since its clips would silently be of another size or rate.
Read-time options (clip length, crop, flip, audio shift / gain / noise) are free to change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polymodal.codecs.decoded import decode_decoded

from .base import Adapter, Reconstruction
from .field import Field
from .field_input import FieldInput

DECODED_SUFFIX = "decoded"


def decoded_member(field: str) -> str:
    """The member a materialised field is kept in: `video.decoded` for field `video`."""
    return f"{field}.{DECODED_SUFFIX}"


class MaterializedField(Adapter):
    """`inner` reading its field's materialised member first, its media members otherwise
    (a mix of materialised and media datasets); the device half (`encoder`) is the inner's."""

    def __init__(self, inner: Adapter, field: str) -> None:
        self.inner, self.member = inner, decoded_member(field)
        super().__init__([self.member, *inner.extensions], field)

    @property
    def uses_rng(self) -> bool:
        return self.inner.uses_rng

    @property
    def mixable(self) -> bool:  # type: ignore[override]  # the inner adapter's ClassVar
        return self.inner.mixable

    def encoder(self, *args: Any, **options: Any) -> FieldInput:
        return self.inner.encoder(*args, **options)

    def materialized_record(self) -> dict[str, Any]:
        return self.inner.materialized_record()

    def reconstruction(self, encoder: Mapping[str, Any]) -> Reconstruction | None:
        return self.inner.reconstruction(encoder)

    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        return self.clips_from_bytes(data, ext, [rng])[0]

    def clips_from_bytes(
        self, data: bytes, ext: str, rngs: Sequence[np.random.Generator | None]
    ) -> list[Field]:
        if ext != self.member:
            return self.inner.clips_from_bytes(data, ext, rngs)
        array, meta = decode_decoded(data)
        return [self.inner.from_materialized(array, meta, rng) for rng in rngs]


def record_mismatch(adapter: Adapter, record: Mapping[str, Any]) -> str | None:
    """How `adapter` differs from what a field was materialised with, naming the option."""
    mine = adapter.materialized_record()
    if record.get("adapter") != mine["adapter"]:
        theirs = record.get("adapter")
        return f"it was materialised by the {theirs!r} adapter, not {mine['adapter']!r}"
    ours = mine["options"]
    for option, value in record.get("options", {}).items():
        if ours.get(option) != value:
            return (
                f"options.{option} is {ours.get(option)!r}, the dataset was materialised with "
                f"{value!r} (set it back, or materialise the dataset again with this config)"
            )
    return None


def materialized_fields(
    fields: Mapping[str, Adapter], records: Sequence[Mapping[str, Any]]
) -> dict[str, Adapter]:
    """`fields`, those a dataset materialised reading their `NAME.decoded` member; `records`
    are the datasets' `materialized` tables. A field that differs from its record in an option
    that fixed what was kept is a `ValueError` naming the field and the option."""
    out = dict(fields)
    for record in records:
        for name, entry in record.items():
            if name not in fields:
                continue
            problem = record_mismatch(fields[name], entry)
            if problem is not None:
                raise ValueError(f"field {name!r}: {problem}")
            if not isinstance(out[name], MaterializedField):
                out[name] = MaterializedField(fields[name], name)
    return out

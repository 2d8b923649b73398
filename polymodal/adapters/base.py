"""The adapter contract: raw sample bytes in, a compact `Field` out.

An adapter is the only place that knows how one modality is stored. Everything downstream (the
stream, collation, the model) sees `Field`s: a flat `[M, C]` array in the smallest dtype that
holds the data, plus the grid shape or coordinates the model needs to build positions. Positional
encodings are never computed here: they are cheap on the device and huge on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from polymodal.adapters.field import Field
from polymodal.adapters.field_input import FieldInput
from polymodal.seeds import stable_seed


class DecodeError(ValueError):
    """A sample's bytes could not be turned into a field.

    It names the sample key, the field and the reason, so that a skipped sample can be reported
    and found again; the stream counts these under its `skip` policy and re-raises under `raise`.
    """

    def __init__(self, key: str, field: str, reason: str) -> None:
        self.key = key
        self.field = field
        self.reason = reason
        super().__init__(f"sample {key!r}, field {field!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions cross process boundaries (DataLoader workers); keep all three parts.
        return (type(self), (self.key, self.field, self.reason))


def load_json(data: bytes, max_bytes: int) -> Any:
    """A JSON member, refused over `max_bytes`: JSON cannot be parsed in part, and a parsed
    document takes many times its size in memory."""
    if len(data) > max_bytes:
        raise ValueError(f"{len(data):,} bytes of JSON, over max_json_bytes={max_bytes:,}")
    return json.loads(data)


@dataclass(frozen=True)
class Preview:
    """What a contact sheet shows of one field: pictures (uint8 `[H, W, 3]` each), a waveform
    (float `[n]` in [-1, 1] at `rate`), points (`[N, 3]` in [-1, 1]), or a line of text."""

    frames: tuple[np.ndarray, ...] = ()
    wave: np.ndarray | None = None
    rate: int = 0
    points: np.ndarray | None = None
    text: str = ""


@dataclass(frozen=True)
class Reconstruction:
    """How the autoencode task rebuilds a field: `values` `[M, C]` on `grid` become targets
    `values · scale + offset` (in [-1, 1]); one output query per element, or per 1-d `patch`
    of elements, each predicting `channels` numbers; `dtype` is the field's own."""

    grid: tuple[int, ...]
    channels: int
    scale: float
    offset: float
    dtype: type[np.generic]
    patch: tuple[int, ...] | None = None


class Adapter:
    """Base class of modality adapters: `decode(sample) -> Field` on the CPU.

    Subclasses set `extensions` (the sample members they read, in order of preference) and
    implement `decode_bytes`. They report bad input by raising any exception (`ValueError` for
    what they check themselves); `decode` turns it into a `DecodeError` that names the sample
    key and the field, so every adapter reports errors the same way.
    """

    name: ClassVar[str] = ""
    extensions: tuple[str, ...] = ()
    # The extensions whose members are this modality when a dataset does not say (None: all of
    # `extensions`). The audio adapter reads video containers, yet an `.mp4` is video.
    default_for: ClassVar[tuple[str, ...] | None] = None
    # Whether mixup / cutmix may blend two samples' fields (not byte ids, labels or point sets).
    mixable: ClassVar[bool] = True

    def __init__(self, extensions: Sequence[str] | None = None, field: str | None = None) -> None:
        if extensions is not None:
            self.extensions = tuple(e.lower().lstrip(".") for e in extensions)
        if not self.extensions:
            raise ValueError(f"{type(self).__name__} needs at least one extension to read")
        self.field = field or self.name or type(self).__name__

    def decode(self, sample: Mapping[str, Any], rng: np.random.Generator | None = None) -> Field:
        """Decode this adapter's member of a raw sample.

        `rng` drives random augmentation; the stream passes one seeded per sample so that a
        resumed run draws the same crops. Without one, an adapter that draws (`uses_rng`) gets a
        generator seeded from the key; the others get None and skip the cost of seeding.
        """
        return self.decode_clips(sample, [rng])[0]

    def decode_clips(
        self, sample: Mapping[str, Any], rngs: Sequence[np.random.Generator | None]
    ) -> list[Field]:
        """One field per generator from one member, decoded once where the adapter can
        (`clips_from_bytes`): several clips of one video for the price of one decode."""
        key = str(sample.get("__key__", "?"))
        ext = next((e for e in self.extensions if e in sample), None)
        if ext is None:
            present = sorted(k for k in sample if not k.startswith("__"))
            raise DecodeError(key, self.field, f"no member {list(self.extensions)} in {present}")
        data = sample[ext]
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(key, self.field, f"{ext}: expected bytes, got {type(data).__name__}")
        if len(data) == 0:
            raise DecodeError(key, self.field, f"{ext}: empty member")
        if self.uses_rng:
            rngs = [np.random.default_rng(stable_seed(key, 0)) if r is None else r for r in rngs]
        try:
            return self.clips_from_bytes(bytes(data), ext, rngs)
        except DecodeError:
            raise
        except ValueError as exc:  # what decoders check themselves: the reason says it all
            raise DecodeError(key, self.field, f"{ext}: {exc}") from exc
        except Exception as exc:  # every failure of a third-party decoder becomes one error type
            raise DecodeError(key, self.field, f"{ext}: {type(exc).__name__}: {exc}") from exc

    def clips_from_bytes(
        self, data: bytes, ext: str, rngs: Sequence[np.random.Generator | None]
    ) -> list[Field]:
        """`decode_bytes` once per generator; an adapter that materialises decodes the member
        once (`materialize`) and cuts every clip from that (`from_materialized`)."""
        if len(rngs) > 1 and self.materialized_options:
            array, meta = self.materialize(data, ext)
            return [self.from_materialized(array, meta, rng) for rng in rngs]
        return [self.decode_bytes(data, ext, rng) for rng in rngs]

    # Materialising: decode once, keep the array, cut clips and crops from it at read time.
    # The options that fix what `materialize` keeps (recorded in the index, checked by the
    # stream); none: the adapter's fields always decode from their members.
    materialized_options: ClassVar[tuple[str, ...]] = ()

    def materialize(self, data: bytes, ext: str) -> tuple[np.ndarray, dict[str, float]]:
        """A member decoded once at the training resolution, with room for what is drawn at
        read time (clip start, crop), and the numbers `from_materialized` needs to draw it."""
        raise NotImplementedError(f"{type(self).__name__} does not materialise")

    def from_materialized(
        self, array: np.ndarray, meta: Mapping[str, float], rng: np.random.Generator | None
    ) -> Field:
        """The field `decode_bytes` would give, cut from `materialize`'s array: a memory copy
        and the same draws from the same generator."""
        raise NotImplementedError(f"{type(self).__name__} does not materialise")

    def materialized_record(self) -> dict[str, Any]:
        """What the index records of a field materialised with this adapter."""
        options = {name: getattr(self, name) for name in self.materialized_options}
        return {"adapter": self.name, "options": json.loads(json.dumps(options))}

    @property
    def uses_rng(self) -> bool:
        """Whether `decode_bytes` draws from its generator (random crops, point sampling)."""
        return False

    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        raise NotImplementedError

    def encoder(self, *args: Any, **options: Any) -> FieldInput:
        """The device half: a module turning this adapter's batched fields into input tokens
        (cast, normalise, patch, positions). Options are the modality's (patch sizes, bands)."""
        raise NotImplementedError(f"{type(self).__name__} has no model-side encoder")

    # Hooks: what `inspect`, `preview` and the autoencode task ask of a modality. Each has a
    # default, so an adapter that only decodes still builds, inspects and previews.

    def probe(self, data: bytes, ext: str) -> dict[str, float]:
        """Cheap metadata of one member for `inspect` (headers only where the format allows)."""
        return {}

    def preview(self, data: bytes, ext: str, classes: Sequence[str] | None) -> Preview:
        """What a contact sheet shows of one member (`classes`: the dataset's class names)."""
        return Preview(text=f".{ext}: {len(data):,} bytes")

    def reconstruction(self, encoder: Mapping[str, Any]) -> Reconstruction | None:
        """How autoencoding rebuilds this field given its encoder options; None: it cannot."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(extensions={list(self.extensions)})"

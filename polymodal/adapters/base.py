"""The adapter contract: raw sample bytes in, a compact `Field` out.

An adapter is the only place that knows how one modality is stored. Everything downstream (the
stream, collation, the model) sees `Field`s: a flat `[M, C]` array in the smallest dtype that
holds the data, plus the grid shape or coordinates the model needs to build positions. Positional
encodings are never computed here: they are cheap on the device and huge on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from polymodal.perceiver.io import Tokens, token_width
from polymodal.registry import Registry
from polymodal.seeds import stable_seed

ENTRY_POINT_GROUP = "polymodal.adapters"

Grid = tuple[int, ...]


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


@dataclass
class Field:
    """One modality of one sample, or of a batch once collated.

    `values` is `[M, C]` (`[B, M, C]` in a batch). Positions are implied by `grid` (e.g.
    `(T, H, W)`, row-major over `M`) or given by `coords` (`[M, d]`, point clouds). `mask`
    (`[M]` / `[B, M]`, True = real element) marks padding: a decoded field carries one only
    when the adapter padded it (short audio); collation always sets it. In a batch, `grid` is
    the grid shared by all samples, or a list of per-sample grids when N-d grids differ.
    """

    values: torch.Tensor
    grid: Grid | list[Grid] | None = None
    coords: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def on_grid(self) -> torch.Tensor:
        """`values` as `[*grid, C]`: pixels as `[H, W, 3]`, a clip as `[T, H, W, 3]`."""
        if not isinstance(self.grid, tuple):
            raise ValueError("the field has no grid of its own (point clouds, or a batch)")
        return self.values.reshape(*self.grid, self.values.shape[-1])

    def _map(self, fn: Any) -> Field:
        return Field(
            values=fn(self.values),
            grid=self.grid,
            coords=None if self.coords is None else fn(self.coords),
            mask=None if self.mask is None else fn(self.mask),
        )

    def pin_memory(self) -> Field:
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Field:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


@dataclass
class Batch(MutableMapping[str, Field]):
    """A collated batch: modality name → batched `Field`, plus per-sample keys and flags.

    `repeated[i]` is True where the stream repeated a sample to keep ranks equal in length, so
    evaluation can drop it. `pin_memory` exists so that `DataLoader(pin_memory=True)` pins it.
    It is a mutable mapping because PyTorch's `default_convert` (a user's own
    `DataLoader(stream, batch_size=None)`) copies and updates those, but rebuilds a plain
    mapping from its items alone, which would lose the keys.
    """

    fields: dict[str, Field]
    keys: list[str] = field(default_factory=list)  # type: ignore[assignment]  # not Mapping.keys
    repeated: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    # optional fields: which samples have them (bool `[B]`); a field no sample of the batch has
    # is left out of `fields` and is all False here
    present: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: list[dict[str, Any]] = field(default_factory=list)  # metadata members, per sample
    # which source of a mixture each sample came from (int64 `[B]`; the order the stream's
    # sources were given in), so a loss or a count can be kept per source
    sources: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def __getitem__(self, name: str) -> Field:
        return self.fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __setitem__(self, name: str, value: Field) -> None:
        self.fields[name] = value

    def __delitem__(self, name: str) -> None:
        del self.fields[name]

    def __copy__(self) -> Batch:
        return self._like(dict(self.fields))

    def _like(
        self, fields: dict[str, Field], keep: torch.Tensor | None = None, device: Any = None
    ) -> Batch:
        """This batch's keys, flags and metadata around `fields`: the rows `keep`, on `device`."""

        def rows(t: torch.Tensor) -> torch.Tensor:
            t = t if keep is None else t[keep]
            return t if device is None else t.to(device)

        picked = range(len(self.keys)) if keep is None else keep.nonzero().flatten().tolist()
        meta = [self.meta[i] for i in picked] if self.meta else []
        present = {name: rows(p) for name, p in self.present.items()}
        keys = [self.keys[i] for i in picked]
        sources = rows(self.sources) if len(self.sources) else self.sources
        return Batch(fields, keys, rows(self.repeated), present, meta, sources)

    def has(self, name: str) -> torch.Tensor:
        """Which samples have field `name` (bool `[B]`): all, unless the field is optional."""
        if name in self.present:
            return self.present[name]
        return torch.full((len(self.keys),), name in self.fields, dtype=torch.bool)

    @property
    def size(self) -> int:
        """Number of samples in the batch."""
        return len(self.keys)

    def select(self, keep: torch.Tensor) -> Batch:
        """The samples where `keep` (bool `[B]`) is True, e.g. without the padding repeats."""
        picked = keep.nonzero().flatten().tolist()

        def rows(f: Field) -> Field:
            grid = [f.grid[i] for i in picked] if isinstance(f.grid, list) else f.grid
            return Field(
                values=f.values[keep],
                grid=grid,
                coords=None if f.coords is None else f.coords[keep],
                mask=None if f.mask is None else f.mask[keep],
            )

        return self._like({name: rows(f) for name, f in self.fields.items()}, keep)

    def pin_memory(self) -> Batch:
        batch = self._like({name: f.pin_memory() for name, f in self.fields.items()})
        batch.repeated = batch.repeated.pin_memory()
        return batch

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        fields = {name: f.to(device, non_blocking) for name, f in self.fields.items()}
        return self._like(fields, device=device)


class FieldInput(nn.Module):
    """A batched `Field` → input tokens `[B, M, C]` and mask `[B, M]`, through a
    `polymodal.perceiver.io` module that takes some of the field's parts (`arguments`).
    `channels` is the token width."""

    def __init__(self, module: nn.Module, arguments: Sequence[str] = ("values", "grid", "mask")):
        super().__init__()
        self.module, self.arguments = module, tuple(arguments)
        self.channels: int = token_width(module)

    def forward(self, field: Field) -> tuple[Tokens, torch.Tensor | None]:
        if "grid" in self.arguments and isinstance(field.grid, list):
            raise ValueError("the batch mixes grid shapes: give the adapter a fixed size")
        return self.module(*(getattr(field, name) for name in self.arguments))


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


# ---------------------------------------------------------------------------------------------
# Registry

_ADAPTERS: Registry[type[Adapter]] = Registry(Adapter, ENTRY_POINT_GROUP, "adapter")
register = _ADAPTERS.register
get = _ADAPTERS.get
available = _ADAPTERS.available


def extension_table() -> dict[str, str | None]:
    """Every extension some registered adapter reads → the modality it is by default, or None
    where that is ambiguous (claimed by several adapters, or by none: `npy`, `json`).

    The adapters' own `extensions` / `default_for` are the only table: a plugin that
    registers an adapter for `depth.png` makes `build`, `inspect` and the ops know it.
    """
    names = available()
    if _TABLE.get("names") != names:
        claims: dict[str, set[str]] = {}
        for name in names:
            cls = get(name)
            for ext in cls.extensions:
                claims.setdefault(ext, set())
            for ext in cls.extensions if cls.default_for is None else cls.default_for:
                claims.setdefault(ext, set()).add(name)
        table = {ext: next(iter(c)) if len(c) == 1 else None for ext, c in claims.items()}
        _TABLE.update(names=names, table=table)
    return _TABLE["table"]


_TABLE: dict[str, Any] = {}


def modality_of(ext: str, fields: Mapping[str, str] | None = None) -> str | None:
    """The modality of a member extension: the dataset's or the user's rule (`fields`, e.g.
    `{"npy": "pointcloud"}`), else the registry's default for the whole extension
    (`depth.png`), else for its last part (`left.mp4` → video); None when none applies."""
    if fields and fields.get(ext):
        return fields[ext]
    table = extension_table()
    if ext in table:
        return table[ext]
    return table.get(ext.rsplit(".", 1)[-1])


def is_known(ext: str) -> bool:
    """Whether some adapter reads members with this extension (whole, or by its last part)."""
    table = extension_table()
    return ext in table or ext.rsplit(".", 1)[-1] in table


# ---------------------------------------------------------------------------------------------
# Collation


def collate(samples: Sequence[Mapping[str, Any]], optional: Sequence[str] = ()) -> Batch:
    """Stack decoded samples (field name → `Field`, plus `__key__` / `__repeated__` and
    `__meta__`, `__source__`) into a Batch.

    Fields of different lengths are zero-padded along `M`, and `mask` marks the real elements.
    A field named in `optional` may be missing from some samples: their rows are all padding
    (mask False) and `batch.present[name]` says which samples have it; any other field must
    be in every sample.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    keys = [str(s.get("__key__", "")) for s in samples]
    names: list[str] = []
    for s in samples:
        names += [k for k in s if not k.startswith("__") and k not in names]
    for key, s in zip(keys, samples, strict=True):
        missing = [n for n in names if n not in s and n not in optional]
        if missing:
            raise ValueError(f"sample {key!r} has fields {sorted(s)}: {missing} missing")
    fields = {name: _collate_field([s.get(name) for s in samples], name) for name in names}
    present = {name: torch.tensor([name in s for s in samples]) for name in optional}
    repeated = torch.tensor([bool(s.get("__repeated__", False)) for s in samples])
    meta = [dict(s.get("__meta__", {})) for s in samples]
    sources = torch.tensor([int(s.get("__source__", 0)) for s in samples], dtype=torch.int64)
    return Batch(fields, keys, repeated, present, meta if any(meta) else [], sources)


def _collate_field(given: list[Field | None], name: str) -> Field:
    template = next(f for f in given if f is not None)
    items = [f if f is not None else _absent(template) for f in given]
    shapes = {tuple(f.values.shape[1:]) for f in items}
    dtypes = {f.values.dtype for f in items}
    if len(shapes) > 1 or len(dtypes) > 1:
        raise ValueError(f"field {name!r}: cannot batch channel shapes {shapes} / dtypes {dtypes}")
    length = max(len(f.values) for f in items)
    values = _stack_padded([f.values for f in items], length)
    if all(f.mask is None and len(f.values) == length for f in items):
        mask = torch.ones(len(items), length, dtype=torch.bool)
    else:
        mask = _stack_padded(
            [
                f.mask if f.mask is not None else torch.ones(len(f.values), dtype=torch.bool)
                for f in items
            ],
            length,
        )
    coords = None
    if items[0].coords is not None:
        present = [f.coords for f in items if f.coords is not None]
        if len(present) < len(items):
            raise ValueError(f"field {name!r}: some samples have coordinates, some do not")
        coords = _stack_padded(present, length)
    return Field(values=values, grid=_collate_grid(items, length), coords=coords, mask=mask)


def _absent(template: Field) -> Field:
    """A sample's row of an optional field it lacks: no elements, so all padding."""
    values = template.values.new_zeros((0, *template.values.shape[1:]))
    coords = (
        None
        if template.coords is None
        else template.coords.new_zeros((0, *template.coords.shape[1:]))
    )
    grid = template.grid if isinstance(template.grid, tuple) else None
    return Field(values=values, grid=grid, coords=coords, mask=torch.zeros(0, dtype=torch.bool))


def _stack_padded(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack along a new batch axis, zero-padding the first axis to `length`. One copy per
    tensor into a preallocated batch: `torch.stack` when sizes agree, else a zeroed buffer
    (4× faster than `pad_sequence` on image-sized fields)."""
    if all(len(t) == length for t in tensors):
        return torch.stack(tensors)
    out = tensors[0].new_zeros((len(tensors), length, *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, : len(t)] = t
    return out


def _collate_grid(items: list[Field], length: int) -> Grid | list[Grid] | None:
    grids = [f.grid for f in items if isinstance(f.grid, tuple)]  # a decoded field's own grid
    if len(grids) < len(items):
        return None
    if all(len(g) == 1 for g in grids):  # 1-d sequences pad at the end: positions stay valid
        return (length,)
    if all(g == grids[0] for g in grids):
        return grids[0]
    return grids

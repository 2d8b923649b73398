"""What adapters make and the model reads: a `Field` (one modality of one sample, or of a batch)
and a `Batch` (field name → field, with each sample's key, flags and source)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

Grid = tuple[int, ...]

# tensors whose storage is at most this many bytes travel inside a batch's pickle
INLINE_BYTES = 64 * 1024


@dataclass
class Field:
    """One modality of one sample, or of a batch once collated.

    `values` is `[M, C]` (`[B, M, C]` in a batch). Positions are implied by `grid` (e.g.
    `(T, H, W)`, row-major over `M`) or given by `coords` (`[M, d]`, point clouds). `mask`
    (`[M]` / `[B, M]`, True = real element) marks padding: a decoded field carries one only
    when the adapter padded it (short audio); collation always sets it. In a batch, `grid` is
    the grid shared by all samples, or a list of per-sample grids when N-d grids differ.

    A packed batch (`collate(..., packed=...)`) has no padding: `values` is `[T, C]`, the
    samples' elements one after another, sample `i` at `offsets[i]:offsets[i + 1]` (int64
    `[B + 1]`, kept on the CPU: the model slices by it), `grid` each sample's own grid (a list),
    `coords` `[T, d]` and no `mask`.
    """

    values: torch.Tensor
    grid: Grid | list[Grid] | None = None
    coords: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    offsets: torch.Tensor | None = None

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
            offsets=self.offsets,
        )

    def rows(self, index: torch.Tensor) -> Field:
        """A batched field's samples at `index` (a bool mask `[B]`, or positions, in their
        order, repeats allowed)."""
        picked = index.nonzero().flatten() if index.dtype == torch.bool else index
        grid = [self.grid[i] for i in picked.tolist()] if isinstance(self.grid, list) else self.grid
        if self.offsets is not None:  # each picked sample's span, in order: O(B) slices
            bounds = self.offsets.tolist()
            spans = [slice(bounds[i], bounds[i + 1]) for i in picked.tolist()]
            lengths = torch.tensor([0] + [span.stop - span.start for span in spans])
            return Field(
                values=torch.cat([self.values[span] for span in spans]),
                grid=grid,
                coords=None if self.coords is None else torch.cat([self.coords[s] for s in spans]),
                offsets=lengths.cumsum(0),
            )
        return Field(
            values=self.values[index],
            grid=grid,
            coords=None if self.coords is None else self.coords[index],
            mask=None if self.mask is None else self.mask[index],
        )

    def padded(self, length: int | None = None) -> Field:
        """A packed field padded again: `values` `[B, length, C]` (and `coords`), zero after
        each sample's own elements, and the `mask` of real ones. `length` defaults to the
        longest sample's; a model part that needs a fixed grid per sample (the autoencoder's
        targets) or one call over the batch (`FieldInput`'s per-element modules) reads this."""
        if self.offsets is None:
            raise ValueError("padded() unpacks a packed field (one with offsets)")
        lengths = self.offsets.diff()
        longest = int(lengths.max()) if len(lengths) else 0
        length = longest if length is None else length
        if longest > length:
            raise ValueError(f"a packed sample of {longest} elements does not fit {length}")
        real = (torch.arange(length) < lengths[:, None]).to(self.values.device)

        def spread(packed: torch.Tensor) -> torch.Tensor:
            out = packed.new_zeros((len(lengths), length, *packed.shape[1:]))
            out[real] = packed
            return out

        coords = None if self.coords is None else spread(self.coords)
        return Field(values=spread(self.values), grid=self.grid, coords=coords, mask=real)

    def pin_memory(self) -> Field:
        return self._map(lambda t: t.pin_memory())

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        parts = (self.values, self.coords, self.mask, self.offsets)
        return _field_from_pickle, (self.grid, *(_to_pickle(t) for t in parts))

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

    def elements(self, names: Iterable[str]) -> tuple[int, int]:
        """(real, shipped) elements of fields `names` (the `M` of each `[M, C]`, summed): what
        a token-budget counts, and the padding share `1 - real / shipped` a batch pays for."""
        real = shipped = 0
        for name in names:
            f = self.fields.get(name)
            if f is None:
                continue
            if f.offsets is not None or f.mask is None:
                count = math.prod(f.values.shape[:-1])
                real, shipped = real + count, shipped + count
            elif f.mask.numel() and not any(f.mask.stride()):  # one value seen everywhere
                one = bool(f.mask[(0,) * f.mask.dim()])  # (an unpadded batch's: no B×M sum)
                real, shipped = real + one * f.mask.numel(), shipped + f.mask.numel()
            else:
                real, shipped = real + int(f.mask.sum()), shipped + f.mask.numel()
        return real, shipped

    def select(self, keep: torch.Tensor) -> Batch:
        """The samples where `keep` (bool `[B]`) is True, e.g. without the padding repeats."""
        return self._like({name: f.rows(keep) for name, f in self.fields.items()}, keep)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        present = {name: _to_pickle(p) for name, p in self.present.items()}
        tensors = (_to_pickle(self.repeated), _to_pickle(self.sources))
        return _batch_from_pickle, (self.fields, self.keys, present, self.meta, *tensors)

    def pin_memory(self) -> Batch:
        batch = self._like({name: f.pin_memory() for name, f in self.fields.items()})
        batch.repeated = batch.repeated.pin_memory()
        return batch

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        fields = {name: f.to(device, non_blocking) for name, f in self.fields.items()}
        return self._like(fields, device=device)


class _Inline(NamedTuple):
    """A small CPU tensor as bytes, with its dtype and layout (see `_to_pickle`)."""

    data: bytes
    dtype: torch.dtype
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


def _to_pickle(t: torch.Tensor | None) -> torch.Tensor | _Inline | None:
    """A small CPU tensor as `_Inline` bytes; others as they are. A DataLoader worker sends
    every tensor of a batch through shared memory, each its own segment that the main process
    maps and unmaps, about 0.1 ms of its time apiece; a batch carries several tiny ones (labels,
    flags, an unpadded field's one-byte mask), which cost nothing inside the pickle."""
    if t is None or t.device.type != "cpu" or t.untyped_storage().nbytes() > INLINE_BYTES:
        return t
    data = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy().tobytes()
    return _Inline(data, t.dtype, tuple(t.shape), t.stride(), int(t.storage_offset()))


def _from_pickle(t: torch.Tensor | _Inline | None) -> torch.Tensor | None:
    if not isinstance(t, _Inline):
        return t
    storage = torch.empty(0, dtype=t.dtype)
    if t.data:
        storage = torch.frombuffer(bytearray(t.data), dtype=t.dtype)
    return storage.as_strided(t.size, t.stride, t.offset)


def _field_from_pickle(grid: Grid | list[Grid] | None, *tensors: Any) -> Field:
    values, coords, mask, offsets = tensors
    return Field(_tensor(values), grid, *(_from_pickle(t) for t in (coords, mask, offsets)))


def _batch_from_pickle(
    fields: dict[str, Field],
    keys: list[str],
    present: dict[str, torch.Tensor | _Inline],
    meta: list[dict[str, Any]],
    repeated: torch.Tensor | _Inline,
    sources: torch.Tensor | _Inline,
) -> Batch:
    flags = {name: _tensor(p) for name, p in present.items()}
    return Batch(fields, keys, _tensor(repeated), flags, meta, _tensor(sources))


def _tensor(t: torch.Tensor | _Inline) -> torch.Tensor:
    out = _from_pickle(t)
    assert out is not None
    return out

"""Samples into batches: fields of different lengths zero-padded along `M` with a mask of the
real elements, optional fields a sample lacks all padding, keys, flags, metadata and sources
carried along."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

from polymodal.adapters.field import Batch, Field, Grid
from polymodal.machine import cores


def collate(
    samples: Sequence[Mapping[str, Any]],
    optional: Sequence[str] = (),
    packed: Sequence[str] = (),
    memory: BatchMemory | None = None,
) -> Batch:
    """Stack decoded samples (field name → `Field`, plus `__key__` / `__repeated__` and
    `__meta__`, `__source__`) into a Batch.

    Fields of different lengths are zero-padded along `M`, and `mask` marks the real elements.
    A field named in `optional` may be missing from some samples: their rows are all padding
    (mask False) and `batch.present[name]` says which samples have it; any other field must
    be in every sample. A field named in `packed` is not padded but packed: its samples'
    elements one after another, with `offsets` (see `Field`); a sample without it (optional)
    has an empty span. `memory`: where the batch's tensors are made (`BatchMemory`, memory
    of earlier batches nothing holds any more; default: fresh memory).
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
    fields = {}
    for name in names:
        join = _pack_field if name in packed else _collate_field
        fields[name] = join([s.get(name) for s in samples], name, memory)
    present = {name: torch.tensor([name in s for s in samples]) for name in optional}
    repeated = torch.tensor([bool(s.get("__repeated__", False)) for s in samples])
    meta = [dict(s.get("__meta__", {})) for s in samples]
    sources = torch.tensor([int(s.get("__source__", 0)) for s in samples], dtype=torch.int64)
    return Batch(fields, keys, repeated, present, meta if any(meta) else [], sources)


def _collate_field(given: list[Field | None], name: str, memory: BatchMemory | None) -> Field:
    template = next(f for f in given if f is not None)
    items = [f if f is not None else _absent(template) for f in given]
    shapes = {tuple(f.values.shape[1:]) for f in items}
    dtypes = {f.values.dtype for f in items}
    if len(shapes) > 1 or len(dtypes) > 1:
        raise ValueError(f"field {name!r}: cannot batch channel shapes {shapes} / dtypes {dtypes}")
    length = max(f.values.shape[0] for f in items)
    values = _stack_padded([f.values for f in items], length, memory)
    if all(f.mask is None and f.values.shape[0] == length for f in items):
        # no padding: one True seen everywhere (read-only), not B×M bytes to fill and to send
        mask = torch.ones((), dtype=torch.bool).expand(len(items), length)
    else:
        mask = _stack_padded(
            [
                f.mask if f.mask is not None else torch.ones(len(f.values), dtype=torch.bool)
                for f in items
            ],
            length,
            memory,
        )
    coords = None
    if items[0].coords is not None:
        present = [f.coords for f in items if f.coords is not None]
        if len(present) < len(items):
            raise ValueError(f"field {name!r}: some samples have coordinates, some do not")
        coords = _stack_padded(present, length, memory)
    return Field(values=values, grid=_collate_grid(items, length), coords=coords, mask=mask)


def _pack_field(given: list[Field | None], name: str, memory: BatchMemory | None) -> Field:
    """The samples' elements concatenated, without padding; each keeps its own grid."""
    given = [f if f is None else _unpadded(f, name) for f in given]
    items = [f for f in given if f is not None]
    if len({(tuple(f.values.shape[1:]), f.values.dtype) for f in items}) > 1:
        raise ValueError(f"field {name!r}: cannot pack samples of different channels or dtypes")
    if any((f.coords is None) != (items[0].coords is None) for f in items):
        raise ValueError(f"field {name!r}: some samples have coordinates, some do not")
    lengths = [0 if f is None else len(f.values) for f in given]
    grids = [f.grid if f is not None else (0,) for f in given]
    coords = None
    if items[0].coords is not None:
        coords = torch.cat([f.coords for f in items if f.coords is not None])
    values = [f.values for f in items]
    return Field(
        values=torch.cat(
            values, out=_batch_tensor(values[0], (sum(lengths), *values[0].shape[1:]), memory)
        ),
        grid=[g if isinstance(g, tuple) else (n,) for g, n in zip(grids, lengths, strict=True)],
        coords=coords,
        offsets=torch.tensor([0, *lengths]).cumsum(0),
    )


def _unpadded(f: Field, name: str) -> Field:
    """A decoded sequence without the padding its adapter added: packing ships only real
    elements. A 1-d grid keeps its real elements (a clip shorter than its duration); an N-d
    grid can drop only whole trailing slices of its first axis (a video with fewer frames
    than `num_frames` keeps its frames); any other padding cannot be packed."""
    if f.mask is None or bool(f.mask.all()):
        return Field(values=f.values, grid=f.grid, coords=f.coords)
    if isinstance(f.grid, tuple) and len(f.grid) > 1:
        rows = f.mask.view(f.grid[0], -1)
        kept = int(rows.all(1).sum())
        if not (rows[:kept].all() and not rows[kept:].any()):
            raise ValueError(f"field {name!r}: a {len(f.grid)}-d grid padded within its slices")
        end = kept * rows.shape[1]
        coords = None if f.coords is None else f.coords[:end]
        return Field(values=f.values[:end], grid=(kept, *f.grid[1:]), coords=coords)
    keep = f.mask
    return Field(
        values=f.values[keep],
        grid=(int(keep.sum()),),
        coords=None if f.coords is None else f.coords[keep],
    )


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


def _stack_padded(
    tensors: list[torch.Tensor], length: int, memory: BatchMemory | None
) -> torch.Tensor:
    """Stack along a new batch axis, zero-padding the first axis to `length`. One copy per
    tensor into a preallocated batch: `torch.stack` when sizes agree, else a zeroed buffer
    (4× faster than `pad_sequence` on image-sized fields)."""
    out = _batch_tensor(tensors[0], (len(tensors), length, *tensors[0].shape[1:]), memory)
    if all(t.shape[0] == length for t in tensors):
        return torch.stack(tensors, out=out)
    out.zero_()
    for i, t in enumerate(tensors):
        out[i, : len(t)] = t
    return out


def _batch_tensor(
    like: torch.Tensor, shape: tuple[int, ...], memory: BatchMemory | None
) -> torch.Tensor:
    """An empty batch tensor of `like`'s dtype (its plain memory from `memory` when given).
    A batch a DataLoader worker sends is moved to shared memory on the way, in the worker's
    queue thread, which copies every tensor not already there. Where the workers leave no
    core idle, that copy costs the worker's own time, so the batch is made in shared memory
    at once (as torch's `default_collate` does): +6% at 2 workers on 2 cores
    (`benchmarks/bench_stream.py`). With a core to spare the queue thread's copy runs beside
    the next batch's decoding, and making shared pages in the worker measured 9% slower at 1
    worker on 2 cores, so the batch is made in plain memory."""
    info = get_worker_info()
    if info is None or info.num_workers < cores():
        return like.new_empty(shape) if memory is None else memory.tensor(like, shape)
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).view(shape)


class BatchMemory:
    """Plain memory for batch tensors, used again once nothing holds the batch it was given to.

    Why: a batch of 64 crops of 224² is 9.6 MB, allocated afresh each batch; the allocator
    hands such blocks back to the system when freed, so every batch faulted its 2,352 pages in
    again, one at a time: 2-4 ms a batch on this project's 2-core machine, where copying 9.6
    MB into memory used before takes 1 ms. A buffer is handed out again only when its
    reference count says that no tensor, view or array is left on it (a tensor made by
    `torch.frombuffer` holds its buffer until the last view of its storage is gone; a batch
    sent to another process moves to shared memory and lets go of it). Tensors under
    `min_bytes` come from the allocator's heap, already faulted in. At most `keep` buffers are
    kept: one of another size that nothing holds makes room for a new size (batches padded to
    their longest sample differ in size), and past that a batch tensor gets memory of its
    own."""

    def __init__(self, keep: int = 8, min_bytes: int = 2**18) -> None:
        self.keep, self.min_bytes = keep, min_bytes
        self._buffers: list[bytearray] = []

    def tensor(self, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        size = math.prod(shape) * like.element_size()
        if size < max(1, self.min_bytes):
            return like.new_empty(shape)
        counts = _references(self._buffers)
        free = [b for b, n in zip(self._buffers, counts, strict=True) if n == _UNHELD]
        buffer = next((b for b in free if len(b) == size), None)
        if buffer is None:
            if len(self._buffers) >= self.keep:
                if not free:
                    return like.new_empty(shape)
                del self._buffers[next(i for i, b in enumerate(self._buffers) if b is free[0])]
            buffer = bytearray(size)
            self._buffers.append(buffer)
        return torch.frombuffer(buffer, dtype=like.dtype).view(shape)

    @property
    def bytes(self) -> int:
        """The memory it keeps, held by batches or free."""
        return sum(len(b) for b in self._buffers)


def _references(buffers: list[bytearray]) -> list[int]:
    """Each buffer's reference count, as this function sees it."""
    return [sys.getrefcount(b) for b in buffers]


# The count of a buffer its list alone holds, measured rather than assumed: what the count of
# a free buffer reads depends on the interpreter (its list, the loop's variable and the call's
# argument on CPython 3.11; later interpreters may borrow the variable's reference). A buffer
# a tensor is made on reads at least one more, the reference its storage holds.
_UNHELD = _references([bytearray(1)])[0]


def _collate_grid(items: list[Field], length: int) -> Grid | list[Grid] | None:
    grids = [f.grid for f in items if isinstance(f.grid, tuple)]  # a decoded field's own grid
    if len(grids) < len(items):
        return None
    if all(len(g) == 1 for g in grids):  # 1-d sequences pad at the end: positions stay valid
        return (length,)
    if all(g == grids[0] for g in grids):
        return grids[0]
    return grids

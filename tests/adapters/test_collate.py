import os

import pytest
import torch

from polymodal.adapters import Batch, Field, collate
from polymodal.adapters.collation import BatchMemory


def _sample(key, length, repeated=False, mask=None):
    return {
        "__key__": key,
        "__repeated__": repeated,
        "audio": Field(
            values=torch.arange(length, dtype=torch.int16)[:, None] + 1, grid=(length,), mask=mask
        ),
        "image": Field(values=torch.full((6, 3), length, dtype=torch.uint8), grid=(2, 3)),
        "cloud": Field(values=torch.ones(length, 4), coords=torch.ones(length, 3)),
    }


def test_pads_to_the_longest_and_masks_real_elements():
    short_mask = torch.tensor([True, True, False])  # the adapter itself padded the last one
    batch = collate([_sample("a", 5), _sample("b", 3, repeated=True, mask=short_mask)])
    assert isinstance(batch, Batch) and batch.keys == ["a", "b"] and batch.size == 2
    assert batch.repeated.tolist() == [False, True]
    audio = batch["audio"]
    assert audio.values.shape == (2, 5, 1) and audio.values.dtype == torch.int16
    assert audio.values[1, :, 0].tolist() == [1, 2, 3, 0, 0]
    assert audio.mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert audio.grid == (5,)  # 1-d sequences pad at the end, positions stay valid
    image = batch["image"]
    assert image.grid == (2, 3) and image.mask.all()
    assert batch["cloud"].coords.shape == (2, 5, 3)
    assert batch["cloud"].coords[1, 3:].abs().sum() == 0


def test_different_nd_grids_are_kept_per_sample():
    a = {"__key__": "a", "image": Field(values=torch.zeros(6, 3, dtype=torch.uint8), grid=(2, 3))}
    b = {"__key__": "b", "image": Field(values=torch.zeros(4, 3, dtype=torch.uint8), grid=(2, 2))}
    batch = collate([a, b])
    assert batch["image"].grid == [(2, 3), (2, 2)]
    assert batch["image"].mask.sum(1).tolist() == [6, 4]


def test_refuses_mismatched_fields_and_channels():
    with pytest.raises(ValueError, match="has fields"):
        collate([_sample("a", 2), {"__key__": "b", "audio": _sample("b", 2)["audio"]}])
    a = {"__key__": "a", "x": Field(values=torch.zeros(2, 3))}
    b = {"__key__": "b", "x": Field(values=torch.zeros(2, 4))}
    with pytest.raises(ValueError, match="cannot batch"):
        collate([a, b])
    with pytest.raises(ValueError):
        collate([])


def test_to_device_moves_every_tensor():
    batch = collate([_sample("a", 4), _sample("b", 2)]).to("meta")
    for field in batch.values():
        assert field.values.is_meta and field.mask.is_meta
    assert batch["cloud"].coords.is_meta and batch.repeated.is_meta
    assert batch.keys == ["a", "b"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning memory needs a CUDA device")
def test_pin_memory_pins_every_tensor():
    batch = collate([_sample("a", 4), _sample("b", 2)]).pin_memory()
    assert all(f.values.is_pinned() and f.mask.is_pinned() for f in batch.values())
    assert batch.repeated.is_pinned()


class _CollatedInWorker(torch.utils.data.Dataset):
    """Collates two samples inside a DataLoader worker and says, as plain values (which the
    trip to the main process cannot change), whether the batch was made in shared memory."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        batch = collate([_sample("a", 5), _sample("b", 3)])
        audio = batch["audio"]
        return {
            "shared": [audio.values.is_shared(), batch["cloud"].values.is_shared()],
            "audio": audio.values.tolist(),
            "mask": audio.mask.tolist(),
        }


@pytest.mark.parametrize("workers,cores", [(1, 1), (1, 2)])
def test_a_worker_makes_batches_in_shared_memory_only_when_no_core_is_idle(workers, cores):
    """With as many workers as cores, the batch is made in shared memory (its trip to the main
    process then copies nothing); with a core to spare, in plain memory. Same values either
    way."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < cores:
        pytest.skip(f"needs {cores} cores")
    expected = collate([_sample("a", 5), _sample("b", 3)])["audio"]
    os.sched_setaffinity(0, available[:cores])  # the workers inherit it
    try:
        loader = torch.utils.data.DataLoader(
            _CollatedInWorker(), batch_size=None, num_workers=workers
        )
        (got,) = list(loader)
    finally:
        os.sched_setaffinity(0, available)
    assert got["shared"] == [workers >= cores] * 2
    assert got["audio"] == expected.values.tolist() and got["mask"] == expected.mask.tolist()


def test_an_unpadded_mask_is_one_shared_true():
    """No padding: the mask is all True without B×M bytes behind it, and reads like any mask."""
    mask = collate([_sample("a", 4), _sample("b", 4)])["image"].mask
    assert mask.shape == (2, 6) and mask.all() and mask.untyped_storage().nbytes() == 1
    assert (mask & torch.tensor([True, False] * 3)).sum() == 6


class _BatchFromWorker(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield collate([_sample("a", 5), _sample("b", 3)])


def test_a_batch_sent_by_a_worker_keeps_every_tensor_and_ships_tiny_ones_inline():
    """Through a real worker: every tensor arrives equal (values, masks, flags, coordinates,
    a padded and an unpadded mask); the tiny ones travel inside the pickle, not as shared
    memory segments of their own, while big ones still go through shared memory."""
    big = torch.arange(70_000, dtype=torch.int32)[:, None]
    expected = collate([_sample("a", 5), _sample("b", 3)])
    (got,) = list(torch.utils.data.DataLoader(_BatchFromWorker(), batch_size=None, num_workers=1))
    assert got.keys == expected.keys and got.repeated.tolist() == expected.repeated.tolist()
    assert got.sources.tolist() == expected.sources.tolist()
    for name, field in expected.items():
        for part in ("values", "coords", "mask"):
            want, have = getattr(field, part), getattr(got[name], part)
            assert (want is None) == (have is None)
            if want is not None:
                assert have.dtype == want.dtype and torch.equal(have, want), (name, part)
                assert not have.is_shared()
        assert got[name].grid == field.grid
    flags = torch.arange(70_000) % 2 == 1
    field = Field(values=big, mask=flags[:3])  # a small view of a big storage: sent as is
    loader = torch.utils.data.DataLoader([field], batch_size=None, num_workers=1)
    sent = next(iter(loader))
    assert sent.values.is_shared() and sent.values.equal(big)
    assert sent.mask.is_shared() and sent.mask.tolist() == [False, True, False]


@pytest.mark.parametrize(
    "tensor",
    [
        torch.ones((), dtype=torch.bool).expand(3, 4),
        torch.arange(12, dtype=torch.bfloat16).view(3, 4)[1:, ::2],
        torch.zeros(0, 5),
        torch.tensor([[1, -2]], dtype=torch.int64),
    ],
    ids=["expanded", "strided-view", "empty", "int64"],
)
def test_a_pickled_field_keeps_small_tensors_exactly(tensor):
    import pickle

    again = pickle.loads(pickle.dumps(Field(values=tensor, grid=(1,), mask=tensor)))
    for got in (again.values, again.mask):
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert got.stride() == tensor.stride() and torch.equal(got, tensor)


def test_batch_memory_is_used_again_only_once_nothing_holds_it():
    """Batches made in a `BatchMemory`: a row view, a NumPy array or a whole batch still held
    keeps its memory from the batches made after it; memory nothing holds any more is used
    again; at most `keep` buffers are kept, whatever the sizes."""

    def batch(n: int, memory: BatchMemory) -> Batch:
        return collate([_sample(f"{n}a", 4 + n % 5), _sample(f"{n}b", 4)], memory=memory)

    def size(b: Batch) -> int:
        tensors = [t for f in b.values() for t in (f.values, f.mask, f.coords) if t is not None]
        return sum(t.untyped_storage().nbytes() for t in tensors)

    roomy = BatchMemory(keep=100, min_bytes=1)
    row = batch(1, roomy)["audio"].values[0]  # the batch is gone, one row of it is not
    array = batch(2, roomy)["image"].values.numpy()
    held = [batch(n, roomy) for n in range(3, 13)]  # two of each of five sizes
    expected = [collate([_sample(f"{n}a", 4 + n % 5), _sample(f"{n}b", 4)]) for n in range(3, 13)]
    for n in range(20):
        batch(n, roomy)  # made and let go: the memory nothing holds any more
    assert row[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert (array[0] == 6).all() and (array[1] == 4).all()
    for got, want in zip(held, expected, strict=True):
        for name in want:
            assert torch.equal(got[name].values, want[name].values)
            assert torch.equal(got[name].mask, want[name].mask)

    fresh = BatchMemory(keep=100, min_bytes=1)
    for n in range(40):  # each made and let go before the next: the same buffers again
        batch(n % 2, fresh)
    assert fresh.bytes <= size(batch(0, fresh)) + size(batch(1, fresh))  # shared sizes once

    small = BatchMemory(keep=3, min_bytes=1)
    kept = [batch(n, small) for n in range(20)]
    assert 0 < small.bytes <= 3 * max(size(b) for b in kept)


class _BigBatchesFromMemory(torch.utils.data.IterableDataset):
    """Batches over `BatchMemory`'s bound in size, each of its own value, made as fast as the
    worker can: the buffer of one is handed out again while earlier ones travel."""

    def __iter__(self):
        memory = BatchMemory()
        for n in range(12):
            field = Field(values=torch.full((70_000, 3), n, dtype=torch.uint8), grid=(70_000,))
            yield collate([{"__key__": str(n), "x": field}] * 2, memory=memory)


def test_batches_a_worker_makes_in_batch_memory_arrive_intact():
    """Through a real worker (plain memory where a core is idle, shared where none is): every
    batch arrives with its own values, none overwritten by a later batch made in the same
    buffer."""
    loader = torch.utils.data.DataLoader(_BigBatchesFromMemory(), batch_size=None, num_workers=1)
    got = [(batch.keys[0], batch["x"].values) for batch in loader]  # all held, then checked
    assert [key for key, _ in got] == [str(n) for n in range(12)]
    for n, (_, values) in enumerate(got):
        assert values.shape == (2, 70_000, 3) and bool((values == n).all())

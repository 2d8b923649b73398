"""Foreign consumers get full epochs: the user's own DataLoader, `islice`, `zip`, `break`,
and real PyTorch Lightning (one process, and two under torchrun with gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from itertools import islice
from pathlib import Path

import pytest
from testdata import batch_digest, numbered_pngs, png_fields, torchrun
from torch.utils.data import DataLoader

from polymodal.pipelines.stream.state import StateError
from polymodal.pipelines.stream.stream import Stream

TOTAL = 54  # samples numbered_pngs puts in the dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("consumers") / "data"
    assert numbered_pngs(path) == TOTAL
    return path


def _real_keys(batches) -> list[str]:
    return [k for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_users_own_dataloader_delivers_every_sample_once(dataset, workers):
    stream = Stream(dataset, png_fields(), batch_size=4)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    batches = list(loader)
    keys = _real_keys(batches)
    assert len(batches) == len(loader) == len(stream)
    assert sorted(keys) == sorted(set(keys)) and len(keys) == TOTAL
    stream.set_epoch(1)
    again = _real_keys(DataLoader(stream, batch_size=None, num_workers=workers))
    assert sorted(again) == sorted(keys) and again != keys  # the next epoch's order


def test_persistent_workers_follow_set_epoch(dataset):
    """Once every epoch repeated epoch 0's order: the workers' copies never saw `set_epoch`
    (Hugging Face datasets had the same bug, huggingface/datasets#6710)."""
    stream = Stream(dataset, png_fields(), batch_size=4)
    persistent = DataLoader(stream, batch_size=None, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in range(3):
        stream.set_epoch(epoch)
        epochs.append(_real_keys(persistent))
    for epoch, keys in enumerate(epochs):
        fresh = Stream(dataset, png_fields(), batch_size=4)
        fresh.set_epoch(epoch)
        assert keys == _real_keys(DataLoader(fresh, batch_size=None, num_workers=2))
    assert len({tuple(keys) for keys in epochs}) == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_torchdatas_stateful_dataloader_resumes_exactly_without_replay(dataset, workers, caplog):
    """torchdata's `StatefulDataLoader` asks each worker's stream for its state after every
    batch and hands it back on resume: no fast-forward, the same batches as an uninterrupted
    run, which are our own loader's batches."""
    stateful = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader

    def loader():
        stream = Stream(dataset, png_fields(), batch_size=4, buffer_size=8, seed=3)
        stream.set_epoch(1)
        return stateful(stream, batch_size=None, num_workers=workers)

    full = [batch_digest(b) for b in loader()]
    ours = Stream(dataset, png_fields(), batch_size=4, buffer_size=8, seed=3).loader(workers)
    ours.set_epoch(1)
    assert full == [batch_digest(b) for b in ours]
    for cut in (1, 5, len(full) - 1):
        first = loader()
        batches = iter(first)
        for _ in range(cut):
            next(batches)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = loader()
        resumed.load_state_dict(state)
        assert [batch_digest(b) for b in resumed] == full[cut:]
    assert "fast-forwarding" not in caplog.text


def test_a_stream_state_from_another_reader_is_refused(dataset):
    stream = Stream(dataset, png_fields(), batch_size=4)
    batches = iter(stream)
    next(batches)
    state = stream.state_dict()
    other = Stream(dataset, png_fields(), batch_size=4)
    other.load_state_dict({**state, "place": [0, 2, 0, 1]})
    with pytest.raises(StateError, match="resume with the world size and worker count"):
        next(iter(other))
    with pytest.raises(StateError, match="not a Stream state"):
        other.load_state_dict({"batches": 3})


def test_the_loader_has_what_a_dataloader_has(dataset):
    stream = Stream(dataset, png_fields(), batch_size=4)
    loader = stream.loader(2)
    assert loader.dataset is stream and loader.batch_size == 4 and loader.num_workers == 2
    assert len(loader) == len(stream)


def _epochs(loader, consume, count: int = 3) -> list[list[str]]:
    return [_real_keys(consume(loader)) for _ in range(count)]


@pytest.mark.parametrize(
    "consume",
    [
        lambda loader: list(islice(loader, len(loader))),
        lambda loader: [b for _, b in zip(range(len(loader)), loader, strict=False)],
        list,
    ],
    ids=["islice", "zip", "list"],
)
def test_every_iteration_is_a_full_new_epoch(dataset, consume):
    loader = Stream(dataset, png_fields(), batch_size=4).loader(2)
    epochs = _epochs(loader, consume)
    assert all(sorted(e) == sorted(epochs[0]) and len(e) == TOTAL for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # three different orders: three epochs
    reference = Stream(dataset, png_fields(), batch_size=4).loader(2)
    assert epochs == _epochs(reference, list)  # the same epochs as a loader run out each time


def test_a_loop_left_half_way_and_set_epoch(dataset):
    loader = Stream(dataset, png_fields(), batch_size=4).loader(0)
    reference = Stream(dataset, png_fields(), batch_size=4).loader(0)
    epochs = [_real_keys(reference) for _ in range(3)]
    for _batch in loader:  # epoch 0, left after one batch
        break
    assert _real_keys(loader) == epochs[1]  # the next iteration is all of epoch 1
    loader.set_epoch(0)
    assert _real_keys(loader) == epochs[0]
    iterator = iter(loader)  # epoch 1: stop half-way, save, drop the iterator
    first = [next(iterator) for _ in range(3)]
    state = loader.state_dict()
    del iterator
    resumed = Stream(dataset, png_fields(), batch_size=4).loader(0)
    resumed.load_state_dict(state)
    assert _real_keys(first) + _real_keys(resumed) == epochs[1]
    assert _real_keys(resumed) == epochs[2]  # and on into the next epoch


LIGHTNING_SCRIPT = """
import json, sys
import lightning as L
import torch
from polymodal.adapters import get
from polymodal.pipelines.stream.state import StateError
from polymodal.pipelines.stream.stream import Stream

train_dir, val_dir, out, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def fields():
    return {"image": get("image")(size=None, extensions=["png"]), "label": get("label")()}


class Data(L.LightningDataModule):
    def train_dataloader(self):
        return Stream(train_dir, fields(), batch_size=4).loader(num_workers=1)

    def val_dataloader(self):
        return Stream(val_dir, fields(), batch_size=4, shuffle=False).loader(num_workers=1)


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(48, 10)
        self.seen = {"train": {}, "val": {}}

    def _keys(self, batch, stage):
        real = [k for k, r in zip(batch.keys, batch.repeated.tolist()) if not r]
        self.seen[stage].setdefault(self.current_epoch, []).extend(real)

    def training_step(self, batch, index):
        self._keys(batch, "train")
        x = batch["image"].values.float().flatten(1)
        return torch.nn.functional.cross_entropy(self.layer(x), batch["label"].values[:, 0, 0])

    def validation_step(self, batch, index):
        if not self.trainer.sanity_checking:
            self._keys(batch, "val")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)


model = Model()
trainer = L.Trainer(
    max_epochs=3, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
    logger=False, enable_checkpointing=False, enable_progress_bar=False,
    num_sanity_val_steps=2, enable_model_summary=False,
)
trainer.fit(model, Data())
with open(f"{out}.{trainer.global_rank}.json", "w") as f:
    json.dump(model.seen, f)
"""


def _lightning(tmp_path: Path, dataset: Path, devices: int) -> list[dict]:
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent(LIGHTNING_SCRIPT))
    out = tmp_path / "seen"
    args = [str(script), str(dataset), str(dataset), str(out), str(devices)]
    if devices > 1:
        torchrun(args, devices, timeout=600)
    else:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in range(devices)]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_lightning_gets_every_epoch_in_full(tmp_path, dataset, devices):
    pytest.importorskip("lightning")
    ranks = _lightning(tmp_path, dataset, devices)
    for stage in ("train", "val"):
        for epoch in ("0", "1", "2"):
            keys = [k for seen in ranks for k in seen[stage][epoch]]
            assert sorted(keys) == sorted(set(keys)) and len(keys) == TOTAL, (stage, epoch)
    orders = [tuple(k for seen in ranks for k in seen["train"][e]) for e in ("0", "1", "2")]
    assert len(set(orders)) == 3  # a new epoch each time, not the first one again

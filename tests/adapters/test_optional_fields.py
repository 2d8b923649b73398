"""A dataset that mixes modalities across samples streams with its default fields (each
optional where some samples lack it), and metadata members ride along in `batch.meta`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from testmedia import image_train_toml

from polymodal.datasets.build import build
from polymodal.datasets.synthetic import encode_audio, encode_image, photo, tone
from polymodal.pipelines.stream.stream import Stream
from polymodal.pipelines.train.config import load_config
from polymodal.pipelines.train.trainer import Trainer

SAMPLES = 24


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Images in even samples, audio in odd ones, a caption on every third, one huge one."""
    root = tmp_path_factory.mktemp("mixed")
    src = root / "src"
    for i in range(SAMPLES):
        label = "cat" if i % 4 < 2 else "dog"
        (src / label).mkdir(parents=True, exist_ok=True)
        if i % 2 == 0:
            (src / label / f"s{i:02d}.jpg").write_bytes(encode_image(photo(i, 32)))
        else:
            audio = tone(440 + 10 * i, seconds=0.5, rate=8000)
            (src / label / f"s{i:02d}.flac").write_bytes(encode_audio(audio, 8000))
        if i % 3 == 0:
            caption = {"caption": f"sample {i}", "i": i}
            (src / label / f"s{i:02d}.json").write_text(json.dumps(caption))
    (src / "cat" / "s00.json").write_text(json.dumps({"caption": "x" * 70_000}))  # too big
    build(src, root / "ds", progress=False)
    return root / "ds"


def _epoch(stream: Stream) -> list:
    return list(stream.loader(0))


def test_default_fields_of_a_mixed_dataset_are_optional(mixed):
    stream = Stream(mixed, batch_size=5, meta=["json"])
    assert sorted(stream.fields) == ["audio", "image", "label"]
    assert stream.optional == ["audio", "image"]
    loader = stream.loader(0)
    batches = list(loader)
    keys = [k for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]
    assert sorted(keys) == sorted({f"{c}/s{i:02d}" for i, c in _names()} - {"cat/s00"})
    (skip,) = loader.report()["samples"]  # the sample with the oversized caption
    assert skip["key"] == "cat/s00" and "max_meta_bytes" in skip["reason"]
    for batch in batches:
        number = [int(k.rsplit("s", 1)[1]) for k in batch.keys]
        image = torch.tensor([n % 2 == 0 for n in number])
        assert torch.equal(batch.has("image"), image)
        assert torch.equal(batch.has("audio"), ~image)
        assert batch.has("label").all()
        if "image" in batch:
            assert not batch["image"].mask[~image].any() and batch["image"].mask[image].all()
        for n, meta in zip(number, batch.meta or [{}] * len(number), strict=True):
            assert meta == ({"json": {"caption": f"sample {n}", "i": n}} if n % 3 == 0 else {})


def _names():
    return [(i, "cat" if i % 4 < 2 else "dog") for i in range(SAMPLES)]


def test_a_required_field_a_sample_lacks_is_a_reported_skip(mixed):
    loader = Stream(mixed, {"image": "image"}, batch_size=6, optional=[]).loader(0)
    list(loader)
    reasons = {s["key"]: s["reason"] for s in loader.report()["samples"]}
    assert len(reasons) == SAMPLES // 2 and all("no member" in r for r in reasons.values())
    with pytest.raises(ValueError, match="not fields"):
        Stream(mixed, {"image": "image"}, optional=["audio"])


def test_training_on_a_mixed_dataset(mixed, tmp_path):
    config = image_train_toml(tmp_path / "c.toml", mixed, mixed, tmp_path / "run", epochs=1)
    text = config.read_text().replace('adapter = "image"', 'adapter = "image"\noptional = true')
    text += '\n[data.fields.audio]\nadapter = "audio"\noptional = true\n'
    text += "options = {duration = 0.5, sample_rate = 8000}\nencoder = {num_bands = 2}\n"
    config.write_text(text)
    summary = Trainer(load_config(config, ["data.label=cls"]), progress=False).run()
    assert summary["val_samples"] == SAMPLES  # no meta asked for: the big caption is not read

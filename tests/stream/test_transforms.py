"""The user's functions in the stream, as webdataset's `.map` / `.select` and Hugging Face's
`.map` / `.filter`: they run in the DataLoader workers on decoded samples, a dropped sample is
counted and reported (never silently lost), and a resumed run drops and changes the same
samples, bitwise."""

import dataclasses
import json

import pytest
from testdata import (
    SHARD_SIZES,
    batch_digest,
    numbered_pngs,
    png_fields,
    set_rank,
    train_toml,
    two_class_pngs,
)

from polymodal import Stream, StreamError
from polymodal.cli import main

TOTAL = sum(SHARD_SIZES)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("transforms") / "data"
    numbered_pngs(path)
    return path


def brighter(sample):
    image = sample["image"]
    return {**sample, "image": dataclasses.replace(image, values=image.values + 1)}


def label_is_not_three(sample) -> bool:
    return int(sample["label"].values[0, 0]) != 3


def _delivered(batches):
    out = {}
    for batch in batches:
        pixels = batch["image"].values[:, 0, 0].tolist()
        for key, repeated, pixel in zip(batch.keys, batch.repeated.tolist(), pixels, strict=True):
            if not repeated:
                out[key] = pixel
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_map_and_filter_run_in_the_workers_and_count_what_they_drop(dataset, monkeypatch, workers):
    kept = {f"k{n:04d}" for n in range(TOTAL) if n % 10 != 3}
    delivered, dropped, lengths = {}, [], set()
    for rank in range(2):
        set_rank(monkeypatch, rank, 2)
        stream = Stream(dataset, png_fields(), batch_size=4, buffer_size=8)
        stream.map(brighter).filter(label_is_not_three)
        loader = stream.loader(workers)
        epoch = list(loader)
        lengths.add(len(epoch))
        delivered.update(_delivered(epoch))
        report = loader.report()
        dropped += [s["key"] for s in report["samples"] if s["stage"] == "filter"]
        assert report["by_stage"].get("filter", 0) == report["skipped"]
    assert set(delivered) == kept  # every kept sample once, each through the map
    assert all(pixel == int(key[1:]) % 256 + 1 for key, pixel in delivered.items())
    assert sorted(dropped) == sorted({f"k{n:04d}" for n in range(TOTAL)} - kept)
    assert len(lengths) == 1  # equal batch counts on every rank


def test_a_lambda_and_an_import_path_work_as_a_function_does(dataset):
    by_function = Stream(dataset, png_fields(), batch_size=5, shuffle=False).map(brighter)
    by_path = Stream(
        dataset,
        png_fields(),
        batch_size=5,
        shuffle=False,
        transforms=["map:test_transforms:brighter"],
    )
    by_lambda = Stream(dataset, png_fields(), batch_size=5, shuffle=False).map(
        lambda s: brighter(s)
    )
    runs = [[batch_digest(b) for b in s.loader(2)] for s in (by_function, by_path, by_lambda)]
    assert runs[0] == runs[1] == runs[2]


def test_resume_with_transforms_is_bitwise(dataset):
    def make():
        stream = Stream(dataset, png_fields(), batch_size=3, buffer_size=6, seed=2)
        return stream.map(brighter).filter(label_is_not_three).loader(2)

    loader = make()
    full = [batch_digest(b) for b in loader]
    loader.set_epoch(0)
    batches = iter(loader)
    for _ in range(3):
        next(batches)
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    assert [batch_digest(b) for b in resumed] == full[3:]


def test_a_failing_function_is_a_reported_skip_or_under_raise_one_error(dataset):
    def broken(sample):
        if sample["__key__"] == "k0005":
            raise KeyError("no such thing")
        return sample

    loader = Stream(dataset, png_fields(), batch_size=4).map(broken).loader(0)
    assert len(_delivered(loader)) == TOTAL - 1
    (skip,) = loader.report()["samples"]
    assert skip["key"] == "k0005" and skip["stage"] == "transform"
    assert "broken" in skip["reason"] and "KeyError" in skip["reason"]
    returns_none = Stream(dataset, png_fields(), batch_size=4).map(lambda s: None).loader(0)
    with pytest.raises(StreamError):  # nothing readable at all: one clear error
        list(returns_none)
    strict = Stream(dataset, png_fields(), batch_size=4, errors="raise").map(broken)
    with pytest.raises(KeyError, match="no such thing"):
        list(strict)
    with pytest.raises(ValueError, match="'map' or 'filter'"):
        Stream(dataset, png_fields(), transforms=[("reduce", brighter)])
    with pytest.raises(ValueError, match="cannot import"):
        Stream(dataset, png_fields(), transforms=["filter:no_such_module:fn"])


def target_is_zero(sample) -> bool:
    return int(sample["target"].values[0, 0]) == 0  # a training run's label field: `target`


@pytest.mark.slow
def test_a_training_config_names_its_transforms_by_path(tmp_path, capsys):
    train = two_class_pngs(tmp_path / "train", shards=2)
    val = two_class_pngs(tmp_path / "val", shards=2, start=100)
    config = train_toml(tmp_path, train, val)
    keep = 'data.transforms=["filter:test_transforms:target_is_zero"]'
    assert main(["train", str(config), "--set", keep, "--set", "epochs=1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["val_samples"] == 4  # the class-0 half of 8
    typo = 'data.transforms=["filter:test_transforms:no_such_fn"]'
    assert main(["train", str(config), "--set", typo]) == 2
    assert "data.transforms[0]: cannot import" in capsys.readouterr().err

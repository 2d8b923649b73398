"""Data that changed under its index: every reader checks each sample it delivers against the
shard's sidecar (its offset and key), so a replaced shard is caught whoever reads it and from
wherever; keys that two shards share come once, the later ones reported."""

from __future__ import annotations

import json
import shutil

import numpy as np
from testdata import png_fields

from polymodal.cli import main
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.synthetic import encode_image
from polymodal.datasets.writer import ShardWriter
from polymodal.pipelines.stream.stream import Stream


def _shards(folder, keys_per_shard, prefix="k"):
    """PNG + label shards, one per list of sample numbers (keys `{prefix}NNNN`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, numbers in enumerate(keys_per_shard):
        with ShardWriter(folder / f"p{n}", prefix="tmp", max_samples=None) as writer:
            for i in numbers:
                png = encode_image(np.full((4, 4, 3), i % 256, np.uint8), "PNG")
                writer.write({"__key__": f"{prefix}{i:04d}", "png": png, "cls": str(i % 10)})
        (tar,) = (folder / f"p{n}").glob("*.tar")
        tar.rename(folder / f"shard-{n:03d}.tar")
        shutil.rmtree(folder / f"p{n}")


def _delivered(loader):
    return [k for b in loader for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]


def test_a_shard_replaced_after_indexing_is_caught_mid_shard(tmp_path):
    data = tmp_path / "data"
    _shards(data, [range(0, 12), range(12, 24)])
    assert main(["index", str(data), "--quiet"]) == 0
    other = tmp_path / "other"  # the same sizes, other samples: only the keys differ
    _shards(other, [range(0, 12), range(12, 24)], prefix="x")
    shutil.copy(other / "shard-001.tar", data / "shard-001.tar")
    assert (data / "shard-001.tar").stat().st_size == ShardIndex.load(data).shards[1].bytes
    # two workers: the second starts inside a shard, reading from the sidecar's offset
    loader = Stream(data, png_fields(), batch_size=5, shuffle=False).loader(num_workers=2)
    keys = _delivered(loader)
    assert not [k for k in keys if k.startswith("x")]  # nothing foreign delivered
    report = loader.report()
    assert len(keys) + report["skipped"] == 24  # every indexed sample delivered or reported
    assert report["skipped"] >= 12
    reasons = {s["reason"] for s in report["samples"]}
    assert any("not the key the index recorded there" in r for r in reasons), reasons


def test_keys_two_shards_share_come_once_and_are_reported(tmp_path, capsys):
    data = tmp_path / "data"
    _shards(data, [range(0, 10), range(5, 15)])  # k0005..k0009 in both
    assert main(["index", str(data), "--quiet"]) == 0
    index = ShardIndex.load(data)
    assert index.duplicates == [["shard-001.tar", i, "shard-000.tar"] for i in range(5)]
    assert json.loads((data / "index.json").read_text())["duplicates"][0] == [
        "shard-001.tar",
        0,
        "shard-000.tar",
    ]
    for workers in (0, 2):
        loader = Stream(data, png_fields(), batch_size=4).loader(num_workers=workers)
        keys = _delivered(loader)
        assert sorted(keys) == [f"k{i:04d}" for i in range(15)]  # each key once
        report = loader.report()
        assert report["skipped"] == 5
        assert all(
            s["reason"].startswith("duplicate key: shard-000.tar") for s in report["samples"]
        )

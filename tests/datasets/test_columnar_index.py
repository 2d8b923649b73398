"""The columnar index: `index.json` as a small header and the shard table in `index.arrow`;
version-1 indexes (every shard listed in `index.json`) still read, the same, and
`polymodal index --upgrade` rewrites one in place."""

import json
import pickle
from pathlib import Path

import numpy as np
from testmedia import index_doc, write_index_doc

from polymodal.adapters import get
from polymodal.cli import main
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.synthetic import encode_image
from polymodal.datasets.writer import ShardWriter
from polymodal.pipelines.stream.stream import Stream


def _dataset(directory: Path, shards: int = 3, per_shard: int = 4) -> Path:
    with ShardWriter(directory, max_samples=per_shard, classes=["even", "odd"]) as writer:
        for n in range(shards * per_shard):
            png = encode_image(np.full((4, 4, 3), n, np.uint8), "PNG")
            sample = {"__key__": f"k{n:04d}", "png": png, "cls": str(n % 2)}
            if n % 3:
                sample["txt"] = b"some"
            writer.write(sample)
    return directory


def _batches(data: Path) -> list[tuple[list[str], bytes]]:
    fields = {"image": get("image")(size=None, extensions=["png"]), "label": get("label")()}
    loader = Stream(data, fields, batch_size=4, seed=3).loader(0)
    return [(b.keys, b["image"].values.numpy().tobytes()) for b in loader]


def test_a_written_index_is_a_header_and_a_shard_table(tmp_path):
    data = _dataset(tmp_path / "d")
    doc = json.loads((data / "index.json").read_text())
    assert doc["version"] == 2 and "shards" not in doc
    assert doc["table"]["name"] == "index.arrow" and doc["table"]["shards"] == 3
    index = ShardIndex.load(data)
    assert index.samples == doc["samples"] == 12 and index.classes == ["even", "odd"]
    assert index.field_counts() == {"cls": 12, "png": 12, "txt": 8}
    assert [s.fields for s in index.shards] == [
        {"cls": 4, "png": 4, "txt": 2},
        {"cls": 4, "png": 4, "txt": 3},
        {"cls": 4, "png": 4, "txt": 3},
    ]
    assert list(index.shards)[1] == index.shards[1] == index.shards[-2]
    assert index.table.samples.flags.writeable is False  # a view of the mapped file
    # to another process as its path: the copy maps the same file, it does not carry it
    assert len(pickle.dumps(index.table)) < 500
    assert list(pickle.loads(pickle.dumps(index.table))) == list(index.shards)


def test_a_version_1_index_reads_the_same_and_upgrades_in_place(tmp_path, capsys):
    data = _dataset(tmp_path / "d")
    columnar = ShardIndex.load(data)
    expected = _batches(data)
    fields = {"image": get("image")(size=None, extensions=["png"]), "label": get("label")()}
    saved = Stream(data, fields, batch_size=4).loader(0)
    next(iter(saved))
    state = saved.state_dict()
    write_index_doc(data, index_doc(data), 1)  # as an older polymodal wrote it
    assert not (data / "index.arrow").exists()
    old = ShardIndex.load(data)
    assert old.version == 1 and list(old.shards) == list(columnar.shards)
    assert old.table.digest() == columnar.table.digest()  # a run saved on either resumes
    assert (old.labels, old.classes, old.fields) == (
        columnar.labels,
        columnar.classes,
        columnar.fields,
    )
    assert _batches(data) == expected
    Stream(data, fields, batch_size=4).loader(0).load_state_dict(state)

    (data / "README.md").unlink()
    assert main(["index", str(data), "--upgrade"]) == 0
    assert "index version 1 → 2: 3 shards" in capsys.readouterr().out
    assert not (data / "README.md").exists()  # only the index is rewritten
    upgraded = ShardIndex.load(data)
    assert upgraded.version == 2 and list(upgraded.shards) == list(columnar.shards)
    assert (data / "index.json").read_bytes() == columnar.header(columnar.table.digest())
    assert _batches(data) == expected
    assert main(["index", str(data), "--upgrade"]) == 0
    assert "already index version 2" in capsys.readouterr().out


def test_an_upgrade_killed_before_its_header_leaves_the_old_index(tmp_path):
    """The table is written first: a version-1 header ignores it, and the rerun finishes."""
    data = _dataset(tmp_path / "d")
    write_index_doc(data, index_doc(data), 1)
    listed = (data / "index.json").read_bytes()
    ShardIndex.load(data).table.write(data / "index.arrow")  # the upgrade, killed here
    assert (data / "index.json").read_bytes() == listed
    assert ShardIndex.load(data).version == 1
    assert main(["index", str(data), "--upgrade"]) == 0
    assert ShardIndex.load(data).version == 2

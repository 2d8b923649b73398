"""Hugging Face `datasets` both ways: our datasets load with `load_dataset`, and `build`
reads what `datasets` writes (path-only Image columns, Hub-style Parquet shard folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polymodal.cli import main
from polymodal.datasets.build import build
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.synthetic import encode_image, photo
from polymodal.pipelines.stream.stream import Stream


def _datasets():
    """Hugging Face `datasets` (dev extra); the tests that make HF-shaped files with pyarrow
    alone run without it."""
    return pytest.importorskip("datasets")


def _class_folders(root: Path, per_class: int = 6) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{c}{i}.jpg").write_bytes(encode_image(photo(i + 10 * (c == "dog"), 32)))
    return root


def _rows(loaded) -> dict[str, int]:
    return {name: split.num_rows for name, split in loaded.items()}


def _load(tmp_path: Path, *args, **kwargs):
    """`load_dataset` with a cache of the test's own (the shared one keys local folders by
    name, and every test's dataset folder is called `ds`)."""
    return _datasets().load_dataset(*args, cache_dir=str(tmp_path / "hf-cache"), **kwargs)


@pytest.mark.parametrize("shard_format", ["tar", "parquet"])
def test_our_datasets_load_with_load_dataset(tmp_path, shard_format):
    src = _class_folders(tmp_path / "src")
    out = tmp_path / "ds"
    build(src, out, shard_format=shard_format, shard_samples=2, split="val=0.25", progress=False)
    sizes = {name: ShardIndex.load(out / name).samples for name in ("train", "val")}
    assert _rows(_load(tmp_path, str(out))) == sizes
    assert _rows(_load(tmp_path, str(out), data_dir="train")) == {"train": sizes["train"]}
    assert _rows(_load(tmp_path, str(out / "val"))) == {"train": sizes["val"]}
    # the card names the classes: `cls` is a ClassLabel in either format, at either level
    for loaded in (_load(tmp_path, str(out)), _load(tmp_path, str(out / "val"))):
        assert all(split.features["cls"].names == ["cat", "dog"] for split in loaded.values())
    module = {"tar": "webdataset", "parquet": "parquet"}[shard_format]
    files = sorted(str(p) for p in (out / "train").glob(f"*.{shard_format}"))
    train = _load(tmp_path, module, data_files=files, split="train")
    assert train.num_rows == sizes["train"]
    if shard_format == "parquet":  # feature metadata: decoded images, named classes
        assert train.features["cls"].names == ["cat", "dog"]
        row = train[0]
        assert row["jpg"].size == (32, 32) and train.features["cls"].int2str(row["cls"]) in (
            "cat",
            "dog",
        )
    batch = next(iter(Stream(out / "train", batch_size=4, shuffle=False)))
    assert batch["image"].values.shape[0] == 4  # and polymodal still reads its own shards


def test_parquet_text_is_a_string_column_and_reads_back(tmp_path):
    src = _class_folders(tmp_path / "src", per_class=2)
    captions = {}
    for image in sorted(src.rglob("*.jpg")):
        captions[image.stem] = f"a photo of {image.parent.name} n°{image.stem[-1]}"
        image.with_suffix(".txt").write_text(captions[image.stem])
    out = tmp_path / "ds"
    build(src, out, shard_format="parquet", progress=False)
    files = sorted(str(p) for p in out.glob("*.parquet"))
    assert pq.read_schema(files[0]).field("txt").type == pa.string()
    loaded = _load(tmp_path, "parquet", data_files=files, split="train")
    assert sorted(loaded["txt"]) == sorted(captions.values())  # str, not bytes
    stream = Stream(out, {"text": "text"}, batch_size=4, shuffle=False, meta=["txt"])
    texts = [m["txt"] for b in stream for m in b.meta]
    assert sorted(texts) == sorted(captions.values())


def test_a_legacy_layout_still_reads(tmp_path):
    out = tmp_path / "ds"
    build(_class_folders(tmp_path / "src"), out, shard_samples=4, progress=False)
    for hidden in out.glob(".shard-*.idx"):  # the sidecar names before they were hidden
        hidden.rename(out / hidden.name.removeprefix("."))
    (out / "README.md").unlink()
    assert main(["validate", str(out)]) == 0
    assert sum(b.size for b in Stream(out, batch_size=5)) >= 12


def test_index_in_place_keeps_a_users_readme(tmp_path):
    out = tmp_path / "ds"
    build(_class_folders(tmp_path / "src"), out, shard_samples=4, progress=False)
    (out / "README.md").write_text("# my notes\n")
    assert main(["index", str(out)]) == 0
    assert (out / "README.md").read_text() == "# my notes\n"


def test_build_follows_path_only_image_cells(tmp_path, capsys, monkeypatch):
    datasets = _datasets()
    images = _class_folders(tmp_path / "export" / "images")
    paths = sorted(images.rglob("*.jpg"))
    table = {"image": [str(p.relative_to(tmp_path / "export")) for p in paths]}
    table["label"] = [int(p.parent.name == "dog") for p in paths]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}
    )
    exported = datasets.Dataset.from_dict(table, features=features)
    parquet = tmp_path / "export" / "data.parquet"
    monkeypatch.chdir(tmp_path / "export")  # the paths are relative, to the Parquet's folder
    exported.to_parquet(str(parquet))
    cells = pq.read_table(parquet).column("image").to_pylist()
    assert cells[0]["bytes"] is None and cells[0]["path"]  # what `datasets` writes: paths only
    assert main(["build", str(parquet), str(tmp_path / "ds")]) == 0
    index = ShardIndex.load(tmp_path / "ds")
    assert index.samples == len(paths) and index.classes == ["cat", "dog"]
    assert index.fields["jpg"] == "image"
    # a path that leaves the export's folder is refused, unless --allow-paths names the root
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(encode_image(photo(99, 32)))
    escape = datasets.Dataset.from_dict(
        {"image": ["../elsewhere.jpg"], "label": [0]}, features=features
    )
    escape.to_parquet(str(tmp_path / "export" / "escape.parquet"))
    escaping = tmp_path / "export" / "escape.parquet"
    assert main(["build", str(escaping), str(tmp_path / "no")]) == 1  # 0 samples
    rejects = (tmp_path / "no" / "rejects.jsonl").read_text()
    assert "outside" in rejects and "--allow-paths" in rejects
    capsys.readouterr()
    assert (
        main(["build", str(escaping), str(tmp_path / "yes"), "--allow-paths", str(tmp_path)]) == 0
    )
    assert ShardIndex.load(tmp_path / "yes").samples == 1


def _hub_shard(path: Path, rows: list[tuple[bytes, int]]) -> None:
    """A Hub-style shard as `datasets` writes one, made with pyarrow alone (no `datasets`)."""
    features = {
        "image": {"_type": "Image"},
        "label": {"names": ["cat", "dog"], "_type": "ClassLabel"},
    }
    media = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [("image", media), ("label", pa.int64())],
        metadata={b"huggingface": json.dumps({"info": {"features": features}}).encode()},
    )
    images = [{"bytes": data, "path": None} for data, _ in rows]
    table = pa.table({"image": images, "label": [label for _, label in rows]}, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_build_reads_a_folder_of_hub_style_shards(tmp_path, capsys):
    rows = [(encode_image(photo(i, 32)), i % 2) for i in range(10)]
    hub = tmp_path / "hub"
    _hub_shard(hub / "data" / "train-00000-of-00002.parquet", rows[:4])
    _hub_shard(hub / "data" / "train-00001-of-00002.parquet", rows[4:8])
    _hub_shard(hub / "data" / "validation-00000-of-00001.parquet", rows[8:])
    assert main(["build", str(hub), str(tmp_path / "ds")]) == 0
    sizes = {
        name: ShardIndex.load(tmp_path / "ds" / name).samples for name in ("train", "validation")
    }
    assert sizes == {"train": 8, "validation": 2}
    assert main(["build", str(hub), str(tmp_path / "x"), "--split", "val=0.1"]) == 2
    assert "names its own splits" in capsys.readouterr().err


def test_build_finds_path_cells_relative_to_the_working_directory(tmp_path, monkeypatch):
    """`Dataset.to_parquet` keeps image paths as given, relative to where the script ran, and
    `datasets` reads them from there; a build run from the same place finds them too."""
    datasets = _datasets()
    monkeypatch.chdir(tmp_path)
    src = _class_folders(tmp_path / "photos", per_class=2)
    paths = sorted(str(p.relative_to(tmp_path)) for p in src.rglob("*.jpg"))
    table = datasets.Dataset.from_dict({"image": paths, "label": [i % 2 for i in range(4)]})
    table = table.cast_column("image", datasets.Image())
    (tmp_path / "exports").mkdir()
    table.to_parquet(str(tmp_path / "exports" / "train.parquet"))
    stored = pq.read_table(tmp_path / "exports" / "train.parquet").column("image").to_pylist()
    assert all(cell["bytes"] is None for cell in stored)  # paths only, relative to here
    report = build(tmp_path / "exports" / "train.parquet", tmp_path / "ds", progress=False)
    assert report.samples == 4 and report.rejects == 0

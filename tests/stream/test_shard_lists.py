"""Shards with no index, as a webdataset user names them: brace patterns, globs, lists of
paths and URLs. Each is scanned once into the cache and then streams with every guarantee a
built dataset has: exact-once over ranks and workers, bitwise resume, skips reported."""

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from testdata import batch_digest, serving, set_rank, two_class_pngs
from testmedia import image_train_toml

from polymodal import Stream
from polymodal.adapters import get
from polymodal.cli import main
from polymodal.datasets.shardlist import is_shard_list, shard_urls

SIZES = [5, 0, 7, 3]  # one empty shard


def _webdataset_shards(folder: Path, sizes=SIZES) -> list[str]:
    """Shards written by webdataset's own TarWriter: PNGs whose value and label are the
    sample number."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for shard, size in enumerate(sizes):
        with wds.TarWriter(str(folder / f"shard-{shard:06d}.tar")) as writer:
            for _ in range(size):
                png = io.BytesIO()
                Image.fromarray(np.full((4, 4, 3), n, np.uint8)).save(png, "PNG")
                writer.write({"__key__": f"s{n:04d}", "png": png.getvalue(), "cls": str(n % 3)})
                n += 1
    return [f"s{i:04d}" for i in range(n)]


def _fields():
    return {"image": get("image")(size=None, extensions=["png"]), "label": get("label")()}


def _keys(batches) -> list[str]:
    return [k for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]


def test_what_names_shards_and_what_names_a_dataset(tmp_path):
    keys = _webdataset_shards(tmp_path / "ds")
    assert keys
    for spec in ("a/shard-{0..3}.tar", "a/*.tar", "s3://b/x.tar", "a.tar::b.tar"):
        assert is_shard_list(spec), spec
    assert not is_shard_list(tmp_path / "ds")  # a folder is a dataset, even full of tars
    assert not is_shard_list("https://host/datasets/web")
    expanded = shard_urls(f"{tmp_path}/ds/shard-{{000002..000003}}.tar::{tmp_path}/ds/*.tar")
    assert [Path(u).name for u in expanded] == [f"shard-00000{i}.tar" for i in (2, 3, 0, 1)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_a_brace_pattern_streams_every_sample_once(tmp_path, monkeypatch, workers, world):
    keys = _webdataset_shards(tmp_path / "ds")
    pattern = str(tmp_path / "ds" / "shard-{000000..000003}.tar")
    seen, lengths = [], set()
    for rank in range(world):
        set_rank(monkeypatch, rank, world)
        loader = Stream(pattern, _fields(), batch_size=4, buffer_size=4).loader(workers)
        epoch = list(loader)
        lengths.add(len(epoch))
        for batch in epoch:  # fields belong to their key
            assert batch["label"].values[:, 0, 0].tolist() == [int(k[1:]) % 3 for k in batch.keys]
        seen += _keys(epoch)
    assert sorted(seen) == keys and len(lengths) == 1


def test_glob_list_and_pattern_are_one_dataset_scanned_once(tmp_path, own_cache):
    keys = _webdataset_shards(tmp_path / "ds")
    ds = tmp_path / "ds"
    forms = [
        str(ds / "shard-{000000..000003}.tar"),
        str(ds / "shard-*.tar"),
        [str(p) for p in sorted(ds.glob("*.tar"))],
        [str(ds / "shard-00000[01].tar"), str(ds / "shard-{000002..000003}.tar")],
    ]
    for form in forms:
        stream = Stream(form, _fields(), batch_size=5, shuffle=False)
        assert len(stream.sources) == 1 and stream.total == len(keys)
        assert _keys(stream) == keys  # storage order
    # every form names the same shards in the same folder: one scan, one cached index
    indexes = sorted(own_cache.glob("indexes/*/index.json"))
    assert len(indexes) == 1
    before = indexes[0].stat().st_mtime_ns
    Stream(forms[0], _fields())
    assert indexes[0].stat().st_mtime_ns == before  # reused, not scanned again
    # a shard rewritten with more samples is another dataset: scanned again
    _webdataset_shards(ds, [5, 2, 7, 3])
    assert Stream(forms[0], _fields()).total == len(keys) + 2


def test_resume_from_a_shard_list_is_bitwise(tmp_path):
    _webdataset_shards(tmp_path / "ds")
    pattern = str(tmp_path / "ds" / "shard-*.tar")
    loader = Stream(pattern, _fields(), batch_size=3, buffer_size=6, seed=4).loader(2)
    loader.set_epoch(1)
    full = [batch_digest(b) for b in loader]
    loader.set_epoch(1)
    batches = iter(loader)
    next(batches), next(batches)
    state = json.loads(json.dumps(loader.state_dict()))
    again = Stream(pattern, _fields(), batch_size=3, buffer_size=6, seed=4).loader(2)
    again.load_state_dict(state)
    assert [batch_digest(b) for b in again] == full[2:]
    fewer = Stream(pattern, _fields(), batch_size=3, buffer_size=6, seed=4).loader(1)
    fewer.load_state_dict(state)  # elastic: the same samples, at another worker count
    assert sorted(_keys(fewer)) == sorted(k for d in full[2:] for k in d[0])


def test_missing_shards_are_left_out_and_said_unreadable_ones_fail(tmp_path, caplog):
    keys = _webdataset_shards(tmp_path / "ds")
    pattern = str(tmp_path / "ds" / "shard-{000000..000005}.tar")  # 4 and 5 are not there
    with caplog.at_level(logging.WARNING, logger="polymodal.datasets"):
        stream = Stream(pattern, _fields(), batch_size=4)
    assert stream.total == len(keys)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "left out 2 of 6 shards" in said and "shard-000004.tar: missing" in said
    with pytest.raises(FileNotFoundError, match="none of its 3 shards can be read"):
        Stream(str(tmp_path / "nowhere" / "shard-{0..2}.tar"))
    with pytest.raises(FileNotFoundError, match="matches no shard"):
        Stream(str(tmp_path / "ds" / "other-*.tar"))
    (tmp_path / "ds" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt: not a \.tar shard"):
        Stream([str(tmp_path / "ds" / "shard-000000.tar"), str(tmp_path / "ds" / "*.txt")])


def test_shards_served_over_http_stream_without_an_index(tmp_path):
    keys = _webdataset_shards(tmp_path / "www" / "ds")
    with serving(tmp_path / "www") as url:
        stream = Stream([f"{url}/ds/shard-{{000000..000003}}.tar"], _fields(), batch_size=4)
        assert sorted(_keys(stream.loader(2))) == keys
        assert not list((tmp_path / "www" / "ds").glob(".*.idx"))  # the server's folder: read only


@pytest.mark.slow
def test_polymodal_train_takes_shard_patterns(tmp_path, capsys):
    data = two_class_pngs(tmp_path / "data", shards=3)
    for made in [data / "index.json", *data.glob(".*.idx")]:
        made.unlink()  # someone's shards: no index
    config = image_train_toml(
        tmp_path / "train.toml",
        f"{data}/shard-{{000000..000002}}.tar",
        f"{data}/shard-00000[01].tar",
        tmp_path / "run",
        epochs=1,
    )
    assert main(["train", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["val_samples"] == 8 and summary["val_skipped"] == 0

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from polymodal.cli import main
from polymodal.datasets.build import build, index_shards
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.inspect import inspect_dataset, validate_dataset
from polymodal.datasets.preview import contact_sheet
from polymodal.datasets.reader import read_shard
from polymodal.datasets.synthetic import (
    counter_frames,
    encode_audio,
    encode_image,
    encode_media,
    encode_ply,
    photo,
    tone,
)


@pytest.fixture
def webdataset_shards(tmp_path: Path) -> Path:
    """Shards written by webdataset's own ShardWriter, without an index."""
    folder = tmp_path / "wds"
    folder.mkdir()
    with wds.ShardWriter(str(folder / "part-%04d.tar"), maxcount=7, verbose=0) as writer:
        for i in range(20):
            writer.write(
                {
                    "__key__": f"s{i:03d}",
                    "jpg": encode_image(photo(i, 32)),
                    "cls": str(i % 3).encode(),
                }
            )
    return folder


def test_index_webdataset_shards_in_place(webdataset_shards):
    report = index_shards(webdataset_shards, workers=2, progress=False)
    assert report.samples == 20 and report.rejects == 0
    index = ShardIndex.load(webdataset_shards)
    assert [s.samples for s in index.shards] == [7, 7, 6]
    assert index.labels == {"0": 7, "1": 7, "2": 6} and index.fields["jpg"] == "image"
    ours = [s for shard in index.shards for s in read_shard(index, shard)]
    theirs = list(
        wds.WebDataset([str(webdataset_shards / s.name) for s in index.shards], shardshuffle=False)
    )
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs]
    assert all(a["jpg"] == b["jpg"] for a, b in zip(ours, theirs, strict=True))
    assert next(read_shard(index, index.shards[1], start=5))["__key__"] == "s012"
    assert validate_dataset(str(webdataset_shards)) == []


def _foreign_tar(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data, kind in [
            ("ok.txt", b"fine", tarfile.REGTYPE),
            ("../../etc/evil.txt", b"x", tarfile.REGTYPE),
            ("link.txt", None, tarfile.SYMTYPE),
            ("dev.txt", None, tarfile.CHRTYPE),
            ("good.txt", b"also fine", tarfile.REGTYPE),
        ]:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)


def test_foreign_and_damaged_shards_are_reported(webdataset_shards, tmp_path):
    _foreign_tar(webdataset_shards / "zz-foreign.tar")
    whole = (webdataset_shards / "part-0000.tar").read_bytes()
    (webdataset_shards / "zz-truncated.tar").write_bytes(whole[: len(whole) // 2])
    (webdataset_shards / "zz-cut.tar").write_bytes(whole[:2048])  # at a member boundary
    report = index_shards(webdataset_shards, progress=False)
    rejects = [
        json.loads(x) for x in (webdataset_shards / "rejects.jsonl").read_text().split("\n") if x
    ]
    by_path = {r["path"]: r["reason"] for r in rejects}
    assert "climbs out" in by_path["zz-foreign.tar:../../etc/evil.txt"]
    assert "not a regular file" in by_path["zz-foreign.tar:link.txt"]
    assert "not a regular file" in by_path["zz-foreign.tar:dev.txt"]
    assert "truncated" in by_path["zz-truncated.tar"] and "truncated" in by_path["zz-cut.tar"]
    index = ShardIndex.load(webdataset_shards)
    assert [s.name for s in index.shards][-1] == "zz-foreign.tar"
    assert [
        s["__key__"] for s in read_shard(index, index.shards[-1], on_problem=lambda p: None)
    ] == ["ok", "good"]
    assert report.rejects == 5 and not (tmp_path / "etc").exists()
    assert main(["index", str(webdataset_shards), "--strict"]) == 1


@pytest.fixture
def media_dataset(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        key = src / f"clip{i:02d}"
        key.with_suffix(".mp4").write_bytes(
            encode_media("mp4", counter_frames(10 + 5 * i, 48, 64, 8), fps=10)
        )
        key.with_suffix(".jpg").write_bytes(encode_image(photo(i, 40 + 8 * i)))
        sound = tone(440, 0.5 + i / 4, 16000)
        key.with_suffix(".flac").write_bytes(encode_audio(sound, 16000, "flac"))
        key.with_suffix(".ply").write_bytes(encode_ply(rng.normal(size=(100 + 50 * i, 3))))
        key.with_suffix(".txt").write_text(f"clip {i} " * (i + 1))
        key.with_suffix(".cls").write_text(str(i % 2))
    out = tmp_path / "out"
    build(src, out, shard_samples=2, progress=False)
    return out


def test_inspect_counts_and_statistics(media_dataset):
    report = inspect_dataset(str(media_dataset), sample_limit=64)
    assert (report["samples"], report["shards"]) == (6, 3)
    assert report["bytes"] == sum(p.stat().st_size for p in media_dataset.glob("*.tar"))
    fields = report["fields"]
    assert {ext: f["modality"] for ext, f in fields.items()} == {
        "cls": "label",
        "flac": "audio",
        "jpg": "image",
        "mp4": "video",
        "ply": "pointcloud",
        "txt": "text",
    }
    assert all(f["count"] == 6 for f in fields.values())
    assert fields["jpg"]["stats"]["width"] == {"min": 40, "median": 60, "max": 80}
    assert fields["flac"]["stats"]["seconds"]["max"] == pytest.approx(1.75, abs=0.01)
    assert fields["flac"]["stats"]["rate"]["min"] == 16000
    assert fields["mp4"]["stats"]["fps"]["median"] == pytest.approx(10)
    assert fields["mp4"]["stats"]["seconds"]["max"] == pytest.approx(3.5, abs=0.15)
    assert fields["ply"]["stats"]["points"] == {"min": 100, "median": 225, "max": 350}
    assert report["labels"] == {"0": 3, "1": 3}


def test_inspect_cli_json_and_preview(media_dataset, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", str(media_dataset), "--json", "--preview", str(sheet)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"samples", "shards", "bytes", "fields"} <= set(report)
    image = np.asarray(Image.open(sheet).convert("RGB"))
    assert image.shape[0] >= 6 * 96 and image.shape[1] > 1000  # a row per sample, many tiles
    assert image.std() > 20  # something is drawn
    assert main(["inspect", str(media_dataset)]) == 0
    assert "fields:" in capsys.readouterr().out


def test_contact_sheet_shows_a_broken_sample_in_red(media_dataset, tmp_path):
    index = ShardIndex.load(media_dataset)
    path = contact_sheet(str(media_dataset), tmp_path / "s.png", rows=2)
    assert Image.open(path).size[1] == 2 * 96 + 3 * 6
    assert index.samples == 6


def test_validate_finds_corruption_and_bad_samples(media_dataset, tmp_path, capsys):
    assert validate_dataset(str(media_dataset), workers=2) == []
    assert main(["validate", str(media_dataset)]) == 0
    assert "6 samples in 3 shards: OK" in capsys.readouterr().out
    shard = media_dataset / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 0xFF  # flip a byte inside the last member's padding area or data
    shard.write_bytes(bytes(data))
    (media_dataset / "shard-000002.tar").unlink()
    problems = validate_dataset(str(media_dataset))
    assert any(p["shard"] == "shard-000001.tar" and "sha256" in p["reason"] for p in problems)
    assert any(p["shard"] == "shard-000002.tar" and "missing" in p["reason"] for p in problems)
    assert main(["validate", str(media_dataset), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_validate_names_each_bad_sample(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.jpg").write_bytes(encode_image(photo(0, 32)))
    (src / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated nonsense")
    (src / "nan.npy").write_bytes(b"not npy either")
    build(src, tmp_path / "out", progress=False)
    problems = validate_dataset(str(tmp_path / "out"))
    assert {(p["key"], p["field"]) for p in problems} == {("bad", "jpg")}
    assert "DecodeError" not in problems[0]["reason"] and problems[0]["reason"]

import csv
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from polymodal.cli import main
from polymodal.datasets.build import COMMITS, build
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.reader import read_shard
from polymodal.datasets.sources import plan_source
from polymodal.datasets.synthetic import (
    counter_frames,
    encode_audio,
    encode_image,
    encode_media,
    photo,
    tone,
)
from polymodal.seeds import stable_fraction


def _all_samples(directory: Path) -> list[dict]:
    index = ShardIndex.load(directory)
    return [s for shard in index.shards for s in read_shard(index, shard)]


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for c, name in enumerate(["cat", "dog", "emu"]):
        (src / name).mkdir(parents=True)
        for i in range(8):
            (src / name / f"{i:03d}.jpg").write_bytes(encode_image(photo(10 * c + i, 48)))
            if i % 2 == 0:
                (src / name / f"{i:03d}.txt").write_text(f"{name} {i}")
    return src


def test_folder_with_class_subfolders(class_folders, tmp_path):
    (class_folders / "cat" / "notes.docx").write_bytes(b"PK")
    (class_folders / "dog" / "gone.jpg").symlink_to(class_folders / "nowhere.jpg")
    out = tmp_path / "out"
    report = build(class_folders, out, shard_samples=5, progress=False)
    index = ShardIndex.load(out)
    assert report.samples == index.samples == 24 and len(index.shards) == 5
    assert index.classes == ["cat", "dog", "emu"]
    assert index.labels == {"0": 8, "1": 8, "2": 8}
    assert index.fields == {"cls": "label", "jpg": "image", "txt": "text"}
    samples = _all_samples(out)
    assert samples[0]["__key__"] == "cat/000" and samples[0]["cls"] == b"0"
    assert samples[0]["txt"] == b"cat 0" and "txt" not in samples[1]
    assert samples[0]["jpg"] == (class_folders / "cat/000.jpg").read_bytes()
    assert [s["__key__"] for s in samples] == sorted(s["__key__"] for s in samples)
    reasons = {r["path"]: r["reason"] for r in _rejects(out)}
    assert reasons["cat/notes.docx"] == "unsupported file type"
    assert reasons["dog/gone.jpg"].startswith("unreadable")
    urls = [str(out / s.name) for s in index.shards]
    assert len(list(wds.WebDataset(urls, shardshuffle=False))) == 24


def test_labels_csv_and_cls_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"s{i}.flac").write_bytes(encode_audio(tone(200 + 50 * i, 0.2), 16000, "flac"))
    with open(src / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "label"])
        writer.writerows([[f"s{i}", ["low", "high"][i % 2]] for i in range(5)])  # s5 unlabelled
    build(src, tmp_path / "out", progress=False)
    index = ShardIndex.load(tmp_path / "out")
    assert index.classes == ["high", "low"] and index.samples == 5
    assert {s["__key__"]: s["cls"] for s in _all_samples(tmp_path / "out")}["s1"] == b"0"
    assert _rejects(tmp_path / "out") == [
        {"path": "s5", "reason": "no label for this sample", "key": "s5"}
    ]


def _manifest_media(tmp_path: Path) -> Path:
    media = tmp_path / "media"
    media.mkdir()
    for i in range(4):
        clip = encode_media("mp4", counter_frames(5, 32, 32), fps=5, audio=tone(440, 1.0))
        (media / f"clip{i}.mp4").write_bytes(clip)
    return media


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifests(tmp_path, kind):
    _manifest_media(tmp_path)
    rows = [
        {
            "key": f"row{i}",
            "video_path": f"media/clip{i}.mp4",
            "label": i % 2,
            "txt": f"caption {i}",
        }
        for i in range(4)
    ] + [{"key": "row9", "video_path": "media/missing.mp4", "label": 1, "txt": "x"}]
    manifest = tmp_path / f"manifest.{kind}"
    if kind == "csv":
        with open(manifest, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "jsonl":
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), manifest)
    build(manifest, tmp_path / "out", progress=False)
    samples = _all_samples(tmp_path / "out")
    assert [s["__key__"] for s in samples] == ["row0", "row1", "row2", "row3"]
    assert samples[2]["mp4"] == (tmp_path / "media/clip2.mp4").read_bytes()
    assert samples[2]["txt"] == b"caption 2" and samples[3]["cls"] == b"1"
    rejects = _rejects(tmp_path / "out")
    assert rejects == [{"path": "media/missing.mp4", "reason": "file not found", "key": "row9"}]


def _hf_parquet(path: Path, n: int = 6) -> None:
    """A Parquet file laid out as Hugging Face `datasets` writes Image / ClassLabel columns."""
    features = {
        "image": {"_type": "Image"},
        "label": {"names": ["ant", "bee"], "_type": "ClassLabel"},
        "caption": {"dtype": "string", "_type": "Value"},
        "score": {"dtype": "float32", "_type": "Value"},
    }
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array(
                [
                    {
                        "bytes": encode_image(photo(i, 32), "PNG"),
                        "path": None if i % 2 else f"{i}.png",
                    }
                    for i in range(n)
                ],
                type=image_type,
            ),
            "label": pa.array([i % 2 for i in range(n)], pa.int64()),
            "caption": [f"picture {i}" for i in range(n)],
            "score": pa.array([i / 2 for i in range(n)], pa.float32()),
        }
    )
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path, row_group_size=4)


def test_hugging_face_parquet_export(tmp_path):
    _hf_parquet(tmp_path / "train.parquet")
    build(tmp_path / "train.parquet", tmp_path / "out", progress=False)
    index = ShardIndex.load(tmp_path / "out")
    assert index.classes == ["ant", "bee"] and index.samples == 6
    assert index.fields == {"cls": "label", "png": "image", "score.json": "", "txt": "text"}
    samples = _all_samples(tmp_path / "out")
    assert samples[5]["__key__"] == "000000005" and samples[5]["cls"] == b"1"
    assert samples[5]["png"] == encode_image(photo(5, 32), "PNG")  # sniffed: no path in row 5
    assert samples[4]["txt"] == b"picture 4" and json.loads(samples[4]["score.json"]) == 2.0


def test_shuffle_and_split_are_deterministic(class_folders, tmp_path):
    build(class_folders, tmp_path / "a", shuffle=True, seed=3, split="val=0.25", progress=False)
    build(class_folders, tmp_path / "b", shuffle=True, seed=3, split="val=0.25", progress=False)
    build(class_folders, tmp_path / "c", shuffle=True, seed=4, split="val=0.25", progress=False)
    for split in ("train", "val"):
        a = (tmp_path / "a" / split / "shard-000000.tar").read_bytes()
        assert a == (tmp_path / "b" / split / "shard-000000.tar").read_bytes()
    keys = {d: [s["__key__"] for s in _all_samples(tmp_path / d / "train")] for d in "abc"}
    assert keys["a"] != sorted(keys["a"]) and keys["a"] != keys["c"]
    assert sorted(keys["a"]) == sorted(keys["c"])  # same split, other order
    val = {s["__key__"] for s in _all_samples(tmp_path / "a" / "val")}
    assert val == {k for k in keys["a"] + list(val) if stable_fraction(k) < 0.25}
    assert 0 < len(val) < 24 and not val & set(keys["a"])


def test_parquet_output(class_folders, tmp_path):
    build(class_folders, tmp_path / "out", shard_format="parquet", shard_samples=10, progress=False)
    index = ShardIndex.load(tmp_path / "out")
    assert index.format == "parquet" and [s.samples for s in index.shards] == [10, 10, 4]
    assert [s["__key__"] for s in _all_samples(tmp_path / "out")][:2] == ["cat/000", "cat/001"]


def test_shard_size_caps_bytes(class_folders, tmp_path):
    build(class_folders, tmp_path / "out", shard_bytes=20_000, progress=False)
    index = ShardIndex.load(tmp_path / "out")
    assert len(index.shards) > 3 and all(s.bytes <= 20_000 + 10240 for s in index.shards)


def test_rerun_is_a_no_op_and_other_options_are_refused(class_folders, tmp_path):
    out = tmp_path / "out"
    build(class_folders, out, shard_samples=5, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = build(class_folders, out, shard_samples=5, progress=False)
    assert again.written_shards == 0 and again.samples == 24
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "rejects.jsonl"} == {
        k: v for k, v in before.items() if k != "rejects.jsonl"
    }
    with pytest.raises(FileExistsError, match="another build"):
        build(class_folders, out, shard_samples=6, progress=False)
    (class_folders / "cat" / "000.txt").write_text("changed")
    with pytest.raises(FileExistsError):
        build(class_folders, out, shard_samples=5, progress=False)
    report = build(class_folders, out, shard_samples=6, overwrite=True, progress=False)
    assert report.written_shards == 4
    assert sorted(p.name for p in out.glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(4)]


def test_workers_give_the_same_bytes(class_folders, tmp_path):
    build(class_folders, tmp_path / "one", shard_samples=4, workers=1, progress=False)
    build(class_folders, tmp_path / "two", shard_samples=4, workers=2, progress=False)
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))
    for name in os.listdir(one):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_cli_build_strict_and_summary(class_folders, tmp_path, capsys):
    (class_folders / "emu" / "junk.bin").write_bytes(b"?")
    assert main(["build", str(class_folders), str(tmp_path / "a"), "--shard-samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "24 samples in 3 shards" in out and "1 rejected" in out
    code = main(["build", str(class_folders), str(tmp_path / "b"), "--strict"])
    assert code == 1


def test_plan_rejects_dotted_manifest_keys(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"key": "a.b", "txt": "x"}) + "\n")
    plan = plan_source(tmp_path / "m.jsonl")
    assert not plan.samples and "round-trip" in plan.problems[0].reason


def test_uppercase_and_duplicate_extensions(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.JPG").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8)))
    (src / "a.jpg").write_bytes(encode_image(np.ones((8, 8, 3), np.uint8)))
    plan = plan_source(src)
    assert [s.key for s in plan.samples] == ["a"]
    assert plan.problems[0].reason == "duplicate extension 'jpg'" and plan.problems[0].key == "a"


def test_a_commit_that_fails_in_a_run_leaves_only_complete_shards(class_folders, tmp_path):
    """Shards are written in runs, each committed (hash, fsync, sidecar, rename) while the
    next ones are written, `COMMITS` at a time. A build of 24 one-sample shards is cut short
    after shard 1 (index and later shards deleted); the rerun's commit of shard 2 fails (its
    sidecar's name is taken by a folder) while the next `COMMITS - 1` shards are committed
    and one more written beside it. The build stops with the error: shards 0 and 1 are as they
    were, those committed beside shard 2 are complete, nothing of shard 2 or of the one being
    written is left, and there is no index. Once the folder is gone a rerun writes only what
    is missing and ends as the clean build did."""
    clean, out = tmp_path / "clean", tmp_path / "out"
    build(class_folders, clean, shard_samples=1, progress=False)
    build(class_folders, out, shard_samples=1, progress=False)
    (out / "index.json").unlink()
    for n in range(2, 24):
        (out / f"shard-{n:06d}.tar").unlink()
        (out / f".shard-{n:06d}.tar.idx").unlink()
    blocker = out / ".shard-000002.tar.idx"
    blocker.mkdir()
    with pytest.raises(IsADirectoryError):
        build(class_folders, out, shard_samples=1, progress=False)
    beside = range(3, 3 + COMMITS - 1)
    complete = [f"shard-{n:06d}.tar" for n in (0, 1, *beside)]
    assert sorted(p.name for p in out.glob("*.tar")) == complete
    kept = sorted([*(f".{name}.idx" for name in complete), blocker.name])
    assert sorted(p.name for p in out.glob(".*.idx")) == kept
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert not (out / "index.json").exists()
    blocker.rmdir()
    report = build(class_folders, out, shard_samples=1, progress=False)
    assert report.written_shards == 24 - len(complete)
    assert sorted(os.listdir(out)) == sorted(os.listdir(clean))
    for name in os.listdir(clean):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def test_shard_runs_keep_every_slot_busy_and_stay_within_their_bytes(class_folders):
    """Runs are consecutive shards, at most `run_bytes` each (a larger shard alone), each as
    long as those caps allow, and at least four a slot while there are shards enough."""
    from polymodal.datasets.build import ShardTask, shard_runs
    from polymodal.datasets.splits import cut_shards

    samples = plan_source(class_folders).samples
    shards = cut_shards(samples, 1, None)
    tasks = [ShardTask(class_folders, f"s{n}", "tar", ["jpg"], s) for n, s in enumerate(shards)]
    size = {id(t): t.samples[0].tar_size for t in tasks}
    for slots in (1, 2, 3, 8, 64):
        runs = shard_runs(tasks, slots)
        assert [t for run in runs for t in run] == tasks
        assert max(len(r) for r in runs) == -(-len(tasks) // (4 * slots))
        assert len(runs) >= min(len(tasks), 4 * slots)
    run_bytes = 3 * max(size.values())
    runs = shard_runs(tasks, 1, run_bytes)
    assert [t for run in runs for t in run] == tasks and len(runs) > 4
    for run, after in zip(runs, [*runs[1:], []], strict=True):
        used = sum(size[id(t)] for t in run)
        assert used <= run_bytes
        assert not after or len(run) == 6 or used + size[id(after[0])] > run_bytes

"""Materialised fields end to end: real mp4 clips (h264 + aac from PyAV), the materialize job,
and the stream reading both forms: the same batches for centre crops, the same crops for random
ones, K clips per decode exactly once, exact resume, the config guard, hostile members."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from polymodal.adapters import get
from polymodal.cli import main
from polymodal.codecs.containers import decode_threads
from polymodal.codecs.decoded import MAGIC, decode_decoded, encode_decoded
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.synthetic import encode_media
from polymodal.datasets.writer import ShardWriter
from polymodal.machine import cores
from polymodal.pipelines import preprocess
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.stream.stream import Stream

SAMPLES = 12
VIDEO = {"num_frames": 4, "fps": 8.0, "size": 32, "crop_fraction": 0.875}
AUDIO = {"sample_rate": 16000, "duration": 0.5}


def _clip(i: int, seconds: float) -> bytes:
    """A static noise texture (so a crop's position shows) brightening over time (so a clip's
    start shows), 25 fps, 48×64; a 16 kHz tone."""
    rng = np.random.default_rng(i)
    texture = rng.integers(0, 160, (48, 64, 3))
    n = round(seconds * 25)
    frames = texture[None] + 3 * np.arange(n)[:, None, None, None]
    t = np.arange(round(seconds * 16000)) / 16000
    sound = 0.3 * np.sin(2 * np.pi * (200 + 30 * i) * t) + 0.05 * rng.normal(size=len(t))
    return encode_media(
        "mp4",
        frames.clip(0, 255).astype(np.uint8),
        fps=25,
        audio=sound[:, None].astype(np.float32),
        audio_rate=16000,
    )


def _config(path: Path, video: dict, audio: dict) -> Path:
    def table(options: dict) -> str:
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items()) + "}"

    path.write_text(
        f"""
[data]
train = "unused"
[data.fields.video]
adapter = "video"
extensions = ["mp4"]
options = {table(video)}
[data.fields.audio]
adapter = "audio"
extensions = ["mp4"]
options = {table(audio)}
"""
    )
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(mp4 dataset, its materialised copy): one clip is shorter than the training clip."""
    root = tmp_path_factory.mktemp("materialize")
    with ShardWriter(root / "mp4", max_samples=5) as writer:
        for i in range(SAMPLES):
            seconds = 0.2 if i == 3 else 1.0 + 0.1 * (i % 3)
            writer.write({"__key__": f"c{i:02d}", "mp4": _clip(i, seconds), "cls": b"%d" % (i % 2)})
    config = _config(root / "train.toml", VIDEO, AUDIO)
    report = preprocess.run(
        root / "mp4", root / "mat", [f"materialize:config={config}"], workers=2, progress=False
    )
    assert report.samples_out == SAMPLES and report.rejected == 0
    return root / "mp4", root / "mat"


def _fields(**video: object) -> dict:
    audio = {k: v for k, v in video.items() if k == "crop"}
    return {
        "video": get("video")(**{**VIDEO, **video}),
        "audio": get("audio")(**{**AUDIO, **audio}),
        "label": get("label")(),
    }


def _samples(source: Path, clips: int = 1, batch_size: int = 4, **video: object) -> list[dict]:
    stream = Stream(
        source, _fields(**video), batch_size=batch_size, shuffle=False, clips_per_sample=clips
    )
    out = []
    for batch in stream:
        for i, key in enumerate(batch.keys):
            out.append(
                {
                    "key": key,
                    **{name: batch[name].values[i] for name in ("video", "audio", "label")},
                    "video_mask": batch["video"].mask[i],
                    "audio_mask": batch["audio"].mask[i],
                }
            )
    return out


def test_the_index_records_what_was_materialised_and_the_media_is_gone(data):
    _, mat = data
    index = ShardIndex.load(mat)
    assert index.materialized == {
        "video": {
            "adapter": "video",
            "options": {"fps": 8.0, "size": [32, 32], "crop_fraction": 0.875},
        },
        "audio": {
            "adapter": "audio",
            "options": {"sample_rate": 16000, "channels": 1, "dtype": "int16"},
        },
    }
    counts = index.field_counts()
    assert counts == {"audio.decoded": SAMPLES, "cls": SAMPLES, "video.decoded": SAMPLES}
    assert index.fields["video.decoded"] == "video"


def test_indexing_a_materialised_dataset_again_keeps_its_record(data, tmp_path):
    _, mat = data
    again = tmp_path / "again"
    shutil.copytree(mat, again)
    assert main(["index", str(again), "--quiet"]) == 0
    assert ShardIndex.load(again).materialized == ShardIndex.load(mat).materialized


def test_centre_crops_give_identical_batches(data):
    mp4, mat = data
    media, kept = _samples(mp4), _samples(mat)
    assert [s["key"] for s in media] == [s["key"] for s in kept]
    for a, b in zip(media, kept, strict=True):
        for name in ("video", "audio", "label", "video_mask", "audio_mask"):
            assert torch.equal(a[name], b[name]), (a["key"], name)
    short = next(s for s in kept if s["key"] == "c03")
    assert not short["video_mask"].all() and not short["audio_mask"].all()  # padded alike


def test_random_crops_and_starts_are_the_same_draws(data):
    """Audio clips are the same samples; video crops and flips are the same (the texture would
    show a different crop), and starts agree within half a frame (the brightness ramp)."""
    mp4, mat = data
    media, kept = _samples(mp4, crop="random", flip=True), _samples(mat, crop="random", flip=True)
    centre = _samples(mat)
    moved = 0
    for a, b, c in zip(media, kept, centre, strict=True):
        assert torch.equal(a["audio"], b["audio"]), a["key"]
        difference = (a["video"].float() - b["video"].float()).abs().mean()
        assert difference < 6, (a["key"], float(difference))
        moved += bool((b["video"].float() - c["video"].float()).abs().mean() > 20)
    assert moved >= SAMPLES // 2  # the crops are random, not all at the centre


def test_k_clips_per_decode_are_distinct_and_every_sample_comes_k_times(data):
    mp4, mat = data
    for source in (mp4, mat):
        one = {s["key"]: s for s in _samples(source, crop="random")}
        three = _samples(source, clips=3, batch_size=6, crop="random")
        assert Counter(s["key"] for s in three) == dict.fromkeys(one, 3)
        for key, first in one.items():
            clips = [s for s in three if s["key"] == key]
            # clip 0 draws as K = 1 does (from media, K > 1 decodes once: starts snap to frames)
            difference = (clips[0]["video"].float() - first["video"].float()).abs().mean()
            assert difference == 0 if source == mat else difference < 6
            starts = {clip["audio"][:400].numpy().tobytes() for clip in clips}
            if key != "c03":  # the short clip has one possible start
                assert len(starts) == 3, key


def test_resume_on_materialised_data_is_bitwise(data):
    _, mat = data

    def loader():
        stream = Stream(mat, _fields(crop="random", flip=True), batch_size=3, clips_per_sample=3)
        return stream.loader(2)

    def digest(batch) -> list:
        return [batch.keys, *(batch[n].values.numpy().tobytes() for n in ("video", "audio"))]

    full = [digest(b) for b in loader()]
    first = loader()
    batches = iter(first)
    for _ in range(5):
        next(batches)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = loader()
    resumed.load_state_dict(state)
    assert [digest(b) for b in resumed] == full[5:]
    assert len(full) == SAMPLES  # K = 3 clips of one sample per batch of 3


def test_a_config_that_differs_in_what_was_kept_is_refused(data):
    _, mat = data
    for option, value, said in (("size", 48, "options.size"), ("fps", 4.0, "options.fps")):
        with pytest.raises(ValueError, match=rf"field 'video': {said} is .* materialised with"):
            Stream(mat, {"video": get("video")(**{**VIDEO, option: value})})
    with pytest.raises(ValueError, match=r"field 'audio': options\.sample_rate"):
        Stream(mat, {"audio": get("audio")(**{**AUDIO, "sample_rate": 8000})})
    Stream(mat, {"video": get("video")(**{**VIDEO, "num_frames": 6, "crop": "random"})})


def test_the_job_is_deterministic(data, tmp_path):
    mp4, mat = data
    config = _config(tmp_path / "train.toml", VIDEO, AUDIO)
    preprocess.run(mp4, tmp_path / "again", [f"materialize:config={config}"], progress=False)
    for shard in ShardIndex.load(mat).shards:
        assert (tmp_path / "again" / shard.name).read_bytes() == (mat / shard.name).read_bytes()


def test_a_config_with_nothing_to_keep_fails_before_the_job(data, tmp_path):
    config = tmp_path / "image.toml"
    config.write_text('[data]\ntrain = "x"\n[data.fields.image]\nadapter = "image"\n')
    with pytest.raises(ValueError, match="none of the config's fields materialises"):
        preprocess.run(data[0], tmp_path / "out", [f"materialize:config={config}"])
    assert not (tmp_path / "out").exists()


# --- hostile members ---


def _member(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + payload


HOSTILE = {
    "pickle": (b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os", "no PMARRAY1 magic"),
    "garbage header": (MAGIC + struct.pack("<I", 5) + b"{nope", "header is not JSON"),
    "header past the end": (MAGIC + struct.pack("<I", 60000) + b"{}", "does not fit"),
    "object dtype": (
        _member({"dtype": "object", "shape": [1], "compression": "none"}, b""),
        "dtype",
    ),
    "negative shape": (
        _member({"dtype": "uint8", "shape": [-1, 2], "compression": "none"}, b""),
        "non-negative",
    ),
    "a terabyte": (
        _member({"dtype": "uint8", "shape": [2**20, 2**20], "compression": "zstd"}, b"\x28\xb5"),
        "over",
    ),
    "truncated": (
        _member({"dtype": "uint8", "shape": [4, 40, 40, 3], "compression": "none"}, b"\x00" * 99),
        "payload is 99 bytes",
    ),
    "zstd that lies": (
        _member(
            {"dtype": "uint8", "shape": [4, 40, 40, 3], "compression": "zstd"},
            zstandard.ZstdCompressor().compress(b"\x00" * 100),
        ),
        "zstd frame states 100 bytes",
    ),
    "wrong dtype": (
        encode_decoded(np.zeros((4, 40, 40, 3), np.int16), {"fps": 8, "total": 1}),
        "not uint8 frames",
    ),
    "too small for the crop": (
        encode_decoded(np.zeros((4, 8, 8, 3), np.uint8), {"fps": 8, "total": 1}),
        "smaller than the 32×32 crop",
    ),
    "larger than was kept": (  # a crop of it would be another field of view
        encode_decoded(np.zeros((4, 72, 80, 3), np.uint8), {"fps": 8, "total": 1}),
        "materialised frames are 80×72: this field keeps",
    ),
}


def test_hostile_members_are_reported_skips(tmp_path):
    good = encode_decoded(np.full((8, 36, 40, 3), 7, np.uint8), {"fps": 8, "total": 1})
    with ShardWriter(tmp_path, max_samples=4) as writer:
        writer.write({"__key__": "good", "video.decoded": good})
        for key, (member, _) in HOSTILE.items():
            writer.write({"__key__": key.replace(" ", "_"), "video.decoded": member})
    index = ShardIndex.load(tmp_path)
    index.materialized = {"video": get("video")(**VIDEO).materialized_record()}
    index.save(tmp_path)
    stream = Stream(tmp_path, {"video": get("video")(**VIDEO)}, batch_size=4, shuffle=False)
    skips = [s for _, _, batch_skips in stream.worker_batches(0, Place()) for s in batch_skips]
    reasons = {s.key: s.reason for s in skips}
    assert set(reasons) == {key.replace(" ", "_") for key in HOSTILE}
    for key, (_, said) in HOSTILE.items():
        assert said in reasons[key.replace(" ", "_")], (key, reasons[key.replace(" ", "_")])


def test_the_format_round_trips_and_is_checked_before_allocating():
    smooth = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None], (4, 40, 40, 3)).copy()
    noise = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3)).astype(np.uint8)
    for array, level, stored in ((smooth, 0, "none"), (smooth, 3, "zstd"), (noise, 3, "none")):
        member = encode_decoded(array, {"fps": 8, "first": 0.125}, level)
        assert f'"compression":"{stored}"'.encode() in member[:200]  # zstd only where it pays
        back, meta = decode_decoded(member)
        assert np.array_equal(back, array) and meta == {"fps": 8.0, "first": 0.125}
    with pytest.raises(ValueError, match="takes 1,010 bytes, over 1,000"):
        decode_decoded(encode_decoded(np.zeros((10, 101), np.uint8), {}), max_bytes=1000)


# --- threads ---


class _ThreadCount(type(get("label")())):
    """A label adapter that reports the FFmpeg and torch threads of the process decoding it."""

    def decode_bytes(self, data, ext, rng):
        field = super().decode_bytes(data, ext, rng)
        field.values = torch.full_like(
            field.values, 100 * decode_threads() + torch.get_num_threads()
        )
        return field


def test_workers_share_the_cores(data):
    mp4, _ = data
    for threads, expected in ((None, max(1, cores() // 2)), (3, 3)):
        stream = Stream(mp4, {"label": _ThreadCount()}, batch_size=4)
        loader = stream.loader(2, threads=threads)
        seen = {int(v) for batch in loader for v in batch["label"].values.flatten()}
        assert seen == {100 * expected + 1}
        assert f"2 DataLoader workers × {expected} FFmpeg thread(s)" in loader.split()


# --- the commands a user runs ---


def _polymodal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polymodal", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_one_training_config_runs_on_both_forms_and_a_changed_one_is_refused(data, tmp_path):
    mp4, _ = data
    config = _config(tmp_path / "train.toml", {**VIDEO, "crop": "random"}, AUDIO)
    with config.open("a") as f:
        f.write(
            "[data.fields.video.encoder]\npatch = [1, 8, 8]\n"
            "[model]\nnum_latents = 8\nlatent_dim = 16\nnum_self_attends_per_block = 1\n"
        )
    made = _polymodal(
        "preprocess", str(mp4), str(tmp_path / "mat"), "--op", f"materialize:config={config}"
    )
    assert made.returncode == 0, made.stderr
    for source in (mp4, tmp_path / "mat"):
        run = _polymodal(
            "train",
            str(config),
            "--set",
            f"data.train={source}",
            "--set",
            "data.batch_size=4",
            "--set",
            "max_steps=3",
            "--set",
            f"run_dir={tmp_path / f'run-{source.name}'}",
        )
        assert run.returncode == 0, run.stderr[-3000:]
        summary = json.loads((tmp_path / f"run-{source.name}" / "summary.json").read_text())
        assert summary["steps"] == 3
    refused = _polymodal(
        "train",
        str(config),
        "--set",
        f"data.train={tmp_path / 'mat'}",
        "--set",
        "data.fields.video.options.size=48",
        "--set",
        f"run_dir={tmp_path / 'refused'}",
    )
    assert refused.returncode == 2  # an invalid config
    assert "field 'video': options.size is [48, 48]" in refused.stderr


def test_an_optional_field_a_sample_lacks_is_left_out(tmp_path):
    with ShardWriter(tmp_path / "src", max_samples=4) as writer:
        writer.write({"__key__": "with", "mp4": _clip(0, 1.0), "cls": b"0"})
        writer.write({"__key__": "without", "cls": b"1"})
    config = tmp_path / "train.toml"
    config.write_text(
        '[data]\ntrain = "x"\n[data.fields.video]\nadapter = "video"\nextensions = ["mp4"]\n'
        "optional = true\noptions = {num_frames = 4, fps = 8.0, size = 32}\n"
    )
    report = preprocess.run(
        tmp_path / "src", tmp_path / "mat", [f"materialize:config={config}"], progress=False
    )
    assert (report.samples_out, report.rejected) == (2, 0)
    stream = Stream(
        tmp_path / "mat",
        {"video": get("video")(num_frames=4, fps=8.0, size=32), "label": get("label")()},
        batch_size=2,
        shuffle=False,
        optional=["video"],
    )
    (batch,) = list(stream)
    assert batch.keys == ["with", "without"] and batch.has("video").tolist() == [True, False]

"""Each preprocessing op on real media made here with PyAV and Pillow, checked by decoding what
it wrote: rates, sizes, frame contents, tones, keys."""

from __future__ import annotations

import io
import re

import av
import numpy as np
import pytest
from PIL import Image
from testdata import REPO
from testmedia import peak_hz

from polymodal.codecs.points import read_points
from polymodal.datasets.splits import split_of
from polymodal.datasets.synthetic import (
    counter_frames,
    encode_audio,
    encode_image,
    encode_media,
    encode_ply,
    photo,
    tone,
)
from polymodal.pipelines.preprocess.ops import (
    Filtered,
    Op,
    available_ops,
    get_op,
    make_op,
    parse_op,
    register_op,
)


def probe(data: bytes) -> dict:
    """What a decoder sees: per stream codec, sizes, rate, frames; grey levels and samples."""
    out: dict = {}
    with av.open(io.BytesIO(data)) as container:
        if container.streams.video:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            out["video"] = {
                "codec": stream.codec_context.name,
                "size": (frames[0].shape[1], frames[0].shape[0]),
                "fps": float(stream.average_rate),
                "levels": np.array([f.mean() for f in frames]),
            }
    with av.open(io.BytesIO(data)) as container:
        if container.streams.audio:
            stream = container.streams.audio[0]
            chunks = [f.to_ndarray() for f in container.decode(stream)]
            pcm = np.concatenate(chunks, axis=1)
            out["audio"] = {
                "codec": stream.codec_context.name,
                "rate": stream.rate,
                "channels": stream.codec_context.channels,
                "samples": pcm[0],
            }
    return out


@pytest.fixture(scope="module")
def clip() -> bytes:
    """3 s of 160×120 video at 25 fps whose frame k has grey level 3k, with a 440 Hz tone."""
    return encode_media(
        "mp4",
        counter_frames(75, 120, 160, step=3),
        fps=25,
        audio=tone(440, 3.0, 44100),
        audio_rate=44100,
    )


def test_builtins_are_registered_and_parse():
    assert {
        "resample_audio",
        "transcode_video",
        "cut_clips",
        "extract_audio",
        "resize_image",
        "subsample_points",
        "filter",
        "dedupe",
        "split",
        "call",
    } <= set(available_ops())
    assert parse_op("filter:labels=[1,2],min_seconds=1.5,where=pkg.mod:fn") == (
        "filter",
        {"labels": [1, 2], "min_seconds": 1.5, "where": "pkg.mod:fn"},
    )
    op = make_op({"op": "resample_audio", "rate": 16000})
    assert op.spec() == {"op": "resample_audio", **{**op.spec(), "rate": 16000}}
    with pytest.raises(KeyError, match="no op named 'nope'"):
        make_op("nope")
    with pytest.raises(ValueError, match=r"unknown option .rat. \(known: rate, channels"):
        make_op("resample_audio:rat=16000")


def test_resample_downmix_trim_audio():
    wav = encode_audio(tone(440, 3.0, 44100, channels=2), 44100, "wav")
    op = make_op("resample_audio:rate=16000,channels=1,start=0.5,seconds=2")
    sample = op({"__key__": "a", "wav": wav, "cls": b"1"})
    assert sorted(sample) == ["__key__", "cls", "flac"]
    audio = probe(sample["flac"])["audio"]
    assert (audio["codec"], audio["rate"], audio["channels"]) == ("flac", 16000, 1)
    assert len(audio["samples"]) == 32000
    assert abs(peak_hz(audio["samples"].astype(np.float32), 16000) - 440) < 5


def test_transcode_video_resizes_changes_fps_and_keeps_content(clip):
    sample = make_op("transcode_video:size=64,fps=10")({"__key__": "v", "mp4": clip})
    out = probe(sample["mp4"])
    video = out["video"]
    assert (video["codec"], video["size"], video["fps"]) == ("h264", (86, 64), 10.0)
    # output frame j (t = j/10 s) shows input frame floor(2.5 j), grey level 3 · that
    expected = 3 * np.floor(2.5 * np.arange(30))
    assert len(video["levels"]) == 30
    assert np.abs(video["levels"] - expected).max() < 4
    assert abs(peak_hz(out["audio"]["samples"], out["audio"]["rate"]) - 440) < 5


def test_transcode_to_vp9_and_drop_audio(clip):
    op = make_op("transcode_video:codec=vp9,size=48,audio=False")
    sample = op({"__key__": "v", "mp4": clip})
    assert sorted(sample) == ["__key__", "webm"]
    out = probe(sample["webm"])
    assert out["video"]["codec"] == "vp9" and "audio" not in out
    assert len(out["video"]["levels"]) == 75
    # a rerun gives the same bytes: WebM's muxer drew a random track id for every file
    assert op({"__key__": "v", "mp4": clip})["webm"] == sample["webm"]


def test_rotated_video_comes_out_upright():
    rotated = encode_media("mp4", counter_frames(10, 48, 64), rotation=90)
    sample = make_op("transcode_video")({"__key__": "r", "mp4": rotated})
    assert probe(sample["mp4"])["video"]["size"] == (48, 64)


def test_cut_clips_makes_keyed_samples_from_one(clip):
    samples = make_op("cut_clips:seconds=1,size=64")({"__key__": "v", "mp4": clip, "cls": b"2"})
    assert [s["__key__"] for s in samples] == ["v_0000", "v_0001", "v_0002"]
    for k, sample in enumerate(samples):
        assert sample["cls"] == b"2"
        out = probe(sample["mp4"])
        levels = out["video"]["levels"]
        assert len(levels) == 25
        assert abs(levels[0] - 3 * 25 * k) < 4  # clip k starts at input frame 25 k
        assert abs(len(out["audio"]["samples"]) / out["audio"]["rate"] - 1.0) < 0.05
    short = encode_media("mp4", counter_frames(62, 48, 64), fps=25)  # 2.48 s
    assert len(make_op("cut_clips:seconds=1")({"__key__": "s", "mp4": short})) == 2
    assert (
        len(make_op("cut_clips:seconds=1,keep_partial=True")({"__key__": "s", "mp4": short})) == 3
    )
    with pytest.raises(Filtered, match="shorter than one 5 s clip"):
        make_op("cut_clips:seconds=5")({"__key__": "s", "mp4": short})


def test_extract_audio_adds_the_track(clip):
    sample = make_op("extract_audio:rate=16000,channels=1")({"__key__": "v", "mp4": clip})
    assert sorted(sample) == ["__key__", "flac", "mp4"]
    audio = probe(sample["flac"])["audio"]
    assert audio["rate"] == 16000
    assert abs(peak_hz(audio["samples"].astype(np.float32), 16000) - 440) < 5
    only = make_op("extract_audio:keep_video=False")({"__key__": "v", "mp4": clip})
    assert sorted(only) == ["__key__", "flac"]


def x264_options(mp4: bytes) -> dict[str, str]:
    """The options x264 wrote into the stream it encoded (its version SEI)."""
    text = mp4[mp4.index(b"x264 - core") :].split(b"\x00", 1)[0].decode()
    return dict(item.split("=", 1) for item in text.split("options: ", 1)[1].split())


def test_media_ops_are_deterministic(clip):
    """Reruns give the same bytes. x264 runs on one thread and without its macroblock tree:
    with it, identical frames on one thread now and then came out as other bytes (0.2 % of
    the job test's clips under load), so a killed job's rerun task rewrote a shard unlike the
    first run's."""
    op = make_op("cut_clips:seconds=1,size=64,fps=12")
    first = op({"__key__": "v", "mp4": clip})
    second = make_op("cut_clips:seconds=1,size=64,fps=12")({"__key__": "v", "mp4": clip})
    assert [s["mp4"] for s in first] == [s["mp4"] for s in second]
    options = x264_options(first[0]["mp4"])
    assert options["threads"] == "1" and options["mbtree"] == "0"


def test_every_frame_is_scaled_on_one_swscale_thread():
    """Threaded swscale made reruns differ under load (1 pair in 40); frames are scaled only
    through `codecs.video.scaled`, which runs it on one thread."""
    package = REPO / "polymodal"
    scaling = re.compile(r"\.reformat\(|\.to_ndarray\([^)]*(width|height|format)=")
    found = [
        f"{path.relative_to(package)}:{n}"
        for path in package.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if scaling.search(line) and path != package / "codecs" / "video.py"
    ]
    assert found == []
    assert "threads=SCALE_THREADS" in (package / "codecs" / "video.py").read_text()


def test_media_bounds_refuse_before_decoding(clip):
    with pytest.raises(ValueError, match="over max_pixels"):
        make_op("transcode_video:max_pixels=1000")({"__key__": "v", "mp4": clip})
    with pytest.raises(ValueError, match="over max_seconds"):
        make_op("resample_audio:max_seconds=1")(
            {"__key__": "v", "flac": encode_audio(tone(seconds=2, rate=8000), 8000)}
        )


def test_resize_image_and_reencode():
    jpg = encode_image(photo(0, 256)[:, :200])  # 200 wide, 256 high
    sample = make_op("resize_image:size=64,format=png")({"__key__": "i", "jpg": jpg})
    assert sorted(sample) == ["__key__", "png"]
    with Image.open(io.BytesIO(sample["png"])) as img:
        assert (img.format, img.size) == ("PNG", (64, 82))
        small = np.asarray(img.convert("RGB"), dtype=np.float32)
    with Image.open(io.BytesIO(jpg)) as img:
        reference = np.asarray(img.convert("RGB").resize((64, 82)), dtype=np.float32)
    assert np.abs(small - reference).mean() < 8  # the same picture, smaller
    tiny = encode_image(photo(1, 32))
    kept = make_op("resize_image:size=64")({"__key__": "t", "jpg": tiny})
    with Image.open(io.BytesIO(kept["jpg"])) as img:
        assert img.size == (32, 32)  # never scaled up


def test_subsample_points_is_a_stable_subset():
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(5000, 4)).astype(np.float32)
    op = make_op("subsample_points:points=1000")
    first = op({"__key__": "p", "ply": encode_ply(cloud)})
    again = make_op("subsample_points:points=1000")({"__key__": "p", "ply": encode_ply(cloud)})
    assert first["ply"] == again["ply"]
    points = read_points(first["ply"], "ply")
    assert points.shape == (1000, 4)
    rows = {tuple(r) for r in cloud.tolist()}
    assert all(tuple(r) in rows for r in points.tolist())
    other = make_op("subsample_points:points=1000")({"__key__": "q", "ply": encode_ply(cloud)})
    assert other["ply"] != first["ply"]  # another key, another draw


def test_filter_by_duration_size_label_and_predicate(tmp_path, monkeypatch):
    (tmp_path / "user_predicates.py").write_text(
        "def has_caption(sample):\n    return 'txt' in sample\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    one = encode_audio(tone(seconds=1.0, rate=16000), 16000)
    three = encode_audio(tone(seconds=3.0, rate=16000), 16000)
    op = make_op("filter:min_seconds=2")
    assert op({"__key__": "l", "flac": three})["__key__"] == "l"
    with pytest.raises(Filtered, match="shorter than min_seconds=2"):
        op({"__key__": "s", "flac": one})
    with pytest.raises(Filtered, match="over max_bytes"):
        make_op("filter:max_bytes=100")({"__key__": "s", "flac": one})
    labels = make_op("filter:labels=[1,2]")
    assert labels({"__key__": "a", "cls": b"2"})
    with pytest.raises(Filtered, match="label not in labels"):
        labels({"__key__": "b", "cls": b"3"})
    where = make_op("filter:where=user_predicates:has_caption")
    assert where({"__key__": "c", "txt": b"hi"})
    with pytest.raises(Filtered, match="has_caption is false"):
        where({"__key__": "d"})
    with pytest.raises(ValueError, match="no audio or video member"):
        op({"__key__": "x", "cls": b"1"})


def test_split_follows_the_input_key():
    op = make_op("split:val=0.25")
    keys = [f"k{i}" for i in range(200)]
    splits = [op({"__key__": f"{k}_0001", "__origin__": k})["__split__"] for k in keys]
    assert splits == [split_of(k, {"val": 0.25}) for k in keys]
    assert 30 < splits.count("val") < 70
    with pytest.raises(ValueError, match="fractions must be positive"):
        make_op("split:val=1.5")


def test_user_ops_by_class_and_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "user_ops.py").write_text(
        "def twice(sample, suffix='x'):\n"
        "    return [sample, {**sample, '__key__': sample['__key__'] + suffix}]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = make_op("call:fn=user_ops:twice,suffix=_b")({"__key__": "k", "txt": b"t"})
    assert [s["__key__"] for s in out] == ["k", "k_b"]

    @register_op("test_upper")
    class Upper(Op):
        def __call__(self, sample):
            sample["txt"] = sample["txt"].upper()
            return sample

    assert get_op("test_upper") is Upper
    assert make_op("test_upper")({"__key__": "k", "txt": b"ab"})["txt"] == b"AB"
    with pytest.raises(ValueError, match="cannot import"):
        make_op("call:fn=no_such_module:f")

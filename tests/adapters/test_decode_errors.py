"""Every kind of bad input the issue names: a DecodeError naming key, field and reason, fast."""

import io
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from testmedia import empty_wav, png_bomb

from polymodal.adapters import DecodeError, get
from polymodal.datasets.synthetic import (
    counter_frames,
    encode_audio,
    encode_image,
    encode_media,
    encode_ply,
    photo,
    tone,
)

NOISE = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()


def _cases():
    jpg = encode_image(photo(0, 128), "JPEG")
    png = encode_image(photo(0, 128), "PNG")
    flac = encode_audio(tone(440, 2.0), 44100, "flac")
    mp4 = encode_media("mp4", counter_frames(25), audio=tone(440, 1.0))
    webm = encode_media("webm", counter_frames(50))
    ply = encode_ply(np.zeros((100, 3)))
    nan_cloud = io.BytesIO()
    np.save(nan_cloud, np.array([[0.0, np.nan, 1.0]] * 5, np.float32))
    return [
        # (case, adapter, extension, bytes)
        *[
            (f"empty-{name}", name, ext, b"")
            for name, ext in [
                ("image", "jpg"),
                ("audio", "flac"),
                ("video", "mp4"),
                ("pointcloud", "ply"),
                ("text", "txt"),
                ("label", "cls"),
            ]
        ],
        ("corrupt-jpg", "image", "jpg", jpg[:20] + NOISE),
        ("corrupt-png", "image", "png", png[:40] + NOISE),
        ("corrupt-flac", "audio", "flac", flac[:100] + NOISE),
        ("corrupt-mp4", "video", "mp4", mp4[:100] + NOISE),
        ("truncated-jpg", "image", "jpg", jpg[: len(jpg) // 2]),
        ("truncated-png", "image", "png", png[: len(png) // 2]),
        ("truncated-flac", "audio", "flac", flac[: len(flac) // 2]),
        ("truncated-mp4", "video", "mp4", mp4[: len(mp4) // 2]),
        ("truncated-webm", "video", "webm", webm[: len(webm) // 2]),
        ("truncated-ply", "pointcloud", "ply", ply[:-40]),
        ("wrong-extension-png-as-flac", "audio", "flac", png),
        ("wrong-extension-flac-as-jpg", "image", "jpg", flac),
        ("wrong-extension-text-as-mp4", "video", "mp4", b"just some text, not a video"),
        ("video-without-video-stream", "video", "mp4", encode_media("mp4", audio=tone())),
        ("zero-length-audio", "audio", "wav", empty_wav()),
        ("ply-bad-header", "pointcloud", "ply", b"ply\nformat ascii 1.0\nelement vertex x\n"),
        ("nan-point-cloud", "pointcloud", "npy", nan_cloud.getvalue()),
    ]


@pytest.mark.parametrize(("case", "adapter", "ext", "data"), _cases(), ids=lambda v: str(v)[:30])
def test_bad_input_raises_a_decode_error_quickly(case, adapter, ext, data):
    start = time.perf_counter()
    with pytest.raises(DecodeError) as err:
        get(adapter)().decode({"__key__": case, ext: data})
    assert time.perf_counter() - start < 5.0
    assert err.value.key == case and err.value.field == adapter
    assert case in str(err.value) and adapter in str(err.value) and err.value.reason


def test_missing_member_names_what_the_sample_has():
    with pytest.raises(DecodeError, match=r"no member .*\['cls', 'jpg'\]"):
        get("audio")().decode({"__key__": "k", "jpg": b"x", "cls": b"1"})


@pytest.mark.slow
def test_decompression_bomb_is_refused_in_bounded_memory(tmp_path):
    """A 40000×40000 PNG (1.6 gigapixels, 4.8 GB decoded) is refused from its header."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(40000, 40000))
    assert bomb.stat().st_size < 4_000_000
    script = textwrap.dedent(
        f"""
        import resource
        from polymodal.adapters import DecodeError, get
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        data = open({str(bomb)!r}, "rb").read()
        try:
            get("image")().decode({{"__key__": "bomb", "png": data}})
        except DecodeError as exc:
            print("refused:", exc.reason)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("grew_kb", after - before)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "refused:" in out
    grew_kb = int(out.split("grew_kb")[1])
    assert grew_kb < 200_000, out  # well under the 1.6 GB a decode would take


def test_corrupt_jpeg_data_is_never_a_silently_wrong_sample():
    """libjpeg only warns about these and fills the rest grey; strict decoding refuses them."""
    small = encode_image(photo(0, 128), "JPEG")
    large = encode_image(photo(0, 512), "JPEG")  # 512 → 112 decodes at 1/4 in the DCT domain
    noise = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    for data in (small, large):
        middle = len(data) // 2
        cases = {
            "cut-and-closed": data[:middle] + b"\xff\xd9",
            "noise-in-the-scan": data[:middle] + noise + data[middle + 200 :],
        }
        for name, bad in cases.items():
            with pytest.raises(DecodeError):
                get("image")(size=112).decode({"__key__": name, "jpg": bad})
        assert get("image")(size=112).decode({"__key__": "ok", "jpg": data}).grid == (112, 112)


def test_ffmpeg_errors_reach_users_as_plain_reasons():
    for name in ("video", "audio"):
        with pytest.raises(DecodeError) as err:
            get(name)().decode({"__key__": "k", "mp4": b"not a video at all" * 40})
        assert "Errno" not in err.value.reason and "FFmpeg: " in err.value.reason

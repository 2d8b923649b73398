"""Adapter decode speed against bare decoders, in one process.

    .venv/bin/python benchmarks/bench_adapters.py [--images 200] [--clips 6] [--sounds 40]
        [--repeats 5]

Images: 256² photo-like JPEGs (quality 90) decoded to 224² and 112² by our image adapter, vs a
bare `torchvision.io.decode_jpeg` loop (the baseline, full size, no resize), a bare Pillow loop,
and webdataset's `decode("pil")` + torchvision `Resize(256) + CenterCrop(224)` (the same
"resize 256, crop 224" our default `crop_fraction=0.875` does). Video: a 16-frame clip at 8 fps,
112², from 10 s 320×240 h264 clips (keyframe every 2 s), vs decoding every frame with PyAV,
and the same clip decoding the frames it skips (`video._SKIPS_NONREF` empty: what it cost
before), on clips x264 codes without B-frames and with them.
Audio: 16-bit PCM WAVs and AAC in m4a (noise) decoded whole to 16 kHz mono int16 by our audio
adapter, vs opening each with PyAV and decoding every frame to an array; and our adapter as it
was before its last speed-up: with FFmpeg's default probe of a WAV (`containers.WAV_PROBE` off),
or converting AAC's float samples by PyAV's filter graph (`audio._converts` false). One thread
for torch (as in a DataLoader worker); rates are medians over repeats.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import av
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torchvision import transforms
from torchvision.io import decode_jpeg

from polymodal import adapters
from polymodal.codecs import audio as audio_codecs
from polymodal.codecs import containers
from polymodal.codecs import video as video_codecs
from polymodal.datasets.synthetic import encode_audio, encode_image, encode_media, photo


def rates(cases: dict[str, Callable[[bytes], object]], items: list[bytes], repeats: int) -> list:
    """Median items/s of each case. Repeats are interleaved (every case once per round), so a
    slow spell of this shared machine hits all cases alike instead of one."""
    for fn in cases.values():
        for item in items[:3]:
            fn(item)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            for item in items:
                fn(item)
            samples[name].append(len(items) / (time.perf_counter() - start))
    return [(name, statistics.median(values)) for name, values in samples.items()]


def image_table(n: int, repeats: int) -> list[tuple[str, float]]:
    jpegs = [encode_image(photo(seed, 256), "JPEG", quality=90) for seed in range(n)]
    ours_224 = adapters.get("image")(size=224)
    ours_112 = adapters.get("image")(size=112)
    ours_224_resized = adapters.get("image")(size=224, crop_fraction=1.0)
    wds_decoder = wds.autodecode.Decoder([wds.autodecode.imagehandler("pil")])
    resize_crop = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()]
    )

    def webdataset_pil(data: bytes) -> torch.Tensor:
        return resize_crop(wds_decoder({"__key__": "k", "jpg": data})["jpg"])

    def bare_pil(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def sample(adapter: adapters.Adapter) -> Callable[[bytes], object]:
        return lambda data: adapter.decode({"__key__": "k", "jpg": data})

    def bare_decode_jpeg(data: bytes) -> torch.Tensor:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))

    cases = {
        "decode_jpeg loop, 256² (baseline)": bare_decode_jpeg,
        "Pillow loop, 256²": bare_pil,
        "webdataset decode('pil') + Resize/CenterCrop 224²": webdataset_pil,
        "polymodal image → 224² (resize 256, crop 224)": sample(ours_224),
        "polymodal image → 224² (resize 224: resample)": sample(ours_224_resized),
        "polymodal image → 112² (draft 1/2, crop)": sample(ours_112),
    }
    return rates(cases, jpegs, repeats)


def video_table(n: int, repeats: int, moving: bool = False) -> list[tuple[str, float]]:
    """`moving`: a square crossing a gradient, which x264 codes with B-frames (the grey
    frames with a still band of noise it codes with none)."""
    rng = np.random.default_rng(0)
    clips = []
    y, x = np.mgrid[0:240, 0:320]
    for _ in range(n):
        frames = np.empty((250, 240, 320, 3), np.uint8)
        if moving:
            for k in range(250):
                frames[k] = ((x[..., None] + y[..., None] * [1, 2, 3] + k) % 256).astype(np.uint8)
                frames[k, 80:120, (3 * k) % 280 : (3 * k) % 280 + 40] = 255
        else:
            frames[:] = (np.arange(250) % 256).astype(np.uint8)[:, None, None, None]
            frames[:, 100:140, :, :] = rng.integers(0, 256, (1, 40, 320, 3), dtype=np.uint8)
        clips.append(encode_media("mp4", frames, fps=25, keyframe_interval=50))
    ours = adapters.get("video")(num_frames=16, fps=8, size=112, crop="random")
    seeds = iter(range(10**9))

    def clip(data: bytes) -> object:
        return ours.decode({"__key__": "k", "mp4": data}, np.random.default_rng(next(seeds)))

    def every_frame(data: bytes, convert: bool) -> int:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            count = 0
            for frame in container.decode(stream):
                if convert:
                    frame.to_ndarray(format="rgb24")
                count += 1
            return count

    def clip_decoding_all(data: bytes) -> object:
        with mock.patch.object(video_codecs, "_SKIPS_NONREF", ()):
            return clip(data)

    cases = {
        "PyAV decode every frame → RGB (baseline)": lambda d: every_frame(d, True),
        "PyAV decode every frame, no conversion": lambda d: every_frame(d, False),
        "polymodal video: 16 frames @ 8 fps → 112², random": clip,
        "  the same, decoding the frames it skips": clip_decoding_all,
    }
    return rates(cases, clips, repeats)


# Per audio format, what our decode did before its last speed-up, run in the same process.
BEFORE: dict[str, tuple[str, Callable[[], Any]]] = {
    "wav": (
        "FFmpeg's default probe of a WAV",
        lambda: mock.patch.object(containers, "WAV_PROBE", None),
    ),
    "m4a": (
        "float to int16 by PyAV's filter graph",
        lambda: mock.patch.object(audio_codecs, "_converts", lambda *_: False),
    ),
}


def audio_table(n: int, repeats: int, seconds: float, rate: int, channels: int, ext: str) -> list:
    rng = np.random.default_rng(0)
    shape = (round(seconds * rate), channels)
    sounds = [encode_audio(rng.uniform(-0.5, 0.5, shape).astype(np.float32), rate, ext)]
    sounds *= n  # one file: encoding is not measured
    ours = adapters.get("audio")(duration=None)

    def every_frame(data: bytes) -> int:
        with av.open(io.BytesIO(data)) as container:
            return sum(len(f.to_ndarray()) for f in container.decode(audio=0))

    def decode(data: bytes) -> object:
        return ours.decode({"__key__": "k", ext: data})

    what, patch = BEFORE[ext]

    def before(data: bytes) -> object:
        with patch():
            return decode(data)

    cases = {
        "PyAV open, decode every frame → array (baseline)": every_frame,
        "polymodal audio → 16 kHz mono int16, whole file": decode,
        f"  the same, {what}": before,
    }
    return rates(cases, sounds, repeats)


def print_table(title: str, rows: list[tuple[str, float]], unit: str) -> None:
    base = rows[0][1]
    print(f"\n{title}\n{'':2}{'what':56s} {unit:>12s} {'× baseline':>11s}")
    for name, value in rows:
        print(f"  {name:56s} {value:12.1f} {value / base:10.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--sounds", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, PyAV {av.__version__}, 1 torch thread")
    print_table("Images (256² JPEG)", image_table(args.images, args.repeats), "images/s")
    print_table("Video (10 s 320×240 h264 clip)", video_table(args.clips, args.repeats), "clips/s")
    print_table(
        "Video with B-frames (10 s 320×240 h264 clip, a square moving over a gradient)",
        video_table(args.clips, args.repeats, moving=True),
        "clips/s",
    )
    for seconds, rate, channels, ext, what in (
        (1.0, 16000, 1, "wav", "mono 16-bit WAV"),
        (10.0, 44100, 2, "wav", "stereo 16-bit WAV"),
        (1.0, 16000, 1, "m4a", "mono AAC in m4a"),
    ):
        print_table(
            f"Audio ({seconds:g} s {rate / 1000:g} kHz {what})",
            audio_table(args.sounds, args.repeats, seconds, rate, channels, ext),
            "files/s",
        )


if __name__ == "__main__":
    main()

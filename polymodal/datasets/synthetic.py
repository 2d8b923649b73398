"""Real media made by real encoders (Pillow, PyAV), for the demo, tests and benchmarks.

Nothing is downloaded: every file is encoded here, in memory, with the same codecs users'
data comes in (h264/aac mp4, vp9/opus webm, flac, mp3, ...), and carries a known signal (a
tone's frequency, a frame's index, a colour) so that a decoder can be checked against it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from polymodal.codecs.encoders import add_audio_stream, add_video_stream
from polymodal.codecs.points import (
    encode_ply as encode_ply,  # re-exported: tests make point clouds here
)

# container extension → (FFmpeg muxer, audio codec, video codec)
CONTAINERS = {
    "flac": ("flac", "flac", None),
    "wav": ("wav", "pcm_s16le", None),
    "mp3": ("mp3", "libmp3lame", None),
    "ogg": ("ogg", "libopus", None),
    "opus": ("opus", "libopus", None),
    "m4a": ("ipod", "aac", None),
    "aac": ("adts", "aac", None),
    "ac3": ("ac3", "ac3", None),
    "mp4": ("mp4", "aac", "libx264"),
    "mov": ("mov", "aac", "libx264"),
    "mkv": ("matroska", "libopus", "libx264"),
    "webm": ("webm", "libopus", "libvpx-vp9"),
    "avi": ("avi", "libmp3lame", "mpeg4"),
}
_CODEC_RATES = {"libopus": 48000}  # codecs that accept only some rates
_MILLISECOND = Fraction(1, 1000)


def tone(
    freq: float = 440.0, seconds: float = 1.0, rate: int = 44100, channels: int = 1
) -> np.ndarray:
    """A sine wave `[n, channels]` float32 at amplitude 0.5."""
    t = np.arange(round(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1)


def encode_audio(samples: np.ndarray, rate: int, ext: str = "flac") -> bytes:
    """Encode float samples `[n, channels]` in [-1, 1] as an audio file of type `ext`."""
    return encode_media(ext, audio=samples, audio_rate=rate)


def counter_frames(num_frames: int, height: int = 48, width: int = 64, step: int = 8) -> np.ndarray:
    """Frames `[T, H, W, 3]` whose grey level is `step · k` in frame k (readable after h264)."""
    levels = (np.arange(num_frames) * step % 256).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def encode_media(
    ext: str,
    frames: np.ndarray | None = None,
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    audio_rate: int = 44100,
    rotation: int = 0,
    times: Sequence[float] | None = None,
    keyframe_interval: int | None = None,
    bit_rate: int = 4_000_000,
) -> bytes:
    """Encode video frames `[T, H, W, 3]` uint8 and/or audio `[n, channels]` float32.

    `rotation` writes display-matrix rotation metadata (degrees), as phones do; `times` gives
    each frame its own timestamp (seconds) for a variable-frame-rate video;
    `keyframe_interval` sets the GOP length in frames (the codec's default otherwise);
    `bit_rate` is high by default, so that test signals survive coding.
    """
    muxer, audio_codec, video_codec = CONTAINERS[ext]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=muxer) as out:
        vstream: av.VideoStream | None = None
        astream: av.AudioStream | None = None
        if frames is not None:
            if video_codec is None:
                raise ValueError(f"{ext} holds no video")
            rate = Fraction(fps).limit_denominator(1001)
            vstream = add_video_stream(out, video_codec, rate)
            vstream.height, vstream.width = frames.shape[1], frames.shape[2]
            vstream.pix_fmt = "yuv420p"
            vstream.bit_rate = bit_rate
            if keyframe_interval:
                vstream.codec_context.gop_size = keyframe_interval
            if rotation:
                vstream.set_display_rotation(rotation)
            if times is not None:
                vstream.codec_context.time_base = _MILLISECOND
        if audio is not None:
            # PyAV's encoder resamples frames to the stream's rate (opus only takes 48 kHz)
            astream = add_audio_stream(out, audio_codec, _CODEC_RATES.get(audio_codec, audio_rate))
            astream.layout = "mono" if audio.shape[1] == 1 else "stereo"
        if vstream is not None and frames is not None:
            for i, arr in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                if times is not None:
                    frame.pts, frame.time_base = round(times[i] * 1000), _MILLISECOND
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
        if astream is not None and audio is not None:
            planar = np.ascontiguousarray(audio.T.astype(np.float32))
            for i in range(0, planar.shape[1], 1024):
                sound = av.AudioFrame.from_ndarray(
                    planar[:, i : i + 1024], format="fltp", layout=astream.layout.name
                )
                sound.sample_rate = audio_rate
                out.mux(astream.encode(sound))
            out.mux(astream.encode(None))
    return buf.getvalue()


def encode_image(pixels: np.ndarray, fmt: str = "JPEG", **save_args: object) -> bytes:
    """Encode an array (any Pillow mode it maps to) as an image file in memory."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **save_args)
    return buf.getvalue()


def photo(seed: int = 0, size: int = 256) -> np.ndarray:
    """A photo-like RGB image: smooth gradients, a few solid shapes, mild sensor noise.

    JPEG cost depends on content; random noise would make every decoder look slow.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.random(3) * 6
    base = np.stack(
        [np.sin(6 * xx + phase[0]), np.cos(5 * yy + phase[1]), np.sin(4 * xx * yy + phase[2])], -1
    )
    img = (base * 0.5 + 0.5) * 200 + rng.normal(0, 6, base.shape)
    for _ in range(6):
        y0, x0 = rng.integers(0, size, 2)
        dy, dx = rng.integers(size // 16, size // 3, 2)
        img[y0 : y0 + dy, x0 : x0 + dx] = rng.integers(0, 256, 3)
    return img.clip(0, 255).astype(np.uint8)

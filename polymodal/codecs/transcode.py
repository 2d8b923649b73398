"""One transcode for every audio and video op: decode with PyAV, cut the timeline into windows,
encode each window (`transcode`). Byte-level codec work, torch-free.

Output is byte-identical on every run and machine with the same PyAV build: encoders run on one
thread (x264 and libvpx output depends on the thread count; a job gets its parallelism from
workers, one sample per core), frames are scaled on one swscale thread (`video.scaled`),
x264 runs without its macroblock tree (`video_options`), timestamps are rewritten from zero,
and muxers write no wall-clock metadata, random ids or versions (`MUXER_OPTIONS`). Decoded
sizes are bounded (`max_seconds`, `max_pixels`) before anything is decoded.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from itertools import count

import av
import numpy as np

from .audio import channel_layout, decode_audio
from .containers import (
    frame_rate,
    open_container,
    plain_errors,
    seek_to,
    stream_seconds,
)
from .encoders import add_audio_stream, add_video_stream
from .video import (
    check_pixels,
    convert_once,
    frames_at,
    quarter_turns,
    scaled,
    upright_rgb,
)

# codec name → (container extension, FFmpeg muxer, video encoder, audio encoder)
VIDEO_CODECS = {
    "h264": ("mp4", "mp4", "libx264", "aac"),
    "vp9": ("webm", "webm", "libvpx-vp9", "libopus"),
}
# audio file type → (FFmpeg muxer, encoder)
AUDIO_FORMATS = {"flac": ("flac", "flac"), "wav": ("wav", "pcm_s16le")}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# Muxers write no random ids or library versions: Matroska / WebM drew a new random track
# UID for every file (each vp9 transcode of one clip came out as other bytes, 40 of 40).
MUXER_OPTIONS = {"fflags": "+bitexact"}
_CHUNK = 4096  # audio samples per frame handed to an encoder (PyAV regroups to its frame size)
_FULL_SLACK = 0.01  # seconds an audio clip may fall short of its length and still count as full


@dataclass(frozen=True)
class Window:
    """Where on the timeline output is cut: `count` consecutive spans of `length` seconds from
    `start` (`count=None`: as many as the media holds; `length=inf`: to the end)."""

    start: float = 0.0
    length: float = math.inf
    count: int | None = 1


@dataclass(frozen=True)
class AudioSettings:
    rate: int | None = None  # None: keep the input's
    channels: int | None = None
    encoder: str = "flac"


@dataclass(frozen=True)
class VideoSettings:
    size: int | None = None  # shorter side after scaling; never scaled up
    fps: float | None = None  # None: the input's average rate (variable rate becomes constant)
    encoder: str = "libx264"
    options: tuple[tuple[str, str], ...] = ()
    keyframe_seconds: float = 2.0


def transcode(
    data: bytes,
    muxer: str,
    window: Window,
    video: VideoSettings | None,
    audio: AudioSettings | None,
    keep_partial: bool = True,
    max_seconds: float = 3600.0,
    max_pixels: int = 8192 * 4320,
) -> list[tuple[int, bytes]]:
    """Encode the windows of `data` that hold media: `(window number, file bytes)` in order.

    With `video`, the video stream is required and its audio track is carried along when
    `audio` is given too; without it, the output is the audio stream alone. A last window
    shorter than `window.length` is dropped unless `keep_partial`.
    """
    with plain_errors():
        return _transcode(data, muxer, window, video, audio, keep_partial, max_seconds, max_pixels)


def _transcode(
    data: bytes,
    muxer: str,
    window: Window,
    video: VideoSettings | None,
    audio: AudioSettings | None,
    keep_partial: bool,
    max_seconds: float,
    max_pixels: int,
) -> list[tuple[int, bytes]]:
    with open_container(data) as container:
        if video is not None and not container.streams.video:
            raise ValueError("no video stream")
        if video is None and not container.streams.audio:
            raise ValueError("no audio stream")
        vstream = container.streams.video[0] if video is not None else None
        astream = container.streams.audio[0] if audio and container.streams.audio else None
        main: av.VideoStream | av.AudioStream = vstream or container.streams.audio[0]
        total = stream_seconds(container, main)
        if total > max_seconds:
            raise ValueError(f"{total:.0f} s long, over max_seconds={max_seconds:g}")
        if vstream is not None:
            check_pixels(vstream.width, vstream.height, max_pixels)
        origin = float((main.start_time or 0) * main.time_base) if main.time_base else 0.0
        pcm: np.ndarray | None = None
        audio_out: tuple[str, int, str] | None = None
        if astream is not None and audio is not None:
            pcm, rate, layout = _decode_audio(container, astream, audio, origin, max_seconds)
            audio_out = (audio.encoder, rate, layout)
    if video is None:
        if pcm is None or audio_out is None:  # the audio stream is required without video
            return []
        return _audio_windows(pcm, muxer, audio_out, window, keep_partial)
    with open_container(data) as container:
        vstream = container.streams.video[0]
        return _video_windows(
            container,
            vstream,
            total,
            video,
            muxer,
            audio_out,
            pcm,
            window,
            keep_partial,
            max_seconds,
        )


def _decode_audio(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    settings: AudioSettings,
    origin: float,
    max_seconds: float,
) -> tuple[np.ndarray, int, str]:
    """The whole audio track as int16 `[n, channels]` at the output rate, sample 0 at `origin`
    seconds (the main stream's start)."""
    rate = settings.rate or stream.codec_context.sample_rate
    if settings.encoder == "libopus" and rate not in _OPUS_RATES:
        rate = 48000
    layout = channel_layout(stream, settings.channels)
    pcm, first = decode_audio(
        container, stream, rate=rate, channels=settings.channels, max_seconds=max_seconds
    )
    shift = round((first - origin) * rate)  # align to the main stream's clock
    if shift > 0:
        pcm = np.concatenate([np.zeros((shift, pcm.shape[1]), np.int16), pcm])
    return pcm[max(0, -shift) :], rate, layout


def _audio_windows(
    pcm: np.ndarray,
    muxer: str,
    audio_out: tuple[str, int, str],
    window: Window,
    keep_partial: bool,
) -> list[tuple[int, bytes]]:
    rate = audio_out[1]
    span = None if math.isinf(window.length) else round(window.length * rate)
    first = round(window.start * rate)
    out = []
    for k in range(window.count) if window.count is not None else count():
        lo = first + k * (span or 0)
        piece = pcm[lo : lo + span] if span is not None else pcm[lo:]
        if not len(piece):
            break
        if span is not None and not keep_partial and len(piece) < span - _FULL_SLACK * rate:
            break
        output = _Output(muxer, None, audio_out)
        output.audio(piece)
        out.append((k, output.close()))
    return out


def _video_windows(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    total: float,
    settings: VideoSettings,
    muxer: str,
    audio_out: tuple[str, int, str] | None,
    pcm: np.ndarray | None,
    window: Window,
    keep_partial: bool,
    max_seconds: float,
) -> list[tuple[int, bytes]]:
    """Encode the video's windows, each window's audio cut from `pcm` at the same times.

    Frames are taken up to the header's `total` seconds plus a window's slack, and never past
    `max_seconds`: a header that omits or understates the duration cannot unbound decoding."""
    fps = Fraction(settings.fps or frame_rate(stream)).limit_denominator(1001)
    per = None if math.isinf(window.length) else max(1, round(window.length * fps))
    bound = min(total + (window.length if per else 1.0), max_seconds) if total else max_seconds
    limit = math.ceil(bound * fps) + 1
    ticks = range(min(limit, window.count * per if window.count and per else limit))
    seek_to(container, stream, window.start)
    targets = (window.start + j / fps for j in ticks)
    out: list[tuple[int, bytes]] = []
    output: _Output | None = None
    number, scaler = -1, _Scaler(stream, settings.size)
    pictures = convert_once(frames_at(container, stream, targets, total), scaler)

    def finish() -> None:
        if output is None:
            return
        if per is not None and output.frames < per and not keep_partial:
            output.close()
            return
        if pcm is not None and audio_out is not None:
            t0 = window.start + number * (per or 0) / fps
            t1 = t0 + output.frames / fps
            output.audio(pcm[round(t0 * audio_out[1]) : round(t1 * audio_out[1])])
        out.append((number, output.close()))

    for j, picture in enumerate(pictures):
        k = j // per if per is not None else 0
        if output is None or k != number:
            finish()
            video_out = (settings, picture.width, picture.height, fps)
            output, number = _Output(muxer, video_out, audio_out), k
        output.video(picture)
    finish()
    return out


class _Scaler:
    """Frames scaled so the shorter side is `size` (never up), with even sides (4:2:0), and
    turned upright where the stream carries rotation metadata (phone videos): the output then
    needs no metadata to be shown the right way up."""

    def __init__(self, stream: av.VideoStream, size: int | None) -> None:
        scale = min(1.0, size / min(stream.width, stream.height)) if size else 1.0
        self.width = max(2, round(stream.width * scale / 2) * 2)  # the stored (maybe sideways)
        self.height = max(2, round(stream.height * scale / 2) * 2)  # shape, turned after scaling
        self.turns: int | None = None

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self.turns is None:
            self.turns = quarter_turns(frame)
        if not self.turns:
            return scaled(frame, self.width, self.height, "yuv420p", "AREA")
        w, h = (self.height, self.width) if self.turns % 2 else (self.width, self.height)
        out = av.VideoFrame.from_ndarray(upright_rgb(frame, w, h), format="rgb24")
        return scaled(out, w, h, "yuv420p")


class _Output:
    """One output file being encoded in memory: a video stream, an audio stream, or both."""

    def __init__(
        self,
        muxer: str,
        video: tuple[VideoSettings, int, int, Fraction] | None,
        audio: tuple[str, int, str] | None,
    ) -> None:
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, mode="w", format=muxer, options=MUXER_OPTIONS)
        self.frames = 0
        self.vstream: av.VideoStream | None = None
        self.astream: av.AudioStream | None = None
        self.time_base, self.rate, self.layout = Fraction(1), 0, ""
        if video is not None:
            settings, width, height, fps = video
            options = dict(settings.options)
            self.vstream = add_video_stream(self.container, settings.encoder, fps, options)
            self.vstream.width, self.vstream.height = width, height
            self.vstream.pix_fmt = "yuv420p"
            self.vstream.codec_context.thread_count = 1
            self.vstream.codec_context.gop_size = max(1, round(settings.keyframe_seconds * fps))
            self.time_base = 1 / fps
        if audio is not None:
            encoder, rate, layout = audio
            self.astream = add_audio_stream(self.container, encoder, rate)
            self.astream.layout = layout
            self.astream.codec_context.thread_count = 1
            self.rate, self.layout = rate, layout

    def video(self, frame: av.VideoFrame) -> None:
        if self.vstream is None:
            raise ValueError("this output has no video stream")
        frame.pts, frame.time_base = self.frames, self.time_base
        frame.pict_type = av.video.frame.PictureType.NONE  # the encoder picks keyframes
        self.container.mux(self.vstream.encode(frame))
        self.frames += 1

    def audio(self, pcm: np.ndarray) -> None:
        if self.astream is None:
            return
        for i in range(0, len(pcm), _CHUNK):
            chunk = np.ascontiguousarray(pcm[i : i + _CHUNK]).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout=self.layout)
            frame.sample_rate, frame.pts, frame.time_base = self.rate, i, Fraction(1, self.rate)
            self.container.mux(self.astream.encode(frame))

    def close(self) -> bytes:
        if self.vstream is not None:
            self.container.mux(self.vstream.encode(None))
        if self.astream is not None:
            self.container.mux(self.astream.encode(None))
        self.container.close()
        return self.buf.getvalue()


def video_options(codec: str, crf: int | None, speed: str) -> tuple[tuple[str, str], ...]:
    """The encoder's options for `codec` at quality `crf` and x264 preset `speed`.

    x264's macroblock-tree rate control is off (`mbtree=0`): with it, identical frames on one
    thread now and then came out as different bytes (3 and 4 outputs in 300 encodes of the
    same 42×32 and 48×32 frames; 0.2 % of the preprocessing test's clip transcodes, beside a
    second busy process), so a killed job's rerun task did not rewrite its shard byte-identical.
    Without it: 1 output in 1,000 such encodes, and no clip transcode of 11,350 differed.
    """
    if codec == "h264":
        quality = str(23 if crf is None else crf)
        return (("crf", quality), ("preset", speed), ("x264-params", "mbtree=0"))
    return (
        ("crf", str(32 if crf is None else crf)),
        ("b", "0"),
        ("deadline", "realtime" if speed in ("ultrafast", "superfast", "veryfast") else "good"),
        ("cpu-used", "8" if speed in ("ultrafast", "superfast", "veryfast") else "4"),
        ("row-mt", "0"),
    )

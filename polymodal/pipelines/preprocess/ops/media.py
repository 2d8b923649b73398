"""Audio and video ops: resample / downmix / trim audio, resize / re-encode / change fps / trim
video, cut clips, extract the audio track. All of them are one transcode: decode with PyAV,
cut the timeline into windows, encode each window.

Output is byte-identical on every run and machine with the same PyAV build: encoders run on one
thread (x264 and libvpx output depends on the thread count; a job gets its parallelism from
workers, one sample per core), timestamps are rewritten from zero, and no wall-clock metadata is
written. Decoded sizes are bounded (`max_seconds`, `max_pixels`) before anything is decoded.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from itertools import count
from typing import Any

import av
import numpy as np

from polymodal.codecs.audio import channel_layout, decode_audio
from polymodal.codecs.containers import (
    frame_rate,
    open_container,
    plain_errors,
    seek_to,
    stream_seconds,
)
from polymodal.codecs.encoders import add_audio_stream, add_video_stream
from polymodal.codecs.video import (
    check_pixels,
    convert_once,
    frames_at,
    quarter_turns,
    scaled,
    upright_rgb,
)
from polymodal.pipelines.preprocess.ops.base import (
    Filtered,
    Op,
    Result,
    Sample,
    media_members,
    register_op,
    replace_member,
    retype,
)

# codec name → (container extension, FFmpeg muxer, video encoder, audio encoder)
VIDEO_CODECS = {
    "h264": ("mp4", "mp4", "libx264", "aac"),
    "vp9": ("webm", "webm", "libvpx-vp9", "libopus"),
}
# audio file type → (FFmpeg muxer, encoder)
AUDIO_FORMATS = {"flac": ("flac", "flac"), "wav": ("wav", "pcm_s16le")}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
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
        self.container = av.open(self.buf, mode="w", format=muxer)
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


def _video_options(codec: str, crf: int | None, speed: str) -> tuple[tuple[str, str], ...]:
    if codec == "h264":
        return (("crf", str(23 if crf is None else crf)), ("preset", speed))
    return (
        ("crf", str(32 if crf is None else crf)),
        ("b", "0"),
        ("deadline", "realtime" if speed in ("ultrafast", "superfast", "veryfast") else "good"),
        ("cpu-used", "8" if speed in ("ultrafast", "superfast", "veryfast") else "4"),
        ("row-mt", "0"),
    )


@register_op("resample_audio")
class ResampleAudio(Op):
    """Resample (`rate`), downmix (`channels=1`) and trim (`start`, `seconds`) every audio
    member, re-encoded as `format` (flac: lossless and about half the size of wav)."""

    def __init__(
        self,
        rate: int | None = None,
        channels: int | None = None,
        start: float = 0.0,
        seconds: float | None = None,
        format: str = "flac",
        ext: str | None = None,
        max_seconds: float = 3600.0,
    ) -> None:
        if format not in AUDIO_FORMATS:
            raise ValueError(f"format must be one of {sorted(AUDIO_FORMATS)}, got {format!r}")
        self.rate, self.channels, self.start, self.seconds = rate, channels, start, seconds
        self.format, self.ext, self.max_seconds = format, ext, max_seconds

    def audio_windows(self, data: bytes, window: Window, keep_partial: bool) -> list[Any]:
        muxer, encoder = AUDIO_FORMATS[self.format]
        settings = AudioSettings(self.rate, self.channels, encoder)
        return transcode(data, muxer, window, None, settings, keep_partial, self.max_seconds)

    def __call__(self, sample: Sample) -> Result:
        window = Window(self.start, self.seconds or math.inf, 1)
        for ext in media_members(sample, "audio", self.ext):
            pieces = self.audio_windows(sample[ext], window, keep_partial=True)
            if not pieces:
                raise Filtered("no audio in the trim window")
            replace_member(sample, ext, self.format, pieces[0][1])
        return sample


@register_op("transcode_video")
class TranscodeVideo(Op):
    """Resize (`size`: shorter side), re-encode (`codec`: h264 → mp4, vp9 → webm; `crf`,
    `speed` = x264 preset), change the frame rate (`fps`) and trim (`start`, `seconds`) every
    video member. Its audio track is re-encoded alongside (`audio=False` drops it;
    `audio_rate`, `channels`)."""

    def __init__(
        self,
        size: int | None = None,
        fps: float | None = None,
        codec: str = "h264",
        crf: int | None = None,
        speed: str = "veryfast",
        audio: bool = True,
        audio_rate: int | None = None,
        channels: int | None = None,
        start: float = 0.0,
        seconds: float | None = None,
        keyframe_seconds: float = 2.0,
        ext: str | None = None,
        max_seconds: float = 3600.0,
        max_pixels: int = 8192 * 4320,
    ) -> None:
        if codec not in VIDEO_CODECS:
            raise ValueError(f"codec must be one of {sorted(VIDEO_CODECS)}, got {codec!r}")
        self.size, self.fps, self.codec, self.crf, self.speed = size, fps, codec, crf, speed
        self.audio, self.audio_rate, self.channels = audio, audio_rate, channels
        self.start, self.seconds, self.keyframe_seconds = start, seconds, keyframe_seconds
        self.ext, self.max_seconds, self.max_pixels = ext, max_seconds, max_pixels

    def window(self) -> Window:
        return Window(self.start, self.seconds or math.inf, 1)

    keep_partial = True

    def video_windows(self, data: bytes) -> list[tuple[int, bytes]]:
        _, muxer, vencoder, aencoder = VIDEO_CODECS[self.codec]
        video = VideoSettings(
            self.size,
            self.fps,
            vencoder,
            _video_options(self.codec, self.crf, self.speed),
            self.keyframe_seconds,
        )
        audio = AudioSettings(self.audio_rate, self.channels, aencoder) if self.audio else None
        return transcode(
            data,
            muxer,
            self.window(),
            video,
            audio,
            self.keep_partial,
            self.max_seconds,
            self.max_pixels,
        )

    @property
    def out_ext(self) -> str:
        return VIDEO_CODECS[self.codec][0]

    def __call__(self, sample: Sample) -> Result:
        for ext in media_members(sample, "video", self.ext):
            pieces = self.video_windows(sample[ext])
            if not pieces:
                raise Filtered("no video in the trim window")
            replace_member(sample, ext, self.out_ext, pieces[0][1])
        return sample


@register_op("cut_clips")
class CutClips(TranscodeVideo):
    """Cut every video member (and audio member) into consecutive `seconds`-long clips from
    `start`, encoded as `transcode_video` does. One sample becomes one per clip, keyed
    `KEY_0000`, `KEY_0001`, ... and carrying the sample's other members (labels, text); a
    shorter last clip is dropped unless `keep_partial`."""

    def __init__(self, seconds: float, keep_partial: bool = False, **options: Any) -> None:
        if not seconds or seconds <= 0:
            raise ValueError(f"cut_clips needs seconds > 0, got {seconds!r}")
        super().__init__(seconds=seconds, **options)
        self.keep_partial = keep_partial

    def window(self) -> Window:
        return Window(self.start, self.seconds or math.inf, None)

    def __call__(self, sample: Sample) -> Result:
        clips: dict[str, dict[int, bytes]] = {}
        for ext in media_members(sample, "video", self.ext):
            clips[retype(ext, self.out_ext)] = dict(self.video_windows(sample.pop(ext)))
        audio_op = ResampleAudio(self.audio_rate, self.channels, max_seconds=self.max_seconds)
        for ext in media_members(sample, "audio"):
            pieces = audio_op.audio_windows(sample.pop(ext), self.window(), self.keep_partial)
            clips[retype(ext, audio_op.format)] = dict(pieces)
        if not clips:
            return sample
        numbers = sorted(set.intersection(*(set(c) for c in clips.values())))
        if not numbers:
            raise Filtered(f"shorter than one {self.seconds:g} s clip")
        return [
            {
                **sample,
                "__key__": f"{sample['__key__']}_{k:04d}",
                **{ext: pieces[k] for ext, pieces in clips.items()},
            }
            for k in numbers
        ]


@register_op("extract_audio")
class ExtractAudio(Op):
    """Add the audio track of each video member as an audio member (`format`, flac by default,
    resampled to `rate` / `channels` if given); `keep_video=False` drops the video."""

    def __init__(
        self,
        rate: int | None = None,
        channels: int | None = None,
        format: str = "flac",
        keep_video: bool = True,
        ext: str | None = None,
        max_seconds: float = 3600.0,
    ) -> None:
        self._audio = ResampleAudio(rate, channels, format=format, max_seconds=max_seconds)
        self.rate, self.channels, self.format = rate, channels, format
        self.keep_video, self.ext, self.max_seconds = keep_video, ext, max_seconds

    def __call__(self, sample: Sample) -> Result:
        for ext in media_members(sample, "video", self.ext):
            audio_ext = retype(ext, self.format)
            if audio_ext in sample:
                raise ValueError(f"cannot write {audio_ext!r}: the sample already has one")
            pieces = self._audio.audio_windows(sample[ext], Window(), keep_partial=True)
            if not pieces:
                raise Filtered("video has no audio")
            sample[audio_ext] = pieces[0][1]
            if not self.keep_video:
                del sample[ext]
        return sample

"""Audio and video ops: resample / downmix / trim audio, resize / re-encode / change fps / trim
video, cut clips, extract the audio track. All of them are one transcode
(`polymodal.codecs.transcode`: byte-identical on every run and machine)."""

from __future__ import annotations

import math
from typing import Any

from polymodal.codecs.transcode import (
    AUDIO_FORMATS,
    VIDEO_CODECS,
    AudioSettings,
    VideoSettings,
    Window,
    transcode,
    video_options,
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
            video_options(self.codec, self.crf, self.speed),
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

"""Streams of an output container, typed by kind: what the preprocessing ops and the test-media
generator encode into (FFmpeg's encoders run through PyAV)."""

from __future__ import annotations

from fractions import Fraction

import av


def add_video_stream(
    container: av.container.OutputContainer,
    codec: str,
    rate: Fraction,
    options: dict[str, str] | None = None,
) -> av.VideoStream:
    """A video stream encoded by `codec` at `rate` frames per second."""
    stream = container.add_stream(codec, rate=rate, options=options or {})
    if not isinstance(stream, av.VideoStream):
        raise ValueError(f"{codec} is not a video encoder")
    return stream


def add_audio_stream(
    container: av.container.OutputContainer, codec: str, rate: int
) -> av.AudioStream:
    """An audio stream encoded by `codec` at `rate` samples per second."""
    stream = container.add_stream(codec, rate=rate)
    if not isinstance(stream, av.AudioStream):
        raise ValueError(f"{codec} is not an audio encoder")
    return stream

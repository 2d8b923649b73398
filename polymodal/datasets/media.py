"""What the audio and video adapters and the preprocessing ops share: opening a container from
bytes, finding a stream, its duration, where a fixed-length clip starts, and which frame is on
screen at a given time. PyAV and numpy only (no torch), so preprocessing workers stay light."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import av
import numpy as np


def open_stream(data: bytes, kind: str) -> tuple[av.container.InputContainer, av.stream.Stream]:
    """Open in-memory media and return its first `kind` ("audio" / "video") stream.

    The caller closes the container; bytes never touch the disk.
    """
    container = open_container(data)
    streams = getattr(container.streams, kind)
    if not streams:
        container.close()
        raise ValueError(f"no {kind} stream")
    return container, streams[0]


@contextmanager
def plain_errors() -> Iterator[None]:
    """FFmpeg's errors as `ValueError("FFmpeg: <reason>")`: a reject list then groups them by
    reason, not by `[Errno 1094995529] ... '<none>'`."""
    try:
        yield
    except av.FFmpegError as exc:
        raise ValueError(f"FFmpeg: {exc.strerror or exc}") from None


def open_container(data: bytes) -> av.container.InputContainer:
    """Open in-memory media (all its streams); the caller closes it."""
    _check_riff_size(data)
    return av.open(io.BytesIO(data), mode="r")


def _check_riff_size(data: bytes) -> None:
    """A RIFF file (wav, avi) states its size; FFmpeg trims durations to the bytes present, so
    without this a truncated wav would decode as a shorter, valid one."""
    if data[:4] != b"RIFF":
        return
    stated = int.from_bytes(data[4:8], "little")
    if stated != 0xFFFFFFFF and stated + 8 > len(data):  # all ones: size unknown (streamed)
        raise ValueError(f"RIFF header says {stated + 8} bytes, file has {len(data)}: truncated")


def stream_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """Duration of `stream` in seconds from the container's metadata; 0.0 when unknown."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def clip_start(total: float, span: float, crop: str, rng: np.random.Generator | None) -> float:
    """Start (seconds) of a `span`-second clip in a `total`-second stream.

    A random start is the first draw from the per-sample generator, `u · (total − span)`: the
    audio and video fields of one sample, given equally seeded generators and equal spans,
    therefore cut the same moment of a clip.
    """
    u = rng.random() if crop == "random" else 0.5
    return u * max(0.0, total - span)


def seek_to(
    container: av.container.InputContainer, stream: av.stream.Stream, seconds: float
) -> None:
    """Seek to the last keyframe at or before `seconds` past the stream's start."""
    if seconds <= 0 or not stream.time_base:
        return
    offset = int(seconds / float(stream.time_base))
    container.seek((stream.start_time or 0) + offset, stream=stream, backward=True)


def check_complete(end: float, total: float) -> None:
    """Raise if a stream decoded to its end stops well before the duration its header states.

    Demuxers happily decode the front half of a truncated flac, wav or webm; the header's
    duration is what tells. The slack (0.25 s + 2%) absorbs encoder priming and padding and
    bitrate-estimated durations.
    """
    if total > 0 and end < total - (0.25 + 0.02 * total):
        raise ValueError(f"stream ends at {end:.2f} s but its header says {total:.2f} s: truncated")


_TIME_EPSILON = 1e-6  # seconds: a target that equals a frame's time (up to rounding) shows it


def frames_at(
    container: av.container.InputContainer,
    stream: av.stream.Stream,
    targets: Iterable[float],
    total: float,
) -> Iterator[av.VideoFrame]:
    """The frame on screen at each target time (seconds from the stream's start), in order.

    `targets` are increasing and may be endless (a constant frame rate to the end of the
    stream). Decoding stops once the last target is passed. Targets after the end of the stream
    get no frame, so fewer frames than targets may come out; an end well before the header's
    `total` seconds means truncation.
    """
    targets = iter(targets)
    target = next(targets, None)
    origin = stream.start_time or 0
    tb = float(stream.time_base)
    default_duration = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)
    prev, prev_end = None, 0.0
    for index, frame in enumerate(container.decode(stream)):
        now = (frame.pts - origin) * tb if frame.pts is not None else index * default_duration
        # Targets before this frame's time showed the previous frame; before the first decoded
        # frame (the seek landed at or just after the clip start), they take this one.
        while target is not None and target < now - _TIME_EPSILON:
            yield prev if prev is not None else frame
            target = next(targets, None)
        if target is None:
            return
        prev = frame
        prev_end = now + (frame.duration * tb if frame.duration else default_duration)
    check_complete(prev_end, total)
    while prev is not None and target is not None and target < prev_end:
        yield prev
        target = next(targets, None)

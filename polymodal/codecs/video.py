"""Video frames: which frame is on screen at given times, upright (rotation metadata applied)
and scaled by FFmpeg's swscale, each distinct frame converted once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import av
import numpy as np

from .containers import check_complete, frame_rate

T = TypeVar("T")
# swscale runs on one thread. With its slice threads (PyAV's default: one per core), scaling
# raced: under load, reruns of one op gave different pixels (4 of 150 pairs of identical
# cut_clips runs, 0 of 150 on one thread) and ran 3× slower beside busy cores. Parallelism
# comes from workers, never from inside one frame.
SCALE_THREADS = 1


def scaled(
    frame: av.VideoFrame, width: int, height: int, format: str, interpolation: str | None = None
) -> av.VideoFrame:
    """`frame` scaled by swscale to `width`×`height` in pixel `format`, the same bytes on
    every run and machine (one thread)."""
    return frame.reformat(
        width=width,
        height=height,
        format=format,
        interpolation=interpolation,
        threads=SCALE_THREADS,
    )


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse frames over `max_pixels` from the stream's header, before any is decoded."""
    if width * height > max_pixels:
        raise ValueError(f"frames are {width}×{height}, over max_pixels")


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that show `frame` upright (phone videos store sideways
    frames with rotation metadata)."""
    return round((frame.rotation or 0) / 90) % 4


def upright_size(frame: av.VideoFrame) -> tuple[int, int]:
    """`(width, height)` of the frame as it is shown, after its rotation."""
    sideways = quarter_turns(frame) % 2
    return (frame.height, frame.width) if sideways else (frame.width, frame.height)


def upright_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """RGB pixels `[H, W, 3]` of the frame shown upright at `width`×`height` (the upright
    size): swscale scales the stored frame, numpy turns it."""
    turns = quarter_turns(frame)
    stored_w, stored_h = (height, width) if turns % 2 else (width, height)
    pixels = scaled(frame, stored_w, stored_h, "rgb24").to_ndarray()
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def convert_once(
    frames: Iterable[av.VideoFrame], convert: Callable[[av.VideoFrame], T]
) -> Iterator[T]:
    """`convert(frame)` for each frame, reusing the last result when a frame repeats (shown at
    several target times: the source rate is below the one asked for)."""
    last: av.VideoFrame | None = None
    for frame in frames:
        if frame is not last:
            last, out = frame, convert(frame)
        yield out


_TIME_EPSILON = 1e-6  # seconds: a target that equals a frame's time (up to rounding) shows it


def frames_at(
    container: av.container.InputContainer,
    stream: av.VideoStream,
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
    tb = float(stream.time_base or 0)
    default_duration = 1.0 / float(frame_rate(stream))
    prev: av.VideoFrame | None = None
    prev_end = 0.0
    for index, frame in enumerate(container.decode(stream)):
        assert isinstance(frame, av.VideoFrame)  # a video stream decodes to video frames
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

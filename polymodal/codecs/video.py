"""Video frames: which frame is on screen at given times, upright (rotation metadata applied)
and scaled by FFmpeg's swscale, each distinct frame converted once."""

from __future__ import annotations

import bisect
import math
from collections import deque
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
# Frames a decoder may hold back to put them in display order (H.264 and HEVC: at most 16): a
# frame's successor on screen is among the 16 packets before or after it in the stream.
_REORDER = 16
# Decoders whose `skip_frame = "NONREF"` drops only frames no other frame refers to, found
# exact against decoding every frame (tests; MPEG-2 in a program stream and AV1 were not).
_SKIPS_NONREF = ("h264", "hevc")


class _Targets:
    """Increasing target times, read from their iterable only as far as asked (it may be
    endless), each kept: the frames loop walks them in order, and the packets ahead of it ask
    whether any falls in a span."""

    def __init__(self, targets: Iterable[float]) -> None:
        self._rest = iter(targets)
        self._seen: list[float] = []
        self._ended = False

    def get(self, i: int) -> float | None:
        """The i-th target; None past the last."""
        while len(self._seen) <= i and self._more():
            pass
        return self._seen[i] if i < len(self._seen) else None

    def any_in(self, low: float, high: float) -> bool:
        """Whether a target lies in `[low, high)`."""
        while (not self._seen or self._seen[-1] < low) and self._more():
            pass
        at = bisect.bisect_left(self._seen, low)
        return at < len(self._seen) and self._seen[at] < high

    def _more(self) -> bool:
        if not self._ended:
            value = next(self._rest, None)
            self._ended = value is None
            if value is not None:
                self._seen.append(float(value))
        return not self._ended


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
    `total` seconds means truncation. A frame that no target shows and that no other frame is
    decoded from is not decoded (see `_decoded`).
    """
    wanted = _Targets(targets)
    n = 0
    target = wanted.get(n)
    clock = _clock(stream)
    origin, tb, default_duration = clock
    prev: av.VideoFrame | None = None
    prev_end = 0.0
    skipped_end = [0.0]  # where the last frame left undecoded ends (for the truncation check)
    frames = _decoded(container, stream, clock, wanted.any_in, skipped_end)
    for index, frame in enumerate(frames):
        now = (frame.pts - origin) * tb if frame.pts is not None else index * default_duration
        # Targets before this frame's time showed the previous frame; before the first decoded
        # frame (the seek landed at or just after the clip start), they take this one.
        while target is not None and target < now - _TIME_EPSILON:
            yield prev if prev is not None else frame
            n += 1
            target = wanted.get(n)
        if target is None:
            return
        prev = frame
        prev_end = now + (frame.duration * tb if frame.duration else default_duration)
    check_complete(max(prev_end, skipped_end[0]), total)
    while prev is not None and target is not None and target < prev_end:
        yield prev
        n += 1
        target = wanted.get(n)


def _clock(stream: av.VideoStream) -> tuple[int, float, float]:
    """How `frames_at` reads a frame's time: the stream's start (pts), its time base
    (seconds), and a frame's duration where a frame states none (seconds)."""
    return stream.start_time or 0, float(stream.time_base or 0), 1.0 / float(frame_rate(stream))


def _decoded(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    clock: tuple[int, float, float],
    shows: Callable[[float, float], bool],
    skipped_end: list[float],
) -> Iterator[av.VideoFrame]:
    """The stream's frames in display order, less those no target shows that the decoder
    may drop: each packet's frame is on screen from its time to the next frame's (from the
    start, for the first), read from the packets `_REORDER` ahead and behind it, and a packet
    whose frame no target in that span shows is decoded with `skip_frame = "NONREF"`, which
    skips it only where no other frame refers to it (H.264's and HEVC's non-reference frames,
    a B-frame in two or more in x264's output). Only a frame that would not have been shown
    goes, so the frames shown are the very same. Why: a Kinetics-sized clip (16 frames at 8
    fps from 25 fps x264) decoded 51-61 frames, and 36-44 this way. Nothing is skipped
    before the decoder gives its first frame (after a seek that lands off a keyframe it
    gives none, which must still read as a stream that ended), in other codecs, or from a
    packet without a time on. `clock` is `_clock(stream)`; `skipped_end` gets where the
    latest skipped frame ends."""
    context = stream.codec_context
    origin, tb, default_duration = clock
    ahead: deque[av.Packet] = deque()
    behind: deque[int] = deque(maxlen=_REORDER)  # times of the packets decoded or skipped
    earliest, started = math.inf, False
    skippable = tb > 0 and context.name in _SKIPS_NONREF

    def decode(packet: av.Packet) -> list[av.VideoFrame]:
        nonlocal earliest, started, skippable
        skippable = skippable and packet.pts is not None
        skip = False
        if skippable and packet.size:
            pts = int(packet.pts)  # type: ignore[arg-type]
            later = [q.pts for q in ahead if q.pts is not None and q.pts > pts]
            later += [q for q in behind if q > pts]
            first = pts < earliest and all(q.pts is None or q.pts >= pts for q in ahead)
            low = -math.inf if first else (pts - origin) * tb - _TIME_EPSILON
            high = (min(later) - origin) * tb - _TIME_EPSILON if later else math.inf
            skip = started and not shows(low, high)
            if skip:  # where the frame would have ended, as `frames_at` reckons a frame's end
                own = packet.duration * tb if packet.duration else default_duration
                skipped_end[0] = max(skipped_end[0], (pts - origin) * tb + own)
            behind.append(pts)
            earliest = min(earliest, pts)
        context.skip_frame = "NONREF" if skip else "DEFAULT"
        frames = context.decode(packet)
        started = started or bool(frames)
        return frames

    for packet in container.demux(stream):
        ahead.append(packet)
        if len(ahead) > _REORDER:
            yield from decode(ahead.popleft())
    while ahead:
        yield from decode(ahead.popleft())
    context.skip_frame = "DEFAULT"

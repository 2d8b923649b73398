"""One audio decoder for every reader: seek, resample, set the channel layout, bound the
length, and tell a truncated stream from a short one."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np

from .containers import check_complete, stream_seconds

_LAYOUTS = {1: "mono", 2: "stereo"}
_FORMATS = {"int16": ("s16", np.int16), "float32": ("flt", np.float32)}


def channel_layout(stream: av.AudioStream, channels: int | None) -> str:
    """FFmpeg's layout name for `channels` (None: keep the stream's own layout).

    A stream of as many channels in no stated order (a plain WAV's "1 channels") keeps its
    own: the samples are the same, and the resampler then passes the frames through where
    the rate and format agree too, instead of building a filter graph for each file and
    sending every frame through it (a 1 s 16 kHz WAV: 1.38 -> 0.56 ms to decode)."""
    own = stream.codec_context.layout
    if channels is None:
        return own.name
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    if own.nb_channels == channels and all(c.name == "NONE" for c in own.channels):
        return own.name
    return _LAYOUTS.get(channels) or av.AudioLayout(f"{channels}c").name


def decode_audio(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    *,
    rate: int | None = None,
    channels: int | None = None,
    dtype: str = "int16",
    start: float | None = None,
    take: int | None = None,
    max_seconds: float | None = None,
) -> tuple[np.ndarray, float]:
    """Samples `[n, channels]` of `stream` resampled by FFmpeg's swresample, and the time
    (seconds, stream clock) of the first one.

    `rate` / `channels` None keep the stream's. With `start`, samples before that time are
    dropped (the caller has seeked near it). Decoding stops after `take` samples (a clip: fewer
    only at the end of the stream), and more than `max_seconds` is an error (a whole file that
    must fit a bound). Reaching the end of the stream well before its header's duration means
    truncation, also an error. `dtype` is "int16" or "float32".
    """
    fmt, np_dtype = _FORMATS[dtype]
    rate = rate or stream.codec_context.sample_rate
    layout = channel_layout(stream, channels)
    width = len(av.AudioLayout(layout).channels)
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
    chunks: list[np.ndarray] = []
    bound = None if max_seconds is None else round(max_seconds * rate)
    have, skip, first, end = 0, None, None, start or 0.0
    for frame, arr in _samples(container, stream, resampler, width):
        if skip is None:
            t0 = frame.time if frame.time is not None else (start or 0.0)
            skip = max(0, round((start - t0) * rate)) if start is not None else 0
            first = t0 + skip / rate
        if frame.time is not None:
            end = frame.time + frame.samples / rate
        if skip:
            drop = min(skip, len(arr))
            arr, skip = arr[drop:], skip - drop
        chunks.append(arr)
        have += len(arr)
        if take is not None and have >= take:
            break
        if bound is not None and have > bound:
            raise ValueError(f"longer than max_seconds={max_seconds:g}")
    else:
        check_complete(end, stream_seconds(container, stream))
    samples = np.concatenate(chunks) if chunks else np.zeros((0, width), np_dtype)
    return _as_dtype(samples[:take] if take is not None else samples, np_dtype), first or 0.0


def _samples(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    resampler: av.AudioResampler,
    width: int,
) -> Iterator[tuple[av.AudioFrame, np.ndarray]]:
    """Each frame of `stream` at the resampler's rate and layout, with its samples `[n, width]`,
    in order, then what the resampler still holds; `_as_dtype` makes them its sample type.

    Where the frames already have the rate and layout and differ only in sample type (AAC,
    MP3, Vorbis, Opus decode to planar float; a clip made at the model's rate), numpy converts
    them: PyAV's resampler would build a filter graph for each file and send every frame
    through it (the demo's 1 s AAC track: 2.3 -> 1.7 ms to decode). The samples are
    swresample's, and so is each frame's time, where the stream counts time in samples (a
    test); in another time base the graph re-times the frames, so the resampler does it."""
    frames = container.decode(stream)
    head = next(frames, None)
    if head is None:
        return
    assert isinstance(head, av.AudioFrame)  # an audio stream decodes to audio frames
    if _converts(head, resampler):
        kind = (head.format.name, head.sample_rate, head.layout)
        for frame in itertools.chain((head,), frames):
            assert isinstance(frame, av.AudioFrame)
            if frame is not head and (frame.format.name, frame.sample_rate, frame.layout) != kind:
                raise ValueError("the audio changes its rate, layout or sample type")
            yield frame, _interleaved(frame, width)
        return
    for each in itertools.chain((head,), frames, (None,)):  # None: flush the resampler
        assert each is None or isinstance(each, av.AudioFrame)
        for out in resampler.resample(each):
            yield out, out.to_ndarray().reshape(-1, width)


def _converts(frame: av.AudioFrame, resampler: av.AudioResampler) -> bool:
    """Whether numpy converts `frame`'s stream: only its sample type (int16 or float, planar
    or not) differs from what the resampler makes, and its time base is one sample, as the
    resampler's output's is."""
    return (
        frame.format.name in ("s16", "s16p", "flt", "fltp")
        and frame.format.name != resampler.format.name
        and frame.sample_rate == resampler.rate
        and frame.layout == resampler.layout
        and frame.time_base == Fraction(1, resampler.rate)
    )


def _interleaved(frame: av.AudioFrame, width: int) -> np.ndarray:
    """`frame`'s samples `[n, width]` in its own sample type, read from its planes
    (`to_ndarray` stacks them with `np.vstack`, which takes longer than this)."""
    kind = np.int16 if frame.format.name.startswith("s16") else np.float32
    count = frame.samples * (1 if frame.format.is_planar else width)
    planes = [np.frombuffer(memoryview(plane), kind, count) for plane in frame.planes]
    return np.stack(planes, 1) if len(planes) > 1 else planes[0].reshape(-1, width)


def _as_dtype(samples: np.ndarray, np_dtype: type) -> np.ndarray:
    """`samples` (int16 or float32) as `np_dtype`, as swresample converts: int16 x / 32768 is
    exact in float32, and float x to int16 is x * 32768 rounded half to even (lrintf,
    cvtps2dq) and clipped, the same for every finite |x| < 65,536 (beyond it FFmpeg's answer
    depends on its SIMD path); NaN is -32768, as FFmpeg's SIMD conversion has it (`fmax`)."""
    if samples.dtype == np_dtype:
        return samples
    if np_dtype is np.int16:
        scaled = np.rint(samples * np.float32(32768))
        return np.fmin(np.fmax(scaled, -32768), 32767).astype(np.int16)
    return samples.astype(np.float32) * np.float32(1 / 32768)

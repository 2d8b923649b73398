"""Containers from bytes: opening one (never from disk), finding a stream, its duration and
frame rate, seeking, where a fixed-length clip starts, and FFmpeg's errors as plain reasons."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, Literal, overload

import av
import numpy as np


@overload
def open_stream(
    data: bytes, kind: Literal["audio"]
) -> tuple[av.container.InputContainer, av.AudioStream]: ...
@overload
def open_stream(
    data: bytes, kind: Literal["video"]
) -> tuple[av.container.InputContainer, av.VideoStream]: ...
def open_stream(data: bytes, kind: str) -> tuple[av.container.InputContainer, Any]:
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


_DECODE_THREADS = [0]  # FFmpeg threads per video decoder; 0: FFmpeg's choice (one per core)


def set_decode_threads(threads: int) -> None:
    """FFmpeg threads for every video decoder opened in this process from now on: a DataLoader
    worker sets its share of the cores, so that workers × threads do not oversubscribe them."""
    _DECODE_THREADS[0] = max(0, int(threads))


def decode_threads() -> int:
    """FFmpeg threads per video decoder in this process (0: FFmpeg's choice)."""
    return _DECODE_THREADS[0]


def threaded(stream: av.VideoStream) -> av.VideoStream:
    """`stream` decoding with frame and slice threads, as many as `set_decode_threads` said."""
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = _DECODE_THREADS[0]
    return stream


def open_container(data: bytes) -> av.container.InputContainer:
    """Open in-memory media (all its streams); the caller closes it."""
    _check_riff_sizes(data)
    _check_flac_samples(data)
    wav = data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    return av.open(io.BytesIO(data), mode="r", container_options=WAV_PROBE if wav else None)


# FFmpeg probes the samples of a 16-bit PCM WAV for compressed audio stored as PCM (AC3, DTS)
# up to its `probesize`, 5 MB by default, running every codec's probe over all it has read at
# each doubling: opening 10 s of 44.1 kHz stereo took 23 ms, 13× the time decoding it takes
# once open. Whatever the limit, the first packet is probed, which is where such a stream
# starts (an AC3 stream in a WAV is still found as AC3: a test), so the probe ends there.
WAV_PROBE = {"probesize": "32"}  # FFmpeg's least


UNKNOWN_SIZE = 0xFFFFFFFF  # what a streamed RIFF writes where it does not know a size yet
FLAC_SAMPLES_PER_BYTE = 8192  # a FLAC frame holds at most 65,535 samples in at least 8 bytes


def _check_riff_sizes(data: bytes) -> None:
    """A RIFF file (wav, avi) states its size and each chunk's; FFmpeg trims what it reads to
    the bytes present, so without this a truncated wav, or one whose data chunk claims 2 GB,
    would decode as a shorter, valid one. Costs one pass over the chunk headers."""
    if data[:4] != b"RIFF":
        return
    stated = int.from_bytes(data[4:8], "little")
    if stated != UNKNOWN_SIZE and stated + 8 > len(data):
        raise ValueError(f"RIFF header says {stated + 8} bytes, file has {len(data)}: truncated")
    at = 12  # after RIFF, the size and the form type (WAVE, AVI )
    while at + 8 <= len(data):
        name, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        left = len(data) - at - 8
        if size == UNKNOWN_SIZE and name == b"data":
            return  # a stream's data runs to the end
        if size > left:
            what = name.decode("latin-1").strip()
            raise ValueError(
                f"the RIFF {what!r} chunk says {size:,} bytes, {left:,} follow it: truncated "
                "or damaged"
            )
        at += 8 + size + (size & 1)  # chunks are padded to even sizes


def _check_flac_samples(data: bytes) -> None:
    """A FLAC file states its sample count (STREAMINFO); more than its bytes can hold is a
    damaged or forged header, refused before anything is decoded or allocated for it."""
    if data[:4] != b"fLaC" or len(data) < 26 or data[4] & 0x7F != 0:
        return
    info = data[8:42]
    total = int.from_bytes(info[13:18], "big") & ((1 << 36) - 1)
    if total > len(data) * FLAC_SAMPLES_PER_BYTE:
        raise ValueError(
            f"the FLAC header says {total:,} samples, more than its {len(data):,} bytes can "
            "hold: damaged"
        )


def stream_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """Duration of `stream` in seconds from the container's metadata; 0.0 when unknown."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def frame_rate(stream: av.VideoStream) -> Fraction:
    """A video stream's frames per second: its average rate, else FFmpeg's guess, else 25."""
    return Fraction(stream.average_rate or stream.guessed_rate or 25)


def clip_start(total: float, span: float, crop: str, rng: np.random.Generator | None) -> float:
    """Start (seconds) of a `span`-second clip in a `total`-second stream.

    A random start is the first draw from the per-sample generator, `u · (total − span)`: the
    audio and video fields of one sample, given equally seeded generators and equal spans,
    therefore cut the same moment of a clip.
    """
    u = rng.random() if crop == "random" and rng is not None else 0.5
    return u * max(0.0, total - span)


# Seconds decoded before an audio clip's start and dropped. Lossy audio codecs (AAC, MP3,
# Opus) overlap each frame with the one before, so the first frame after a seek comes out
# wrong (measured: up to half full scale for AAC); one frame is 21-64 ms, Opus asks for 80 ms.
AUDIO_PREROLL = 0.2


def seek_to(
    container: av.container.InputContainer, stream: av.stream.Stream, seconds: float
) -> None:
    """Seek to the last keyframe at or before `seconds` past the stream's start (for audio,
    `AUDIO_PREROLL` before it, so what is kept decodes as it would from the start)."""
    if isinstance(stream, av.AudioStream):
        seconds -= AUDIO_PREROLL
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

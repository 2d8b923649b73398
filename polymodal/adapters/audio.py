"""Audio: any container/codec FFmpeg reads → int16 (or float16) samples `[L, channels]`."""

from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np
import torch

from polymodal.datasets.media import (
    check_complete,
    clip_start,
    open_stream,
    plain_errors,
    seek_to,
    stream_seconds,
)
from polymodal.perceiver.io import GridInput

from .base import Adapter, Field, FieldInput, register
from .image import check_crop

_LAYOUTS = {1: "mono", 2: "stereo"}


@register("audio")
class AudioAdapter(Adapter):
    """Decode, resample and crop audio to a fixed number of samples.

    Resampling and downmixing are PyAV's (FFmpeg's swresample), which is both correct and fast.
    With `duration` set, a clip of exactly `duration · sample_rate` samples is cut at the
    centre or at a random place (first draw of the per-sample generator, see
    `media.clip_start`); the container is seeked to the clip, and decoding stops after it, so a
    long file costs only the clip. A shorter file is zero-padded and `mask` marks the real
    samples. `duration=None` keeps the whole file, refused beyond `max_seconds`.

    The default extensions include video containers: one `.mp4` feeds both the `video` field
    and, through this adapter, an `audio` field.
    """

    extensions = (
        "flac",
        "wav",
        "mp3",
        "ogg",
        "opus",
        "m4a",
        "aac",
        "mp4",
        "webm",
        "mkv",
        "mov",
        "avi",
        "m4v",
    )

    def __init__(
        self,
        sample_rate: int = 16000,
        channels: int = 1,
        duration: float | None = 10.0,
        crop: str = "center",
        dtype: str = "int16",
        max_seconds: float = 600.0,
        extensions: list[str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(extensions, field)
        check_crop(crop)
        if dtype not in ("int16", "float16"):
            raise ValueError(f"dtype must be 'int16' or 'float16', got {dtype!r}")
        if duration is not None and not 0 < duration <= max_seconds:
            raise ValueError(f"duration must be in (0, max_seconds={max_seconds}], got {duration}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.duration = duration
        self.crop = crop
        self.dtype = dtype
        self.max_seconds = max_seconds

    @property
    def uses_rng(self) -> bool:
        return self.crop == "random"

    def encoder(self, samples_per_patch: int = 16, num_bands: int = 64) -> FieldInput:
        """Samples scaled to [-1, 1], patches of `samples_per_patch`, Fourier positions."""
        scale = 1 / 32768 if self.dtype == "int16" else 1.0
        module = GridInput(self.channels, (samples_per_patch,), num_bands, scale=scale, offset=0.0)
        return FieldInput(module)

    @plain_errors()  # FFmpeg's reason, not its errno
    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        container, stream = open_stream(data, "audio")
        with container:
            total = stream_seconds(container, stream)
            start = 0.0
            if self.duration is not None:
                start = clip_start(total, self.duration, self.crop, rng)
                seek_to(container, stream, start)
            samples = self._decode(container, stream, start, total)
        if len(samples) == 0:
            raise ValueError("no audio samples")
        if self.dtype == "float16":
            samples = samples.astype(np.float16)
        if self.duration is None:
            return Field(values=torch.from_numpy(samples), grid=(len(samples),))
        length = round(self.duration * self.sample_rate)
        values = torch.zeros(length, self.channels, dtype=getattr(torch, self.dtype))
        values[: len(samples)] = torch.from_numpy(samples[:length])
        mask = None
        if len(samples) < length:
            mask = torch.arange(length) < len(samples)
        return Field(values=values, grid=(length,), mask=mask)

    def _decode(
        self,
        container: av.container.InputContainer,
        stream: av.stream.Stream,
        start: float,
        total: float,
    ) -> np.ndarray:
        """Samples `[n, channels]` from `start` seconds: up to the clip's end or `max_seconds`.

        Reaching the end of the stream well before the header's `total` means truncation.
        """
        layout = _LAYOUTS.get(self.channels, self.channels)
        fmt = "s16" if self.dtype == "int16" else "flt"
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=self.sample_rate)
        clip = self.duration is not None
        want = round((self.duration if clip else self.max_seconds) * self.sample_rate)
        limit = want if clip else want + 1  # one sample past max_seconds proves it too long
        chunks: list[np.ndarray] = []
        have = 0
        skip = None  # samples before `start` in the first resampled frame
        end = start
        for frame in _frames_then_flush(container, stream, resampler):
            if skip is None:
                t0 = frame.time if frame.time is not None else start
                skip = max(0, round((start - t0) * self.sample_rate))
            if frame.time is not None:
                end = frame.time + frame.samples / self.sample_rate
            arr = frame.to_ndarray().reshape(-1, self.channels)
            if skip:
                drop = min(skip, len(arr))
                arr, skip = arr[drop:], skip - drop
            chunks.append(arr)
            have += len(arr)
            if have >= limit:
                break
        else:
            check_complete(end, total)
        if not clip and have > want:
            raise ValueError(f"longer than max_seconds={self.max_seconds}")
        dtype = np.int16 if fmt == "s16" else np.float32
        return np.concatenate(chunks) if chunks else np.zeros((0, self.channels), dtype)


def _frames_then_flush(
    container: av.container.InputContainer,
    stream: av.stream.Stream,
    resampler: av.AudioResampler,
) -> Iterator[av.AudioFrame]:
    """Resampled frames of `stream` in order, then what the resampler still holds."""
    for frame in container.decode(stream):
        yield from resampler.resample(frame)
    yield from resampler.resample(None)

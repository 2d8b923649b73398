"""Audio: any container/codec FFmpeg reads → int16 (or float16) samples `[L, channels]`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import av
import numpy as np
import torch

from polymodal.codecs.audio import decode_audio
from polymodal.codecs.containers import (
    clip_start,
    open_stream,
    plain_errors,
    seek_to,
    stream_seconds,
)
from polymodal.perceiver.io import GridInput, LogMelInput

from .base import Adapter, Preview, Reconstruction
from .crop import check_crop
from .field import Field
from .field_input import FieldInput
from .registry import BUILT_IN, register


@register("audio")
class AudioAdapter(Adapter):
    """Decode, resample and crop audio to a fixed number of samples.

    Resampling and downmixing are PyAV's (FFmpeg's swresample), which is both correct and fast.
    With `duration` set, a clip of exactly `duration · sample_rate` samples is cut at the
    centre or at a random place (first draw of the per-sample generator, see
    `media.clip_start`); the container is seeked to the clip, and decoding stops after it, so a
    long file costs only the clip. A shorter file is zero-padded and `mask` marks the real
    samples. `duration=None` keeps the whole file, refused beyond `max_seconds`;
    `duration="full"` keeps each file's natural length up to `max_seconds`, a longer one cut to
    `max_seconds` as a clip would be: variable lengths, for packed batches (`collate`).

    The default extensions include video containers: one `.mp4` feeds both the `video` field
    and, through this adapter, an `audio` field.

    Materialised (`materialize`), the whole track is kept at `sample_rate` in `dtype`; a clip
    read back starts at the same sample as the media's (the seek's pre-roll makes the media's
    clip decode as it would from the start).
    """

    materialized_options = ("sample_rate", "channels", "dtype")

    extensions = BUILT_IN["audio"].extensions

    default_for = BUILT_IN["audio"].default_for

    def __init__(
        self,
        sample_rate: int = 16000,
        channels: int = 1,
        duration: float | str | None = 10.0,
        crop: str = "center",
        dtype: str = "int16",
        max_seconds: float = 600.0,
        shift: float = 0.0,
        gain: tuple[float, float] | None = None,
        noise: float = 0.0,
        extensions: list[str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(extensions, field)
        check_crop(crop)
        if dtype not in ("int16", "float16"):
            raise ValueError(f"dtype must be 'int16' or 'float16', got {dtype!r}")
        self.full = duration == "full"
        if self.full:
            duration = None
        elif isinstance(duration, str):
            raise ValueError(f"duration must be seconds, 'full' or None, got {duration!r}")
        if duration is not None and not 0 < duration <= max_seconds:
            raise ValueError(f"duration must be in (0, max_seconds={max_seconds}], got {duration}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.duration: float | None = duration
        self.crop = crop
        self.dtype = dtype
        self.max_seconds = max_seconds
        if not (math.isfinite(shift) and 0 <= shift <= (duration or max_seconds)):
            raise ValueError(f"shift must be in [0, duration] seconds, got {shift}")
        if gain is not None and not (len(gain) == 2 and -60 <= gain[0] <= gain[1] <= 60):
            raise ValueError(f"gain must be a [low, high] range of dB in [-60, 60], got {gain}")
        if not (math.isfinite(noise) and 0 <= noise <= 1):
            raise ValueError(f"noise must be in [0, 1] (a std, full scale 1), got {noise}")
        self.shift, self.gain, self.noise = shift, gain, noise

    @property
    def uses_rng(self) -> bool:
        return self.crop == "random" or self.augments

    @property
    def augments(self) -> bool:
        """Whether decoding shifts, scales or adds noise to the samples."""
        return bool(self.shift or self.gain or self.noise)

    def encoder(
        self,
        samples_per_patch: int = 16,
        num_bands: int = 64,
        features: str = "waveform",
        n_mels: int = 64,
        hop: int = 160,
        n_fft: int = 400,
        patch: tuple[int, int] = (4, 16),
        time_masks: int = 0,
        time_width: int = 10,
        freq_masks: int = 0,
        freq_width: int = 8,
    ) -> FieldInput:
        """The waveform in [-1, 1] as patches of `samples_per_patch` samples
        (`features="waveform"`), or its log-mel spectrogram computed on the device and cut into
        `patch` = (frames, mel bins) patches (`features="logmel"`: `n_mels`, `hop`, `n_fft`, and
        SpecAugment's `time_masks` / `freq_masks` bands of up to `time_width` frames /
        `freq_width` bins while training); Fourier positions of `num_bands` either way."""
        scale = 1 / 32768 if self.dtype == "int16" else 1.0
        if features == "logmel":
            return FieldInput(
                LogMelInput(
                    sample_rate=self.sample_rate,
                    channels=self.channels,
                    n_mels=n_mels,
                    hop=hop,
                    n_fft=n_fft,
                    patch=patch,
                    num_bands=num_bands,
                    scale=scale,
                    time_masks=time_masks,
                    time_width=time_width,
                    freq_masks=freq_masks,
                    freq_width=freq_width,
                )
            )
        if features != "waveform":
            raise ValueError(f"features must be 'waveform' or 'logmel', got {features!r}")
        if time_masks or freq_masks:
            raise ValueError("SpecAugment (time_masks, freq_masks) needs features='logmel'")
        module = GridInput(
            channels=self.channels,
            patch=(samples_per_patch,),
            num_bands=num_bands,
            scale=scale,
            offset=0.0,
        )
        return FieldInput(module)

    @plain_errors()
    def probe(self, data: bytes, ext: str) -> dict[str, float]:
        container, stream = open_stream(data, "audio")
        with container:
            seconds = stream_seconds(container, stream)
            return {"seconds": seconds, "rate": stream.rate, "channels": stream.channels}

    def preview(self, data: bytes, ext: str, classes: Sequence[str] | None) -> Preview:
        """The first channel of the whole file (up to two minutes) as a waveform."""
        whole = type(self)(
            sample_rate=self.sample_rate, duration=None, dtype="float16", max_seconds=120
        )
        field = whole.decode({ext: data})
        return Preview(wave=field.values[:, 0].float().numpy(), rate=self.sample_rate)

    def reconstruction(self, encoder: Mapping[str, Any]) -> Reconstruction | None:
        """Patches of `samples_per_patch` samples (the encoder's own option)."""
        if self.duration is None:
            return None
        length = round(self.duration * self.sample_rate)
        per_patch = int(encoder.get("samples_per_patch", 16))
        scale = 1 / 32768 if self.dtype == "int16" else 1.0
        dtype = np.dtype(self.dtype).type
        return Reconstruction((length,), per_patch * self.channels, scale, 0.0, dtype, (per_patch,))

    @plain_errors()  # FFmpeg's reason, not its errno
    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        container, stream = open_stream(data, "audio")
        with container:
            total = stream_seconds(container, stream)
            start, take, seconds = 0.0, self._take, self.duration
            if self.full and total > self.max_seconds:  # cut to the bound, as a clip
                take, seconds = round(self.max_seconds * self.sample_rate), self.max_seconds
            if seconds is not None:
                start = clip_start(total, seconds, self.crop, rng)
                seek_to(container, stream, start)
            samples, _ = self._decode(container, stream, start, take)
        return self._clip(samples, rng)

    def _decode(
        self,
        container: av.container.InputContainer,
        stream: av.AudioStream,
        start: float | None,
        take: int | None,
    ) -> tuple[np.ndarray, float]:
        """`decode_audio` at this adapter's rate, channels and sample type (float32 for
        float16, cast after augmentation); a whole track is bounded by `max_seconds`."""
        return decode_audio(
            container,
            stream,
            rate=self.sample_rate,
            channels=self.channels,
            dtype="int16" if self.dtype == "int16" else "float32",
            start=start,
            take=take,
            max_seconds=self.max_seconds if take is None else None,
        )

    @property
    def _take(self) -> int | None:
        """Samples in a clip; None: the whole file."""
        return None if self.duration is None else round(self.duration * self.sample_rate)

    def _clip(self, samples: np.ndarray, rng: np.random.Generator | None) -> Field:
        """Decoded samples as the field: augmented, zero-padded to the clip, masked."""
        if len(samples) == 0:
            raise ValueError("no audio samples")
        offset = 0
        if self.augments:
            samples, offset = self._augment(samples, rng)
        if self.dtype == "float16":
            samples = samples.astype(np.float16)
        if self._take is None and not offset:
            return Field(values=torch.from_numpy(samples), grid=(len(samples),))
        length = len(samples) if self._take is None else self._take
        values = torch.zeros(length, self.channels, dtype=getattr(torch, self.dtype))
        begin, end = max(offset, 0), min(length, offset + len(samples))
        if end > begin:
            values[begin:end] = torch.from_numpy(samples[begin - offset : end - offset])
        mask = None
        if (begin, end) != (0, length):
            mask = (torch.arange(length) >= begin) & (torch.arange(length) < end)
        return Field(values=values, grid=(length,), mask=mask)

    @plain_errors()
    def materialize(self, data: bytes, ext: str) -> tuple[np.ndarray, dict[str, float]]:
        """The whole track (up to `max_seconds`), and the stream time of its first sample."""
        container, stream = open_stream(data, "audio")
        with container:
            total = stream_seconds(container, stream)
            samples, first = self._decode(container, stream, None, None)
        if len(samples) == 0:
            raise ValueError("no audio samples")
        return samples.astype(np.dtype(self.dtype), copy=False), {"total": total, "first": first}

    def from_materialized(
        self, array: np.ndarray, meta: Mapping[str, float], rng: np.random.Generator | None
    ) -> Field:
        if array.ndim != 2 or array.shape[1] != self.channels or array.dtype != self.dtype:
            raise ValueError(
                f"materialised audio is {array.dtype} {array.shape}, not {self.dtype} samples "
                f"of {self.channels} channel(s)"
            )
        samples, take, seconds = array, self._take, self.duration
        bound = round(self.max_seconds * self.sample_rate)
        if self.full and len(array) > bound:  # materialised by a longer bound: cut as media
            take, seconds = bound, self.max_seconds
        if take is not None and seconds is not None:
            start = clip_start(meta.get("total", 0.0), seconds, self.crop, rng)
            first = max(0, round((start - meta.get("first", 0.0)) * self.sample_rate))
            samples = array[first : first + take]
        return self._clip(np.array(samples), rng)  # the copy: only the clip

    def _augment(
        self, samples: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, int]:
        """Gain (dB drawn from `gain`) and Gaussian noise (std drawn up to `noise`) on the real
        samples, and where in the clip they start (a shift of up to ±`shift` seconds, zeros
        filling the gap): draws from the sample's generator after the clip start's."""
        if rng is None:
            raise ValueError("audio augmentation needs the sample's generator")
        offset = round(rng.uniform(-self.shift, self.shift) * self.sample_rate) if self.shift else 0
        x = samples.astype(np.float32)
        if self.gain:
            x *= np.float32(10 ** (rng.uniform(*self.gain) / 20))
        low, high = (-32768.0, 32767.0) if self.dtype == "int16" else (-1.0, 1.0)
        if self.noise:
            x += rng.normal(0, rng.uniform(0, self.noise) * high, x.shape).astype(np.float32)
        x = x.clip(low, high)
        return (x.round().astype(np.int16) if self.dtype == "int16" else x), offset

import io
import wave

import av
import numpy as np
import pytest
import torch
from testmedia import empty_wav, peak_hz

import polymodal.codecs.audio as audio_codec
from polymodal.adapters import DecodeError, get
from polymodal.codecs.audio import _FORMATS, channel_layout, decode_audio
from polymodal.codecs.containers import open_stream
from polymodal.datasets.synthetic import counter_frames, encode_audio, encode_media, tone

AUDIO_FORMATS = ["flac", "wav", "mp3", "ogg", "opus", "m4a", "aac"]


def _decode(data: bytes, ext: str, rng=None, **kwargs):
    return get("audio")(**kwargs).decode({"__key__": "snd", ext: data}, rng)


@pytest.mark.parametrize("ext", AUDIO_FORMATS)
def test_tone_keeps_its_frequency_after_resampling(ext):
    data = encode_audio(tone(440, 1.5, 44100), 44100, ext)
    field = _decode(data, ext, sample_rate=16000, duration=1.0)
    assert field.values.shape == (16000, 1) and field.values.dtype == torch.int16
    assert field.grid == (16000,) and field.mask is None
    samples = field.values[:, 0].numpy().astype(np.float32) / 32768
    assert abs(peak_hz(samples, 16000) - 440) <= 2
    assert 0.3 < np.abs(samples).max() <= 0.6  # amplitude 0.5 survives


@pytest.mark.parametrize("ext", ["mp4", "webm", "mkv", "mov"])
def test_audio_track_of_a_video_file(ext):
    data = encode_media(ext, counter_frames(25), fps=25, audio=tone(660, 1.0), audio_rate=44100)
    field = _decode(data, ext, duration=0.5)
    assert field.values.shape == (8000, 1)
    assert abs(peak_hz(field.values[:, 0].numpy().astype(np.float32), 16000) - 660) <= 3


def test_channels_dtype_and_downmix():
    stereo = np.concatenate([tone(300, 1.0), tone(300, 1.0) * 0.0], axis=1)
    data = encode_audio(stereo, 44100, "flac")
    two = _decode(data, "flac", channels=2, dtype="float16", duration=None)
    assert two.values.shape == (16000, 2) and two.values.dtype == torch.float16
    assert two.values[:, 0].abs().max() > 0.4 and two.values[:, 1].abs().max() < 0.01
    mono = _decode(data, "flac", channels=1, dtype="float16", duration=None)
    assert mono.values.shape == (16000, 1)
    assert 0.1 < float(mono.values.abs().max()) < 0.45  # the silent channel is mixed in


def _steps() -> bytes:
    """Three seconds: 300 Hz, then 600 Hz, then 900 Hz."""
    steps = np.concatenate([tone(f, 1.0, 16000) for f in (300, 600, 900)])
    return encode_audio(steps, 16000, "flac")


def test_centre_crop_cuts_the_middle():
    field = _decode(_steps(), "flac", duration=0.8)
    assert abs(peak_hz(field.values[:, 0].numpy().astype(np.float32), 16000) - 600) <= 3


def test_random_crop_seeks_and_follows_the_generator():
    data = _steps()
    adapter = get("audio")(duration=0.5, crop="random")
    starts = {}
    for seed in range(6):
        field = adapter.decode({"__key__": "k", "flac": data}, np.random.default_rng(seed))
        again = adapter.decode({"__key__": "k", "flac": data}, np.random.default_rng(seed))
        assert torch.equal(field.values, again.values)
        start = np.random.default_rng(seed).random() * 2.5  # clip_start's draw
        expected = 300 * (1 + int(start + 0.25))  # the step holding the clip's centre
        if abs((start + 0.25) % 1 - 0.5) < 0.4:  # clip well inside one step
            got = peak_hz(field.values[:, 0].numpy().astype(np.float32), 16000)
            assert abs(got - expected) <= 3, (seed, start, got)
        starts[seed] = start
    assert len(set(starts.values())) == 6


def test_short_audio_is_padded_and_masked():
    field = _decode(encode_audio(tone(440, 0.5), 44100, "wav"), "wav", duration=1.0)
    assert field.values.shape == (16000, 1) and field.mask.shape == (16000,)
    assert abs(int(field.mask.sum()) - 8000) <= 2
    assert field.values[8010:].abs().sum() == 0


def test_whole_file_is_bounded_by_max_seconds():
    data = encode_audio(tone(440, 3.0), 44100, "flac")
    assert _decode(data, "flac", duration=None).values.shape == (48000, 1)
    with pytest.raises(DecodeError, match="max_seconds"):
        _decode(data, "flac", duration=None, max_seconds=2.0)


def _wav(frames: bytes, channels: int, rate: int) -> bytes:
    """A 16-bit PCM WAV (the standard library's writer, no channel mask) holding `frames`."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


@pytest.mark.parametrize("channels", [1, 2])
def test_pcm_wav_at_the_adapters_rate_is_its_own_samples(channels):
    """A WAV states no channel order ("1 channels"): it is taken as the adapter's layout of
    as many channels, sample for sample (the resampler passes its frames through)."""
    written = np.random.default_rng(channels).integers(-30000, 30000, (16000, channels), np.int16)
    data = _wav(written.tobytes(), channels, 16000)
    field = _decode(data, "wav", channels=channels, duration=None)
    assert np.array_equal(field.values.numpy(), written)


def test_compressed_audio_stored_as_pcm_in_a_wav_is_still_found():
    """FFmpeg probes a PCM WAV's samples for AC3 or DTS stored as PCM; that probe now stops
    at the first packet (`containers.WAV_PROBE`), where such a stream starts. AC3 (FFmpeg's
    encoder) written as the samples of a 16-bit stereo WAV must decode as AC3, not as noise."""
    ac3 = encode_audio(tone(440, 2.0, 44100, channels=2), 44100, "ac3")
    data = _wav(ac3 + bytes(-len(ac3) % 4), 2, 44100)
    samples = _decode(data, "wav", duration=None).values[:, 0].numpy().astype(np.float32)
    assert abs(peak_hz(samples / 32768, 16000) - 440) <= 2
    assert 0.3 < np.abs(samples / 32768).max() <= 0.6  # the tone, not the bytes as noise


def _float_wav(samples: np.ndarray, rate: int) -> bytes:
    """A 32-bit float WAV (FFmpeg's `pcm_f32le`) holding `samples` `[n, channels]` as they are."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        stream = out.add_stream("pcm_f32le", rate=rate)
        stream.layout = layout = "mono" if samples.shape[1] == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def _loud(rate: int, channels: int) -> np.ndarray:
    """A square wave at full scale with noise: AAC decodes it past full scale (clipped)."""
    t = np.arange(round(rate * 1.3)) / rate
    wave_ = np.sign(np.sin(2 * np.pi * 97 * t)) * 0.999 + np.random.default_rng(0).normal(
        0, 0.05, t.shape
    )
    return np.stack([wave_, -wave_][:channels], 1).astype(np.float32)


def _through_resampler(data: bytes, dtype: str, channels: int) -> tuple[np.ndarray, float]:
    """Every frame of `data` through PyAV's resampler (FFmpeg's swresample) to `dtype`."""
    container, stream = open_stream(data, "audio")
    with container:
        layout = channel_layout(stream, channels)
        resampler = av.AudioResampler(format=_FORMATS[dtype][0], layout=layout, rate=stream.rate)
        frames = [out for f in [*container.decode(stream), None] for out in resampler.resample(f)]
    return np.concatenate([f.to_ndarray().reshape(-1, channels) for f in frames]), frames[0].time


@pytest.mark.parametrize("channels", [1, 2])
def test_audio_differing_only_in_sample_type_is_converted_as_ffmpeg_does(channels, monkeypatch):
    """AAC decodes to planar float; a float WAV holds float; a WAV or FLAC, int16. At the
    adapter's rate and layout, numpy converts the samples in place of FFmpeg's filter graph:
    the samples (clipped where AAC overshoots full scale, NaN as FFmpeg has it) and the time
    of the first are those swresample gives."""
    converted: list[str] = []
    real = audio_codec._interleaved
    monkeypatch.setattr(
        audio_codec, "_interleaved", lambda f, *a: converted.append(f.format.name) or real(f, *a)
    )
    loud = _loud(16000, channels)
    hostile = loud * 2.5
    hostile[::997] = np.nan
    sources = [
        encode_audio(loud, 16000, "m4a"),
        _float_wav(hostile, 16000),
        encode_audio(loud * 0.5, 16000, "flac"),
    ]
    for data in sources:
        for dtype in ("int16", "float32"):
            container, stream = open_stream(data, "audio")
            with container:
                got, first = decode_audio(container, stream, channels=channels, dtype=dtype)
            want, want_first = _through_resampler(data, dtype, channels)
            assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)
            assert first == want_first
    clipped = _through_resampler(sources[0], "int16", channels)[0]
    assert (clipped == 32767).any() and (clipped == -32768).any()  # the clip is exercised
    assert set(converted) == {"fltp", "flt", "s16"}  # FLAC to int16 passes through


def test_zero_length_audio_raises():
    with pytest.raises(DecodeError, match="no audio samples") as err:
        _decode(empty_wav(), "wav")
    assert err.value.key == "snd" and err.value.field == "audio"


@pytest.mark.parametrize("ext", ["flac", "wav", "mp3", "m4a"])
def test_truncated_audio_raises(ext):
    data = encode_audio(tone(440, 2.0), 44100, ext)
    with pytest.raises(DecodeError, match=r"truncated|Invalid data"):
        _decode(data[: len(data) // 2], ext, duration=None)

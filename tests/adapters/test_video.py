import numpy as np
import pytest
import torch
from testmedia import frame_levels

from polymodal.adapters import DecodeError, get
from polymodal.codecs.containers import open_stream, stream_seconds
from polymodal.codecs.video import _clock, _decoded, _Targets, frames_at
from polymodal.datasets.synthetic import counter_frames, encode_audio, encode_media, tone

STEP = 8  # frame k is grey level 8k: distinct after lossy coding, no wrap for 30 frames


def _decode(data: bytes, ext: str = "mp4", rng=None, **kwargs):
    return get("video")(**kwargs).decode({"__key__": "vid", ext: data}, rng)


@pytest.mark.parametrize("ext", ["mp4", "webm", "mkv", "mov", "avi"])
def test_frame_k_shows_k(ext):
    data = encode_media(ext, counter_frames(30, 48, 64, STEP), fps=25)
    field = _decode(data, ext, num_frames=30, fps=None, size=None)
    assert field.values.dtype == torch.uint8 and field.grid == (30, 48, 64)
    assert field.values.shape == (30 * 48 * 64, 3) and field.mask is None
    assert np.abs(frame_levels(field) / STEP - np.arange(30)).max() < 0.5


def test_target_fps_picks_frames_by_time_and_the_clip_is_centred():
    data = encode_media("mp4", counter_frames(30, step=STEP), fps=15)  # 2 s
    field = _decode(data, num_frames=6, fps=7.5, size=None)  # 0.8 s in the middle
    idx = np.round(frame_levels(field) / STEP)
    start = int((2.0 - 6 / 7.5) / 2 * 15)  # the frame on screen at 0.6 s: frame 9
    assert idx.tolist() == list(range(start, start + 12, 2))


def test_random_clip_follows_the_generator():
    data = encode_media("mp4", counter_frames(30, step=STEP), fps=15)
    adapter = get("video")(num_frames=4, fps=None, size=None, crop="random")
    firsts = []
    for seed in range(5):
        field = adapter.decode({"__key__": "k", "mp4": data}, np.random.default_rng(seed))
        idx = np.round(frame_levels(field) / STEP)
        first = int(np.random.default_rng(seed).random() * (2.0 - 4 / 15) * 15)  # on screen
        assert idx.tolist() == list(range(first, first + 4)), seed
        firsts.append(idx[0])
    assert len(set(firsts)) > 1


def test_seeking_a_long_video_with_sparse_keyframes():
    """A 10 s clip whose frames carry their index in two halves (k % 16, k // 16)."""
    k = np.arange(250)
    frames = np.zeros((250, 32, 64, 3), np.uint8)
    frames[:, :, :32] = ((k % 16) * 16)[:, None, None, None]
    frames[:, :, 32:] = ((k // 16) * 16)[:, None, None, None]
    data = encode_media("mp4", frames, fps=25)
    adapter = get("video")(num_frames=6, fps=5, size=None, crop="random")
    for seed in (0, 1, 2):
        field = adapter.decode({"__key__": "k", "mp4": data}, np.random.default_rng(seed))
        clip = field.values.reshape(6, 32, 64, 3).float()
        lo = np.round(clip[:, :, :32].mean((1, 2, 3)).numpy() / 16)
        hi = np.round(clip[:, :, 32:].mean((1, 2, 3)).numpy() / 16)
        start = np.random.default_rng(seed).random() * (10 - 6 / 5)
        expected = np.floor(start * 25) + np.arange(6) * 5  # the frames on screen
        assert (lo + 16 * hi).tolist() == expected.tolist()


def test_variable_frame_rate_uses_timestamps():
    times = [0, 0.1, 0.15, 0.4, 0.5, 0.52, 0.9, 1.0]
    data = encode_media("mp4", counter_frames(8, step=20), times=times)
    field = _decode(data, num_frames=11, fps=10, size=None)
    shown = np.round(frame_levels(field) / 20).tolist()
    # the frame on screen at 0.0, 0.1, ..., 1.0 s
    assert shown == [0, 1, 2, 2, 3, 4, 5, 5, 5, 6, 7]


def test_resize_and_crop_to_size():
    frames = np.zeros((10, 60, 180, 3), np.uint8)
    frames[:, :, :60, 0] = frames[:, :, 60:120, 1] = frames[:, :, 120:, 2] = 255
    field = _decode(encode_media("mp4", frames), num_frames=4, fps=None, size=30)
    assert field.grid == (4, 30, 30)
    mean = field.values.float().mean(0)
    assert mean[1] > 200 and mean[0] < 40 and mean[2] < 40  # the centre third is green


@pytest.mark.parametrize(("rotation", "bright"), [(90, "bottom"), (-90, "top"), (180, "right")])
def test_rotation_metadata_is_applied(rotation, bright):
    frames = np.zeros((5, 48, 64, 3), np.uint8)
    frames[:, :, :32] = 200  # stored with the left half bright
    field = _decode(encode_media("mp4", frames, rotation=rotation), num_frames=1, size=None)
    img = field.values.reshape(*field.grid, 3)[0, :, :, 0].float()
    h, w = img.shape
    assert (h, w) == ((64, 48) if rotation % 180 else (48, 64))
    halves = {
        "top": img[: h // 2],
        "bottom": img[h // 2 :],
        "left": img[:, : w // 2],
        "right": img[:, w // 2 :],
    }
    assert halves[bright].mean() > 150


def test_short_video_is_padded_and_masked():
    field = _decode(
        encode_media("mp4", counter_frames(10, step=STEP), fps=10), num_frames=16, fps=10, size=None
    )
    frames_real = field.mask.reshape(16, -1)
    assert frames_real[:10].all() and not frames_real[10:].any()
    assert field.values.reshape(16, -1)[10:].sum() == 0


def test_no_video_stream_raises():
    with pytest.raises(DecodeError, match="no video stream") as err:
        _decode(encode_media("mp4", audio=tone(440, 1.0)))
    assert err.value.field == "video" and err.value.key == "vid"


@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_truncated_and_corrupt_video_raise(ext):
    data = encode_media(ext, counter_frames(50), fps=25, audio=tone(440, 2.0))
    with pytest.raises(DecodeError):
        _decode(data[: len(data) // 2], ext, num_frames=40, fps=None)
    noise = np.random.default_rng(0).integers(0, 256, len(data) - 200, dtype=np.uint8)
    with pytest.raises(DecodeError):
        _decode(data[:200] + noise.tobytes(), ext)


def test_an_audio_file_under_a_video_extension_raises():
    with pytest.raises(DecodeError, match="no video stream"):
        _decode(encode_audio(tone(), 44100, "m4a"), "mp4")


def _on_screen(data: bytes, targets: np.ndarray) -> list[tuple[int, bytes]]:
    """The reference: decode every frame, then for each target the last frame at or before
    it (the first for a target before any), as (pts, pixels)."""
    container, stream = open_stream(data, "video")
    with container:
        tb, origin = float(stream.time_base), stream.start_time or 0
        frames = container.decode(stream)
        decoded = [(f.pts, f.to_ndarray(format="rgb24").tobytes()) for f in frames]
    times = np.array([(pts - origin) * tb for pts, _ in decoded])
    picks = np.searchsorted(times, targets + 1e-6, side="right") - 1
    return [decoded[max(0, i)] for i in picks]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fps", [3, 8, 12.5, 25])
def test_frames_no_target_shows_are_skipped_and_the_shown_ones_are_exact(fps, threads):
    """x264 (B-frames) at 25 fps: frames at `fps` from the start are the very frames the
    reference picks from every decoded frame, and at under 25 fps fewer frames are decoded
    than the stream holds (non-reference frames no target shows are skipped)."""
    data = encode_media("mp4", counter_frames(50, 48, 64, step=4), fps=25)
    targets = np.arange(int(2 * fps)) / fps  # 2 s: every frame is shown at 25 fps
    container, stream = open_stream(data, "video")
    with container:
        stream.thread_type, stream.codec_context.thread_count = "AUTO", threads
        shown = [
            (f.pts, f.to_ndarray(format="rgb24").tobytes())
            for f in frames_at(container, stream, targets, stream_seconds(container, stream))
        ]
    assert shown == _on_screen(data, targets)
    container, stream = open_stream(data, "video")
    with container:
        frames = _decoded(container, stream, _clock(stream), _Targets(targets).any_in, [0.0])
        decoded = len(list(frames))
    assert decoded < 50 if fps < 25 else decoded == 50

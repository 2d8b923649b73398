"""Packed batches: samples of their natural lengths, one after another with offsets, through
the encoder's per-sample cross-attention. A packed sample's logits are its logits alone."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polymodal.adapters import collate, get
from polymodal.datasets.synthetic import (
    counter_frames,
    encode_audio,
    encode_image,
    encode_media,
    encode_ply,
    photo,
    tone,
)
from polymodal.perceiver import EncoderConfig, MaskedLanguageModel, MultimodalInput, Perceiver
from polymodal.perceiver.position import FourierPositions

ENCODER = EncoderConfig(num_latents=8, latent_dim=32, num_self_attends_per_block=1, self_heads=2)


def _media(i: int, rng: np.random.Generator) -> dict:
    """Sample `i` of lengths that differ from sample to sample, from real encoders."""
    seconds = 0.3 + 0.25 * i
    return {
        "__key__": f"s{i}",
        "flac": encode_audio(tone(200 + 150 * i, seconds, rate=16000), 16000),
        "mp4": encode_media("mp4", counter_frames(6, 32, 32), fps=8),
        "png": encode_image(photo(i, 24 + 8 * i)[:, : 16 + 4 * i], "PNG"),
        "ply": encode_ply(rng.normal(size=(20 + 17 * i, 3))),
        "txt": ("spoken digit " * (i + 1)).encode(),
    }


# field → (adapter, encoder options); the waveform's and the picture's patches do not divide
# every sample's length or side: its last part-patch is one more token, zero-padded
CASES = {
    "waveform": (lambda: get("audio")(duration=None), {"samples_per_patch": 96, "num_bands": 4}),
    "logmel": (
        lambda: get("audio")(duration=None),
        {"features": "logmel", "n_mels": 16, "patch": (2, 8), "num_bands": 4},
    ),
    "video": (lambda: get("video")(num_frames=4, fps=None, size=16), {"num_bands": 4}),
    "image": (lambda: get("image")(size=None), {"patch_size": 3, "num_bands": 4}),
    "cloud": (lambda: get("pointcloud")(num_points=None), {"num_bands": 4}),
    "text": (lambda: get("text")(max_length=64), {"dim": 16}),
}


def _decoded(names: list[str], count: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    adapters = {name: CASES[name][0]() for name in names}
    raw = [_media(i, rng) for i in range(count)]
    return [{"__key__": r["__key__"], **{n: a.decode(r) for n, a in adapters.items()}} for r in raw]


def _model(names: list[str]) -> Perceiver:
    torch.manual_seed(0)
    inputs = MultimodalInput(
        inputs={name: CASES[name][0]().encoder(**CASES[name][1]) for name in names}
    )
    return Perceiver(
        input_channels=inputs.channels, num_classes=5, encoder=ENCODER, input=inputs
    ).eval()


@pytest.mark.parametrize("names", [[n] for n in CASES] + [["logmel", "video"], ["cloud", "text"]])
def test_a_packed_samples_logits_are_its_logits_alone(names):
    samples = _decoded(names)
    model = _model(names)
    packed = collate(samples, packed=names)
    assert all(packed[n].offsets is not None and packed[n].mask is None for n in names)
    lengths = {n: packed[n].offsets.diff().tolist() for n in names}
    assert all(len(set(v)) > 1 or n == "video" for n, v in lengths.items())  # lengths differ
    with torch.no_grad():
        together = model({n: (packed[n],) for n in names})
        alone = torch.cat([model({n: (collate([s])[n],) for n in names}) for s in samples])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_a_packed_texts_masked_byte_logits_are_its_logits_alone():
    samples = _decoded(["text"])
    torch.manual_seed(0)
    model = MaskedLanguageModel(
        encoder=ENCODER, dim=16, max_length=64, decoder_heads=1, decoder_qk_channels=None
    ).eval()
    packed = collate(samples, packed=["text"])["text"]
    assert len(set(packed.offsets.diff().tolist())) == len(samples)  # every length differs
    with torch.no_grad():
        together = model(packed.values[:, 0].long(), offsets=packed.offsets)
        alone = [model(collate([s])["text"].values[..., 0].long())[0] for s in samples]
        padded = collate(samples)["text"]
        in_padding = model(padded.values[..., 0].long(), padded.mask)[padded.mask]
    assert together.shape == (int(packed.offsets[-1]), 262)
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)
    torch.testing.assert_close(together, in_padding, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rows", [False, True], ids=["clip-by-clip-stft", "rows-stft"])
def test_log_mel_packed_in_one_pass_is_each_clip_alone(rows):
    """The one-pass log-mel pack: each clip's STFT alone (a CPU's way), or every clip
    reflect-padded at its own ends into one STFT batch of rows (a GPU's, asked for here on the
    CPU), then the frames, statistics and positions of the whole pack at once."""
    samples = _decoded(["logmel"])
    model = _model(["logmel"])
    module = model.input.inputs["logmel"].module
    packed = collate(samples, packed=["logmel"])["logmel"]
    module.rows_on_cpu = rows
    assert module.pack(packed.values, packed.offsets.diff()) is not None
    with torch.no_grad():
        together = model({"logmel": (packed,)})
        alone = torch.cat([model({"logmel": (collate([s])["logmel"],)}) for s in samples])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_packing_drops_the_padding_a_padded_batch_pays_for():
    samples = _decoded(["waveform", "text"])
    padded, packed = collate(samples), collate(samples, packed=["waveform", "text"])
    for name in ("waveform", "text"):
        real = int(padded[name].mask.sum())
        assert packed[name].values.shape[0] == real < padded[name].mask.numel()
        assert torch.equal(packed[name].values, padded[name].values[padded[name].mask])


def test_a_packed_batch_selects_rows_and_trains():
    samples = _decoded(["logmel", "cloud"])
    names = ["logmel", "cloud"]
    packed = collate(samples, packed=names)
    keep = torch.tensor([True, False, True, True])
    picked = packed.select(keep)
    model = _model(names)
    with torch.no_grad():
        full = model({n: (packed[n],) for n in names})
        part = model({n: (picked[n],) for n in names})
    torch.testing.assert_close(part, full[keep], atol=1e-5, rtol=0)
    model.train()
    loss = F.cross_entropy(model({n: (packed[n],) for n in names}), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_padded_clip_packs_only_its_real_samples():
    adapter = get("audio")(duration=1.0)  # longer than the tone: padded, mask marks the tone
    raw = {"__key__": "a", "flac": encode_audio(tone(300, 0.4, rate=16000), 16000)}
    field = adapter.decode(raw)
    assert field.mask is not None and int(field.mask.sum()) == 6400
    packed = collate([{"__key__": "a", "audio": field}], packed=["audio"])["audio"]
    assert packed.offsets.tolist() == [0, 6400] and packed.grid == [(6400,)]


def test_a_short_video_packs_its_own_frames_and_a_padded_picture_is_refused():
    adapter = get("video")(num_frames=6, fps=None, size=16)
    clips = [encode_media("mp4", counter_frames(n, 32, 32), fps=8) for n in (3, 6, 4)]
    fields = [adapter.decode({"__key__": str(i), "mp4": c}) for i, c in enumerate(clips)]
    assert fields[0].mask is not None and int(fields[0].mask.sum()) == 3 * 16 * 16
    samples = [{"__key__": str(i), "video": f} for i, f in enumerate(fields)]
    packed = collate(samples, packed=["video"])["video"]
    assert packed.grid == [(3, 16, 16), (6, 16, 16), (4, 16, 16)]
    assert packed.offsets.tolist() == [0, 768, 2304, 3328]
    assert torch.equal(packed.values[:768], fields[0].values[:768])
    torch.manual_seed(0)
    inputs = MultimodalInput(inputs={"video": adapter.encoder(num_bands=4)})
    model = Perceiver(input_channels=inputs.channels, num_classes=3, encoder=ENCODER, input=inputs)
    with torch.no_grad():
        together = model.eval()({"video": (packed,)})
        alone = [model({"video": (collate([s], packed=["video"])["video"],)}) for s in samples]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)
    holed = fields[0].values.clone()
    mask = torch.ones(len(holed), dtype=torch.bool)
    mask[5] = False  # padding inside a frame: no whole frame to drop
    bad = {"__key__": "x", "video": type(fields[0])(values=holed, grid=(6, 16, 16), mask=mask)}
    with pytest.raises(ValueError, match="padded within its slices"):
        collate([bad], packed=["video"])


def test_max_side_scales_a_native_picture_down_keeping_its_aspect():
    adapter = get("image")(size=None, max_side=96)
    wide = adapter.decode({"__key__": "w", "png": encode_image(photo(1, 300)[:120], "PNG")})
    small = adapter.decode({"__key__": "s", "png": encode_image(photo(2, 64)[:40], "PNG")})
    assert wide.grid == (38, 96) and small.grid == (40, 64)
    with pytest.raises(ValueError, match="max_side bounds a native size"):
        get("image")(size=64, max_side=96)


def test_full_duration_keeps_each_clips_length_up_to_the_bound():
    adapter = get("audio")(duration="full", max_seconds=1.0)
    lengths = []
    for seconds in (0.3, 0.8, 2.5):
        raw = {"__key__": "a", "flac": encode_audio(tone(300, seconds, rate=16000), 16000)}
        field = adapter.decode(raw)
        assert field.mask is None
        lengths.append(len(field.values))
    assert lengths == [4800, 12800, 16000]
    with pytest.raises(ValueError, match="'full' or None"):
        get("audio")(duration="whole")


def test_a_padded_clips_log_mel_is_standardised_over_its_own_frames():
    adapter = get("audio")(duration="full", max_seconds=2.0)
    clips = [encode_audio(tone(f, s, rate=16000), 16000) for f, s in ((300, 0.3), (900, 1.5))]
    samples = [{"__key__": str(i), "a": adapter.decode({"flac": c})} for i, c in enumerate(clips)]
    padded = collate(samples)["a"]
    module = adapter.encoder(features="logmel", n_mels=16, patch=(2, 8)).module
    length = padded.values.shape[1]
    starts = (torch.arange(length // 160 + 1) * 160).clamp(max=length - 1)
    short = module.spectrogram(padded.values, padded.mask[:, starts])[0]
    kept = short[: int(padded.mask[0, starts].sum())]  # the 0.3 s tone's 30 frames
    assert len(kept) == 30 and abs(float(kept.mean())) < 0.1 and abs(float(kept.std()) - 1) < 0.1
    alone = module.spectrogram(collate(samples[:1])["a"].values)[0]
    torch.testing.assert_close(kept[:-3], alone[:27], atol=0.15, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the variable-length kernel needs CUDA")
@pytest.mark.parametrize("names", [["logmel", "video"], ["cloud", "text"]])
def test_on_a_gpu_a_pack_is_one_varlen_kernel_with_the_padded_results(names):
    """bf16 on CUDA: the pack goes through `varlen_attn` (one kernel, by the profiler), its
    logits are each sample's alone, and its gradients those of fp32's per-sample path."""
    samples = _decoded(names)
    model = _model(names).cuda()
    packed = {n: collate(samples, packed=names)[n].to("cuda") for n in names}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with torch.profiler.profile() as profile:
            together = model({n: (packed[n],) for n in names}).float()
        alone = [model({n: (collate([s])[n].to("cuda"),) for n in names}) for s in samples]
    assert any("varlen" in event.name for event in profile.events())
    torch.testing.assert_close(together, torch.cat(alone).float(), atol=3e-2, rtol=0)
    labels = torch.arange(len(samples), device="cuda") % 5
    grads = []
    for half in (True, False):  # varlen in bf16, then one SDPA per sample in fp32
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=half):
            F.cross_entropy(model.train()({n: (packed[n],) for n in names}), labels).backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the variable-length kernel needs CUDA")
def test_on_a_gpu_packed_masked_byte_logits_come_from_one_varlen_kernel():
    samples = _decoded(["text"])
    torch.manual_seed(0)
    model = MaskedLanguageModel(
        encoder=ENCODER, dim=16, max_length=64, decoder_heads=1, decoder_qk_channels=None
    )
    model = model.cuda().eval()
    packed = collate(samples, packed=["text"])["text"].to("cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with torch.profiler.profile() as profile:
            together = model(packed.values[:, 0].long(), offsets=packed.offsets).float()
        alone = [model(collate([s])["text"].values[..., 0].long().cuda())[0] for s in samples]
    assert any("varlen" in event.name for event in profile.events())
    torch.testing.assert_close(together, torch.cat(alone).float(), atol=3e-2, rtol=0)


def test_positions_of_many_lengths_stay_cached_within_the_bound(monkeypatch):
    """Packed samples bring a grid each: the positions cache keeps the most recent ones up
    to its bound in bytes, a grid computed again after eviction gives the same features, and
    one grid larger than the bound is still kept (a model of one large grid computes it once)."""
    monkeypatch.setattr(FourierPositions, "CACHE_BYTES", 100_000)
    positions = FourierPositions(num_bands=4)  # 9 channels of float32: 36 bytes a position
    cpu = torch.device("cpu")
    first = positions((3,), cpu).clone()
    for length in range(4, 400):
        positions((length,), cpu)
    held = [t.nbytes for t in positions._cache.values()]
    assert sum(held) <= 100_000 < 36 * sum(range(3, 400))  # what was made: 2.9 MB
    assert len(held) > 5  # many small grids, not a fixed few
    recent = positions((399,), cpu)
    assert recent is positions((399,), cpu)  # a hit, not a recomputation
    assert torch.equal(positions((3,), cpu), first)
    large = positions((4000,), cpu)  # 144,000 bytes: over the bound alone
    assert len(positions._cache) == 1 and positions((4000,), cpu) is large


@pytest.mark.parametrize("name", ["text", "cloud"])
def test_a_pack_is_made_as_it_lies_without_padding(name):
    """Three short samples packed with a long one: bytes embedded each with the position of
    its index in its own string, points each its own token. Each span equals the sample's
    tokens alone, and nothing in the pass (or its backward) is as large as the pack padded to
    its longest sample."""
    from torch.profiler import profile

    rng = np.random.default_rng(0)
    adapter, member, options = {
        "text": (get("text")(max_length=2048), lambda n: {"txt": b"x" * n}, {"dim": 8}),
        "cloud": (
            get("pointcloud")(num_points=None),
            lambda n: {"ply": encode_ply(rng.normal(size=(n, 3)))},
            {"num_bands": 4},
        ),
    }[name]
    samples = [{name: adapter.decode({"__key__": f"s{n}", **member(n)})} for n in (2, 3, 2, 2000)]
    field = collate(samples, packed=[name])[name]
    encoder = adapter.encoder(**options)
    with profile(record_shapes=True) as prof:
        packed, _ = encoder(field)
        if packed.tokens.requires_grad:
            packed.tokens.square().sum().backward()
    assert packed.offsets.tolist() == [0, 2, 5, 7, 2007] and len(packed.tokens) == 2007
    for i, sample in enumerate(samples):
        alone, _ = encoder(collate([sample])[name])
        span = packed.tokens[packed.offsets[i] : packed.offsets[i + 1]]
        assert torch.equal(span, alone[0])
    padded = 4 * 2000 * encoder.channels
    largest = max((np.prod(s) for e in prof.events() for s in e.input_shapes or [] if s), default=0)
    assert largest < padded, largest

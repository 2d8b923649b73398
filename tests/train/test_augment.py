"""Augmentation changes what it should and nothing else, on real media: flips mirror, random
resized crops cut the region they plan, audio gain / shift / noise do what they say, mixup and
cutmix mix targets as they mix inputs, SpecAugment masks the bands it is asked to; the log-mel
input is torchaudio's; weight decay leaves exactly the named kinds alone; bad settings fail at
load naming the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio
from testmedia import peak_hz
from torch import nn

from polymodal.adapters import Batch, Field, collate, get
from polymodal.datasets.synthetic import encode_audio, encode_image, encode_media, photo, tone
from polymodal.errors import ConfigError
from polymodal.perceiver.io import LogMelInput, spec_augment
from polymodal.pipelines.train.augment import mix_batch
from polymodal.pipelines.train.config import AugmentConfig, load_config
from polymodal.pipelines.train.optim import DECAY_KINDS, decay_groups, decay_kind
from polymodal.pipelines.train.tasks import make_task

JPEG = encode_image(photo(3, 96)[:, :80], quality=95)  # not square: crops are not symmetric


def _decoded(adapter, member: dict, seed: int) -> Field:
    return adapter.decode({**member, "__key__": "k"}, np.random.default_rng(seed))


def test_a_flipped_picture_is_the_mirrored_original():
    plain, flipping = get("image")(size=48), get("image")(size=48, flip=True)
    base = plain.decode({"jpg": JPEG}).on_grid()
    flips = []
    for seed in range(12):
        got = _decoded(flipping, {"jpg": JPEG}, seed).on_grid()
        flipped = bool(np.random.default_rng(seed).random() < 0.5)  # the only draw
        assert torch.equal(got, base.flip(1) if flipped else base)
        flips.append(flipped)
    assert any(flips) and not all(flips)


def test_a_clip_is_flipped_whole_or_not_at_all():
    frames = np.stack([photo(i, 64) for i in range(4)])
    mp4 = {"mp4": encode_media("mp4", frames, fps=4)}
    plain = get("video")(num_frames=4, fps=4.0, size=32)
    flipping = get("video")(num_frames=4, fps=4.0, size=32, flip=True)
    base = plain.decode(mp4).on_grid()
    seen = set()
    for seed in range(10):
        got = _decoded(flipping, mp4, seed).on_grid()
        flipped = torch.equal(got, base.flip(2))
        assert flipped or torch.equal(got, base)  # every frame, or none
        seen.add(flipped)
    assert seen == {True, False}


def test_random_resized_crop_cuts_the_planned_region():
    # the whole picture at aspect 1 is the centre crop of the whole picture
    square = encode_image(photo(5, 64), quality=95)
    whole = get("image")(size=32, crop="random", scale=(1.0, 1.0), ratio=(1.0, 1.0))
    centre = get("image")(size=32, crop_fraction=1.0)
    assert torch.equal(
        _decoded(whole, {"jpg": square}, 0).values, centre.decode({"jpg": square}).values
    )
    # smaller regions differ from sample to sample, and never from the same seed
    rrc = get("image")(size=32, crop="random", scale=(0.2, 0.5))
    crops = [_decoded(rrc, {"jpg": JPEG}, seed).values for seed in range(6)]
    assert all(c.shape == (32 * 32, 3) for c in crops)
    assert len({c.float().mean().item() for c in crops}) == 6
    assert torch.equal(crops[2], _decoded(rrc, {"jpg": JPEG}, 2).values)


def test_audio_gain_shift_and_noise_change_only_what_they_say():
    flac = {"flac": encode_audio(tone(500, 1.0, 16000), 16000, "flac")}
    base = get("audio")(duration=1.0).decode(flac).values[:, 0].float()
    louder = _decoded(get("audio")(duration=1.0, gain=(-6.0, -6.0)), flac, 0).values[:, 0]
    assert torch.allclose(louder.float(), base * 10 ** (-6 / 20), atol=1.0)
    shifted = _decoded(get("audio")(duration=1.0, shift=0.25), flac, 1)
    offset = round(np.random.default_rng(1).uniform(-0.25, 0.25) * 16000)
    assert offset and shifted.mask is not None
    real = shifted.values[:, 0].float()[shifted.mask]
    want = base[max(-offset, 0) : 16000 - max(offset, 0)]
    assert torch.equal(real, want) and int(shifted.mask.sum()) == 16000 - abs(offset)
    noisy = _decoded(get("audio")(duration=1.0, noise=0.05), flac, 2).values[:, 0].float()
    assert 0 < (noisy - base).std() < 0.05 * 32768
    assert peak_hz(noisy.numpy(), 16000) == pytest.approx(500, abs=2)


def _batch() -> Batch:
    pixels = [Field(torch.full((16, 3), i * 10, dtype=torch.uint8), grid=(4, 4)) for i in range(6)]
    sound = [Field(torch.full((20, 1), i * 100, dtype=torch.int16), grid=(20,)) for i in range(6)]
    pairs = enumerate(zip(pixels, sound, strict=True))
    return collate([{"__key__": str(i), "image": p, "audio": s} for i, (p, s) in pairs])


def test_mixup_mixes_inputs_and_targets_alike():
    batch, targets = _batch(), torch.eye(6)
    mixed, soft = mix_batch(
        batch, ["image", "audio"], targets, AugmentConfig(mixup=0.4), np.random.default_rng(0)
    )
    assert torch.allclose(soft.sum(1), torch.ones(6))
    assert (soft.max(1).values < 1).any()  # some samples are mixed with another
    # each sample's pixels and sound are mixed in the proportions of its target
    for name, step in (("image", 10.0), ("audio", 100.0)):
        own = torch.arange(6) * step
        assert torch.allclose(mixed[name].values[:, 0, 0], soft @ own, atol=1e-3)
    assert mixed.keys == batch.keys


def test_cutmix_pastes_the_share_the_targets_say():
    batch, targets = _batch(), torch.eye(6)
    mixed, soft = mix_batch(
        batch, ["image", "audio"], targets, AugmentConfig(cutmix=1.0), np.random.default_rng(3)
    )
    assert torch.allclose(soft.sum(1), torch.ones(6))
    kept = soft.diagonal()  # the share of its own elements each sample kept
    own_image = (mixed["image"].values[:, :, 0] == (torch.arange(6) * 10)[:, None]).float().mean(1)
    own_audio = (mixed["audio"].values[:, :, 0] == (torch.arange(6) * 100)[:, None]).float().mean(1)
    assert torch.allclose(kept, (own_image + own_audio) / 2, atol=1e-6)
    assert mixed["image"].values.dtype == torch.uint8  # pasted, not blended
    assert (kept < 1).any()


def test_spec_augment_masks_the_configured_bands():
    def masked(seed: int) -> torch.Tensor:
        bands = {"time_masks": 1, "time_width": 6, "freq_masks": 1, "freq_width": 4}
        return spec_augment(
            torch.ones(8, 50, 32, 1), **bands, generator=torch.Generator().manual_seed(seed)
        )

    out = masked(0)
    for sample in out[..., 0]:
        frames = (sample == 0).all(1)  # masked frames: zero in every bin
        bins = (sample == 0).all(0)
        for band, width in ((frames, 6), (bins, 4)):
            runs = torch.diff(band.int(), prepend=torch.zeros(1, dtype=torch.int)).eq(1).sum()
            assert runs == 1 and 1 <= band.sum() <= width
        assert (sample != 0).sum() == (~frames).sum() * (~bins).sum()  # nothing else changed
    assert torch.equal(out, masked(0)) and not torch.equal(out, masked(1))


def test_spec_augment_keeps_each_clips_time_bands_within_its_own_frames():
    out = spec_augment(
        torch.ones(6, 50, 8, 1),
        time_masks=2,
        time_width=10,
        freq_masks=0,
        freq_width=1,
        generator=torch.Generator().manual_seed(0),
        frames=torch.tensor([3, 50, 3, 50, 3, 50]),  # a packed batch: short clips padded
    )
    masked = (out[..., 0] == 0).all(2)  # [B, T]: frames zero in every bin
    assert not masked[::2, 3:].any() and masked[::2, :3].any(1).all()
    assert masked[1::2].any(1).all()


def test_log_mel_input_is_torchaudios_on_a_real_tone():
    flac = {"flac": encode_audio(tone(1000, 1.0, 16000), 16000, "flac")}
    field = get("audio")(duration=1.0).decode(flac)
    batch = collate([{"__key__": "t", "audio": field}])
    module = LogMelInput(sample_rate=16000, n_mels=64, hop=160, patch=(4, 16))
    ours = module.spectrogram(batch["audio"].values)[0, :, :, 0]  # [T, mels]
    reference = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=64)
    theirs = (reference(field.values[:, 0].float() / 32768) + 1e-6).log().T[: len(ours)]
    theirs = (theirs - theirs.mean()) / (theirs.std() + 1e-5)
    assert torch.allclose(ours, theirs, atol=1e-4)
    mel_of_1k = int(theirs.mean(0).argmax())
    assert int(ours.mean(0).argmax()) == mel_of_1k
    centres = torchaudio.functional.melscale_fbanks(201, 0, 8000, 64, 16000).argmax(0) * 40.0
    assert abs(centres[mel_of_1k] - 1000) < 120  # the peak is the tone's mel bin
    tokens, mask = module(batch["audio"].values, batch["audio"].grid, batch["audio"].mask)
    assert tokens.materialize().shape == (1, 25 * 4, module.channels) and mask.all()


def test_weight_decay_leaves_exactly_the_named_kinds_alone(tmp_path):
    from polymodal.pipelines.train.demo import demo_config

    config = demo_config(tmp_path, tmp_path / "run", ["audio", "video"], 4, 1, 0)
    model = make_task(config).model()
    names = dict(model.named_parameters())
    groups = decay_groups(model, [{"params": list(names.values())}], 0.1, DECAY_KINDS)
    kept = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    modules = dict(model.named_modules())
    for name, p in names.items():
        owner = modules[name.rpartition(".")[0]]
        exempt = (
            isinstance(owner, nn.LayerNorm)
            or name.endswith(".bias")
            or name == "encoder.latents"
            or name.startswith("input.padding.")
            or name == "decoder.queries.table"
        )
        assert (id(p) in kept) == exempt, name
    assert {decay_kind(model, n) for n in names} == {None, *DECAY_KINDS}
    only_biases = decay_groups(model, [{"params": list(names.values())}], 0.1, ["bias"])
    kept = {id(p) for g in only_biases if g["weight_decay"] == 0 for p in g["params"]}
    linear_biases = {
        id(p)
        for n, p in names.items()
        if n.endswith(".bias") and not isinstance(modules[n.rpartition(".")[0]], nn.LayerNorm)
    }
    assert kept == linear_biases  # a norm's shift is a "norm", not a "bias"


AUGMENTED = """
run_dir = "{run}"
[data]
train = "{data}"
num_classes = 2
[data.fields.image]
adapter = "image"
options = {{size = 32, crop = "random", scale = [0.5, 1.0], flip = true}}
[data.fields.audio]
adapter = "audio"
options = {{duration = 1.0, shift = 0.1, gain = [-3.0, 3.0], noise = 0.01}}
encoder = {{features = "logmel", time_masks = 2, freq_masks = 2}}
[augment]
mixup = 0.2
cutmix = 1.0
label_smoothing = 0.1
"""


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("augment.mixup=-1", r"augment\.mixup: must be at least 0"),
        ("augment.probability=0", r"augment\.probability: must be in \(0, 1\]"),
        ("augment.label_smoothing=1", r"augment\.label_smoothing: must be in \[0, 1\)"),
        ("task=autoencode", r"augment\.mixup: only classification tasks"),
        ("data.fields.image.options.scale=[0.5, 2.0]", r"data\.fields\.image\.options: scale"),
        (
            "data.fields.image.options.crop=center",
            r"data\.fields\.image\.options: scale .* crop='random'",
        ),
        ("data.fields.audio.options.gain=[6.0, -6.0]", r"data\.fields\.audio\.options: gain"),
        ("data.fields.audio.options.noise=2", r"data\.fields\.audio\.options: noise"),
        ("data.fields.audio.encoder.features=mfcc", r"data\.fields\.audio\.encoder: features"),
        ("data.fields.audio.encoder.patch=[4, 5]", r"data\.fields\.audio\.encoder: patch"),
        ("optim.no_decay=['weights']", r"optim\.no_decay: unknown kinds \['weights'\]"),
        ("optim.ema=1.5", r"optim\.ema: must be in \[0, 1\)"),
    ],
)
def test_bad_augmentation_settings_name_the_field(tmp_path, override, message):
    path = tmp_path / "c.toml"
    path.write_text(AUGMENTED.format(run=tmp_path / "run", data=tmp_path))
    load_config(path)  # the table itself is valid
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_text_fields_cannot_be_mixed(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        f'run_dir = "{tmp_path / "run"}"\n[data]\ntrain = "{tmp_path}"\n'
        '[data.fields.text]\nadapter = "text"\n[augment]\nmixup = 0.2\n'
    )
    with pytest.raises(ConfigError, match=r"augment\.mixup: data\.fields\.text \(text\) cannot"):
        load_config(path)


def test_a_video_stem_runs_each_frame_through_the_image_stem():
    frames = np.stack([photo(i, 64) for i in range(3)])
    clip = get("video")(num_frames=3, fps=8.0, size=32).decode(
        {"mp4": encode_media("mp4", frames, fps=8)}
    )
    batch = collate([{"__key__": "a", "video": clip}])
    torch.manual_seed(0)
    video = get("video")(num_frames=3, size=32).encoder(stem=True, stem_channels=8).eval()
    tokens, mask = video(batch["video"])
    image = get("image")(size=32).encoder(stem=True, stem_channels=8).eval()
    image.load_state_dict(video.state_dict())
    per_frame = clip.values.view(3, 32 * 32, 3)
    cells = tokens.shape[1] // 3
    for t in range(3):
        alone, _ = image(Field(per_frame[t][None], grid=(32, 32)))
        # the same features (the first 8 channels); positions differ: (T, h, w) against (h, w)
        assert torch.allclose(tokens[0, t * cells : (t + 1) * cells, :8], alone[0, :, :8])
    assert mask.shape == tokens.shape[:2] and mask.all()

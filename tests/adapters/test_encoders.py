"""The device half of the adapters: decoded, collated fields → Perceiver input tokens."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polymodal.adapters import collate, get
from polymodal.datasets.synthetic import (
    counter_frames,
    encode_image,
    encode_media,
    encode_ply,
    photo,
    tone,
)
from polymodal.perceiver import EncoderConfig, MultimodalInput, Perceiver


def test_every_modality_feeds_one_multimodal_perceiver():
    rng = np.random.default_rng(0)
    adapters = {
        "video": get("video")(num_frames=4, fps=None, size=16),
        "audio": get("audio")(duration=0.5),
        "image": get("image")(size=16),
        "cloud": get("pointcloud")(num_points=32),
        "text": get("text")(max_length=24),
        "label": get("label")(num_classes=3),
    }
    samples = []
    for i in range(2):
        clip = encode_media("mp4", counter_frames(8, 32, 32), fps=8, audio=tone(300 + 200 * i, 1.0))
        raw = {
            "__key__": f"s{i}",
            "mp4": clip,
            "jpg": encode_image(photo(i, 40)),
            "ply": encode_ply(rng.normal(size=(50, 3))),
            "txt": b"hello" * (i + 1),
            "cls": str(i).encode(),
        }
        samples.append(
            {"__key__": raw["__key__"], **{name: a.decode(raw) for name, a in adapters.items()}}
        )
    batch = collate(samples)
    encoders = {
        "video": adapters["video"].encoder(patch=(1, 4, 4), num_bands=4),
        "audio": adapters["audio"].encoder(samples_per_patch=100, num_bands=4),
        "image": adapters["image"].encoder(patch_size=4, num_bands=4),
        "cloud": adapters["cloud"].encoder(num_bands=4),
        "text": adapters["text"].encoder(dim=16),
        "label": adapters["label"].encoder(),
    }
    tokens_of = {name: enc(batch[name]) for name, enc in encoders.items()}
    assert tokens_of["video"][0].shape == (2, 4 * 4 * 4, 4 * 4 * 3 + 3 + 3 * 2 * 4)
    assert tokens_of["audio"][0].shape == (2, 80, 100 + 1 + 2 * 4)
    assert tokens_of["text"][1][0].sum() == 5 and tokens_of["text"][1][1].sum() == 10
    assert tokens_of["label"][0][:, 0].argmax(-1).tolist() == [0, 1]
    inputs = MultimodalInput(inputs=encoders)
    config = EncoderConfig(num_latents=8, latent_dim=32, num_self_attends_per_block=1, self_heads=2)
    model = Perceiver(input_channels=inputs.channels, num_classes=3, encoder=config, input=inputs)
    logits = model({name: (batch[name],) for name in encoders})
    assert logits.shape == (2, 3)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_an_adapter_without_an_encoder_says_so():
    from polymodal.adapters import Adapter

    class Plain(Adapter):
        extensions = ("bin",)

    with pytest.raises(NotImplementedError, match="Plain has no model-side encoder"):
        Plain().encoder()
    with pytest.raises(ValueError, match="num_classes"):
        get("label")().encoder()

"""Hugging Face import: randomly initialised small models of each supported kind, built here
(no download), and our converted modules give the same outputs."""

import pytest
import torch

from polymodal.perceiver.models import (
    language_perceiver,
    multimodal_perceiver,
    optical_flow_perceiver,
    vision_perceiver_conv,
    vision_perceiver_fourier,
    vision_perceiver_learned,
)

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is needed")
from polymodal.perceiver.hf import from_hf  # noqa: E402


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_presets_have_the_reference_parameter_counts():
    with torch.device("meta"):
        assert _count(language_perceiver()) == 201_108_230
        assert _count(vision_perceiver_fourier()) == 48_440_627
        config = transformers.PerceiverConfig(
            num_latents=784,
            d_latents=512,
            num_blocks=1,
            num_self_attends_per_block=8,
            num_self_attention_heads=8,
            num_cross_attention_heads=1,
            num_labels=700,
            image_size=224,
        )
        reference = transformers.PerceiverForMultimodalAutoencoding(config)
        assert _count(multimodal_perceiver()) == _count(reference) == 19_858_855
        config = transformers.PerceiverConfig(
            num_latents=2048,
            d_latents=512,
            num_blocks=1,
            num_self_attends_per_block=24,
            num_self_attention_heads=16,
            num_cross_attention_heads=1,
            train_size=[368, 496],
        )
        reference = transformers.PerceiverForOpticalFlow(config)
        assert _count(optical_flow_perceiver()) == _count(reference) == 41_057_134


@pytest.mark.parametrize(
    ("ours", "theirs", "d_model"),
    [
        (vision_perceiver_learned, "PerceiverForImageClassificationLearned", 512),
        (vision_perceiver_conv, "PerceiverForImageClassificationConvProcessing", 322),
    ],
)
def test_other_vision_presets_match_hugging_face_builds(ours, theirs, d_model):
    config = transformers.PerceiverConfig(
        num_latents=512,
        d_latents=1024,
        d_model=d_model,
        num_blocks=8,
        num_self_attends_per_block=6,
        num_self_attention_heads=8,
        num_cross_attention_heads=1,
        num_labels=1000,
        image_size=224,
    )
    with torch.device("meta"):
        assert _count(ours()) == _count(getattr(transformers, theirs)(config))


def test_masked_lm_parity():
    torch.manual_seed(0)
    config = transformers.PerceiverConfig(
        num_latents=8,
        d_latents=32,
        d_model=16,
        num_blocks=1,
        num_self_attends_per_block=2,
        num_self_attention_heads=2,
        num_cross_attention_heads=2,
        qk_channels=16,
        v_channels=32,
        max_position_embeddings=64,
    )
    theirs = transformers.PerceiverForMaskedLM(config).eval()
    ours = from_hf(theirs)
    from_state = from_hf(theirs.state_dict(), theirs.config, "PerceiverForMaskedLM")
    ids = torch.randint(0, 262, (3, 21))
    attention_mask = torch.ones(3, 21, dtype=torch.long)
    attention_mask[1, 15:] = 0
    with torch.no_grad():
        expected = theirs(inputs=ids, attention_mask=attention_mask).logits
        got = ours(ids, attention_mask)
    assert got.shape == (3, 21, 262)  # only the positions asked for, not all 64
    assert torch.allclose(got, expected[:, :21], atol=1e-4)
    with torch.no_grad():
        assert torch.equal(from_state(ids, attention_mask), got)


@pytest.mark.parametrize(
    ("kind", "d_model", "shape"),
    [
        ("PerceiverForImageClassificationFourier", 261, (12, 16)),
        ("PerceiverForImageClassificationLearned", 512, (8, 8)),
        ("PerceiverForImageClassificationConvProcessing", 322, (32, 32)),
    ],
)
def test_image_classifier_parity(kind, d_model, shape):
    torch.manual_seed(0)
    config = transformers.PerceiverConfig(
        num_latents=8,
        d_latents=32,
        d_model=d_model,
        num_blocks=2,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        num_labels=7,
        image_size=shape[0],
    )
    theirs = getattr(transformers, kind)(config).eval()
    ours = from_hf(theirs)
    pixels = torch.randn(2, 3, *shape)
    with torch.no_grad():
        assert torch.allclose(ours(pixels), theirs(inputs=pixels).logits, atol=1e-4)


def test_multimodal_autoencoder_parity_with_subsampled_and_chunked_queries():
    torch.manual_seed(0)
    config = transformers.PerceiverConfig(
        num_latents=8,
        d_latents=32,
        num_blocks=1,
        num_self_attends_per_block=2,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        num_labels=5,
        image_size=16,
        num_frames=2,
        audio_samples_per_frame=64,
        samples_per_patch=16,
        output_shape=[1, 2, 16, 16],
        output_num_channels=24,
        _label_trainable_num_channels=40,
    )
    theirs = transformers.PerceiverForMultimodalAutoencoding(config).eval()
    ours = from_hf(theirs)
    inputs = {
        "image": torch.randn(2, 2, 3, 16, 16),
        "audio": torch.randn(2, 128, 1),
        "label": torch.zeros(2, 5),
    }
    points = {"image": torch.arange(10, 60), "audio": torch.arange(0, 6), "label": None}
    with torch.no_grad():
        expected = theirs(inputs=inputs, subsampled_output_points=points).logits
        got = ours(inputs, points)
        chunked = ours(inputs, points, chunk_size=7)
    assert {k: v.shape for k, v in got.items()} == {
        "audio": (2, 96),
        "image": (2, 50, 3),
        "label": (2, 5),
    }
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-4), name
        assert torch.allclose(chunked[name], got[name], atol=1e-5), name


def test_unsupported_models_are_named():
    with pytest.raises(ValueError, match="from_hf supports"):
        from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs its config"):
        from_hf({"x": torch.zeros(1)})

"""Hugging Face import: randomly initialised small models of each supported kind, built here
(no download), and our converted modules give the same outputs."""

import pytest
import torch

from polymodal.perceiver.models import (
    language_perceiver,
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
    ids = torch.randint(0, 262, (3, 21))
    attention_mask = torch.ones(3, 21, dtype=torch.long)
    attention_mask[1, 15:] = 0
    with torch.no_grad():
        expected = theirs(inputs=ids, attention_mask=attention_mask).logits
        got = ours(ids, attention_mask)
    assert got.shape == (3, 21, 262)  # only the positions asked for, not all 64
    assert torch.allclose(got, expected[:, :21], atol=1e-4)


def test_image_classifier_fourier_parity():
    torch.manual_seed(0)
    config = transformers.PerceiverConfig(
        num_latents=8,
        d_latents=32,
        d_model=261,
        num_blocks=2,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        num_labels=7,
    )
    theirs = transformers.PerceiverForImageClassificationFourier(config).eval()
    ours = from_hf(theirs)
    pixels = torch.randn(2, 3, 12, 16)
    with torch.no_grad():
        assert torch.allclose(ours(pixels), theirs(inputs=pixels).logits, atol=1e-4)


@pytest.mark.parametrize(
    ("kind", "d_model", "size"),
    [
        ("PerceiverForImageClassificationLearned", 512, 8),
        ("PerceiverForImageClassificationConvProcessing", 322, 32),
    ],
)
def test_image_classifier_learned_and_conv_parity(kind, d_model, size):
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
        image_size=size,
    )
    theirs = getattr(transformers, kind)(config).eval()
    ours = from_hf(theirs)
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(ours(pixels), theirs(inputs=pixels).logits, atol=1e-4)


def test_unsupported_models_are_named():
    with pytest.raises(ValueError, match="from_hf supports"):
        from_hf(torch.nn.Linear(2, 2))

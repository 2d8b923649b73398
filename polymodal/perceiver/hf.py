"""Import Hugging Face Perceiver checkpoints into our modules.

`from_hf(model)` takes a `transformers` Perceiver model (its `config` and `state_dict()`) and
returns a drop-in `nn.Module` built from our blocks: its `forward` takes the tensors the
Hugging Face model takes and returns its logits. This module imports only torch: the
`transformers` model is read through its attributes, never imported here.

Supported: `PerceiverForMaskedLM` (`deepmind/language-perceiver`), the three image
classifiers `PerceiverForImageClassificationFourier`, `...Learned` and `...ConvProcessing`
(`deepmind/vision-perceiver-fourier`, `-learned`, `-conv`), `PerceiverForOpticalFlow`
(`deepmind/optical-flow-perceiver`) and `PerceiverForMultimodalAutoencoding`
(`deepmind/multimodal-perceiver`).

Each kind's parameter names map to ours by one table of rules (`RULES`), used both ways: a
converted module keeps its kind and Hugging Face config (`hf_kind`, `hf_config`), so
`polymodal.perceiver.pretrained.to_hf` renames a fresh transformers model's own keys by the
same rules to know where each of our tensors goes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .encoder import EncoderConfig
from .io import FramePairInput, GridInput, ImageStemInput, token_width
from .models import (
    MaskedLanguageModel,
    MultimodalAutoencoder,
    OpticalFlow,
    Perceiver,
    multimodal_perceiver,
)

# Hugging Face's PerceiverLayer parameter names → ours, inside one layer. `{q_norm}` is the
# query norm: `q_norm` in a cross-attention, `norm` in a self-attention.
_LAYER_RULES = [
    (r"attention\.self\.layernorm1\.", "{q_norm}."),
    (r"attention\.self\.layernorm2\.", "kv_norm."),
    (r"attention\.self\.(?P<proj>query|key|value)\.", r"attention.\g<proj>."),
    (r"attention\.output\.dense\.", "attention.output."),
    (r"layernorm\.", "mlp_norm."),
    (r"mlp\.(?P<dense>dense[12])\.", r"mlp.\g<dense>."),
]


def _layer(hf_prefix: str, our_prefix: str, cross: bool) -> list[tuple[str, str]]:
    q_norm = "q_norm" if cross else "norm"
    return [
        (hf_prefix + pattern, our_prefix + repl.format(q_norm=q_norm))
        for pattern, repl in _LAYER_RULES
    ]


_ENCODER_RULES = [
    (r"perceiver\.embeddings\.latents$", "encoder.latents"),
    *_layer(r"perceiver\.encoder\.cross_attention\.", "encoder.cross_attends.0.", cross=True),
    *_layer(
        r"perceiver\.encoder\.self_attends\.(?P<i>\d+)\.", r"encoder.block.\g<i>.", cross=False
    ),
]


def convert_state_dict(
    state: dict[str, torch.Tensor], rules: list[tuple[str, str]]
) -> dict[str, torch.Tensor]:
    """Rename every key by the first rule that matches it; an unmatched key is an error (a
    checkpoint we would silently load only in part)."""
    return {rename(key, rules): value for key, value in state.items()}


def encoder_config(config: Any, input_channels: int) -> EncoderConfig:
    """Our encoder configuration from a Hugging Face `PerceiverConfig`.

    A cross-attention without `qk_channels` takes its width from the inputs (`"kv"`, the
    default) or the latents (`"q"`), as `transformers` does.
    """
    cross_qk = config.qk_channels
    if cross_qk is None:
        kv = config.cross_attention_shape_for_attention == "kv"
        cross_qk = input_channels if kv else config.d_latents
    return EncoderConfig(
        num_latents=config.num_latents,
        latent_dim=config.d_latents,
        num_blocks=config.num_blocks,
        num_self_attends_per_block=config.num_self_attends_per_block,
        cross_heads=config.num_cross_attention_heads,
        self_heads=config.num_self_attention_heads,
        cross_qk_channels=cross_qk,
        cross_v_channels=config.v_channels or cross_qk,
        self_qk_channels=config.qk_channels,
        self_v_channels=config.v_channels,
        cross_widening_factor=config.cross_attention_widening_factor,
        self_widening_factor=config.self_attention_widening_factor,
    )


class ImageClassifier(nn.Module):
    """Drop-in for a Hugging Face Perceiver image classifier: `inputs` `[B, C, H, W]`
    (normalised pixels, as its image processor makes them) → logits `[B, num_labels]`."""

    def __init__(self, model: Perceiver) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = inputs.shape
        values = inputs.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        return self.model(values, (height, width))


class MaskedLM(nn.Module):
    """Drop-in for `PerceiverForMaskedLM`: `inputs` byte ids `[B, L]` and `attention_mask`
    `[B, L]` (1 = real) → logits `[B, L, vocab]` (Hugging Face's are `[B, 2048, vocab]`;
    the first `L` agree)."""

    def __init__(self, model: MaskedLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        mask = attention_mask.bool() if attention_mask is not None else None
        return self.model(inputs, mask)


_MASKED_LM_RULES = [
    *_ENCODER_RULES,
    (r"perceiver\.input_preprocessor\.embeddings\.", "input.embeddings."),
    (r"perceiver\.input_preprocessor\.position_embeddings\.weight$", "input.positions.table"),
    (
        r"perceiver\.decoder\.output_position_encodings\.position_embeddings$",
        "decoder.queries.table",
    ),
    *_layer(
        r"perceiver\.decoder\.decoding_cross_attention\.",
        "decoder.cross_attention.",
        cross=True,
    ),
    (r"embedding_decoder\.bias$", "bias"),
]


def _masked_lm(model: nn.Module) -> MaskedLM:
    config: Any = model.config
    ours = MaskedLanguageModel(
        encoder=encoder_config(config, config.d_model),
        vocab_size=config.vocab_size,
        dim=config.d_model,
        max_length=config.max_position_embeddings,
    )
    ours.load_state_dict(convert_state_dict(model.state_dict(), _MASKED_LM_RULES))
    return MaskedLM(ours)


_CLASSIFIER_RULES = [
    (
        r"perceiver\.decoder\.decoder\.output_position_encodings\.position_embeddings$",
        "decoder.queries.table",
    ),
    *_layer(
        r"perceiver\.decoder\.decoder\.decoding_cross_attention\.",
        "decoder.cross_attention.",
        cross=True,
    ),
    (r"perceiver\.decoder\.decoder\.final_layer\.", "decoder.final."),
    (r"perceiver\.input_preprocessor\.(convnet_1x1|convnet\.conv)\.", "input.conv."),
    (r"perceiver\.input_preprocessor\.convnet\.batchnorm\.", "input.batchnorm."),
    (
        r"perceiver\.input_preprocessor\.position_embeddings\.position_embeddings$",
        "input.positions.table",
    ),
    (r"perceiver\.input_preprocessor\.positions_projection\.", "input.projection."),
]


def _image_classifier(model: nn.Module, stem: nn.Module) -> ImageClassifier:
    """Any of the three image classifiers, given our version of its (fixed) preprocessing."""
    config: Any = model.config
    ours = Perceiver(
        input_channels=token_width(stem),
        num_classes=config.num_labels,
        encoder=encoder_config(config, token_width(stem)),
        input=stem,
    )
    ours.load_state_dict(convert_state_dict(model.state_dict(), RULES[type_name(model)]))
    return ImageClassifier(ours)


# transformers fixes each classifier's preprocessing in code; these are the same choices
def _image_fourier(model: nn.Module) -> ImageClassifier:
    return _image_classifier(
        model,
        GridInput(
            channels=3, patch=(1, 1), num_bands=64, max_resolution=(224, 224), scale=1.0, offset=0.0
        ),
    )


def _image_learned(model: nn.Module) -> ImageClassifier:
    config: Any = model.config
    positions = config.image_size**2
    stem = ImageStemInput(
        kind="conv1x1", out_channels=256, learned_positions=positions, scale=1.0, offset=0.0
    )
    return _image_classifier(model, stem)


def _image_conv(model: nn.Module) -> ImageClassifier:
    stem = ImageStemInput(
        kind="conv", out_channels=64, max_resolution=(56, 56), scale=1.0, offset=0.0
    )
    return _image_classifier(model, stem)


class MultimodalAutoencoding(nn.Module):
    """Drop-in for `PerceiverForMultimodalAutoencoding`: `inputs` = {"image": `[B, T, C, H, W]`,
    "audio": `[B, L, 1]`, "label": `[B, K]`} and optional `subsampled_output_points` per
    modality → {"audio": `[B, n·16]`, "image": `[B, n, 3]`, "label": `[B, K]`}."""

    def __init__(self, model: MultimodalAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        subsampled_output_points: dict[str, torch.Tensor | None] | None = None,
        chunk_size: int | None = None,
    ) -> dict[str, torch.Tensor]:
        video, audio = inputs["image"], inputs["audio"]
        batch, frames, channels, height, width = video.shape
        pixels = video.permute(0, 1, 3, 4, 2).reshape(batch, -1, channels)
        fields = {
            "image": (pixels, (frames, height, width), None),
            "audio": (audio, (audio.shape[1],), None),
            "label": (inputs["label"][:, None, :], None),
        }
        out = self.model(fields, subsampled_output_points, chunk_size)
        return {
            "audio": out["audio"].reshape(batch, -1),
            "image": out["image"],
            "label": out["label"][:, 0],
        }


_MULTIMODAL_RULES = [
    *_ENCODER_RULES,
    (r"perceiver\.input_preprocessor\.padding\.", "input.padding."),
    (r"perceiver\.input_preprocessor\.mask\.", "input.mask_tokens."),
    (
        r"perceiver\.decoder\.modalities\.label\.decoder\.output_position_encodings\."
        r"position_embeddings$",
        "decoder.queries.label.table",
    ),
    *_layer(
        r"perceiver\.decoder\.decoder\.decoding_cross_attention\.",
        "decoder.cross_attention.",
        cross=True,
    ),
    (r"perceiver\.decoder\.decoder\.final_layer\.", "decoder.final."),
    (r"perceiver\.decoder\.padding\.", "decoder.padding."),
    (r"perceiver\.output_postprocessor\.modalities\.(?P<m>\w+)\.classifier\.", r"heads.\g<m>."),
]


def _multimodal(model: nn.Module) -> MultimodalAutoencoding:
    c: Any = model.config
    ours = multimodal_perceiver(
        c.num_labels,
        c.num_frames,
        c.image_size,
        c.audio_samples_per_frame,
        c.samples_per_patch,
        c.num_latents,
        c.d_latents,
        c.num_self_attends_per_block,
        c.num_self_attention_heads,
        c.output_num_channels,
        c._label_trainable_num_channels,
    )
    state = convert_state_dict(model.state_dict(), _MULTIMODAL_RULES)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict({k: v.reshape(shapes[k]) for k, v in state.items()})  # [1, C] → [C]
    return MultimodalAutoencoding(ours)


class OpticalFlowModel(nn.Module):
    """Drop-in for `PerceiverForOpticalFlow`: `inputs` `[B, 2, 27, H, W]` (each pixel's 3×3
    neighbourhood in both frames, as its processor makes them) → flow `[B, H, W, 2]`."""

    def __init__(self, model: OpticalFlow) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        batch, frames, channels, height, width = inputs.shape
        values = inputs.permute(0, 1, 3, 4, 2).reshape(batch, -1, channels)
        return self.model(values, (frames, height, width))


_OPTICAL_FLOW_RULES = [
    *_ENCODER_RULES,
    (r"perceiver\.input_preprocessor\.conv_after_patches\.", "input.linear."),
    *_layer(
        r"perceiver\.decoder\.decoder\.decoding_cross_attention\.", "cross_attention.", cross=True
    ),
    (r"perceiver\.decoder\.decoder\.final_layer\.", "final."),
]


def _optical_flow(model: nn.Module) -> OpticalFlowModel:
    config: Any = model.config
    inputs = FramePairInput(
        in_channels=27, out_channels=64, num_bands=64, max_resolution=tuple(config.train_size)
    )
    ours = OpticalFlow(inputs=inputs, encoder=encoder_config(config, inputs.channels))
    ours.load_state_dict(convert_state_dict(model.state_dict(), _OPTICAL_FLOW_RULES))
    return OpticalFlowModel(ours)


_CONVERTERS = {
    "PerceiverForMaskedLM": _masked_lm,
    "PerceiverForImageClassificationFourier": _image_fourier,
    "PerceiverForImageClassificationLearned": _image_learned,
    "PerceiverForImageClassificationConvProcessing": _image_conv,
    "PerceiverForOpticalFlow": _optical_flow,
    "PerceiverForMultimodalAutoencoding": _multimodal,
}
# Hugging Face parameter name → ours, per kind: the converters and `to_hf` read the same rules.
RULES = {
    "PerceiverForMaskedLM": _MASKED_LM_RULES,
    **dict.fromkeys(
        [
            "PerceiverForImageClassificationFourier",
            "PerceiverForImageClassificationLearned",
            "PerceiverForImageClassificationConvProcessing",
        ],
        _ENCODER_RULES + _CLASSIFIER_RULES,
    ),
    "PerceiverForOpticalFlow": _OPTICAL_FLOW_RULES,
    "PerceiverForMultimodalAutoencoding": _MULTIMODAL_RULES,
}
SUPPORTED = sorted(_CONVERTERS)


def type_name(model: Any) -> str:
    """The transformers class name of a model, or of a state dict read like one."""
    return getattr(model, "kind", None) or type(model).__name__


def rename(key: str, rules: list[tuple[str, str]]) -> str:
    """Our name for one Hugging Face parameter name (`KeyError` when no rule maps it)."""
    for pattern, repl in rules:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    raise KeyError(f"no rule maps the Hugging Face parameter {key!r}")


class _Checkpoint:
    """A state dict with its config and kind, read like a model by the converters."""

    def __init__(self, state: Mapping[str, torch.Tensor], config: Any, kind: str) -> None:
        self.state, self.config, self.kind = dict(state), config, kind

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state


def from_hf(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    config: Any = None,
    kind: str | None = None,
) -> nn.Module:
    """Our drop-in module for a Hugging Face Perceiver model, weights included.

    A bare state dict needs its `PerceiverConfig` and the model class name as `kind`
    (e.g. `"PerceiverForMaskedLM"`).
    """
    if isinstance(model_or_state_dict, Mapping):
        if config is None or kind is None:
            raise ValueError("a state dict needs its config and kind (the model's class name)")
        source: Any = _Checkpoint(model_or_state_dict, config, kind)
    else:
        source, kind = model_or_state_dict, type(model_or_state_dict).__name__
    if kind not in _CONVERTERS:
        raise ValueError(f"from_hf supports {SUPPORTED}, not {kind}")
    module: Any = _CONVERTERS[kind](source).eval()
    module.hf_kind = kind  # what to_hf converts back to
    module.hf_config = source.config.to_dict()
    return module

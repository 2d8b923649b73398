"""The Perceiver / Perceiver IO model library; it imports only torch (see DESIGN.md).

Blocks (`attention`), positions (`position`), the encoder, decoders and query providers,
model-side input adapters (`io`) and the models that put them together.
"""

from typing import Any

from .attention import Attention, CrossAttention, SelfAttention
from .decoder import (
    BasicDecoder,
    ClassificationDecoder,
    FourierQueries,
    LearnedQueries,
    MultimodalDecoder,
)
from .encoder import EncoderConfig, PerceiverEncoder
from .io import (
    FramePairInput,
    GridInput,
    ImageStemInput,
    LabelInput,
    LogMelInput,
    MultimodalInput,
    PointCloudInput,
    TextInput,
)
from .models import (
    ContrastivePerceiver,
    FusionPerceiver,
    MaskedLanguageModel,
    MultimodalAutoencoder,
    OpticalFlow,
    Perceiver,
    PerceiverIO,
    language_perceiver,
    multimodal_perceiver,
    optical_flow_perceiver,
    vision_perceiver_conv,
    vision_perceiver_fourier,
    vision_perceiver_learned,
)
from .position import FourierPositions, LearnedPositions, fourier_features, grid_positions


def from_hf(model_or_state_dict: Any, config: Any = None, kind: str | None = None) -> Any:
    """Our drop-in module for a Hugging Face Perceiver model, or for a state dict with its
    `PerceiverConfig` and class name; see `polymodal.perceiver.hf`."""
    from .hf import from_hf as convert

    return convert(model_or_state_dict, config, kind)


def from_pretrained(name_or_path: str) -> Any:
    """Our module for a DeepMind checkpoint on the Hub or a `save_pretrained` folder; see
    `polymodal.perceiver.pretrained` (needs the hf extra)."""
    from .pretrained import from_pretrained as load

    return load(name_or_path)


def to_hf(module: Any) -> Any:
    """The transformers model of a module `from_hf` / `from_pretrained` made, with its current
    weights; see `polymodal.perceiver.pretrained`."""
    from .pretrained import to_hf as convert

    return convert(module)


def save_pretrained(module: Any, folder: str) -> Any:
    """Write such a module as a transformers `save_pretrained` folder."""
    from .pretrained import save_pretrained as save

    return save(module, folder)


__all__ = [
    "Attention",
    "BasicDecoder",
    "ClassificationDecoder",
    "ContrastivePerceiver",
    "CrossAttention",
    "EncoderConfig",
    "FourierPositions",
    "FourierQueries",
    "FramePairInput",
    "FusionPerceiver",
    "GridInput",
    "ImageStemInput",
    "LabelInput",
    "LearnedPositions",
    "LearnedQueries",
    "LogMelInput",
    "MaskedLanguageModel",
    "MultimodalAutoencoder",
    "MultimodalDecoder",
    "MultimodalInput",
    "OpticalFlow",
    "Perceiver",
    "PerceiverEncoder",
    "PerceiverIO",
    "PointCloudInput",
    "SelfAttention",
    "TextInput",
    "fourier_features",
    "from_hf",
    "from_pretrained",
    "grid_positions",
    "language_perceiver",
    "multimodal_perceiver",
    "optical_flow_perceiver",
    "save_pretrained",
    "to_hf",
    "vision_perceiver_conv",
    "vision_perceiver_fourier",
    "vision_perceiver_learned",
]

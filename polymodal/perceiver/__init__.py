"""The Perceiver / Perceiver IO model library; it imports only torch (see DESIGN.md).

Blocks (`attention`), positions (`position`), the encoder, decoders and query providers,
model-side input adapters (`io`) and the models that put them together.
"""

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
    MultimodalInput,
    PointCloudInput,
    TextInput,
)
from .models import (
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


def from_hf(model: object) -> object:
    """Our drop-in module for a Hugging Face Perceiver model; see `polymodal.perceiver.hf`."""
    from .hf import from_hf as convert

    return convert(model)


__all__ = [
    "Attention",
    "BasicDecoder",
    "ClassificationDecoder",
    "CrossAttention",
    "EncoderConfig",
    "FourierPositions",
    "FourierQueries",
    "FramePairInput",
    "GridInput",
    "ImageStemInput",
    "LabelInput",
    "LearnedPositions",
    "LearnedQueries",
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
    "grid_positions",
    "language_perceiver",
    "multimodal_perceiver",
    "optical_flow_perceiver",
    "vision_perceiver_conv",
    "vision_perceiver_fourier",
    "vision_perceiver_learned",
]

"""The Perceiver / Perceiver IO model library; it imports only torch (see DESIGN.md).

Blocks (`attention`), positions (`position`), the encoder, decoders and query providers,
model-side input adapters (`io`) and the models that put them together.
"""

from .attention import Attention, CrossAttention, SelfAttention
from .decoder import BasicDecoder, ClassificationDecoder, FourierQueries, LearnedQueries
from .encoder import EncoderConfig, PerceiverEncoder
from .io import GridInput, MultimodalInput, PointCloudInput, TextInput
from .models import Perceiver, PerceiverIO
from .position import FourierPositions, LearnedPositions, fourier_features, grid_positions

__all__ = [
    "Attention",
    "BasicDecoder",
    "ClassificationDecoder",
    "CrossAttention",
    "EncoderConfig",
    "FourierPositions",
    "FourierQueries",
    "GridInput",
    "LearnedPositions",
    "LearnedQueries",
    "MultimodalInput",
    "Perceiver",
    "PerceiverEncoder",
    "PerceiverIO",
    "PointCloudInput",
    "SelfAttention",
    "TextInput",
    "fourier_features",
    "grid_positions",
]

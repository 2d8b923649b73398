"""Perceiver IO and Perceiver: an input adapter, the encoder, a decoder.

`PerceiverIO(encoder_config, decoder, input=adapter)` maps what the adapter takes to what the
decoder gives; `Perceiver` is the classifier (one learned query decoded to logits).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .decoder import ClassificationDecoder
from .encoder import EncoderConfig, PerceiverEncoder


class PerceiverIO(nn.Module):
    """Encoder + decoder, with an optional input adapter in front.

    With an adapter, `forward(*adapter_inputs, **decoder_options)`; without, `forward(tokens,
    mask=None, **decoder_options)`. Decoder options are those of the decoder (`indices` for
    query subsampling, `chunk_size` for chunked decoding).
    """

    def __init__(
        self,
        input_channels: int,
        encoder: EncoderConfig,
        decoder: nn.Module,
        input: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.input = input
        self.encoder = PerceiverEncoder(input_channels, encoder)
        self.decoder = decoder

    def encode(self, *inputs: Any) -> torch.Tensor:
        if self.input is not None:
            tokens, mask = self.input(*inputs)[:2]
        else:
            tokens, mask = inputs[0], inputs[1] if len(inputs) > 1 else None
        return self.encoder(tokens, mask)

    def forward(self, *inputs: Any, **decoder_options: Any) -> torch.Tensor:
        return self.decoder(self.encode(*inputs), **decoder_options)


class Perceiver(PerceiverIO):
    """The Perceiver classifier: `forward(...)` → logits `[B, num_classes]`."""

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        encoder: EncoderConfig,
        input: nn.Module | None = None,
        **decoder_options: Any,
    ) -> None:
        decoder = ClassificationDecoder(encoder.latent_dim, num_classes, **decoder_options)
        super().__init__(input_channels, encoder, decoder, input)

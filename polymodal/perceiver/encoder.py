"""The Perceiver encoder: latents cross-attend to the inputs, then think in latent space.

`num_blocks` repeats of a block of `num_self_attends_per_block` latent self-attentions, with the
block's weights shared across repeats. The first `num_cross_attends` repeats start with a
cross-attention to the inputs; the first has its own weights and the later ones share one set,
as in the original Perceiver (`num_cross_attends = num_blocks`); Perceiver IO cross-attends
once (`num_cross_attends = 1`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import CrossAttention, PackedTokens, SelfAttention


@dataclass
class EncoderConfig:
    num_latents: int = 256
    latent_dim: int = 512
    num_blocks: int = 1
    num_self_attends_per_block: int = 6
    num_cross_attends: int = 1
    cross_heads: int = 1
    self_heads: int = 8
    cross_qk_channels: int | None = None
    cross_v_channels: int | None = None
    self_qk_channels: int | None = None
    self_v_channels: int | None = None
    cross_widening_factor: int = 1
    self_widening_factor: int = 1
    dropout: float = 0.0
    gradient_checkpointing: bool = False


class PerceiverEncoder(nn.Module):
    """Inputs `[B, M, input_dim]` (+ mask `[B, M]`), or packed (`PackedTokens`, no padding)
    → latents `[B, num_latents, latent_dim]`."""

    def __init__(self, *, input_dim: int, config: EncoderConfig) -> None:
        super().__init__()
        c = self.config = config
        if not 1 <= c.num_cross_attends <= c.num_blocks:
            raise ValueError("num_cross_attends must be between 1 and num_blocks")
        self.latents = nn.Parameter(torch.randn(c.num_latents, c.latent_dim) * 0.02)

        def cross() -> CrossAttention:
            return CrossAttention(
                q_dim=c.latent_dim,
                kv_dim=input_dim,
                num_heads=c.cross_heads,
                qk_channels=c.cross_qk_channels,
                v_channels=c.cross_v_channels,
                widening_factor=c.cross_widening_factor,
                dropout=c.dropout,
            )

        self.cross_attends = nn.ModuleList([cross()])
        if c.num_cross_attends > 1:
            self.cross_attends.append(cross())  # shared by every later cross-attend
        self.block = nn.ModuleList(
            SelfAttention(
                dim=c.latent_dim,
                num_heads=c.self_heads,
                qk_channels=c.self_qk_channels,
                v_channels=c.self_v_channels,
                widening_factor=c.self_widening_factor,
                dropout=c.dropout,
            )
            for _ in range(c.num_self_attends_per_block)
        )

    def forward(
        self, inputs: torch.Tensor | PackedTokens, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = inputs.batch_size if isinstance(inputs, PackedTokens) else inputs.shape[0]
        x = self.latents.expand(batch, -1, -1)
        for repeat in range(self.config.num_blocks):
            if repeat < self.config.num_cross_attends:
                layer = self.cross_attends[min(repeat, 1)]
                x = self._run(layer, x, inputs, mask)
            for layer in self.block:
                x = self._run(layer, x)
        return x

    def _run(self, layer: nn.Module, *args: torch.Tensor | PackedTokens | None) -> torch.Tensor:
        if self.config.gradient_checkpointing and self.training:
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

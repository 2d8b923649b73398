"""Perceiver IO decoders: output queries cross-attend to the latents.

Queries come from a query provider (Fourier features of an output grid, or a learned table),
for the whole output or for a subset of its positions (`indices`): training on huge outputs
(video pixels, audio samples) decodes a random subset each step, and inference decodes the
whole output in chunks of `chunk_size` queries, which bounds memory since queries do not
attend to each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attention import CrossAttention
from .position import FourierPositions, subsampled_positions


class FourierQueries(nn.Module):
    """Queries for an output grid: Fourier features of its positions."""

    def __init__(
        self, shape: Sequence[int], num_bands: int, concat_pos: bool = True, sine_only: bool = False
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.positions = FourierPositions(num_bands, self.shape, concat_pos, sine_only)
        self.channels = self.positions.channels(len(self.shape))

    @property
    def length(self) -> int:
        return int(torch.tensor(self.shape).prod())

    def forward(
        self, batch: int, device: torch.device, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        if indices is None:
            features = self.positions(self.shape, device)
        else:
            features = self.positions.of(subsampled_positions(indices, self.shape), self.shape)
        return features.expand(batch, -1, -1)


class LearnedQueries(nn.Module):
    """A learned table of queries (one row for classification)."""

    def __init__(self, length: int, channels: int, init_scale: float = 0.02) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(length, channels) * init_scale)
        self.channels, self.length = channels, length

    def forward(
        self, batch: int, device: torch.device, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        table = self.table if indices is None else self.table[indices]
        return table.expand(batch, -1, -1)


class BasicDecoder(nn.Module):
    """Queries → cross-attention to the latents → a linear map to `out_channels` (none when
    `out_channels` is None: the language model's decoder hands its output to the embedding
    decoder)."""

    def __init__(
        self,
        queries: FourierQueries | LearnedQueries,
        latent_dim: int,
        out_channels: int | None,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        query_residual: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.queries = queries
        self.cross_attention = CrossAttention(
            queries.channels,
            latent_dim,
            num_heads,
            qk_channels,
            v_channels,
            widening_factor=widening_factor,
            dropout=dropout,
            query_residual=query_residual,
        )
        self.final = nn.Linear(queries.channels, out_channels) if out_channels else nn.Identity()

    def forward(
        self,
        latents: torch.Tensor,
        indices: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """`[B, O, out_channels]` for all `O` output positions, or for `indices` only."""
        batch, device = latents.shape[0], latents.device
        if chunk_size is None:
            return self._decode(latents, self.queries(batch, device, indices))
        if indices is None:
            indices = torch.arange(self.queries.length, device=device)
        return torch.cat(
            [
                self._decode(latents, self.queries(batch, device, part))
                for part in indices.split(chunk_size)
            ],
            dim=1,
        )

    def _decode(self, latents: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return self.final(self.cross_attention(queries.to(latents.dtype), latents))


class ClassificationDecoder(BasicDecoder):
    """One learned query, decoded to class logits `[B, num_classes]`."""

    def __init__(
        self, latent_dim: int, num_classes: int, query_dim: int | None = None, **kwargs: object
    ) -> None:
        super().__init__(
            LearnedQueries(1, query_dim or latent_dim), latent_dim, num_classes, **kwargs
        )

    def forward(self, latents: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return super().forward(latents)[:, 0]

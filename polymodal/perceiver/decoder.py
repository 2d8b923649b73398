"""Perceiver IO decoders: output queries cross-attend to the latents.

Queries come from a query provider (Fourier features of an output grid, or a learned table),
for the whole output or for a subset of its positions (`indices`): training on huge outputs
(video pixels, audio samples) decodes a random subset each step, and inference decodes the
whole output in chunks of `chunk_size` queries, which bounds memory since queries do not
attend to each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention
from .position import FourierPositions, subsampled_positions


class QueryProvider(Protocol):
    """Where a decoder's output queries come from: `length` positions of `channels` each, all
    of them or the subset `indices`, as `[B, len, channels]` on `device`."""

    channels: int

    @property
    def length(self) -> int: ...

    def __call__(
        self, batch: int, device: torch.device, indices: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class FourierQueries(nn.Module):
    """Queries for an output grid: Fourier features of its positions (with frequencies up to
    `max_resolution`, by default the grid's shape)."""

    def __init__(
        self,
        *,
        shape: Sequence[int],
        num_bands: int,
        concat_pos: bool = True,
        sine_only: bool = False,
        max_resolution: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.max_resolution = tuple(max_resolution or shape)
        self.positions = FourierPositions(
            num_bands=num_bands,
            max_resolution=self.max_resolution,
            concat_pos=concat_pos,
            sine_only=sine_only,
        )
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
            positions = subsampled_positions(indices, self.shape)
            features = self.positions.of(positions, self.max_resolution)
        return features.expand(batch, -1, -1)


class LearnedQueries(nn.Module):
    """A learned table of queries (one row for classification)."""

    def __init__(self, *, length: int, channels: int, init_scale: float = 0.02) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(length, channels) * init_scale)
        self.channels, self.length = channels, length

    def forward(
        self, batch: int, device: torch.device, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        # a lookup, not `table[indices]`, whose backward is an accumulating `index_put_`
        table = self.table if indices is None else F.embedding(indices, self.table)
        return table.expand(batch, -1, -1)


class BasicDecoder(nn.Module):
    """Queries → cross-attention to the latents → a linear map to `out_channels` (none when
    `out_channels` is None: the language model's decoder hands its output to the embedding
    decoder)."""

    def __init__(
        self,
        *,
        queries: QueryProvider,
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
            q_dim=queries.channels,
            kv_dim=latent_dim,
            num_heads=num_heads,
            qk_channels=qk_channels,
            v_channels=v_channels,
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
        self, *, latent_dim: int, num_classes: int, query_dim: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            queries=LearnedQueries(length=1, channels=query_dim or latent_dim),
            latent_dim=latent_dim,
            out_channels=num_classes,
            **kwargs,
        )

    def forward(self, latents: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return super().forward(latents)[:, 0]


class MultimodalDecoder(nn.Module):
    """One decoder for several outputs: each modality's queries (Fourier or learned) are padded
    with that modality's learned padding to a common width, all are concatenated in sorted
    name order and cross-attend to the latents together; the result is split back per
    modality. `indices` maps a modality to the output positions to decode (query
    subsampling); `chunk_size` decodes the queries in chunks."""

    def __init__(
        self,
        *,
        queries: Mapping[str, QueryProvider],
        latent_dim: int,
        out_channels: int,
        min_padding: int = 2,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        query_residual: bool = False,
    ) -> None:
        super().__init__()
        self.names = sorted(queries)
        self.queries = nn.ModuleDict({n: cast(nn.Module, queries[n]) for n in self.names})
        self.channels = max(q.channels for q in queries.values()) + min_padding
        self.padding = nn.ParameterDict(
            {
                n: nn.Parameter(torch.randn(self.channels - queries[n].channels) * 0.02)
                for n in self.names
            }
        )
        self.cross_attention = CrossAttention(
            q_dim=self.channels,
            kv_dim=latent_dim,
            num_heads=num_heads,
            qk_channels=qk_channels,
            v_channels=v_channels,
            query_residual=query_residual,
        )
        self.final = nn.Linear(self.channels, out_channels)

    def forward(
        self,
        latents: torch.Tensor,
        indices: dict[str, torch.Tensor | None] | None = None,
        chunk_size: int | None = None,
    ) -> dict[str, torch.Tensor]:
        batch, device = latents.shape[0], latents.device
        indices = indices or {}
        parts, sizes = [], []
        for name in self.names:
            q = self.queries[name](batch, device, indices.get(name)).to(latents.dtype)
            pad = self.padding[name].to(q.dtype).expand(batch, q.shape[1], -1)
            parts.append(torch.cat([q, pad], dim=-1))
            sizes.append(q.shape[1])
        queries = torch.cat(parts, dim=1)
        chunks = queries.split(chunk_size, dim=1) if chunk_size else [queries]
        out = torch.cat([self.final(self.cross_attention(c, latents)) for c in chunks], dim=1)
        return dict(zip(self.names, out.split(sizes, dim=1), strict=True))

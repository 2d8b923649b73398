"""Position encodings: Fourier features exactly as the reference implementation, and learned.

Fourier features of a position `x` in [-1, 1]^d with `K` bands per axis and maximum
resolution `R_a` on axis `a`: frequencies `f = linspace(1, R_a / 2, K)`, features
`[x, sin(π f x), cos(π f x)]` (sines only with `sine_only`, without `x` unless `concat_pos`).
Positions on a grid are `linspace(-1, 1, n)` per axis. They are built on the device from the
grid shape and cached per shape: data loaders ship grid shapes, never features.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


def grid_positions(
    shape: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Positions `[prod(shape), len(shape)]` of a grid, `linspace(-1, 1)` per axis, row-major."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def subsampled_positions(
    indices: torch.Tensor, shape: Sequence[int], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Positions of flat `indices` into a grid the way the reference decoder maps subsampled
    queries: `-1 + 2 i / n` per axis (not the `linspace` of full grids)."""
    coords = torch.stack(torch.unravel_index(indices, tuple(shape)), dim=-1)
    sizes = torch.tensor(list(shape), device=indices.device)
    return (-1 + 2 * coords / sizes).to(dtype or torch.get_default_dtype())


def fourier_features(
    positions: torch.Tensor,
    num_bands: int,
    max_resolution: Sequence[int],
    concat_pos: bool = True,
    sine_only: bool = False,
) -> torch.Tensor:
    """Fourier features of `positions` `[..., d]`: `[..., d + d·K·(1 if sine_only else 2)]`
    (without the leading `d` unless `concat_pos`)."""
    d = positions.shape[-1]
    if len(max_resolution) != d:
        raise ValueError(f"{d}-d positions need {d} resolutions, got {max_resolution}")
    freqs = torch.stack(
        [
            torch.linspace(1.0, r / 2, num_bands, device=positions.device, dtype=positions.dtype)
            for r in max_resolution
        ]
    )
    scaled = (positions[..., :, None] * freqs).flatten(-2)  # [..., d·K], axis-major
    features = [torch.sin(math.pi * scaled)]
    if not sine_only:
        features.append(torch.cos(math.pi * scaled))
    if concat_pos:
        features.insert(0, positions)
    return torch.cat(features, dim=-1)


def fourier_channels(
    d: int, num_bands: int, concat_pos: bool = True, sine_only: bool = False
) -> int:
    return d * num_bands * (1 if sine_only else 2) + (d if concat_pos else 0)


def check_sizes(**sizes: tuple[int, int]) -> None:
    """Each `name=(value, least)`: a size below its least is a `ValueError` naming it, before
    a layer is built from it (a zero patch divides by zero, a negative width is a tensor
    torch cannot make)."""
    for name, (value, least) in sizes.items():
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")


class FourierPositions(nn.Module):
    """Fourier features of a grid, built on the device and cached per (shape, device, dtype),
    the most recently used up to `CACHE_BYTES` in all (the newest is kept whatever its size:
    a model of one large grid computes it once). Samples of their own lengths (packed
    batches) bring a grid each, which a cache without bound would keep for the whole run; a
    bound in entries would hold speech's hundreds of short grids no better than a few
    pictures' grids of 50 MB each.

    `max_resolution` defaults to the grid's own shape, as the reference does.
    """

    CACHE_BYTES = 64 * 2**20

    def __init__(
        self,
        *,
        num_bands: int,
        max_resolution: Sequence[int] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
    ) -> None:
        super().__init__()
        check_sizes(num_bands=(num_bands, 0))
        self.num_bands, self.concat_pos, self.sine_only = num_bands, concat_pos, sine_only
        self.max_resolution = tuple(max_resolution) if max_resolution else None
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0

    def channels(self, d: int) -> int:
        return fourier_channels(d, self.num_bands, self.concat_pos, self.sine_only)

    def forward(
        self, shape: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Features `[prod(shape), channels]` of the grid `shape`."""
        key = (tuple(shape), device, dtype)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        positions = grid_positions(shape, device, torch.float32)
        resolution = self.max_resolution or tuple(shape)
        features = fourier_features(
            positions, self.num_bands, resolution, self.concat_pos, self.sine_only
        ).to(dtype)
        self._cache[key] = features
        self._cached_bytes += features.nbytes
        while self._cached_bytes > self.CACHE_BYTES and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.nbytes
        return features

    def of(self, positions: torch.Tensor, max_resolution: Sequence[int]) -> torch.Tensor:
        """Features of arbitrary positions (point clouds, subsampled queries): not cached."""
        return fourier_features(
            positions, self.num_bands, max_resolution, self.concat_pos, self.sine_only
        )


class LearnedPositions(nn.Module):
    """A learned `[length, channels]` table (truncated to the sequence actually given)."""

    def __init__(self, *, length: int, channels: int, init_scale: float = 0.02) -> None:
        super().__init__()
        check_sizes(length=(length, 1), channels=(channels, 1))
        self.table = nn.Parameter(torch.randn(length, channels) * init_scale)

    def forward(self, length: int) -> torch.Tensor:
        if length > len(self.table):
            raise ValueError(f"{length} positions, but the table has {len(self.table)}")
        return self.table[:length]

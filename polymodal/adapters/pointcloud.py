"""Point clouds: npy / npz / ply / off / xyz / pts → float32 `[N, 3+F]` with `coords` = xyz."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from polymodal.codecs.points import read_points
from polymodal.perceiver.io import PointCloudInput

from .base import Adapter, Preview
from .field import Field
from .field_input import FieldInput
from .registry import BUILT_IN, register


@register("pointcloud")
class PointCloudAdapter(Adapter):
    """Read a cloud, normalise xyz into [-1, 1], and sample a fixed number of points.

    Columns after xyz (PLY properties such as normals or colours, extra `.npy` / `.xyz`
    columns) are kept as features. Coordinates are centred on the bounding box and divided by
    the largest half-extent, so the cloud fills [-1, 1] on its longest axis and keeps its shape.
    `num_points` points are drawn with the per-sample generator: without replacement from a
    larger cloud; a smaller one keeps every point and repeats random ones. Clouds over
    `max_points` and any NaN or infinite value are refused.
    """

    extensions = BUILT_IN["pointcloud"].extensions
    mixable = False
    default_for = BUILT_IN["pointcloud"].default_for

    def __init__(
        self,
        num_points: int | None = 2048,
        max_points: int = 10_000_000,
        extensions: list[str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(extensions, field)
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.num_points = num_points
        self.max_points = max_points

    @property
    def uses_rng(self) -> bool:
        return self.num_points is not None

    def encoder(self, features: int = 0, num_bands: int = 64) -> FieldInput:
        """Points and their features, plus Fourier features of the coordinates."""
        return FieldInput(
            PointCloudInput(features=features, num_bands=num_bands), ("values", "coords", "mask")
        )

    def probe(self, data: bytes, ext: str) -> dict[str, float]:
        return {"points": len(read_points(data, ext, self.max_points))}

    def preview(self, data: bytes, ext: str, classes: Sequence[str] | None) -> Preview:
        field = type(self)(num_points=2048, max_points=self.max_points).decode({ext: data})
        return Preview(points=field.values[:, :3].numpy())

    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        points = read_points(data, ext, self.max_points)
        points = _sample(points, self.num_points, rng)
        lo, hi = points[:, :3].min(0), points[:, :3].max(0)
        half_extent = float((hi - lo).max()) / 2 or 1.0
        points[:, :3] = (points[:, :3] - (lo + hi) / 2) / half_extent
        values = torch.from_numpy(points)
        return Field(values=values, coords=values[:, :3])


def _sample(
    points: np.ndarray, num_points: int | None, rng: np.random.Generator | None
) -> np.ndarray:
    n = len(points)
    if num_points is None or num_points == n:
        return points.copy()
    if rng is None:
        raise ValueError("sampling points needs the sample's generator")
    if n > num_points:
        return points[rng.choice(n, num_points, replace=False)]
    extra = rng.integers(0, n, num_points - n)
    return points[np.concatenate([np.arange(n), extra])]

"""Depth maps as a polymodal modality: a 16-bit greyscale PNG of millimetres, `KEY.depth.png`.

The whole plugin is this file and an entry point (`polymodal.adapters`: `depth`). It must not
be read as an image: an 8-bit RGB image would keep only the top byte of each depth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from polymodal.adapters import Adapter, Field, FieldInput, Preview, Reconstruction
from polymodal.codecs.images import open_image
from polymodal.perceiver.io import GridInput


class DepthAdapter(Adapter):
    """A depth map → int16 millimetres `[H*W, 1]` (clipped at `max_depth_mm`), grid `(H, W)`,
    resized to `size`×`size` with nearest neighbours (depths are never blended)."""

    extensions = ("depth.png",)

    def __init__(
        self,
        size: int | None = 16,
        max_depth_mm: int = 10_000,
        max_pixels: int = 2**24,
        extensions: Sequence[str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(extensions, field)
        if not 0 < max_depth_mm <= 32767:
            raise ValueError(f"max_depth_mm must be in (0, 32767], got {max_depth_mm}")
        self.size, self.max_depth_mm, self.max_pixels = size, max_depth_mm, max_pixels

    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        img = open_image(data)
        if img.mode not in ("I;16", "I"):
            raise ValueError(f"a depth map is a 16-bit greyscale PNG, got mode {img.mode}")
        if img.width * img.height > self.max_pixels:
            raise ValueError(f"{img.width}×{img.height} pixels, over max_pixels")
        img = img.convert("I")
        if self.size is not None:
            img = img.resize((self.size, self.size), Image.Resampling.NEAREST)
        depth = np.clip(np.asarray(img), 0, self.max_depth_mm).astype(np.int16)
        return Field(values=torch.from_numpy(depth).reshape(-1, 1), grid=depth.shape)

    def encoder(self, patch_size: int = 4, num_bands: int = 8) -> FieldInput:
        """Depth scaled to [-1, 1], `patch_size`² patches, Fourier positions of the grid."""
        scale = 2 / self.max_depth_mm
        grid = None if self.size is None else (self.size, self.size)
        module = GridInput(
            channels=1,
            patch=(patch_size, patch_size),
            num_bands=num_bands,
            max_resolution=grid,
            scale=scale,
            offset=-1.0,
        )
        return FieldInput(module)

    def probe(self, data: bytes, ext: str) -> dict[str, float]:
        depth = np.asarray(open_image(data))
        return {"width": depth.shape[1], "height": depth.shape[0], "max_mm": int(depth.max())}

    def preview(self, data: bytes, ext: str, classes: Sequence[str] | None) -> Preview:
        depth = type(self)(size=None, max_depth_mm=self.max_depth_mm).decode({ext: data})
        grey = (depth.values.numpy().reshape(depth.grid) * (255 / self.max_depth_mm)).astype(
            np.uint8
        )
        return Preview(frames=(np.repeat(grey[..., None], 3, axis=-1),))

    def reconstruction(self, encoder: Mapping[str, Any]) -> Reconstruction | None:
        if self.size is None:
            return None
        return Reconstruction((self.size, self.size), 1, 2 / self.max_depth_mm, -1.0, np.int16)

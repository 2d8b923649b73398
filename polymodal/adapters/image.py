"""Images: any format Pillow reads → uint8 RGB pixels `[H*W, 3]` with grid `(H, W)`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import simplejpeg
import torch
from PIL import ImageOps

from polymodal.codecs.images import (
    EXIF_ORIENTATION,
    JpegHeader,
    image_size,
    jpeg_header,
    open_image,
    orient,
    to_rgb,
)
from polymodal.perceiver.io import GridInput, ImageStemInput

from .base import Adapter, Preview, Reconstruction
from .crop import FrameCrop, crop_plan, flip_draw, resize_crop, resize_scale
from .field import Field
from .field_input import FieldInput
from .registry import BUILT_IN, register

_DRAFT_REDUCTIONS = (8, 4, 2)  # the DCT-domain scales Pillow's JPEG draft mode offers


@register("image")
class ImageAdapter(FrameCrop, Adapter):
    """Decode, orient, resize and crop an image to a fixed pixel budget.

    `size` is the output `(H, W)` (an int for a square; None keeps the native size, scaled
    down to `max_side` on its longer side when it is larger, the aspect ratio kept: pictures
    of their own shapes, for packed batches). The image
    is scaled so that the crop covers `crop_fraction` of it along its tighter axis (0.875 is the
    usual "resize 256, crop 224"; 1.0 crops as little as possible), then cut at the centre or,
    with `crop="random"`, at a place drawn from the per-sample generator.

    Speed matters here, because this runs once per sample per epoch. The size is read from the
    header first (images over `max_pixels` are refused before any pixel is decoded). JPEGs are
    decoded by simplejpeg (libjpeg-turbo), at 1/2, 1/4 or 1/8 scale in the DCT domain when the
    image is at least twice the needed size, and in its strict mode: libjpeg only *warns* about
    corrupt data (a scan cut short and closed with an end marker decodes to grey with Pillow
    and torchvision alike), and a warning here is a decode error, never a wrong sample.
    Everything else (and CMYK JPEGs) goes to Pillow; only the crop region is resized, with
    torch's antialiased uint8 bilinear kernel.

    Greyscale, palette, CMYK and 16-bit images become RGB (16-bit keeps its top 8 bits);
    transparent ones are composited onto `background`; EXIF orientation is applied.
    """

    extensions = BUILT_IN["image"].extensions

    def __init__(
        self,
        size: int | tuple[int, int] | None = 224,
        crop_fraction: float = 0.875,
        crop: str = "center",
        scale: tuple[float, float] | None = None,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = False,
        max_pixels: int = 64 * 2**20,
        background: tuple[int, int, int] = (255, 255, 255),
        max_side: int | None = None,
        extensions: list[str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(extensions, field)
        self.set_crop(size, crop_fraction, crop, scale, ratio, flip, max_pixels)
        if max_side is not None and (size is not None or max_side < 1):
            raise ValueError(
                f"max_side bounds a native size (size=None) and is positive, got {max_side}"
            )
        self.max_side = max_side
        self.background = background

    def encoder(
        self, patch_size: int = 1, num_bands: int = 64, stem: bool = False, stem_channels: int = 64
    ) -> FieldInput:
        """Pixels scaled to [-1, 1], `patch_size`² patches, Fourier positions of the grid; or,
        with `stem`, the Perceiver's convolutional stem (`stem_channels` features at a quarter
        of the resolution) in place of patches."""
        if stem:
            return FieldInput(
                ImageStemInput(out_channels=stem_channels, num_bands=num_bands, max_resolution=None)
            )
        return FieldInput(
            GridInput(
                channels=3,
                patch=(patch_size, patch_size),
                num_bands=num_bands,
                max_resolution=self.size,
            )
        )

    def probe(self, data: bytes, ext: str) -> dict[str, float]:
        width, height = image_size(data)
        return {"width": width, "height": height}

    def preview(self, data: bytes, ext: str, classes: Sequence[str] | None) -> Preview:
        field = type(self)(size=None, max_pixels=self.max_pixels).decode({ext: data})
        return Preview(frames=(field.on_grid().numpy(),))

    def reconstruction(self, encoder: Mapping[str, Any]) -> Reconstruction | None:
        if self.size is None:
            return None
        return Reconstruction(self.size, 3, 2 / 255, -1.0, np.uint8)

    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        header = jpeg_header(data)
        if header is not None and header.components in (1, 3):
            pixels = self._decode_jpeg(data, header)
        else:
            pixels = self._decode_pillow(data)
        if self.size is not None:
            pixels = self._resize_crop(pixels, self.size, rng)
        elif self.max_side is not None and max(pixels.shape[:2]) > self.max_side:
            h, w = pixels.shape[:2]
            fit = self.max_side / max(h, w)
            size = (max(1, round(h * fit)), max(1, round(w * fit)))
            pixels = resize_crop(pixels, (size[1], size[0], 0, 0), size)  # the whole picture
        if flip_draw(self.flip, rng):
            pixels = pixels.flip(1)
        return Field(values=pixels.reshape(-1, 3), grid=tuple(pixels.shape[:2]))

    def _check_pixels(self, w: int, h: int) -> None:
        if w * h > self.max_pixels:
            raise ValueError(f"image is {w}×{h} pixels, over max_pixels={self.max_pixels}")

    def _decode_jpeg(self, data: bytes, header: JpegHeader) -> torch.Tensor:
        """A greyscale or YCbCr JPEG by simplejpeg (strict), shrunk while decoding when it can."""
        self._check_pixels(header.width, header.height)
        r = self._draft_reduction(header.width, header.height)
        scale = {"min_width": -(-header.width // r), "min_height": -(-header.height // r)}
        pixels = simplejpeg.decode_jpeg(data, "RGB", strict=True, **(scale if r > 1 else {}))
        return torch.from_numpy(orient(pixels, header.orientation))

    def _decode_pillow(self, data: bytes) -> torch.Tensor:
        """Every other format (and CMYK JPEGs, which simplejpeg does not convert)."""
        img = open_image(data)
        w, h = img.size
        self._check_pixels(w, h)
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        if img.format == "JPEG":
            reduction = self._draft_reduction(w, h)
            if reduction > 1:
                img.draft("RGB", (w // reduction, h // reduction))
        img = to_rgb(img, self.background)
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        return torch.from_numpy(np.array(img))

    def _draft_reduction(self, w: int, h: int) -> int:
        """Largest DCT-domain reduction that leaves at least the resized size.

        Taken over both orientations, since EXIF rotation may swap the axes after decoding. A
        random resized crop may cut its smallest, most elongated region, which is stretched most.
        """
        size = self.size
        if size is None:
            return 1
        fraction = self.crop_fraction
        if self.scale is not None:
            fraction = math.sqrt(self.scale[0] * min(self.ratio[0], 1 / self.ratio[1]))

        def fits(r: int, w: int, h: int) -> bool:
            scale = resize_scale(w, h, size, fraction)
            return w // r >= w * scale and h // r >= h * scale

        return next((r for r in _DRAFT_REDUCTIONS if fits(r, w, h) and fits(r, h, w)), 1)

    def _resize_crop(
        self, pixels: torch.Tensor, size: tuple[int, int], rng: np.random.Generator | None
    ) -> torch.Tensor:
        h, w = pixels.shape[:2]
        plan = crop_plan(
            w,
            h,
            size,
            self.crop_fraction,
            self.crop,
            rng,
            self.scale,
            self.ratio,
            max_pixels=self.max_pixels,
        )
        return resize_crop(pixels, plan, size)

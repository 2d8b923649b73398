"""Images: any format Pillow reads → uint8 RGB pixels `[H*W, 3]` with grid `(H, W)`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
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
from .field import Field
from .field_input import FieldInput
from .registry import BUILT_IN, register

_DRAFT_REDUCTIONS = (8, 4, 2)  # the DCT-domain scales Pillow's JPEG draft mode offers


def size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """`(H, W)` from an int (square), a pair, or None (keep the native size)."""
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


@register("image")
class ImageAdapter(Adapter):
    """Decode, orient, resize and crop an image to a fixed pixel budget.

    `size` is the output `(H, W)` (an int for a square; None keeps the native size). The image
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
        extensions: list[str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(extensions, field)
        check_crop(crop, crop_fraction, scale, ratio, size)
        self.scale, self.ratio, self.flip = scale, ratio, flip
        self.size = size_pair(size)
        self.crop_fraction = crop_fraction
        self.crop = crop
        self.max_pixels = max_pixels
        self.background = background

    @property
    def uses_rng(self) -> bool:
        return self.crop == "random" or self.flip

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


def check_crop(
    crop: str,
    crop_fraction: float = 1.0,
    scale: tuple[float, float] | None = None,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    size: int | tuple[int, int] | None = None,
) -> None:
    """Validate crop options at construction, so a typo fails before any data is read
    (`size`: the output size, which a random resized crop needs)."""
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    if scale is not None:
        if crop != "random":
            raise ValueError("scale (a random resized crop) needs crop='random'")
        if size is None:
            raise ValueError("scale (a random resized crop) needs a size")
        if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must be a [low, high] range of areas in (0, 1], got {scale}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1] and math.isfinite(ratio[1])):
            raise ValueError(f"ratio must be a [low, high] range of aspect ratios, got {ratio}")


def resize_scale(w: int, h: int, size: tuple[int, int], crop_fraction: float) -> float:
    """Factor from a `w`×`h` frame to the resized one that a `size` crop is cut from."""
    out_h, out_w = size
    return max(out_w / w, out_h / h) / crop_fraction


def crop_plan(
    w: int,
    h: int,
    size: tuple[int, int],
    crop_fraction: float,
    crop: str,
    rng: np.random.Generator | None,
    scale: tuple[float, float] | None = None,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    max_pixels: int,
) -> tuple[int, int, int, int]:
    """Resized `(width, height)` of a `w`×`h` frame, and the crop's `(x0, y0)` in it.

    Shared by images and video frames so that both crop the same way. A random crop draws two
    integers from the per-sample generator. With `scale`, it is a random *resized* crop
    (Inception's, as torchvision's `RandomResizedCrop`): a region of `scale` of the frame's
    area and `ratio` aspect (log-uniform), stretched to `size`; up to ten tries for a region
    that fits, else the largest centred region of an allowed aspect.
    """
    if scale is not None:
        return resized_crop_plan(w, h, size, scale, ratio, rng)
    rw, rh = resized_size(w, h, size, crop_fraction, max_pixels=max_pixels)
    return (rw, rh, *crop_origin(rw, rh, size, crop, rng))


def resized_size(
    w: int, h: int, size: tuple[int, int], crop_fraction: float, *, max_pixels: int
) -> tuple[int, int]:
    """`(width, height)` a `w`×`h` frame is resized to before a `size` crop is cut from it:
    the crop covers `crop_fraction` of its tighter axis. A materialised video keeps its frames
    at this size, so that the crop cut at read time is the one the media would give. A frame
    of an extreme aspect (2×8192) would grow to hundreds of megapixels on the way to a small
    crop: over `max_pixels` it is refused before anything is scaled."""
    out_h, out_w = size
    factor = resize_scale(w, h, size, crop_fraction)
    rw, rh = max(out_w, round(w * factor)), max(out_h, round(h * factor))
    if rw * rh > max_pixels:
        raise ValueError(
            f"a {w}×{h} frame scaled for a {out_w}×{out_h} crop would be {rw:,}×{rh:,} pixels, "
            f"over max_pixels={max_pixels:,} (its aspect is too extreme for the crop)"
        )
    return rw, rh


def crop_origin(
    rw: int, rh: int, size: tuple[int, int], crop: str, rng: np.random.Generator | None
) -> tuple[int, int]:
    """`(x0, y0)` of a `size` crop of a `rw`×`rh` frame: centred, or two draws (`random`)."""
    out_h, out_w = size
    if rw < out_w or rh < out_h:
        raise ValueError(f"a {rw}×{rh} frame is smaller than the {out_w}×{out_h} crop")
    if crop == "random":
        rng = _generator(rng)
        return int(rng.integers(0, rw - out_w + 1)), int(rng.integers(0, rh - out_h + 1))
    return (rw - out_w) // 2, (rh - out_h) // 2


def resize_crop(
    pixels: torch.Tensor, plan: tuple[int, int, int, int], size: tuple[int, int]
) -> torch.Tensor:
    """The `size` crop of `plan` (see `crop_plan`) out of uint8 `[..., H, W, 3]` pixels (one
    picture or a clip's frames): only the crop's region of the source is resized, with torch's
    antialiased bilinear kernel."""
    out_h, out_w = size
    h, w = pixels.shape[-3:-1]
    rw, rh, x0, y0 = plan
    sx, sy = w / rw, h / rh  # resized → source coordinates
    left, top = round(x0 * sx), round(y0 * sy)
    right = min(w, max(left + 1, round((x0 + out_w) * sx)))
    bottom = min(h, max(top + 1, round((y0 + out_h) * sy)))
    region = pixels[..., top:bottom, left:right, :]
    if region.shape[-3:-1] == (out_h, out_w):
        return region
    frames = region.reshape(-1, *region.shape[-3:])
    nchw = frames.permute(0, 3, 1, 2)  # a channels-last view: the fast uint8 path
    resized = F.interpolate(nchw, size=(out_h, out_w), mode="bilinear", antialias=True)
    return resized.permute(0, 2, 3, 1).reshape(*region.shape[:-3], out_h, out_w, 3)


def _generator(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("a random crop needs the sample's generator")
    return rng


def resized_crop_plan(
    w: int,
    h: int,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator | None,
) -> tuple[int, int, int, int]:
    """The source region of a random resized crop, as the plan `crop_plan` returns."""
    rng = _generator(rng)
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:
        aspect = min(max(w / h, ratio[0]), ratio[1])
        cw, ch = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
        left, top = (w - cw) // 2, (h - ch) // 2
    out_h, out_w = size
    sx, sy = out_w / cw, out_h / ch  # source → resized
    rw, rh = max(out_w, round(w * sx)), max(out_h, round(h * sy))
    return rw, rh, min(round(left * sx), rw - out_w), min(round(top * sy), rh - out_h)


def flip_draw(flip: bool, rng: np.random.Generator | None) -> bool:
    """Whether to mirror this sample (half the time when `flip`): one draw, after the crop's."""
    return flip and bool(_generator(rng).random() < 0.5)

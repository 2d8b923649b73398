"""Where a crop falls, shared by images, video frames and audio clips: the size a frame is
resized to before a crop (`resized_size`, bounded by `max_pixels`), where the crop is
(`crop_origin`, centred or drawn), Inception's random resized crop (`resized_crop_plan`), a
flip's draw, and the checks of crop options made at construction."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """`(H, W)` from an int (square), a pair, or None (keep the native size)."""
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


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


class FrameCrop:
    """The crop settings images and video frames share, checked once at construction: the
    output `size`, `crop_fraction` of the shorter side, `crop` (center or random), Inception's
    `scale` / `ratio`, `flip`, and the `max_pixels` a frame may have before it is refused.
    A mixin of the two adapters, so a setting means the same in both."""

    def set_crop(
        self,
        size: int | tuple[int, int] | None,
        crop_fraction: float,
        crop: str,
        scale: tuple[float, float] | None,
        ratio: tuple[float, float],
        flip: bool,
        max_pixels: int,
    ) -> None:
        check_crop(crop, crop_fraction, scale, ratio, size)
        self.size = size_pair(size)
        self.crop_fraction, self.crop = crop_fraction, crop
        self.scale, self.ratio, self.flip = scale, ratio, flip
        self.max_pixels = max_pixels

    @property
    def uses_rng(self) -> bool:
        """A random crop or a flip draws from the sample's generator."""
        return self.crop == "random" or self.flip


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

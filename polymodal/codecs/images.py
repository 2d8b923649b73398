"""Image bytes: the JPEG frame header and EXIF orientation read without decoding, pixels turned
upright, and any Pillow mode made 8-bit RGB."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD9)}
_APP1 = 0xE1


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's markers say before its scan: size, colour components, EXIF orientation."""

    width: int
    height: int
    components: int
    orientation: int = 1


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The frame header (and EXIF orientation) of a JPEG, or None if it is not a JPEG.

    Our own few lines instead of `PIL.Image.open`: the size must be known (to refuse bombs and
    to choose a decoder) before decoding, and Pillow's Python marker parser costs about a tenth
    of a small JPEG's whole decode. Anything unusual returns None and goes the Pillow way.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, len(data)
    orientation = 1
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _APP1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            orientation = exif_orientation(data[pos + 10 : pos + 2 + length])
        if marker in _SOF_MARKERS:
            if pos + 10 > end:
                return None
            h = int.from_bytes(data[pos + 5 : pos + 7], "big")
            w = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return JpegHeader(w, h, data[pos + 9], orientation) if w and h else None
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        pos += 2 + length
    return None


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in an EXIF TIFF block, 1 when absent or unreadable."""
    orders: dict[bytes, Literal["little", "big"]] = {b"II": "little", b"MM": "big"}
    order = orders.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for entry in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        at = ifd + 2 + 12 * entry
        if at + 12 > len(tiff):
            return 1
        if int.from_bytes(tiff[at : at + 2], order) == EXIF_ORIENTATION:
            value = int.from_bytes(tiff[at + 8 : at + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`[H, W, C]` pixels turned upright from EXIF `orientation`, as `ImageOps.exif_transpose`."""
    if orientation in (5, 6, 7, 8):  # stored on its side: swap the axes first
        pixels = pixels.swapaxes(0, 1)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation)
    return np.ascontiguousarray(np.flip(pixels, flips) if flips else pixels)


def open_image(data: bytes) -> Image.Image:
    """A lazily decoding Pillow image of `data` (only the header is read here)."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError("not an image format Pillow can read") from None


def image_size(data: bytes) -> tuple[int, int]:
    """`(width, height)` as shown (EXIF orientation applied), from the header alone."""
    header = jpeg_header(data)
    if header is not None:
        w, h, orientation = header.width, header.height, header.orientation
    else:
        img = open_image(data)
        (w, h), orientation = img.size, img.getexif().get(EXIF_ORIENTATION, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode → 8-bit RGB; decoding happens here (Pillow loads lazily)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img)
        if img.mode == "F":  # float images are taken to be in [0, 1]
            arr8 = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:  # 16-bit (or 32-bit integer) greyscale: keep the top 8 of 16 bits
            arr8 = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")

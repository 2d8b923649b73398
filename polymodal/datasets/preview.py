"""A contact sheet of a dataset: one row per sample, one tile per field. People would rather
look than read: images as thumbnails, video as a strip of frames, audio as waveform and
spectrogram, point clouds as three scatter views, text as a snippet. Drawn with Pillow only.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import check_separate
from .index import ShardIndex
from .inspect import bounded_sample

TILE = 96  # tile height in pixels
WIDE = 240  # width of audio and text tiles
GAP = 6
KEY_WIDTH = 140
BACKGROUND, INK, ERROR = (250, 250, 250), (30, 30, 30), (190, 20, 20)


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _text_tile(text: str, width: int = WIDE, colour: tuple[int, int, int] = INK) -> Image.Image:
    tile = Image.new("RGB", (width, TILE), (255, 255, 255))
    lines = textwrap.wrap(text, width=width // 6)[: TILE // 13]
    ImageDraw.Draw(tile).multiline_text((4, 3), "\n".join(lines), fill=colour, font=_font())
    return tile


def _thumb(pixels: np.ndarray) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(pixels))
    return img.resize((max(1, round(img.width * TILE / img.height)), TILE))


def _hstack(tiles: list[Image.Image], gap: int = 2) -> Image.Image:
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    strip = Image.new("RGB", (width, TILE), BACKGROUND)
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    return strip


def _colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] → RGB, a dark-blue → yellow ramp readable in print."""
    stops = np.array([[20, 12, 60], [60, 80, 160], [40, 170, 140], [250, 230, 60]], float)
    pos = np.clip(values, 0, 1) * (len(stops) - 1)
    low = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def _audio_tiles(samples: np.ndarray, rate: int) -> list[Image.Image]:
    wave = Image.new("RGB", (WIDE, TILE), (255, 255, 255))
    draw = ImageDraw.Draw(wave)
    columns = np.array_split(samples, WIDE)
    for x, col in enumerate(columns):
        if len(col):
            top, bottom = (TILE / 2) * (1 - col.max()), (TILE / 2) * (1 - col.min())
            draw.line([(x, top), (x, bottom)], fill=(40, 90, 170))
    n_fft, hop = 512, max(1, len(samples) // WIDE)
    frames = [samples[i : i + n_fft] for i in range(0, max(1, len(samples) - n_fft), hop)]
    frames = [np.pad(f, (0, n_fft - len(f))) for f in frames] or [np.zeros(n_fft)]
    power = np.abs(np.fft.rfft(np.stack(frames) * np.hanning(n_fft), axis=1)) ** 2
    db = 10 * np.log10(power.T[::-1] + 1e-10)
    norm = (db - (db.max() - 80)) / 80
    spectrogram = Image.fromarray(_colormap(norm)).resize((WIDE, TILE))
    return [wave, spectrogram]


def _cloud_tiles(xyz: np.ndarray) -> list[Image.Image]:
    tiles = []
    for a, b, depth in ((0, 1, 2), (0, 2, 1), (2, 1, 0)):
        tile = Image.new("RGB", (TILE, TILE), (255, 255, 255))
        draw = ImageDraw.Draw(tile)
        shade = _colormap((xyz[:, depth] + 1) / 2)
        for (u, v), colour in zip(xyz[:, [a, b]], shade, strict=True):
            px, py = (u + 1) / 2 * (TILE - 4) + 2, (1 - (v + 1) / 2) * (TILE - 4) + 2
            draw.point((px, py), fill=tuple(int(c) for c in colour))
        tiles.append(tile)
    return tiles


def render_field(modality: str, ext: str, data: bytes, classes: list[str] | None) -> Image.Image:
    """One field of one sample as a tile (or strip of tiles): what its adapter's `preview`
    hook says to show, drawn here."""
    from polymodal.adapters import Adapter, get

    adapter = get(modality)(extensions=[ext]) if modality else Adapter(extensions=[ext])
    shown = adapter.preview(data, ext, classes)
    tiles = [_thumb(f) for f in shown.frames]
    if shown.wave is not None:
        tiles += _audio_tiles(shown.wave, shown.rate)
    if shown.points is not None:
        tiles += _cloud_tiles(shown.points)
    if shown.text:
        tiles.append(_text_tile(shown.text))
    return _hstack(tiles or [_text_tile(f".{ext}: nothing to show", width=120)])


def contact_sheet(source: str, out: str | Path, rows: int = 8) -> Path:
    """Render up to `rows` samples of the dataset at `source` into the PNG `out` (which must
    not be inside the dataset: it would land among, or on, its shards)."""
    check_separate([source], out, folders=True)
    index = ShardIndex.load(source)
    lines: list[Image.Image] = []
    for sample in bounded_sample(index, rows):
        tiles = [_text_tile(sample["__key__"], KEY_WIDTH)]
        for ext, modality in index.fields.items():
            if ext in sample:
                tiles.append(_render_or_error(modality, ext, sample[ext], index.classes))
        lines.append(_hstack(tiles, GAP))
    if not lines:
        lines = [_text_tile("(no samples)")]
    width = max(line.width for line in lines)
    sheet = Image.new("RGB", (width + 2 * GAP, len(lines) * (TILE + GAP) + GAP), BACKGROUND)
    for i, line in enumerate(lines):
        sheet.paste(line, (GAP, GAP + i * (TILE + GAP)))
    out = Path(out)
    sheet.save(out)
    return out


def _render_or_error(modality: str, ext: str, data: bytes, classes: Any) -> Image.Image:
    try:
        return render_field(modality, ext, data, classes)
    except Exception as exc:  # a bad sample shows as what is wrong with it, in red
        return _text_tile(f".{ext}: {exc}", colour=ERROR)

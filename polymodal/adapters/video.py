"""Video: any container/codec FFmpeg reads → `T` uint8 RGB frames `[T*H*W, 3]`, grid `(T, H, W)`."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import av
import numpy as np
import torch

from polymodal.codecs.containers import (
    clip_start,
    frame_rate,
    open_stream,
    plain_errors,
    seek_to,
    stream_seconds,
    threaded,
)
from polymodal.codecs.decoded import MAX_DECODED_BYTES
from polymodal.codecs.video import check_pixels, convert_once, frames_at, upright_rgb, upright_size
from polymodal.perceiver.io import GridInput, ImageStemInput

from .base import Adapter, Preview, Reconstruction
from .crop import (
    FrameCrop,
    crop_origin,
    crop_plan,
    flip_draw,
    resize_crop,
    resized_crop_plan,
    resized_size,
)
from .field import Field
from .field_input import FieldInput
from .registry import BUILT_IN, register


@register("video")
class VideoAdapter(FrameCrop, Adapter):
    """Cut a clip of `num_frames` frames at `fps` out of a video, resized and cropped.

    Only what the clip needs is decoded: the container is seeked to the keyframe before the
    clip, frames before the clip are decoded (they are references) but never converted, and
    decoding stops after the clip. Frames are picked by their timestamps — the frame on screen
    at `start + i / fps` — so variable frame rate sources give the right moments. Each picked
    frame is scaled by FFmpeg's swscale straight to RGB and then cropped like an image (see
    `crop.crop_plan`); rotation metadata (phone videos) is applied. A source shorter than the
    clip gives fewer real frames: the rest are zeros and `mask` marks the real elements.

    `fps=None` keeps the source rate; `size=None` keeps the source size.

    Materialised (`materialize`), a video is every frame on screen at `fps`, resized as for the
    crop (`crop.resized_size`: a 112 crop at `crop_fraction=0.875` keeps a shorter side of
    128) and placed on the clock so that the centre clip's frames are among them. A clip read
    back is then the centre clip the media gives, frame for frame and pixel for pixel; a random
    start snaps to the nearest kept frame (at most half a frame from the media's), and random
    crops and flips are the same draws, cut from the kept frames.
    """

    materialized_options = ("fps", "size", "crop_fraction")
    extensions = BUILT_IN["video"].extensions

    def __init__(
        self,
        num_frames: int = 16,
        fps: float | None = 8.0,
        size: int | tuple[int, int] | None = 112,
        crop_fraction: float = 1.0,
        crop: str = "center",
        scale: tuple[float, float] | None = None,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = False,
        max_pixels: int = 8192 * 4320,
        extensions: list[str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(extensions, field)
        self.set_crop(size, crop_fraction, crop, scale, ratio, flip, max_pixels)
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        self.num_frames = num_frames
        self.fps = fps

    def encoder(
        self,
        patch: tuple[int, int, int] = (1, 4, 4),
        num_bands: int = 32,
        stem: bool = False,
        stem_channels: int = 64,
    ) -> FieldInput:
        """Pixels scaled to [-1, 1], space-time patches, Fourier positions of the patch grid;
        or, with `stem`, every frame through the Perceiver's convolutional stem
        (`stem_channels` features at a quarter of the resolution) in place of patches."""
        if stem:
            return FieldInput(
                ImageStemInput(
                    out_channels=stem_channels, num_bands=num_bands, max_resolution=None, dims=3
                )
            )
        return FieldInput(GridInput(channels=3, patch=patch, num_bands=num_bands))

    @plain_errors()
    def probe(self, data: bytes, ext: str) -> dict[str, float]:
        container, stream = open_stream(data, "video")
        with container:
            ctx = stream.codec_context
            return {
                "seconds": stream_seconds(container, stream),
                "fps": float(stream.average_rate or 0),
                "width": ctx.width,
                "height": ctx.height,
            }

    def preview(self, data: bytes, ext: str, classes: Sequence[str] | None) -> Preview:
        """Six frames spread over the whole video, at its own size."""
        seconds = self.probe(data, ext)["seconds"] or 1.0
        strip = type(self)(num_frames=6, fps=6 / seconds, size=None, max_pixels=self.max_pixels)
        field = strip.decode({ext: data})
        frames = field.on_grid().numpy()
        real = (
            len(frames) if field.mask is None else int(field.mask.view(len(frames), -1)[:, 0].sum())
        )
        return Preview(frames=tuple(frames[:real]))

    def reconstruction(self, encoder: Mapping[str, Any]) -> Reconstruction | None:
        if self.size is None:
            return None
        return Reconstruction((self.num_frames, *self.size), 3, 2 / 255, -1.0, np.uint8)

    @plain_errors()  # FFmpeg's reason, not its errno
    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        with self._opened(data) as (container, stream, fps, total):
            start = clip_start(total, self.num_frames / fps, self.crop, rng)
            seek_to(container, stream, start)
            targets = start + np.arange(self.num_frames) / fps
            pixels = self._convert(frames_at(container, stream, targets, total), rng)
        if not pixels:
            raise ValueError("no video frames")
        return self._clip(torch.from_numpy(np.stack(pixels)))

    @contextmanager
    def _opened(
        self, data: bytes
    ) -> Iterator[tuple[av.container.InputContainer, av.VideoStream, float, float]]:
        """The video stream of `data`, checked against `max_pixels` and threaded, with the
        clip's frame rate and the header's duration: what a clip and a materialisation open."""
        container, stream = open_stream(data, "video")
        with container:
            check_pixels(stream.codec_context.width, stream.codec_context.height, self.max_pixels)
            threaded(stream)
            yield (
                container,
                stream,
                self.fps or float(frame_rate(stream)),
                stream_seconds(container, stream),
            )

    def _clip(self, frames: torch.Tensor) -> Field:
        """`[t, h, w, 3]` frames as the field: zeros after a short source's `t` real frames,
        which `mask` marks."""
        t, h, w = frames.shape[:3]
        values = torch.zeros(self.num_frames, h, w, 3, dtype=torch.uint8)
        values[:t] = frames
        mask = None
        if t < self.num_frames:
            mask = (torch.arange(self.num_frames) < t).repeat_interleave(h * w)
        return Field(values=values.reshape(-1, 3), grid=(self.num_frames, h, w), mask=mask)

    def _convert(
        self, frames: Iterator[av.VideoFrame], rng: np.random.Generator | None
    ) -> list[np.ndarray]:
        """Scale (swscale), rotate and crop each picked frame; one crop position per clip,
        planned from the first frame's upright size."""
        plan: tuple[int, int, int, int, int, int] | None = None

        def convert(frame: av.VideoFrame) -> np.ndarray:
            nonlocal plan
            if plan is None:
                w, h = upright_size(frame)
                if self.size is None:
                    plan = (w, h, 0, 0, w, h)
                else:
                    rw, rh, x0, y0 = crop_plan(
                        w,
                        h,
                        self.size,
                        self.crop_fraction,
                        self.crop,
                        rng,
                        self.scale,
                        self.ratio,
                        max_pixels=self.max_pixels,
                    )
                    plan = (rw, rh, x0, y0, self.size[1], self.size[0])
            rw, rh, x0, y0, out_w, out_h = plan
            return upright_rgb(frame, rw, rh)[y0 : y0 + out_h, x0 : x0 + out_w]

        pixels = list(convert_once(frames, convert))
        if pixels and flip_draw(self.flip, rng):  # one draw per clip, after the crop's
            pixels = [np.ascontiguousarray(p[:, ::-1]) for p in pixels]
        return pixels

    @plain_errors()
    def materialize(
        self, data: bytes, ext: str, max_bytes: int = MAX_DECODED_BYTES
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Every frame on screen at `fps` from the start to the end, at `resized_size`; frame
        `k` is the one on screen at `first + k / fps`, `first` chosen so that the centre clip
        starts on a kept frame. More than `max_bytes` of frames is refused as it is reached."""
        with self._opened(data) as (container, stream, fps, total):
            centre = clip_start(total, self.num_frames / fps, "center", None)
            k0 = math.floor(centre * fps + 1e-9)
            # the centre clip's targets exactly as `decode_bytes` computes them: start + i / fps
            targets = (centre + (k - k0) / fps for k in itertools.count())
            size: tuple[int, int] | None = None

            def convert(frame: av.VideoFrame) -> np.ndarray:
                nonlocal size
                if size is None:
                    w, h = upright_size(frame)
                    size = (
                        (w, h)
                        if self.size is None
                        else resized_size(
                            w, h, self.size, self.crop_fraction, max_pixels=self.max_pixels
                        )
                    )
                return upright_rgb(frame, *size)

            frames: list[np.ndarray] = []
            for picture in convert_once(frames_at(container, stream, targets, total), convert):
                if (len(frames) + 1) * picture.nbytes > max_bytes:
                    raise ValueError(f"over {max_bytes:,} bytes of frames at {fps:g} fps")
                frames.append(picture)
        if not frames:
            raise ValueError("no video frames")
        return np.stack(frames), {"fps": fps, "total": total, "first": centre - k0 / fps}

    def from_materialized(
        self, array: np.ndarray, meta: Mapping[str, float], rng: np.random.Generator | None
    ) -> Field:
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8 or not len(array):
            raise ValueError(f"materialised video is {array.dtype} {array.shape}, not uint8 frames")
        fps, total, first = meta.get("fps", 0.0), meta.get("total", 0.0), meta.get("first", 0.0)
        if not fps > 0:
            raise ValueError(f"materialised video has no frame rate ({fps})")
        start = clip_start(total, self.num_frames / fps, self.crop, rng)
        k = min(max(round((start - first) * fps), 0), max(0, len(array) - self.num_frames))
        frames = array[k : k + self.num_frames]
        h, w = frames.shape[1:3]
        if self.size is not None:  # kept at `resized_size`, which maps to itself (± rounding)
            kw, kh = resized_size(w, h, self.size, self.crop_fraction, max_pixels=self.max_pixels)
            if w > kw + 1 or h > kh + 1:  # (smaller than the crop: `crop_origin` says so)
                raise ValueError(
                    f"materialised frames are {w}×{h}: this field keeps {kw}×{kh} frames for "
                    "its crop (the member was made with other options, or edited), so a crop "
                    "of these would be another field of view"
                )
        if self.size is not None and self.scale is None:
            x0, y0 = crop_origin(w, h, self.size, self.crop, rng)
            frames = frames[:, y0 : y0 + self.size[0], x0 : x0 + self.size[1]]
        clip = torch.from_numpy(np.array(frames))  # the copy: only the crop
        if self.size is not None and self.scale is not None:
            plan = resized_crop_plan(w, h, self.size, self.scale, self.ratio, rng)
            clip = resize_crop(clip, plan, self.size)
        if flip_draw(self.flip, rng):  # one draw per clip, after the crop's
            clip = clip.flip(2)
        return self._clip(clip)

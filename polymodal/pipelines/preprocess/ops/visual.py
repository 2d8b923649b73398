"""Image and point-cloud ops: resize / re-encode images, subsample point clouds."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from polymodal.codecs.images import open_image
from polymodal.codecs.points import encode_ply, read_points
from polymodal.pipelines.preprocess.ops.base import (
    Op,
    Result,
    Sample,
    media_members,
    register_op,
    replace_member,
)
from polymodal.seeds import stable_seed

# file type → Pillow format; anything else is written as PNG (lossless, keeps alpha)
IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


@register_op("resize_image")
class ResizeImage(Op):
    """Scale every image member so its shorter side is `size` (never up; EXIF orientation
    applied) and re-encode it as `format` (jpg, png, webp; default: keep the file type).

    JPEGs are decoded at a reduced DCT scale when that still leaves at least `size` pixels
    (Pillow's draft mode), which makes shrinking large photos several times cheaper.
    """

    def __init__(
        self,
        size: int | None = None,
        format: str | None = None,
        quality: int = 90,
        ext: str | None = None,
        max_pixels: int = 16384 * 16384,
    ) -> None:
        if format is not None and format not in IMAGE_FORMATS:
            raise ValueError(f"format must be one of {sorted(IMAGE_FORMATS)}, got {format!r}")
        self.size, self.format, self.quality = size, format, quality
        self.ext, self.max_pixels = ext, max_pixels

    def __call__(self, sample: Sample) -> Result:
        for ext in media_members(sample, "image", self.ext):
            file_type = self.format or ext.rsplit(".", 1)[-1]
            file_type = file_type if file_type in IMAGE_FORMATS else "png"
            replace_member(sample, ext, file_type, self._convert(sample[ext], file_type))
        return sample

    def _convert(self, data: bytes, file_type: str) -> bytes:
        with open_image(data) as source:
            img: Image.Image = source
            if img.width * img.height > self.max_pixels:
                raise ValueError(f"{img.width}×{img.height} pixels, over max_pixels")
            if self.size and img.format == "JPEG":
                scale = self.size / min(img.size)
                img.draft("RGB", (round(img.width * scale), round(img.height * scale)))
            img = ImageOps.exif_transpose(img)
            mode = "RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB"
            if img.mode == "L":
                mode = "L"
            if IMAGE_FORMATS[file_type] == "JPEG":
                mode = "L" if mode == "L" else "RGB"
            img = img.convert(mode)
            if self.size and min(img.size) > self.size:
                scale = self.size / min(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
            out = io.BytesIO()
            img.save(out, format=IMAGE_FORMATS[file_type], quality=self.quality)
            return out.getvalue()


@register_op("subsample_points")
class SubsamplePoints(Op):
    """Keep `points` points of every point cloud (npy, ply, off, xyz, pts, npz), drawn without
    replacement from a generator seeded by the sample key and `seed` (the same points on every
    run and worker) and kept in file order; clouds with fewer points are kept whole. Written
    back as npy where the input was npy, else as binary PLY (float32 x, y, z, f0, f1, ...)."""

    def __init__(
        self, points: int, seed: int = 0, ext: str | None = None, max_points: int = 10_000_000
    ) -> None:
        if points < 1:
            raise ValueError(f"points must be positive, got {points}")
        self.points, self.seed, self.ext, self.max_points = points, seed, ext, max_points

    def __call__(self, sample: Sample) -> Result:
        members = media_members(sample, "pointcloud", self.ext)
        if self.ext is None:
            members += [e for e in sample if e.rsplit(".", 1)[-1] == "npy"]
        for ext in members:
            file_type = ext.rsplit(".", 1)[-1]
            cloud = read_points(sample[ext], file_type, self.max_points)
            if len(cloud) > self.points:
                rng = np.random.default_rng(stable_seed(sample["__key__"], self.seed))
                cloud = cloud[np.sort(rng.choice(len(cloud), self.points, replace=False))]
            if file_type == "npy":
                buf = io.BytesIO()
                np.save(buf, cloud, allow_pickle=False)
                replace_member(sample, ext, "npy", buf.getvalue())
            else:
                replace_member(sample, ext, "ply", encode_ply(cloud))
        return sample

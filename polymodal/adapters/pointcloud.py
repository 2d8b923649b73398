"""Point clouds: npy / npz / ply / off / xyz / pts → float32 `[N, 3+F]` with `coords` = xyz."""

from __future__ import annotations

import io
import re

import numpy as np
import torch

from polymodal.perceiver.io import PointCloudInput

from .base import Adapter, Field, FieldInput, register

_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_MAX_HEADER = 64 * 1024


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

    extensions = ("npy", "npz", "ply", "off", "xyz", "pts")

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
        return FieldInput(PointCloudInput(features, num_bands), ("values", "coords", "mask"))

    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        reader = {"npy": _read_npy, "npz": _read_npz, "ply": self._read_ply, "off": _read_off}
        points = reader.get(ext, _read_table)(data)
        if points.ndim != 2 or points.shape[1] < 3 or points.shape[0] == 0:
            raise ValueError(f"expected a non-empty [N, 3+F] array, got shape {points.shape}")
        if len(points) > self.max_points:
            raise ValueError(f"{len(points)} points, over max_points={self.max_points}")
        points = points.astype(np.float32)
        if not np.isfinite(points).all():
            raise ValueError("NaN or infinite values")
        points = _sample(points, self.num_points, rng)
        lo, hi = points[:, :3].min(0), points[:, :3].max(0)
        half_extent = float((hi - lo).max()) / 2 or 1.0
        points[:, :3] = (points[:, :3] - (lo + hi) / 2) / half_extent
        values = torch.from_numpy(points)
        return Field(values=values, coords=values[:, :3])

    def _read_ply(self, data: bytes) -> np.ndarray:
        """The vertex element of an ascii or binary PLY; it must be the first element, as every
        common writer puts it, and elements after it (faces) are ignored."""
        end = data.find(b"end_header", 0, _MAX_HEADER)
        if not data.startswith(b"ply") or end < 0:
            raise ValueError("not a PLY file (no 'ply' magic or no end_header)")
        body_start = data.index(b"\n", end) + 1
        fmt, count, props = None, None, []
        for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
            words = line.split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "format" and len(words) >= 2 and words[1] in _PLY_FORMATS:
                fmt = words[1]
            elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
                if count is not None:
                    break
                if words[1] != "vertex":
                    raise ValueError(f"PLY element {words[1]!r} before the vertices")
                count = int(words[2])
            elif words[0] == "property" and len(words) == 3 and words[1] in _PLY_TYPES:
                props.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise ValueError(f"bad or unsupported PLY header line {line!r}")
        if fmt is None or count is None or [p for p, _ in props[:3]] != ["x", "y", "z"]:
            raise ValueError("PLY header needs a format and a vertex element starting x, y, z")
        if count > self.max_points:
            raise ValueError(f"{count} points, over max_points={self.max_points}")
        order = _PLY_FORMATS[fmt]
        if order is None:
            rows = data[body_start:].split(b"\n", count)[:count]
            table = np.loadtxt(io.BytesIO(b"\n".join(rows)), dtype=np.float64, ndmin=2)
            if table.shape != (count, len(props)):
                raise ValueError(
                    f"PLY body has shape {table.shape}, header says {count} × {len(props)}"
                )
            return table
        dtype = np.dtype([(name, order + code) for name, code in props])
        if len(data) - body_start < count * dtype.itemsize:
            raise ValueError(
                f"PLY body is truncated: {count} vertices need {count * dtype.itemsize} bytes"
            )
        rec = np.frombuffer(data, dtype=dtype, count=count, offset=body_start)
        return np.stack([rec[name].astype(np.float64) for name, _ in props], axis=1)


def _read_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _read_npz(data: bytes) -> np.ndarray:
    """The `points` array of an npz, or its only / first array."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        names = list(npz.files)
        if not names:
            raise ValueError("empty npz archive")
        return npz["points" if "points" in names else names[0]]


def _read_off(data: bytes) -> np.ndarray:
    """Vertices of an OFF mesh (`OFF`, then `nv nf ne`, possibly on the same line)."""
    lines = [ln.split("#")[0].strip() for ln in data.decode("ascii").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].startswith("OFF"):
        raise ValueError("not an OFF file (no 'OFF' magic)")
    counts = lines[0][3:].split() or lines[1].split()
    body = lines[1:] if lines[0][3:].split() else lines[2:]
    nv = int(counts[0])
    if nv > len(body):
        raise ValueError(f"OFF header says {nv} vertices, file has {len(body)} lines")
    return np.loadtxt(body[:nv], dtype=np.float64, ndmin=2)


def _read_table(data: bytes) -> np.ndarray:
    """Whitespace- or comma-separated rows (`.xyz`, `.pts`); a leading count line is skipped."""
    text = re.sub(rb"[,;]", b" ", data).decode("ascii")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if lines and len(lines[0].split()) == 1:
        lines = lines[1:]
    return np.loadtxt(lines, dtype=np.float64, ndmin=2)


def _sample(
    points: np.ndarray, num_points: int | None, rng: np.random.Generator | None
) -> np.ndarray:
    n = len(points)
    if num_points is None or num_points == n:
        return points.copy()
    if n > num_points:
        return points[rng.choice(n, num_points, replace=False)]
    extra = rng.integers(0, n, num_points - n)
    return points[np.concatenate([np.arange(n), extra])]

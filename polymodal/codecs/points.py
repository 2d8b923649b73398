"""Point-cloud files (npy / npz / ply / off / xyz / pts) → float32 `[N, 3+F]` arrays, and
back to PLY.

Shared by the point-cloud adapter and the preprocessing ops; numpy only. Never unpickles, and
refuses clouds over `max_points` before reading their bodies where the header tells the count
(PLY, and `.npy` / `.npz` arrays, whose header is read before any array is allocated: an npz
of 1 MB can inflate to gigabytes). No array over `MAX_ARRAY_BYTES` is allocated.
"""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np

from .arrays import check_array, npy_header

TEXT_HEADER_LINES = 64  # lines a text cloud (.off, .xyz, .pts) may have besides its points

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


def read_points(data: bytes, ext: str, max_points: int = 10_000_000) -> np.ndarray:
    """The points of a file of type `ext` as float32 `[N, 3+F]` (xyz first); ValueError if it is
    empty, not `[N, 3+F]`, over `max_points`, or holds NaN / infinite values."""
    if ext in ("npy", "npz"):
        points = (_read_npy if ext == "npy" else _read_npz)(data, max_points)
    elif ext == "ply":
        points = _read_ply(data, max_points)
    else:  # one point a line: more lines than points (plus a header) cannot be a valid cloud
        lines = data.count(b"\n")
        if lines > max_points + TEXT_HEADER_LINES:
            raise ValueError(f"{lines:,} lines, over max_points={max_points:,}")
        points = (_read_off if ext == "off" else _read_table)(data)
    if points.ndim != 2 or points.shape[1] < 3 or points.shape[0] == 0:
        raise ValueError(f"expected a non-empty [N, 3+F] array, got shape {points.shape}")
    if len(points) > max_points:
        raise ValueError(f"{len(points)} points, over max_points={max_points}")
    points = points.astype(np.float32)
    if not np.isfinite(points).all():
        raise ValueError("NaN or infinite values")
    return points


def _read_ply(data: bytes, max_points: int) -> np.ndarray:
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
    if count > max_points:
        raise ValueError(f"{count} points, over max_points={max_points}")
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


def _read_npy(data: bytes, max_points: int) -> np.ndarray:
    check_array(*npy_header(io.BytesIO(data)), max_points)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _read_npz(data: bytes, max_points: int) -> np.ndarray:
    """The `points` array of an npz, or its first array; its header is checked before the
    member is inflated."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [n for n in archive.namelist() if n.endswith(".npy")]
        if not names:
            raise ValueError("empty npz archive")
        name = "points.npy" if "points.npy" in names else names[0]
        with archive.open(name) as member:
            check_array(*npy_header(member), max_points)
        with archive.open(name) as member:
            return np.lib.format.read_array(member, allow_pickle=False)


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


def encode_ply(points: np.ndarray, binary: bool = True, names: list[str] | None = None) -> bytes:
    """A PLY file with one float vertex property per column (x, y, z, then `names`)."""
    names = ["x", "y", "z", *(names or [f"f{i}" for i in range(points.shape[1] - 3)])]
    fmt = "binary_little_endian" if binary else "ascii"
    header = [f"ply\nformat {fmt} 1.0\nelement vertex {len(points)}\n"]
    header += [f"property float {n}\n" for n in names]
    head = ("".join(header) + "end_header\n").encode("ascii")
    if binary:
        return head + points.astype("<f4").tobytes()
    body = "\n".join(" ".join(f"{v:.6g}" for v in row) for row in points)
    return head + body.encode("ascii") + b"\n"

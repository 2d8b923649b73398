"""Materialised fields: a field's decoded array kept as a shard member, read back with a memory
copy, no media decode and nothing unpickled.

A member is, little-endian:

    b"PMARRAY1"      magic and format version (8 bytes)
    uint32 N         length of the JSON header (at most `MAX_HEADER_BYTES`)
    N bytes          UTF-8 JSON: {"dtype": "uint8", "shape": [T, H, W, 3],
                     "compression": "zstd" | "none", "meta": {name: number}}
    payload          the C-order array: raw, or one zstd frame that states its content size

Why not `.npy`: it carries neither compression nor the numbers a field needs to cut clips the
way the media would (frame rate, where frame 0 sits, the header's duration); `.npz` is a zip
with bombs of its own. Everything is checked from the header before anything is allocated:
the dtype from a short list, at most `MAX_DIMS` non-negative dimensions, a size under the
bound, and a payload that is exactly the array's bytes (raw) or a zstd frame stating exactly
that many (compressed), so a truncated or inflated member costs nothing to refuse.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import zstandard

MAGIC = b"PMARRAY1"
MAX_HEADER_BYTES = 2**16
MAX_DIMS = 4
MAX_DECODED_BYTES = 2**28  # 256 MiB: no materialised array is larger (a minute of 224² at 25 fps)
DTYPES = ("uint8", "int16", "float16", "float32")  # what adapters store; all little-endian
COMPRESSIONS = ("none", "zstd")


ZSTD_WORTH = 0.9  # compressed kept only below this share of the raw size: else raw reads faster


def encode_decoded(array: np.ndarray, meta: dict[str, float], level: int = 3) -> bytes:
    """A member holding `array` and `meta`, zstd-compressed at `level` where that saves at
    least a tenth (0: always raw); noisy pixels barely compress, and a raw array reads twice as
    fast. The same array and meta give the same bytes on every run (one thread, content size
    written)."""
    dtype = np.dtype(array.dtype).name
    if dtype not in DTYPES or array.ndim > MAX_DIMS:
        raise ValueError(f"cannot store a {dtype} array of {array.ndim} dimensions")
    raw = np.ascontiguousarray(array).astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    payload = raw.tobytes()
    compression = "none"
    if level:
        packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(payload)
        if len(packed) < ZSTD_WORTH * len(payload):
            payload, compression = packed, "zstd"
    header = {
        "dtype": dtype,
        "shape": list(array.shape),
        "compression": compression,
        "meta": {k: float(v) for k, v in sorted(meta.items())},
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + payload


def decode_decoded(
    data: bytes, max_bytes: int = MAX_DECODED_BYTES
) -> tuple[np.ndarray, dict[str, float]]:
    """The array and meta of a member; `ValueError` naming what is wrong with anything else,
    before allocating more than the member itself."""
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError("not a materialised field (no PMARRAY1 magic)")
    if len(data) < len(MAGIC) + 4:
        raise ValueError("materialised field cut short in its header")
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    if size > MAX_HEADER_BYTES or start + size > len(data):
        raise ValueError(f"header of {size:,} bytes does not fit the member or the bound")
    try:
        header = json.loads(data[start : start + size])
    except ValueError as exc:
        raise ValueError(f"header is not JSON: {exc}") from None
    dtype, shape, compression, meta = _checked_header(header)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise ValueError(f"array of shape {shape} takes {nbytes:,} bytes, over {max_bytes:,}")
    payload = memoryview(data)[start + size :]
    if compression == "none":
        if len(payload) != nbytes:
            raise ValueError(f"payload is {len(payload):,} bytes, shape {shape} needs {nbytes:,}")
        raw: bytes | memoryview = payload
    else:
        try:
            stated = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as exc:
            raise ValueError(f"payload is not a zstd frame: {exc}") from None
        if stated != nbytes:
            raise ValueError(f"zstd frame states {stated:,} bytes, shape {shape} needs {nbytes:,}")
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=nbytes)
        except zstandard.ZstdError as exc:
            raise ValueError(f"zstd payload does not decompress: {exc}") from None
        if len(raw) != nbytes:
            raise ValueError(f"zstd payload holds {len(raw):,} bytes, not {nbytes:,}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape), meta


def _checked_header(header: Any) -> tuple[np.dtype, tuple[int, ...], str, dict[str, float]]:
    if not isinstance(header, dict):
        raise ValueError("header is not a table")
    dtype, shape = header.get("dtype"), header.get("shape")
    compression, meta = header.get("compression"), header.get("meta", {})
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_DIMS
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ValueError(f"shape {shape!r} is not up to {MAX_DIMS} non-negative integers")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    if not (
        isinstance(meta, dict)
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in meta.values()
        )
    ):
        raise ValueError("meta must map names to finite numbers")
    return np.dtype(dtype).newbyteorder("<"), tuple(shape), compression, meta

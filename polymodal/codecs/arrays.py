"""`.npy` arrays read safely: the header first (shape, dtype, no object arrays), so an array is
refused before it is allocated and nothing is ever unpickled."""

from __future__ import annotations

from typing import IO

import numpy as np

MAX_ARRAY_BYTES = 2**30  # no .npy / .npz array larger than this is allocated


def npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """`(shape, dtype)` from the header of an `.npy` stream, reading nothing past it; object
    arrays (which only a pickle could load) are refused."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0
    if version != (1, 0):
        read = np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject:
        raise ValueError("object arrays are never loaded (they need a pickle)")
    return shape, dtype


def check_array(shape: tuple[int, ...], dtype: np.dtype, max_rows: int) -> None:
    """Refuse, from its header, an array over `max_rows` rows or `MAX_ARRAY_BYTES` bytes."""
    if shape and shape[0] > max_rows:
        raise ValueError(f"array of {shape[0]:,} rows, over max_points={max_rows:,}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise ValueError(f"array of shape {shape} takes {nbytes:,} bytes, over {MAX_ARRAY_BYTES:,}")

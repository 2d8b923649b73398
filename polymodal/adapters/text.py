"""Text as Perceiver IO byte ids: UTF-8 bytes shifted past six reserved special ids.

The byte vocabulary needs no tokenizer and no vocabulary file, which is why Perceiver IO uses it;
the ids (0..261) do not fit uint8, so they are int16.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Sequence

import numpy as np
import torch

from polymodal.codecs.arrays import npy_header
from polymodal.perceiver.io import TextInput

from .base import Adapter, Preview, load_json
from .field import Field
from .field_input import FieldInput
from .registry import BUILT_IN, register

PAD, BOS, EOS, MASK, CLS, SEP = range(6)
NUM_SPECIAL = 6
VOCAB_SIZE = 256 + NUM_SPECIAL


def encode_bytes(text: str | bytes) -> np.ndarray:
    """UTF-8 bytes → byte-vocabulary ids (byte value + 6), as int16."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return np.frombuffer(raw, dtype=np.uint8).astype(np.int16) + NUM_SPECIAL


def decode_ids(ids: np.ndarray | torch.Tensor) -> str:
    """Byte-vocabulary ids → text; special ids are dropped, invalid UTF-8 replaced."""
    arr = np.asarray(ids).reshape(-1)
    raw = (arr[arr >= NUM_SPECIAL] - NUM_SPECIAL).astype(np.uint8).tobytes()
    return raw.decode("utf-8", errors="replace")


@register("text")
class TextAdapter(Adapter):
    """UTF-8 text (or pre-tokenized ids) → int16 ids `[L, 1]`, grid `(L,)`.

    `.txt` is UTF-8 text. `.npy` holds pre-tokenized integer ids; `.json` holds either a list of
    ids or a string. `max_length` truncates (after `cls`/`sep` are added when `add_special`).

    Only what the field keeps is decoded: the first `max_length` bytes of a text (each byte is
    one id; they must be valid UTF-8, a character cut at the end aside) and the first
    `max_length` ids of an `.npy` (checked from its header). JSON cannot be parsed in part, so
    a `.json` member over `max_json_bytes` is refused.
    """

    extensions = BUILT_IN["text"].extensions
    mixable = False
    default_for = BUILT_IN["text"].default_for

    def __init__(
        self,
        max_length: int = 2048,
        add_special: bool = False,
        max_json_bytes: int = 16 * 2**20,
        extensions: list[str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(extensions, field)
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if max_json_bytes < 1:
            raise ValueError(f"max_json_bytes must be positive, got {max_json_bytes}")
        self.max_length = max_length
        self.add_special = add_special
        self.max_json_bytes = max_json_bytes

    def encoder(self, dim: int = 256) -> FieldInput:
        """Byte embeddings plus learned positions (Perceiver IO's language input)."""
        return FieldInput(
            TextInput(vocab_size=VOCAB_SIZE, dim=dim, max_length=self.max_length),
            ("values", "mask"),
        )

    def probe(self, data: bytes, ext: str) -> dict[str, float]:
        return {"bytes": len(data)}

    def preview(self, data: bytes, ext: str, classes: Sequence[str] | None) -> Preview:
        if ext == "npy":  # ids of some tokenizer: only their number means something here
            return Preview(text=f".npy: {len(self.decode({ext: data}).values):,} token ids")
        return Preview(text=data[: self.max_length].decode("utf-8", errors="replace"))

    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        keep = max(self.max_length - 2, 0) if self.add_special else self.max_length
        if ext == "npy":
            ids = _checked_ids(_npy_head(data, keep))
        elif ext == "json":
            obj = load_json(data, self.max_json_bytes)
            ids = encode_bytes(obj) if isinstance(obj, str) else _checked_ids(np.asarray(obj))
        else:
            head = data[:keep]
            # strict: invalid UTF-8 is a decode error; a character cut by `keep` is not
            codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) == len(data))
            ids = encode_bytes(head)
        if self.add_special:
            ids = np.concatenate([[CLS], ids[: self.max_length - 2], [SEP]]).astype(ids.dtype)
        ids = ids[: self.max_length]
        if len(ids) == 0:
            raise ValueError("no tokens")
        return Field(
            values=torch.from_numpy(np.ascontiguousarray(ids)).reshape(-1, 1), grid=(len(ids),)
        )


def _npy_head(data: bytes, count: int) -> np.ndarray:
    """The first `count` values of a 1-d `.npy`, read without loading the rest."""
    f = io.BytesIO(data)
    shape, dtype = npy_header(f)
    if len(shape) != 1:
        raise ValueError(f"token ids must be a 1-d integer array, got shape {shape}")
    count = min(shape[0], count)
    if f.tell() + count * dtype.itemsize > len(data):
        raise ValueError(f"npy body is truncated: {shape[0]} ids need more bytes than there are")
    return np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())


def _checked_ids(arr: np.ndarray) -> np.ndarray:
    """Pre-tokenized ids as the smallest signed dtype that holds them (int16 or int32)."""
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"token ids must be a 1-d integer array, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids must be non-negative int32 values")
    small = arr.size == 0 or arr.max() <= np.iinfo(np.int16).max
    return arr.astype(np.int16 if small else np.int32)

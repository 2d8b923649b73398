"""Parquet shards, the second format behind the same index: one row per sample, a `__key__`
string column and one column per extension, in row groups small enough for a streaming
reader to hold one at a time. Written and read with pyarrow.

The shards carry Hugging Face `datasets` feature metadata, so `load_dataset("parquet", ...)`
decodes them: image and audio members are `struct<bytes, path>` columns (features `Image` and
`Audio`), the label `cls` an int64 column (`ClassLabel` when the class names are known), `txt`
a string column (UTF-8), other members binary. Shards written before, with binary columns
only, read the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polymodal.adapters.registry import modality_of

from .shard import Shard, members

PARQUET_GROUP_BYTES = 32 * 2**20  # a row group is what a streaming reader holds at once
PARQUET_GROUP_ROWS = 1024


class ParquetShard(Shard):
    """A Parquet shard: one row per sample, `__key__` plus one binary column per extension,
    in row groups small enough for a streaming reader to hold one."""

    suffix = ".parquet"

    def __init__(
        self,
        directory: Path,
        name: str,
        extensions: Iterable[str],
        classes: Sequence[str] | None = None,
        writeback: bool = True,
    ) -> None:
        super().__init__(directory, name, writeback)
        self.extensions = sorted(extensions)
        self.kinds = {ext: _feature_kind(ext) for ext in self.extensions}
        columns = [pa.field("__key__", pa.string(), nullable=False)]
        columns += [pa.field(ext, _ARROW_TYPES[self.kinds[ext]]) for ext in self.extensions]
        features = {"__key__": {"dtype": "string", "_type": "Value"}}
        features |= {ext: _feature(self.kinds[ext], classes) for ext in self.extensions}
        metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        self.schema = pa.schema(columns, metadata=metadata)
        self.writer = pq.ParquetWriter(self.out, self.schema, compression="none")
        self.rows: list[dict[str, Any]] = []
        self.pending = 0

    def add(self, sample: Mapping[str, Any]) -> None:
        body = members(sample)
        unknown = set(body) - set(self.extensions)
        if unknown:
            key = sample.get("__key__")
            raise ValueError(
                f"sample {key!r}: extensions {sorted(unknown)} are not columns of this "
                f"Parquet shard {self.extensions}"
            )
        key = str(sample["__key__"])
        row: dict[str, Any] = {"__key__": key}
        for ext, data in body.items():
            row[ext] = _cell(self.kinds[ext], key, ext, data)
        self.rows.append(row)
        self.pending += sum(len(v) for v in body.values())
        self.stats.add(body)
        if len(self.rows) >= PARQUET_GROUP_ROWS or self.pending >= PARQUET_GROUP_BYTES:
            self._flush_group()

    def _flush_group(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows, self.pending = [], 0

    def _close_body(self) -> None:
        self._flush_group()
        self.writer.close()


MAX_ROW_GROUP_BYTES = 2 * 2**30  # the most one Parquet row group may take once read


def read_parquet_samples(
    fileobj: IO[bytes], url: str, start: int = 0
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Samples of a Parquet shard from row `start` on, as `(row, sample)`; one row group in
    memory at a time, and the groups before `start` are never read. A row group whose footer
    says it takes more than `MAX_ROW_GROUP_BYTES` is refused before it is read."""
    pf = pq.ParquetFile(fileobj)
    for g in range(pf.num_row_groups):
        size = pf.metadata.row_group(g).total_byte_size
        if size > MAX_ROW_GROUP_BYTES:
            raise ValueError(
                f"{url}: row group {g} takes {size:,} bytes, over {MAX_ROW_GROUP_BYTES:,}"
            )
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    first_rows = np.cumsum([0, *sizes])
    group = int(np.searchsorted(first_rows, start, side="right") - 1)
    for g in range(max(group, 0), pf.num_row_groups):
        table = pf.read_row_group(g)
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        for i in range(table.num_rows):
            row = int(first_rows[g]) + i
            if row < start:
                continue
            sample: dict[str, Any] = {"__key__": columns["__key__"][i], "__url__": url}
            for name, values in columns.items():
                if name != "__key__" and values[i] is not None:
                    sample[name] = _member(values[i])
            yield row, sample


_MEDIA = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF's Image / Audio
_ARROW_TYPES = {
    "image": _MEDIA,
    "audio": _MEDIA,
    "label": pa.int64(),
    "text": pa.string(),
    "binary": pa.binary(),
}


def _feature_kind(ext: str) -> str:
    """How a member is stored: image or audio (HF's struct), label (the class id), text, or
    bytes."""
    if ext == "cls":
        return "label"
    if ext.rsplit(".", 1)[-1] == "txt":
        return "text"
    modality = modality_of(ext)
    return modality if modality in ("image", "audio") else "binary"


def _feature(kind: str, classes: Sequence[str] | None) -> dict[str, Any]:
    if kind == "label":
        if classes:
            return {"names": list(classes), "_type": "ClassLabel"}
        return {"dtype": "int64", "_type": "Value"}
    if kind in ("image", "audio"):
        return {"_type": kind.capitalize()}
    return {"dtype": "string" if kind == "text" else "binary", "_type": "Value"}


def _cell(kind: str, key: str, ext: str, data: bytes) -> Any:
    if kind in ("image", "audio"):
        return {"bytes": data, "path": f"{key}.{ext}"}
    if kind == "label":
        text = data.decode("utf-8", errors="replace").strip()
        if not text.lstrip("-").isdigit():
            raise ValueError(f"sample {key!r}: a Parquet shard's cls is a class id, got {text!r}")
        return int(text)
    if kind == "text":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"sample {key!r}: {ext} is not UTF-8 text ({exc})") from None
    return data


def _member(value: Any) -> bytes:
    """A cell as the member bytes a tar would hold (what the adapters read)."""
    if isinstance(value, dict):
        return value.get("bytes") or b""
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str):
        return value.encode("utf-8")
    return value

"""Parquet shards, the second format behind the same index: one row per sample, a `__key__`
string column and one binary column per extension, in row groups small enough for a streaming
reader to hold one at a time. Written and read with pyarrow.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .shard import Shard, members

PARQUET_GROUP_BYTES = 32 * 2**20  # a row group is what a streaming reader holds at once
PARQUET_GROUP_ROWS = 1024


class ParquetShard(Shard):
    """A Parquet shard: one row per sample, `__key__` plus one binary column per extension,
    in row groups small enough for a streaming reader to hold one."""

    suffix = ".parquet"

    def __init__(self, directory: Path, name: str, extensions: Iterable[str]) -> None:
        super().__init__(directory, name)
        self.extensions = sorted(extensions)
        columns = [pa.field("__key__", pa.string(), nullable=False)]
        columns += [pa.field(ext, pa.binary()) for ext in self.extensions]
        self.schema = pa.schema(columns)
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
        self.rows.append({"__key__": str(sample["__key__"]), **body})
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
                    sample[name] = values[i]
            yield row, sample

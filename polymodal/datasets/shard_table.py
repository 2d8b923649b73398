"""The index's per-shard facts as columns: one Arrow IPC file (`index.arrow`), memory-mapped.

Why columns: as Python objects a shard's entry costs ~1 KB in every process (a million shards:
+1.2 GB and 6–12 s of `json.loads` per rank), and a forked DataLoader worker copies every page
it merely walks, since reading an object writes its reference count. As Arrow columns a shard
is ~100 bytes in the page cache, mapped read-only and so shared by every process on the
machine; the plan reads the `samples` column as a numpy view, and a reader builds a
`ShardInfo` only for the shards it opens.

Columns: `name` (utf8), `samples` and `bytes` (int64), `sha256` (32 raw bytes) and one int64
column `field:EXT` per extension (the samples of the shard that have it; 0: none). The schema's
metadata holds the table's `digest` (`ShardTable.digest`), which `index.json` names too, so a table
and a header written by different jobs are never read as one dataset.

The file is untrusted input like the rest of the index: its structure is checked on open (types,
no nulls, offsets inside the buffers), its values by `ShardTable.problem`, vectorised so that
refusing a lying million-shard index costs what reading a good one does.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .files import write_atomic
from .shard_info import MIN_TAR_SAMPLE_BYTES, InvalidIndex, ShardInfo, shard_name_problem

TABLE_NAME = "index.arrow"
FIELD_PREFIX = "field:"
DIGEST_KEY = b"digest"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_INT64 = 2**63
# a superset of what `shard_name_problem` refuses: the names it matches are asked one by one
_SUSPECT_NAME = r"(^$)|(://)|(^[/~])|(\\)|(\x00)|((^|/)\.\.?(/|$))"


class ShardTable(Sequence[ShardInfo]):
    """The shards of an index, in its order: `samples`, `bytes` and `fields` as int64 numpy
    arrays (read-only views of the file when it is mapped), rows as `ShardInfo` on demand."""

    def __init__(
        self,
        table: pa.Table,
        where: str = TABLE_NAME,
        path: Path | None = None,
        stored_digest: str = "",
    ) -> None:
        # `path`: the mapped file, if any; `stored_digest`: the digest its metadata names
        self.where, self.path, self.stored_digest = where, path, stored_digest
        self._table = table
        self.names = _column(table, "name", where, (pa.string(), pa.large_string()))
        self.samples = _numbers(table, "samples", where)
        self.bytes = _numbers(table, "bytes", where)
        self._sha = _column(table, "sha256", where, (pa.binary(32),))
        self.fields = {
            name.removeprefix(FIELD_PREFIX): _numbers(table, name, where)
            for name in table.column_names
            if name.startswith(FIELD_PREFIX)
        }
        self._row = functools.lru_cache(maxsize=256)(self._build_row)

    # --- building ---

    @classmethod
    def from_infos(cls, infos: Sequence[ShardInfo]) -> ShardTable:
        """The table of shards a job just wrote (their facts are checked by their writer)."""
        return cls.from_columns(
            [s.name for s in infos],
            [s.samples for s in infos],
            [s.bytes for s in infos],
            [bytes.fromhex(s.sha256) for s in infos],
            [s.fields for s in infos],
        )

    @classmethod
    def from_entries(cls, entries: Sequence[Any], where: str) -> ShardTable:
        """The table of a version-1 `index.json`'s `shards` list, refusing (`InvalidIndex`,
        naming the shard) an entry of the wrong shape; its values are `problem`'s to judge."""
        names, samples, sizes, digests, fields = [], [], [], [], []
        for number, entry in enumerate(entries):
            at = f"{where}: shard {number}"
            if not isinstance(entry, dict):
                raise InvalidIndex(f"{at}: not a table")
            unknown = set(entry) - {*ShardInfo.__dataclass_fields__}
            if unknown:
                raise InvalidIndex(f"{at}: unknown keys {sorted(unknown)}")
            name = entry.get("name")
            if not isinstance(name, str):  # what a string may be is `problem`'s to judge
                raise InvalidIndex(f"{at}: {shard_name_problem(name)}")
            at = f"{at} ({name})"
            for count in ("samples", "bytes"):
                if not _is_int64(entry.get(count)):
                    raise InvalidIndex(
                        f"{at}: {count} must be a non-negative integer, got {entry.get(count)!r}"
                    )
            sha = entry.get("sha256")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise InvalidIndex(f"{at}: sha256 {sha!r} is not a sha256 digest")
            counts = entry.get("fields", {})
            if not isinstance(counts, dict) or not all(
                isinstance(k, str) and _is_int64(v) for k, v in counts.items()
            ):
                raise InvalidIndex(
                    f"{at}: field counts must be integers from 0 to its sample count"
                )
            names.append(name)
            samples.append(entry["samples"])
            sizes.append(entry["bytes"])
            digests.append(bytes.fromhex(sha))
            fields.append(counts)
        return cls.from_columns(names, samples, sizes, digests, fields)

    @classmethod
    def from_columns(
        cls,
        names: Sequence[str],
        samples: Sequence[int],
        sizes: Sequence[int],
        digests: Sequence[bytes],
        fields: Sequence[Mapping[str, int]],
    ) -> ShardTable:
        """A table of these columns, one entry per shard (`fields`: extension → count)."""
        extensions = sorted({ext for counts in fields for ext in counts})
        columns: dict[str, pa.Array] = {
            "name": pa.array(names, pa.string()),
            "samples": pa.array(samples, pa.int64()),
            "bytes": pa.array(sizes, pa.int64()),
            "sha256": pa.array(digests, pa.binary(32)),
        }
        for ext in extensions:
            columns[FIELD_PREFIX + ext] = pa.array([c.get(ext, 0) for c in fields], pa.int64())
        return cls(pa.table(columns))

    # --- reading and writing ---

    @classmethod
    def open(cls, source: Path | bytes, where: str) -> ShardTable:
        """The table in a local file (memory-mapped: shared by every process that opens it,
        and by forked workers) or in bytes read from a remote dataset."""
        try:
            if isinstance(source, Path):
                buffer: Any = pa.memory_map(str(source), "r")
            else:
                buffer = pa.py_buffer(source)
            reader = pa.ipc.open_file(buffer)
            table = reader.read_all()
            table.validate(full=True)  # offsets inside their buffers, before any kernel runs
        except (pa.ArrowException, OSError) as exc:
            raise InvalidIndex(f"{where}: not an Arrow shard table ({exc})") from None
        if any(table.column(n).num_chunks > 1 for n in table.column_names):
            table = table.combine_chunks()  # ours are one batch; a copy for anyone else's
        stored = (reader.schema.metadata or {}).get(DIGEST_KEY, b"").decode(errors="replace")
        return cls(table, where, source if isinstance(source, Path) else None, stored)

    def write(self, path: Path) -> str:
        """Write the table to `path` atomically; its digest."""
        digest = self.digest()
        table = self._table.replace_schema_metadata({DIGEST_KEY: digest.encode()})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        write_atomic(path, sink.getvalue().to_pybytes())
        return digest

    def __reduce__(self) -> tuple[Any, ...]:
        """A mapped table travels to another process as its path (opened again there, not
        copied through a pipe); an in-memory one as its columns."""
        if self.path is not None:
            return (ShardTable.open, (self.path, self.where))
        return (ShardTable, (self._table, self.where))

    @functools.cached_property
    def content_digest(self) -> str:
        """The digest hashed from the columns themselves."""
        digest = hashlib.sha256()
        names = self.names
        width = 8 if names.type == pa.large_string() else 4
        offsets = np.frombuffer(names.buffers()[1], dtype=f"<i{width}")
        offsets = offsets[names.offset : names.offset + len(self) + 1].astype("<i8")
        data = names.buffers()[2]
        parts: list[tuple[str, Any]] = [
            ("name", (offsets - offsets[0]).tobytes()),
            ("name", memoryview(data)[offsets[0] : offsets[-1]] if data is not None else b""),
            ("samples", self.samples.astype("<i8").tobytes()),
            ("bytes", self.bytes.astype("<i8").tobytes()),
            (
                "sha256",
                memoryview(self._sha.buffers()[1])[self._sha.offset * 32 :][: len(self) * 32],
            ),
            *(
                (FIELD_PREFIX + ext, c.astype("<i8").tobytes())
                for ext, c in sorted(self.fields.items())
            ),
        ]
        for name, part in parts:
            digest.update(name.encode() + b"\0")
            digest.update(part)
        return digest.hexdigest()

    def digest(self) -> str:
        """A sha256 over the columns' contents: the same for the same shards, whichever layout
        they were read from (so a resumed run knows its data by it). A mapped table's is the
        one its file names (which its header names too), not hashed again."""
        return self.stored_digest or self.content_digest

    # --- checking ---

    def problem(self, shard_format: str) -> str | None:
        """The first shard whose facts cannot be true, in words naming it, or None: counts
        non-negative, a tar sample takes at least one header, field counts within the sample
        count, names plain paths inside the dataset, no name twice."""
        negative = (self.samples < 0) | (self.bytes < 0)
        if negative.any():
            n = int(np.argmax(negative))
            key = "samples" if self.samples[n] < 0 else "bytes"
            value = self.samples[n] if key == "samples" else self.bytes[n]
            return f"{self._at(n)}: {key} must be a non-negative integer, got {int(value)}"
        if shard_format == "tar":
            crammed = self.samples > self.bytes // MIN_TAR_SAMPLE_BYTES
            if crammed.any():
                n = int(np.argmax(crammed))
                return (
                    f"{self._at(n)}: {int(self.samples[n]):,} samples cannot fit in "
                    f"{int(self.bytes[n]):,} bytes (a tar sample takes at least "
                    f"{MIN_TAR_SAMPLE_BYTES})"
                )
        for counts in self.fields.values():
            wrong = (counts < 0) | (counts > self.samples)
            if wrong.any():
                n = int(np.argmax(wrong))
                return f"{self._at(n)}: field counts must be integers from 0 to its sample count"
        suspects = pc.match_substring_regex(self.names, _SUSPECT_NAME)
        for n in pc.indices_nonzero(suspects).to_pylist():
            problem = shard_name_problem(self.name(int(n)))
            if problem is not None:
                return f"shard {n}: {problem}"
        increasing = len(self) < 2 or pc.all(pc.less(self.names[:-1], self.names[1:])).as_py()
        # names in increasing order (ours always are) are distinct; others need a count
        if not increasing and pc.count_distinct(self.names).as_py() != len(self):
            seen: set[str] = set()
            for name in self.names.to_pylist():
                if name in seen:
                    return f"shard {name!r} is listed twice"
                seen.add(name)
        return None

    def _at(self, n: int) -> str:
        return f"shard {n} ({self.name(n)})"

    # --- rows ---

    def name(self, n: int) -> str:
        return str(self.names[n].as_py())

    def __len__(self) -> int:
        return self._table.num_rows

    @overload
    def __getitem__(self, n: int) -> ShardInfo: ...
    @overload
    def __getitem__(self, n: slice) -> list[ShardInfo]: ...
    def __getitem__(self, n: int | slice) -> ShardInfo | list[ShardInfo]:
        if isinstance(n, slice):
            return [self._row(i) for i in range(*n.indices(len(self)))]
        if not -len(self) <= n < len(self):
            raise IndexError(f"shard {n} of {len(self)}")
        return self._row(n % len(self))

    def __iter__(self) -> Iterator[ShardInfo]:
        """Every row (whole-dataset jobs: O(shards) objects, built in one pass)."""
        names, digests = self.names.to_pylist(), self._sha.to_pylist()
        fields = {ext: counts.tolist() for ext, counts in self.fields.items()}
        for n, (name, sha) in enumerate(zip(names, digests, strict=True)):
            counts = {ext: c[n] for ext, c in fields.items() if c[n]}
            yield ShardInfo(name, int(self.samples[n]), int(self.bytes[n]), sha.hex(), counts)

    def _build_row(self, n: int) -> ShardInfo:
        counts = {ext: int(c[n]) for ext, c in self.fields.items() if c[n]}
        sha = self._sha[n].as_py().hex()
        return ShardInfo(self.name(n), int(self.samples[n]), int(self.bytes[n]), sha, counts)


def _column(table: pa.Table, name: str, where: str, types: tuple[pa.DataType, ...]) -> pa.Array:
    if name not in table.column_names:
        raise InvalidIndex(f"{where}: the shard table has no {name!r} column")
    column = table.column(name)
    if column.type not in types or column.null_count:
        raise InvalidIndex(
            f"{where}: column {name!r} must be {' or '.join(map(str, types))} without nulls, "
            f"got {column.type} with {column.null_count} nulls"
        )
    return column.chunk(0) if column.num_chunks else pa.array([], column.type)


def _numbers(table: pa.Table, name: str, where: str) -> np.ndarray:
    """An int64 column as a read-only numpy view of its buffer (`to_numpy` would import
    pandas: a third of a second and 40 MB per process)."""
    column = _column(table, name, where, (pa.int64(),))
    data = column.buffers()[1]
    if data is None:
        return np.zeros(0, np.int64)
    view = np.frombuffer(data, dtype="<i8")[column.offset : column.offset + len(column)]
    view.flags.writeable = False
    return view


def _is_int64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64

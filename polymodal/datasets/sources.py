"""What a build reads: a folder tree, a CSV / JSONL / Parquet manifest, or a Hugging Face
Parquet export, listed as planned samples (each member: where its bytes are and how many), with
every input that cannot be used as a reported `Problem`. Nothing is read but listings and
headers; a pure function of the source."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import stat as stat_module
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from polymodal.adapters.registry import extension_table, is_known

from .index import INDEX_NAME, PLAN_NAME, REJECTS_NAME, TABLE_NAME
from .layout import Problem, check_key, split_name
from .shard import tar_sample_size

LABELS_CSV = "labels.csv"
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Ref:
    """Where one member's bytes come from: a file, inline bytes, or a Parquet cell."""

    size: int
    path: str = ""
    mtime_ns: int = 0
    data: bytes = b""
    row_group: int = -1
    row: int = -1
    column: str = ""

    def read(self) -> bytes:
        if self.row_group >= 0:
            return _parquet_cell(self.path, self.row_group, self.row, self.column)
        if self.path:
            with open(self.path, "rb") as f:
                return f.read()
        return self.data

    def identity(self) -> list[Any]:
        """What the fingerprint sees: content hash for inline bytes, location and stat else."""
        if self.path:
            return [self.path, self.row_group, self.row, self.column, self.size, self.mtime_ns]
        return [hashlib.sha256(self.data).hexdigest()]


@dataclass(frozen=True)
class PlannedSample:
    key: str
    members: tuple[tuple[str, Ref], ...]

    @property
    def tar_size(self) -> int:
        return tar_sample_size(self.key, {ext: ref.size for ext, ref in self.members})


@dataclass
class SourcePlan:
    """What a source holds: usable samples, rejected inputs, and class names if known; a
    source that names its splits (Hub-style `train-00000-of-00002.parquet` shards) says which
    split each sample key is in."""

    samples: list[PlannedSample]
    problems: list[Problem] = field(default_factory=list)
    classes: list[str] | None = None
    split_of: dict[str, str] | None = None


HUB_SHARD = re.compile(r"^[A-Za-z0-9_]+-\d+-of-\d+\.parquet$")  # train-00000-of-00003


def plan_source(src: Path, allow_paths: Path | None = None) -> SourcePlan:
    """Read a source's listing: a folder tree, a folder of Hub-style Parquet shards, a CSV /
    JSONL / Parquet manifest, or a Hugging Face datasets Parquet export (a Parquet file with
    `huggingface` schema metadata). `allow_paths`: the folder that path-only Image / Audio
    cells may point into (default: the Parquet file's own folder)."""
    src = Path(src)
    if src.is_dir():
        hub = sorted(p for p in src.rglob("*.parquet") if HUB_SHARD.match(p.name))
        return plan_hub_folder(src, hub, allow_paths) if hub else plan_folder(src)
    if src.suffix == ".parquet" and b"huggingface" in (pq.read_schema(src).metadata or {}):
        return plan_hf_parquet(src, allow_paths)
    if src.suffix in MANIFEST_SUFFIXES:
        return plan_manifest(src)
    raise ValueError(
        f"{src}: not a folder, a manifest ({', '.join(MANIFEST_SUFFIXES)}) or a "
        "Hugging Face Parquet export"
    )


def _known(ext: str) -> bool:

    return is_known(ext)


def _known_chain(ext: str) -> bool:
    """Whether an extension is one some adapter reads whole (`depth.png` once a plugin
    registers it) or every dot-separated part of it is (`jpg`, `cls.txt`; `seg.png` is not)."""

    return ext in extension_table() or all(_known(part) for part in ext.split("."))


def dotted_stem_reason(name: str, key: str, ext: str) -> str | None:
    """Why a file whose name has dots beyond a known extension chain cannot join a sample.

    WebDataset takes the key up to the first dot of a name, so `holiday.2019.jpg` and
    `holiday.2020.jpg` would both be members of one sample `holiday`; the key cannot keep its
    dots either (a reader would split there again). Such files are refused, never merged.
    """
    if _known_chain(ext):
        return None
    base = name.rsplit("/", 1)[-1]
    suggestion = base.rsplit(".", 1)[0].replace(".", "_") + "." + ext.rsplit(".", 1)[-1]
    return (
        f"dotted file name: as WebDataset reads it, key {key!r} with extension {ext!r} would "
        f"merge with every other {key.rsplit('/', 1)[-1]!r}.* file; rename it "
        f"(e.g. {suggestion!r}) or list it in a manifest with a key column"
    )


_SPECIAL = {
    stat_module.S_IFIFO: "a FIFO",
    stat_module.S_IFCHR: "a character device",
    stat_module.S_IFBLK: "a block device",
    stat_module.S_IFSOCK: "a socket",
    stat_module.S_IFDIR: "a folder",
}


def _not_regular(mode: int, link: bool) -> str | None:
    """Why a source entry is not read, when it is not a regular file (checked from its
    `stat`, never by opening it)."""
    if stat_module.S_ISREG(mode):
        return None
    kind = _SPECIAL.get(stat_module.S_IFMT(mode), "not a regular file")
    return f"{'a link to ' if link else ''}{kind}: only regular files are read"


def _missing_or_special(path: Path) -> str:
    """Why a listed path is not read: it is not there, or not a regular file (never opened)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "file not found"
    return _not_regular(mode, path.is_symlink()) or "file not found"


def plan_folder(root: Path) -> SourcePlan:
    """Files sharing a key (path up to the first dot of the name) form a sample, when the rest
    of the name is a chain of known extensions (`clip.mp4`, `clip.cls`); other dotted names are
    refused with the reason (`dotted_stem_reason`), never merged.

    Labels come from `labels.csv` (columns `key,label`) at the root, else from `.cls` files
    next to the media, else from class sub-folders (`root/dog/001.jpg`) when no sample lies at
    the top level.
    """
    problems: list[Problem] = []
    groups: dict[str, dict[str, Ref]] = {}
    top = str(root)
    for dirpath, dirnames, filenames in os.walk(top):  # strings, not Paths: 10⁶ files add up
        dirnames.sort()
        prefix = os.path.relpath(dirpath, top).replace(os.sep, "/") + "/"
        for filename in sorted(filenames):
            rel = filename if prefix == "./" else prefix + filename
            if rel in (LABELS_CSV, REJECTS_NAME, INDEX_NAME, TABLE_NAME, PLAN_NAME):
                continue
            parts = split_name(rel)
            if parts is None or not _known(parts[1]):
                problems.append(Problem(rel, "unsupported file type"))
                continue
            dotted = dotted_stem_reason(rel, *parts)
            if dotted is not None:
                problems.append(Problem(rel, dotted, parts[0]))
                continue
            path = os.path.join(dirpath, filename)
            try:
                stat = os.stat(path)  # through a link: what it points to
                if not os.access(path, os.R_OK):
                    raise PermissionError(13, "permission denied")
            except OSError as exc:
                problems.append(Problem(rel, f"unreadable: {exc.strerror or exc}"))
                continue
            special = _not_regular(stat.st_mode, os.path.islink(path))
            if special is not None:  # a FIFO would hang the build, /dev/zero never end
                problems.append(Problem(rel, special))
                continue
            key, ext = parts
            sample = groups.setdefault(key, {})
            if ext in sample:
                problems.append(Problem(rel, f"duplicate extension {ext!r}", key))
                continue
            sample[ext] = Ref(size=stat.st_size, path=path, mtime_ns=stat.st_mtime_ns)
    classes = None
    labels_csv = root / LABELS_CSV
    if labels_csv.exists():
        with open(labels_csv, newline="", encoding="utf-8") as f:
            labels = {row["key"]: row["label"] for row in csv.DictReader(f)}
        classes = _label_members(groups, labels, problems)
    elif groups and all("/" in key and "cls" not in m for key, m in groups.items()):
        labels = {key: key.split("/", 1)[0] for key in groups}
        if len(set(labels.values())) > 1:
            classes = _label_members(groups, labels, problems)
    samples = [PlannedSample(key, tuple(sorted(m.items()))) for key, m in sorted(groups.items())]
    return SourcePlan(samples, problems, classes)


def _label_members(
    groups: dict[str, dict[str, Ref]], labels: Mapping[str, str], problems: list[Problem]
) -> list[str] | None:
    """Add a `cls` member to every sample from `labels` (key → class id or name).

    Names are numbered in sorted order and returned as the class list; integer labels are kept.
    """
    values = {str(v).strip() for v in labels.values()}
    classes = None if all(v.isdigit() for v in values) else sorted(values)
    ids = {name: str(i) for i, name in enumerate(classes or [])}
    for key, members in groups.items():
        if key not in labels:
            problems.append(Problem(key, "no label for this sample", key))
            continue
        label = str(labels[key]).strip()
        text = ids.get(label, label).encode()
        members["cls"] = Ref(size=len(text), data=text)
    for key in [k for k in groups if k not in labels]:
        del groups[key]
    return classes


PATH_COLUMNS = ("path", "file")


def _is_path_column(name: str) -> bool:
    return name in PATH_COLUMNS or name.endswith(tuple(f"_{c}" for c in PATH_COLUMNS))


def plan_manifest(manifest: Path) -> SourcePlan:
    """One row per sample. Columns: `key` (optional), file paths in `path` / `file` /
    `*_path` / `*_file` (relative to the manifest; the member extension is the file's), `label`
    (becomes `cls`), and any other column, whose name is the extension and value the content."""
    rows = _manifest_rows(manifest)
    problems: list[Problem] = []
    groups: dict[str, dict[str, Ref]] = {}
    labels: dict[str, str] = {}
    for number, row in enumerate(rows):
        members: dict[str, Ref] = {}
        key = row.get("key") or row.get("__key__")
        bad = None
        for column, value in row.items():
            if column in ("key", "__key__") or value is None or value == "":
                continue
            if _is_path_column(column):
                path = Path(value) if Path(value).is_absolute() else manifest.parent / value
                parts = split_name(path.name)
                if not path.is_file():
                    bad = Problem(str(value), _missing_or_special(path), key)
                    break
                if parts is None or not _known(parts[1]):
                    bad = Problem(str(value), "unsupported file type", key)
                    break
                key = key or parts[0]
                stat = path.stat()
                members[parts[1]] = Ref(stat.st_size, str(path), stat.st_mtime_ns)
            elif column == "label":
                labels[str(number)] = str(value)
            else:
                data = _cell_bytes(value)
                members[column.lower()] = Ref(size=len(data), data=data)
        key = str(key or f"{number:09d}")
        if bad is None:
            bad = _key_problem(key, members, groups)
        if bad is not None:
            problems.append(bad)
            labels.pop(str(number), None)
            continue
        if str(number) in labels:
            labels[key] = labels.pop(str(number))
        groups[key] = members
    classes = _label_members(groups, labels, problems) if labels else None
    samples = [PlannedSample(key, tuple(sorted(m.items()))) for key, m in groups.items()]
    return SourcePlan(samples, problems, classes)


def _key_problem(key: str, members: dict[str, Ref], seen: Container[str]) -> Problem | None:
    if key in seen:
        return Problem(key, "duplicate key", key)
    if not members:
        return Problem(key, "row has no members", key)
    try:
        for ext in members:
            check_key(key, ext)
    except ValueError as exc:
        return Problem(key, str(exc), key)
    return None


def _manifest_rows(manifest: Path) -> Iterator[dict[str, Any]]:
    if manifest.suffix == ".csv":
        with open(manifest, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
    elif manifest.suffix == ".jsonl":
        with open(manifest, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    else:
        for batch in pq.ParquetFile(manifest).iter_batches(batch_size=1024):
            yield from batch.to_pylist()


def _cell_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False).encode()
    return str(value).encode()


_MAGIC = [
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG", "png"),
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"fLaC", "flac"),
    (b"OggS", "ogg"),
    (b"ID3", "mp3"),
    (b"\xff\xfb", "mp3"),
    (b"\xff\xf3", "mp3"),
]


def _sniff(data: bytes, kind: str) -> str:
    """A file extension from the first bytes (HF columns often carry no path)."""
    if data[:4] == b"RIFF":
        return {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}.get(data[8:12], "bin")
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return "jpg" if kind == "Image" else "wav"


def plan_hub_folder(root: Path, shards: list[Path], allow_paths: Path | None) -> SourcePlan:
    """Hub-style Parquet shards (`data/train-00000-of-00002.parquet`, ...): each file's rows,
    keyed `FILE/ROW` unless they carry keys, in the split its name starts with."""
    samples: list[PlannedSample] = []
    problems: list[Problem] = []
    classes: list[str] | None = None
    split_of: dict[str, str] = {}
    for path in shards:
        part = plan_hf_parquet(path, allow_paths or root, key_prefix=path.stem + "/")
        split = path.name.split("-", 1)[0]
        samples += part.samples
        problems += part.problems
        classes = classes or part.classes
        split_of |= dict.fromkeys((s.key for s in part.samples), split)
    return SourcePlan(samples, problems, classes, split_of)


def _path_ref(cell: Any, folder: Path, root: Path) -> Ref | str:
    """The file a path-only Image / Audio cell names, or why it cannot be read: missing, or
    outside `root` (a manifest must not reach anywhere). A relative path is looked for beside
    the Parquet file, then, as Hugging Face `datasets` itself reads it, from the working
    directory (`Dataset.to_parquet` keeps paths as they were given), which is then a root
    too."""
    if not cell:
        return "no bytes and no path"
    places = [(folder / str(cell)).resolve()]
    if not Path(str(cell)).is_absolute():
        places.append((Path.cwd() / str(cell)).resolve())
    roots = [root.resolve(), *([Path.cwd().resolve()] if len(places) > 1 else [])]
    for n, full in enumerate(places):
        inside = full.is_relative_to(roots[n]) or full.is_relative_to(roots[0])
        if inside and full.is_file():
            stat = full.stat()
            return Ref(stat.st_size, str(full), stat.st_mtime_ns)
    if not places[0].is_relative_to(roots[0]):
        return f"path {cell!r} is outside {root} (--allow-paths ROOT lets a build read there)"
    tried = " or ".join(str(p) for p in places)
    return f"path {cell!r}: {_missing_or_special(places[0])} (looked for {tried})"


def plan_hf_parquet(
    path: Path, allow_paths: Path | None = None, key_prefix: str = ""
) -> SourcePlan:
    """A Parquet file written by Hugging Face `datasets`: Image / Audio columns are
    `struct<bytes, path>`, ClassLabel columns integers with their names in the schema's
    `huggingface` metadata. Image/Audio → their file type, ClassLabel → `cls`, strings →
    `txt` (or `COLUMN.txt` when there are several), anything else → `COLUMN.json`."""
    pf = pq.ParquetFile(path)
    meta = json.loads(pf.schema_arrow.metadata[b"huggingface"])
    features = meta.get("info", {}).get("features", {})
    cells = _HubCells(path, features, allow_paths or path.parent)
    classes = next(
        (f.get("names") for f in features.values() if f.get("_type") == "ClassLabel"), None
    )
    problems: list[Problem] = []
    samples: list[PlannedSample] = []
    seen: set[str] = set()
    first_row = 0
    for group in range(pf.num_row_groups):
        table = pf.read_row_group(group)
        for i, row in enumerate(table.to_pylist()):
            number = first_row + i
            key = str(row.get("__key__") or row.get("id") or f"{key_prefix}{number:09d}")
            members = cells.members(row, (group, i, number), key, problems)
            if members is None:  # a media cell that cannot be read rejects its whole row
                continue
            bad = _key_problem(key, members, seen)
            if bad is not None:
                problems.append(bad)
                continue
            seen.add(key)
            samples.append(PlannedSample(key, tuple(sorted(members.items()))))
        first_row += table.num_rows
    return SourcePlan(samples, problems, classes)


class _HubCells:
    """One Hub Parquet file's cells as sample members (see `plan_hf_parquet`)."""

    def __init__(self, path: Path, features: Mapping[str, Any], root: Path) -> None:
        self.path, self.features, self.root = path, features, root
        self.mtime_ns = path.stat().st_mtime_ns
        self.strings = [
            c for c, f in features.items() if f.get("dtype") in ("string", "large_string")
        ]

    def members(
        self,
        row: Mapping[str, Any],
        at: tuple[int, int, int],
        key: str,
        problems: list[Problem],
    ) -> dict[str, Ref] | None:
        """A row's members (`at`: its row group, row in it, and row in the file); None, with
        its problem noted, when a media cell cannot be read."""
        group, i, number = at
        members: dict[str, Ref] = {}
        for column, feature in self.features.items():
            kind, value = feature.get("_type"), row.get(column)
            if value is None:
                continue
            if kind in ("Image", "Audio"):
                found = self._media(value, kind, group, i, column)
                if isinstance(found, str):
                    problems.append(Problem(f"{self.path}:{number}:{column}", found, key))
                    return None
                members[found[0]] = found[1]
            elif kind == "ClassLabel":
                members["cls"] = Ref(size=len(str(value)), data=str(value).encode())
            elif column in self.strings:
                ext = "txt" if len(self.strings) == 1 else f"{column.lower()}.txt"
                members[ext] = Ref(size=len(value.encode()), data=value.encode())
            else:
                data = json.dumps(value, ensure_ascii=False).encode()
                members[f"{column.lower()}.json"] = Ref(size=len(data), data=data)
        return members

    def _media(
        self, value: Mapping[str, Any], kind: str, group: int, i: int, column: str
    ) -> tuple[str, Ref] | str:
        """An Image / Audio cell's (extension, member), or why it cannot be read."""
        data = value.get("bytes")
        name_ext = split_name(Path(value.get("path") or "").name)
        known = name_ext[1] if name_ext and _known(name_ext[1]) else None
        if data:
            ref = Ref(
                len(data), str(self.path), self.mtime_ns, row_group=group, row=i, column=column
            )
            return known or _sniff(data, kind), ref
        # a path-only cell: the file it names, within the root
        found = _path_ref(value.get("path"), self.path.parent, self.root)
        if isinstance(found, str):
            return found
        if known is None:  # the name says nothing: its first bytes do
            with open(found.path, "rb") as f:
                known = _sniff(f.read(16), kind)
        return known, found


@lru_cache(maxsize=2)
def _parquet_group(path: str, row_group: int, column: str) -> list[Any]:
    return pq.ParquetFile(path).read_row_group(row_group, columns=[column]).column(0).to_pylist()


def _parquet_cell(path: str, row_group: int, row: int, column: str) -> bytes:
    value = _parquet_group(path, row_group, column)[row]
    return value["bytes"] if isinstance(value, dict) else value

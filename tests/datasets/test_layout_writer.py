import hashlib
import io
import tarfile

import pytest
import webdataset as wds
from webdataset.writer import TarWriter

from polymodal.datasets.index import ShardIndex
from polymodal.datasets.layout import (
    TAR_BLOCK,
    DuplicateExtensionError,
    Problem,
    SplitSampleError,
    check_key,
    read_tar_samples,
    split_name,
    tar_members,
)
from polymodal.datasets.reader import read_shard
from polymodal.datasets.writer import ShardWriter


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("clip001.mp4", ("clip001", "mp4")),
        ("a/b/clip.left.MP4", ("a/b/clip", "left.mp4")),  # first dot of the basename
        ("dir.with.dots/img.jpg", ("dir.with.dots/img", "jpg")),
        ("ünïcødé/ключ.txt", ("ünïcødé/ключ", "txt")),
        ("README", None),
        ("dir/.hidden", ("dir/", "hidden")),  # webdataset's regex, odd as it is
    ],
)
def test_split_name_follows_webdataset(name, expected):
    assert split_name(name) == expected


def test_keys_that_would_not_read_back_are_refused():
    check_key("a/b/clip", "left.mp4")
    for key, ext in [("a.b", "jpg"), ("../x", "jpg"), ("/abs", "jpg"), ("k", "a/b")]:
        with pytest.raises(ValueError, match="round-trip"):
            check_key(key, ext)


def _tar(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def test_reading_groups_adjacent_members_and_reports_unsafe_ones():
    data = _tar(
        [
            ("a.jpg", b"1", tarfile.REGTYPE),
            ("a.cls", b"2", tarfile.REGTYPE),
            ("folder", None, tarfile.DIRTYPE),
            ("../escape.txt", b"x", tarfile.REGTYPE),
            ("b.txt", b"3", tarfile.REGTYPE),
            ("link.txt", None, tarfile.SYMTYPE),
            ("noext", b"4", tarfile.REGTYPE),
        ]
    )
    problems: list[Problem] = []
    samples = list(read_tar_samples(io.BytesIO(data), "s.tar", 0, problems.append))
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for _, s in samples] == [
        ("a", ["cls", "jpg"]),
        ("b", ["txt"]),
    ]
    assert samples[0][0] == 0 and samples[0][1]["jpg"] == b"1"
    reasons = {p.where.split(":", 1)[1]: p.reason for p in problems}
    assert set(reasons) == {"../escape.txt", "link.txt", "noext"}
    assert "climbs out" in reasons["../escape.txt"] and "not a regular file" in reasons["link.txt"]
    with pytest.raises(ValueError, match="escape"):  # without a sink, problems raise
        list(read_tar_samples(io.BytesIO(data), "s.tar"))


def test_a_split_sample_is_an_error_naming_the_key():
    """A key that comes back after another sample would be delivered as two samples."""
    names = ["a.jpg", "b.txt", "a.txt"]
    data = _tar([(name, b"1", tarfile.REGTYPE) for name in names])
    with pytest.raises(SplitSampleError, match=r"'a' comes back"):
        list(read_tar_samples(io.BytesIO(data), "s.tar", 0, lambda p: None))


def test_duplicate_extension_is_an_error_naming_the_key():
    data = _tar([("k1.jpg", b"1", tarfile.REGTYPE), ("k1.JPG", b"2", tarfile.REGTYPE)])
    with pytest.raises(DuplicateExtensionError, match="'k1'"):
        list(read_tar_samples(io.BytesIO(data), "s.tar"))


SAMPLES = [
    {
        "__key__": f"nested/dir/sample{i:03d}",
        "jpg": bytes([i % 256]) * (300 + 97 * i),
        "cls": str(i % 4),
        **({"txt": f"text {i}"} if i % 3 == 0 else {}),
    }
    for i in range(40)
] + [{"__key__": "ünï/cødé-" + "long" * 30, "txt": "unicode key, longer than 100 bytes"}]


def _body(sample):
    return {k: (v.encode() if isinstance(v, str) else v) for k, v in sample.items()}


def test_shard_writer_caps_hashes_and_reads_back_with_webdataset(tmp_path):
    with ShardWriter(tmp_path, max_samples=12, max_bytes=40_000) as writer:
        for sample in SAMPLES:
            writer.write(sample)
    index = ShardIndex.load(tmp_path)
    assert index.samples == len(SAMPLES) and len(index.shards) >= 4
    assert all(s.samples <= 12 for s in index.shards)
    assert all(s.bytes <= 40_000 + 10240 for s in index.shards)  # + tar's record padding
    assert not list(tmp_path.glob("*.tmp"))
    for shard in index.shards:
        data = (tmp_path / shard.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.bytes
    assert index.labels == {"0": 10, "1": 10, "2": 10, "3": 10}
    assert index.fields == {"cls": "label", "jpg": "image", "txt": "text"}
    urls = [str(tmp_path / s.name) for s in index.shards]
    read = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in read] == [s["__key__"] for s in SAMPLES]
    for got, want in zip(read, SAMPLES, strict=True):
        assert {k: v for k, v in got.items() if not k.startswith("__")} == _body(
            {k: v for k, v in want.items() if k != "__key__"}
        )


def test_offsets_let_a_reader_start_at_any_sample(tmp_path):
    with ShardWriter(tmp_path, max_samples=15) as writer:
        for sample in SAMPLES:
            writer.write(sample)
    index = ShardIndex.load(tmp_path)
    shard = index.shards[1]
    everything = list(read_shard(index, shard))
    for start in (0, 1, 7, shard.samples - 1):
        assert list(read_shard(index, shard, start)) == everything[start:]
    assert list(read_shard(index, shard, shard.samples)) == []


def test_parquet_shards_hold_the_same_samples(tmp_path):
    with ShardWriter(tmp_path, max_samples=16, shard_format="parquet") as writer:
        for sample in SAMPLES[:-1]:
            writer.write(sample)
    index = ShardIndex.load(tmp_path)
    assert index.format == "parquet" and index.samples == 40
    got = [s for shard in index.shards for s in read_shard(index, shard)]
    assert [s["__key__"] for s in got] == [s["__key__"] for s in SAMPLES[:-1]]
    assert got[3]["txt"] == b"text 3" and "txt" not in got[4] and got[5]["jpg"] == SAMPLES[5]["jpg"]
    assert next(read_shard(index, index.shards[1], 10))["__key__"] == SAMPLES[26]["__key__"]
    other = tmp_path / "other"
    with (
        pytest.raises(ValueError, match="not columns"),
        ShardWriter(other, shard_format="parquet") as w,
    ):
        w.write({"__key__": "a", "jpg": b"1"})
        w.write({"__key__": "b", "png": b"2"})


def test_a_failed_write_leaves_no_index_and_no_temporary_shard(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_samples=5) as writer:
        for sample in SAMPLES[:8]:
            writer.write(sample)
        raise RuntimeError("the job died")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".shard-000000.tar.idx", "shard-000000.tar"]  # the finished shard only


def test_tar_bytes_are_deterministic(tmp_path):
    for run in ("a", "b"):
        with ShardWriter(tmp_path / run, max_samples=50) as writer:
            for sample in SAMPLES:
                writer.write(sample)
    assert (tmp_path / "a/shard-000000.tar").read_bytes() == (
        tmp_path / "b/shard-000000.tar"
    ).read_bytes()
    assert (tmp_path / "a/index.json").read_bytes() != b""


def test_webdataset_tar_writer_output_indexes_identically(tmp_path):
    """Shards webdataset writes are samples we read, key for key."""
    with open(tmp_path / "w.tar", "wb") as f, TarWriter(f, encoder=False) as tw:
        for sample in SAMPLES:
            tw.write(
                {
                    "__key__": sample["__key__"],
                    **_body({k: v for k, v in sample.items() if k != "__key__"}),
                }
            )
    with open(tmp_path / "w.tar", "rb") as f:
        keys = [s["__key__"] for _, s in read_tar_samples(f, "w.tar")]
    assert keys == [s["__key__"] for s in SAMPLES]


def test_tar_shards_are_the_bytes_tarfile_writes(tmp_path):
    """Headers are made here, not by `TarFile.addfile` (bench_build.py): the shard must be
    what tarfile writes in PAX format, byte for byte, for ASCII names up to 100 bytes (a
    template), a longer or non-ASCII name (tarfile's PAX record), empty and block-sized data."""
    samples = [
        *SAMPLES,
        {"__key__": "k" * 96, "txt": b"a name of exactly 100 bytes"},
        {"__key__": "k" * 97, "txt": b"101 bytes: a PAX record"},
        {"__key__": "empty", "txt": b""},
        {"__key__": "block", "bin": bytes(range(256)) * 2},
    ]
    with ShardWriter(tmp_path / "ours", max_samples=100) as writer:
        for sample in samples:
            writer.write(sample)
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            body = _body({k: v for k, v in sample.items() if k != "__key__"})
            for ext in sorted(body):
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size, info.mode, info.mtime = len(body[ext]), 0o444, 0
                tar.addfile(info, io.BytesIO(body[ext]))
    assert (tmp_path / "ours/shard-000000.tar").read_bytes() == expected.getvalue()


@pytest.mark.parametrize("format_", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_members_reads_what_tarfile_reads(format_):
    """The reader parses plain ustar headers itself and hands the rest to tarfile: every
    member's offset, name, type, size and data agree with tarfile's, whatever the mix
    (a prefix-split name, long names as GNU or PAX records, folders, links, empty and
    block-sized members)."""
    members = [
        ("a.jpg", b"1" * 700),
        ("deep/" * 20 + "b.txt", b"prefix or a long-name record"),
        ("ünï/" + "long" * 20 + ".txt", b"x" * 512),
        ("folder/", None),
        ("c.cls", b""),
        ("link", "a.jpg"),
        ("d.txt", b"last"),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format_) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else None)
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [
            (i.offset, i.name, i.type, i.size, tar.extractfile(i).read() if i.isreg() else None)
            for i in tar
        ]
    got = [
        (at, info.name, info.type, info.size, read() if info.isreg() else None)
        for at, info, read in tar_members(io.BytesIO(raw))
    ]
    assert got == expected
    unended = raw[: expected[-1][0] + 2 * TAR_BLOCK]  # the last member, no end-of-archive blocks
    assert [name for _, info, _ in tar_members(io.BytesIO(unended)) for name in [info.name]] == [
        e[1] for e in expected
    ]
    cut = raw[: expected[0][0] + TAR_BLOCK + 100]  # inside the first member's data
    with pytest.raises(tarfile.ReadError, match="unexpected end"):
        [read() for _, _, read in tar_members(io.BytesIO(cut))]


def test_a_shard_bigger_than_the_writeback_step_is_written_whole(tmp_path, monkeypatch):
    """A shard's bytes go on to the disk while it is written (`start_writeback` every
    `WRITEBACK_BYTES`, a real `sync_file_range` on Linux): the shard still holds exactly what
    was written, with the hash the index records."""
    import os
    import sys

    from polymodal.datasets import files, shard

    if sys.platform == "linux":
        assert files._SYNC_FILE_RANGE is not None  # the binding is there and is used
    calls = []
    real = shard.start_writeback
    monkeypatch.setattr(shard, "start_writeback", lambda fd: calls.append(fd) or real(fd))
    monkeypatch.setattr(shard, "WRITEBACK_BYTES", 64 * 1024)
    payloads = [os.urandom(50_000) for _ in range(10)]
    with ShardWriter(tmp_path, max_samples=None, max_bytes=None) as writer:
        for n, data in enumerate(payloads):
            writer.write({"__key__": f"s{n}", "bin": data})
    (info,) = ShardIndex.load(tmp_path).shards
    assert len(calls) >= 4  # about one a 64 KB written
    read = list(wds.WebDataset([str(tmp_path / info.name)], shardshuffle=False))
    assert [s["bin"] for s in read] == payloads
    assert hashlib.sha256((tmp_path / info.name).read_bytes()).hexdigest() == info.sha256

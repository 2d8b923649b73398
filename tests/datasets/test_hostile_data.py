"""Hostile data at rest: jobs that would eat their inputs, names that would merge, members and
arrays that would blow up memory, and indexes or shards that lie. Each case is made with real
tools (tarfile, numpy, Pillow) and checked for a clear refusal or a counted, reported skip; the
allocation cases measure the peak memory of a child process."""

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from testdata import png_fields, tree_digests
from testmedia import gnu_sparse_member, index_doc, peak_memory_growth_mb, write_index_doc

from polymodal.adapters import DecodeError, get
from polymodal.cli import main
from polymodal.datasets.build import build, index_shards
from polymodal.datasets.index import InvalidIndex, ShardIndex
from polymodal.datasets.inspect import validate_dataset
from polymodal.datasets.synthetic import encode_image
from polymodal.datasets.writer import ShardWriter
from polymodal.pipelines.stream import stream as stream_module
from polymodal.pipelines.stream.stream import Stream, StreamError


def _dataset(directory: Path, shards: int = 3, per_shard: int = 4, prefix: str = "k") -> Path:
    """Shards of tiny PNGs; the pixel value and the label carry the sample number."""
    with ShardWriter(directory, max_samples=per_shard) as writer:
        for n in range(shards * per_shard):
            png = encode_image(np.full((4, 4, 3), n, np.uint8), "PNG")
            writer.write({"__key__": f"{prefix}{n:04d}", "png": png, "cls": str(n % 2)})
    return directory


def _keys(loader) -> list[str]:
    return [k for b in loader for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]


def _edit_index(directory: Path, edit, version: int = 2) -> None:
    """Edit the index as a version-1 document, and write it back in layout `version`."""
    doc = index_doc(directory)
    edit(doc)
    write_index_doc(directory, doc, version)


# --- 1. jobs never destroy or swallow their inputs --------------------------------------------


def test_preprocess_refuses_an_output_around_its_input(tmp_path, capsys):
    """The issue's case: `preprocess D/train D --op split --overwrite` deleted D/train."""
    root = tmp_path / "D"
    _dataset(root / "train")
    before = tree_digests(root)
    for dst in (root, root / "train", root / "train" / "out"):
        code = main(["preprocess", str(root / "train"), str(dst), "--op", "split:val=0.25"])
        assert code == 2
        main(["preprocess", str(root / "train"), str(dst), "--op", "split:val=0.25", "--overwrite"])
    err = capsys.readouterr().err
    assert "contains the input" in err and "is the input" in err and "inside the input" in err
    assert "Traceback" not in err
    assert tree_digests(root) == before  # nothing deleted, nothing written


def test_build_refuses_an_output_that_overlaps_its_source(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    for i in range(3):
        (src / "inner" / f"img{i}.png").write_bytes(encode_image(np.zeros((4, 4, 3), np.uint8)))
    before = tree_digests(src)
    cases = [(src, src), (src, src / "out"), (src / "inner", src)]
    for source, out in cases:
        assert main(["build", str(source), str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("polymodal build: the output") == 3 and "Traceback" not in err
    assert tree_digests(src) == before
    manifest = tmp_path / "list.csv"  # a manifest's files are inputs too
    manifest.write_text("path\nsrc/inner/img0.png\n")
    assert main(["build", str(manifest), str(src / "inner")]) == 2
    assert main(["build", str(manifest), str(tmp_path / "elsewhere")]) == 0


def test_dotted_stems_are_refused_never_merged(tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    image = encode_image(np.zeros((4, 4, 3), np.uint8))
    for name in ("holiday.2019.jpg", "holiday.2020.jpg", "beach.jpg", "beach.cls", "x.seg.png"):
        (src / name).write_bytes(b"1" if name.endswith(".cls") else image)
    report = build(src, tmp_path / "out", progress=False, print_=lambda _: None)
    assert report.samples == 1  # beach (jpg + cls); nothing merged
    rejects = [json.loads(x) for x in (tmp_path / "out/rejects.jsonl").read_text().splitlines()]
    refused = {r["path"]: r["reason"] for r in rejects}
    assert set(refused) == {"holiday.2019.jpg", "holiday.2020.jpg", "x.seg.png"}
    assert all("dotted file name" in reason for reason in refused.values())
    assert "'holiday_2019.jpg'" in refused["holiday.2019.jpg"]
    out = tmp_path / "strict"
    assert main(["build", str(src), str(out), "--strict"]) == 1
    for name in ("beach.jpg", "beach.cls"):
        (src / name).unlink()
    assert main(["build", str(src), str(tmp_path / "empty")]) == 1  # all refused: useless
    assert "no sample was written" in capsys.readouterr().err


# --- 2. every allocation is bounded before it is made ------------------------------------------


def test_a_gnu_sparse_member_is_refused_without_expanding_it(tmp_path):
    """2 KB on disk that tarfile would expand to 1 GB of zeros."""
    shard = tmp_path / "data" / "shard-000000.tar"
    shard.parent.mkdir()
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("ok.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    body = good.getvalue().rstrip(b"\0")
    body += bytes(-len(body) % 512) + gnu_sparse_member("big.txt", 10**9)
    shard.write_bytes(body + bytes(10240 - len(body) % 10240))
    assert shard.stat().st_size < 20_000
    grew, out = peak_memory_growth_mb(
        f"""
        from polymodal.datasets.build import index_shards
        from polymodal.datasets.inspect import validate_dataset
        from polymodal.pipelines.stream.stream import Stream
        from polymodal.adapters import get
        folder = {str(shard.parent)!r}
        """,
        """
        index_shards(folder, progress=False)
        problems = validate_dataset(folder)
        loader = Stream(folder, {"text": get("text")()}, batch_size=2, shuffle=False).loader(0)
        keys = [k for b in loader for k, r in zip(b.keys, b.repeated.tolist()) if not r]
        print("PROBLEMS", [p["reason"] for p in problems])
        print("KEYS", keys, "SKIPPED", [s["reason"] for s in loader.report()["samples"]])
        """,
    )
    assert grew < 150, out  # the expansion alone would be 1,000 MB
    assert "GNU sparse member" in out.split("PROBLEMS")[1].split("\n")[0]
    keys_line = out.split("KEYS")[1]
    assert "['ok']" in keys_line and "GNU sparse member" in keys_line


def test_an_oversized_member_is_skipped_and_reported(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with ShardWriter(tmp_path / "data") as writer:
        for n, pixels in enumerate([np.zeros((4, 4, 3), np.uint8), noise, noise[:4, :4]]):
            writer.write({"__key__": f"k{n}", "png": encode_image(pixels, "PNG"), "cls": "0"})
    stream = Stream(
        tmp_path / "data", png_fields(), batch_size=3, shuffle=False, max_member_bytes=5000
    )
    loader = stream.loader(0)
    assert _keys(loader) == ["k0", "k2"]
    (skip,) = loader.report()["samples"]
    assert skip["key"] == "k1" and "over max_member_bytes=5,000" in skip["reason"]
    nothing = Stream(tmp_path / "data", png_fields(), batch_size=3, max_member_bytes=10).loader(0)
    with pytest.raises(StreamError, match="not one sample"):  # nothing at all to fill with
        list(nothing)
    assert nothing.report()["skipped"] == 3


@pytest.mark.slow
def test_an_npz_bomb_is_refused_from_its_header(tmp_path):
    """A ~1 MB npz whose array inflates to 360 MB; max_points is checked before inflating."""
    bomb = tmp_path / "bomb.npz"
    rows = 30_000_000
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (rows, 3)}
    )
    with (
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("points.npy", "w", force_zip64=True) as member,
    ):
        member.write(header.getvalue())
        zeros = bytes(2**22)
        for _ in range(rows * 12 // len(zeros)):
            member.write(zeros)
        member.write(bytes(rows * 12 % len(zeros)))
    assert bomb.stat().st_size < 2_000_000
    grew, out = peak_memory_growth_mb(
        f"""
        from polymodal.adapters import DecodeError, get
        data = open({str(bomb)!r}, "rb").read()
        """,
        """
        try:
            get("pointcloud")().decode({"__key__": "bomb", "npz": data})
        except DecodeError as exc:
            print("REFUSED", exc.reason)
        """,
    )
    assert "REFUSED" in out and "over max_points" in out
    assert grew < 50, out


def test_npy_arrays_are_checked_from_their_header():
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 3)}
    )
    with pytest.raises(DecodeError, match="over max_points"):
        get("pointcloud")().decode({"__key__": "k", "npy": header.getvalue()})
    pickled = io.BytesIO()
    np.save(pickled, np.array([object()] * 3), allow_pickle=True)
    with pytest.raises(DecodeError, match="never loaded"):
        get("pointcloud")().decode({"__key__": "k", "npy": pickled.getvalue()})
    ids = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        ids, {"descr": "<i4", "fortran_order": False, "shape": (10**12,)}
    )
    with pytest.raises(DecodeError, match="truncated"):  # claims more than the member holds
        get("text")().decode({"__key__": "k", "npy": ids.getvalue() + bytes(400)})


def test_a_huge_text_member_is_decoded_only_as_far_as_the_field_reaches():
    grew, out = peak_memory_growth_mb(
        """
        import time
        from polymodal.adapters import get
        text = get("text")(max_length=2048)
        data = "é".encode() * (50 * 2**20)  # 100 MB of two-byte characters
        """,
        """
        start = time.perf_counter()
        field = text.decode({"__key__": "k", "txt": data})
        print("SECONDS", time.perf_counter() - start, "LENGTH", len(field.values))
        """,
    )
    seconds = float(out.split("SECONDS")[1].split()[0])
    assert "LENGTH 2048" in out and seconds < 0.5, out
    assert grew < 20, out  # decoding all of it took > 400 MB (str + int16 ids)
    with pytest.raises(DecodeError, match=r"can.t decode"):  # what is used is still checked
        get("text")().decode({"__key__": "k", "txt": b"ok \xff" + b"a" * 5000})
    with pytest.raises(DecodeError, match="max_json_bytes"):
        get("text")(max_json_bytes=100).decode({"__key__": "k", "json": b'"' + b"a" * 200 + b'"'})


def test_an_index_claiming_10_to_the_15_samples_costs_nothing_to_refuse(tmp_path):
    data = _dataset(tmp_path / "data", shards=2)
    honest = index_doc(data)

    def claim(samples: int, size: int | None = None) -> None:
        doc = json.loads(json.dumps(honest))
        doc.pop("samples", None)  # no total to disagree with: only the shard claims
        doc["shards"][0].update(samples=samples, bytes=size or doc["shards"][0]["bytes"])
        write_index_doc(data, doc, 2)

    claim(10**15)
    with pytest.raises(InvalidIndex, match="cannot fit in"):
        ShardIndex.load(data)
    claim(10**15, 10**18)  # a lie that fits: the bytes are claimed too
    loader = Stream(data, png_fields(), batch_size=4, shuffle=False).loader(2)
    assert _keys(loader) == [f"k{n:04d}" for n in range(4, 8)]  # the honest shard
    report = loader.report()
    assert report["skipped"] == 10**15 and "left out" in report["samples"][0]["reason"]
    with pytest.raises(StreamError, match="the index says 1,000,000,000,000,000,000"):
        Stream(data, png_fields(), errors="raise")


# --- 3. the index and the shards are checked, not trusted ---------------------------------------


_MALFORMED = [
    (lambda d: d["shards"][0].update(samples=-3), "non-negative integer"),
    (lambda d: d["shards"][0].update(name="../outside.tar"), "climbs out"),
    (lambda d: d["shards"][0].update(name="/etc/passwd"), "not a path inside"),
    (lambda d: d["shards"][0].update(name="http://elsewhere/x.tar"), "not a path inside"),
    (lambda d: d["shards"][0].update(name="a\\b.tar"), "not a path inside"),
    (lambda d: d["shards"][1].update(name=d["shards"][0]["name"]), "listed twice"),
    (lambda d: d["shards"].reverse() or d["shards"][0].update(name="shard-000000.tar"), "twice"),
    (lambda d: d.update(samples=d["samples"] + 1), "add up to"),
    (lambda d: d["shards"][0]["fields"].update(png=99), "field counts"),
]


@pytest.mark.parametrize(
    ("edit", "message", "version"),
    [(*case, version) for case in _MALFORMED for version in (1, 2)]
    # a shard table holds 32 raw bytes: no other sha256 can be written in one
    + [(lambda d: d["shards"][0].update(sha256="abc"), "not a sha256", 1)],
)
def test_a_malformed_index_is_refused_naming_the_shard(tmp_path, edit, message, version):
    """Both layouts, the listed one (version 1) and the shard table (2), refuse the same lies."""
    data = _dataset(tmp_path / "data", shards=2)
    _edit_index(data, edit, version)
    with pytest.raises(InvalidIndex, match=message):
        ShardIndex.load(data)
    assert main(["validate", str(data)]) == 2


def test_a_shard_table_that_is_not_the_headers_is_refused(tmp_path):
    """A table written by another job (a rebuild killed between the table and the header), a
    damaged one, a foreign Arrow file and a missing one: each refused, naming the file."""
    data = _dataset(tmp_path / "data", shards=2)
    other = _dataset(tmp_path / "other", shards=3)
    table, good = data / "index.arrow", (data / "index.arrow").read_bytes()
    table.write_bytes((other / "index.arrow").read_bytes())
    with pytest.raises(InvalidIndex, match=r"not the shard table index\.json was written with"):
        ShardIndex.load(data)
    table.write_bytes(good[: len(good) // 2])
    with pytest.raises(InvalidIndex, match="not an Arrow shard table"):
        ShardIndex.load(data)
    pq.write_table(pa.table({"name": ["x"]}), table)  # Parquet, not Arrow IPC
    with pytest.raises(InvalidIndex, match="not an Arrow shard table"):
        ShardIndex.load(data)
    with (
        pa.OSFile(str(table), "wb") as sink,
        pa.ipc.new_file(sink, pa.schema([("x", pa.int8())])) as w,
    ):
        w.write_table(pa.table({"x": pa.array([1], pa.int8())}))
    with pytest.raises(InvalidIndex, match="no 'name' column"):
        ShardIndex.load(data)
    table.unlink()
    with pytest.raises(InvalidIndex, match=r"index\.arrow is missing"):
        ShardIndex.load(data)
    table.write_bytes(good)
    assert ShardIndex.load(data).samples == 8
    assert validate_dataset(str(data)) == []
    edited = pa.ipc.open_file(pa.py_buffer(good)).read_all()  # a checksum edited, digest kept
    sha = edited.column("sha256").to_pylist()
    sha[0] = bytes(32)
    edited = edited.set_column(3, "sha256", pa.array(sha, pa.binary(32)))
    with pa.OSFile(str(table), "wb") as sink, pa.ipc.new_file(sink, edited.schema) as w:
        w.write_table(edited)
    assert ShardIndex.load(data).shards[0].sha256 == "0" * 64  # opening trusts the digest
    problems = validate_dataset(str(data))
    assert any("changed after it was written" in p["reason"] for p in problems)


def test_a_lowered_count_is_reported_not_silently_dropped(tmp_path):
    data = _dataset(tmp_path / "data", shards=2)

    def lower(doc):
        doc["shards"][0].update(samples=2, fields={"cls": 2, "png": 2})
        doc["samples"] -= 2

    _edit_index(data, lower)
    loader = Stream(data, png_fields(), batch_size=2, shuffle=False).loader(0)
    assert _keys(loader) == ["k0000", "k0001", *[f"k{n:04d}" for n in range(4, 8)]]
    checks = [s for s in loader.report()["samples"] if s["stage"] == "check"]
    assert len(checks) == 1 and "more samples than the 2 the index says" in checks[0]["reason"]


def test_a_replaced_shard_is_reported_by_the_stream_and_validate(tmp_path):
    data = _dataset(tmp_path / "data", shards=2)
    shard = data / "shard-000000.tar"
    raw = bytearray(shard.read_bytes())
    at = raw.index(b"k0001.cls") + 512  # the label's data block: same size, other content
    raw[at] = ord("7")
    shard.write_bytes(bytes(raw))
    loader = Stream(data, png_fields(), batch_size=4, shuffle=False).loader(0)
    assert len(_keys(loader)) == 8
    checks = [s for s in loader.report()["samples"] if s["stage"] == "check"]
    assert [c["key"] for c in checks] == ["shard-000000.tar"] and "sha256" in checks[0]["reason"]
    problems = validate_dataset(str(data))
    assert any("content changed after it was indexed" in p["reason"] for p in problems)
    (data / "shard-000001.tar").write_bytes(bytes(raw[:-1024]))  # another size: left out
    loader = Stream(data, png_fields(), batch_size=4, shuffle=False).loader(0)
    assert len(_keys(loader)) == 4 and loader.report()["skipped"] == 4


def test_a_shard_changed_after_it_was_verified_is_reported_again(tmp_path):
    """A process hashes a local shard once a version of the file: a second epoch of an
    unchanged dataset reads without hashing, and a shard whose bytes change afterwards (the
    same size, even with its mtime set back) is hashed again and reported."""
    import os

    from polymodal.pipelines.stream.stages import read

    data = _dataset(tmp_path / "data", shards=2)
    stream = Stream(data, png_fields(), batch_size=4, shuffle=False)
    loader = stream.loader(0)
    assert len(_keys(loader)) == 8 and loader.report()["skipped"] == 0
    index = ShardIndex.load(data)
    verified = {v[0]: digest for v, digest in read._VERIFIED.items() if v[0].startswith(str(data))}
    assert verified == {index.url(s): s.sha256 for s in index.shards}
    shard = data / "shard-000000.tar"
    before = shard.stat()
    raw = bytearray(shard.read_bytes())
    raw[raw.index(b"k0001.cls") + 512] = ord("7")  # the label's data block: same size
    shard.write_bytes(bytes(raw))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # its mtime set back
    stream.set_epoch(1)
    loader = stream.loader(0)
    assert len(_keys(loader)) == 8
    checks = [s for s in loader.report()["samples"] if s["stage"] == "check"]
    assert [c["key"] for c in checks] == ["shard-000000.tar"] and "sha256" in checks[0]["reason"]


def test_past_the_checked_count_the_reader_reports_a_changed_shard(tmp_path, monkeypatch):
    """A large index is not `stat`ed shard by shard when the Stream is made; the reader checks
    each shard it opens, so a shard cut short is still reported, its samples repeats."""
    data = _dataset(tmp_path / "data", shards=2)
    shard = data / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])
    monkeypatch.setattr(stream_module, "SIZE_CHECKED_SHARDS", 1)
    stream = Stream(data, png_fields(), batch_size=4, shuffle=False)
    assert stream.excluded == [{}] and stream.total == 8  # the plan as the index says
    loader = stream.loader(0)
    assert _keys(loader) == [f"k{n:04d}" for n in range(4)]
    report = loader.report()
    assert report["skipped"] == 4
    reasons = {s["key"]: s["reason"] for s in report["samples"]}
    assert sorted(reasons) == [f"shard-000001.tar#{n}" for n in range(4)]
    assert "the shard is" in reasons["shard-000001.tar#0"]
    assert "the index says" in reasons["shard-000001.tar#0"]


def test_validate_checks_sidecars_and_duplicate_keys(tmp_path, capsys):
    data = _dataset(tmp_path / "data", shards=3)
    assert validate_dataset(str(data)) == []
    (data / ".shard-000000.tar.idx").unlink()
    (data / ".shard-000001.tar.idx").write_bytes(b"garbage without a header line")
    problems = validate_dataset(str(data))
    reasons = {p["shard"]: p["reason"] for p in problems}
    assert "sidecar .shard-000000.tar.idx is missing" in reasons["shard-000000.tar"]
    assert "is not a sidecar" in reasons["shard-000001.tar"]
    assert main(["validate", str(data)]) == 1
    out = capsys.readouterr().out
    assert "shard-000000.tar: its sidecar .shard-000000.tar.idx is missing" in out
    assert "- -:" not in out  # sentences, not dashes

    dup = _dataset(tmp_path / "dup-a", shards=1)  # two shards with the same keys
    _dataset(tmp_path / "dup-b", shards=1)
    (tmp_path / "dup-b/shard-000000.tar").rename(dup / "shard-000001.tar")
    index_shards(dup, progress=False)
    problems = validate_dataset(str(dup))
    assert len(problems) == 4 and all("duplicate key" in p["reason"] for p in problems)
    assert {p["shard"] for p in problems} == {"shard-000001.tar"}


def _tar(path: Path, names: list[str]) -> None:
    with tarfile.open(path, "w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))


def test_a_split_sample_fails_index_and_validate(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _tar(data / "part.tar", ["a.png", "a.cls", "b.png"])
    assert index_shards(data, progress=False).samples == 2
    assert validate_dataset(str(data)) != []  # one-byte PNGs do not decode, but the shard reads
    _tar(data / "part.tar", ["a.png", "b.png", "a.cls"])  # the same members, 'a' split by 'b'
    problems = validate_dataset(str(data))
    assert any("'a' comes back" in p["reason"] for p in problems)
    report = index_shards(data, progress=False)
    assert report.samples == 0 and report.rejects == 1
    reject = json.loads((data / "rejects.jsonl").read_text())
    assert "'a' comes back" in reject["reason"]


def test_a_garbage_sidecar_makes_a_seek_fail_clearly(tmp_path):
    data = _dataset(tmp_path / "data", shards=1, per_shard=200)
    (data / ".shard-000000.tar.idx").write_bytes(b"{}\n" + bytes(7))
    stream = Stream(data, png_fields(), batch_size=50, shuffle=False)
    loader = stream.loader(2)  # worker 1 starts mid-shard: it must seek
    keys = _keys(loader)
    assert len(keys) == 100  # worker 0 reads from byte 0; worker 1's half is reported
    reasons = {s["reason"] for s in loader.report()["samples"]}
    assert any("sidecar" in r for r in reasons)


def test_a_contact_sheet_is_never_written_into_the_dataset(tmp_path, capsys):
    data = _dataset(tmp_path / "data", shards=1)
    before = tree_digests(data)
    assert main(["inspect", str(data), "--preview", str(data / "shard-000000.tar")]) == 2
    assert "inside the input" in capsys.readouterr().err
    assert tree_digests(data) == before
    assert main(["inspect", str(data), "--preview", str(tmp_path / "sheet.png")]) == 0


def test_indexing_again_keeps_the_class_names(tmp_path):
    src = tmp_path / "src"
    for label in ("cat", "dog"):
        (src / label).mkdir(parents=True)
        for i in range(2):
            pixels = np.full((4, 4, 3), i, np.uint8)
            (src / label / f"{i}.png").write_bytes(encode_image(pixels, "PNG"))
    build(src, tmp_path / "data", progress=False, print_=lambda _: None)
    assert ShardIndex.load(tmp_path / "data").classes == ["cat", "dog"]
    index_shards(tmp_path / "data", progress=False)  # e.g. after repairing a shard
    assert ShardIndex.load(tmp_path / "data").classes == ["cat", "dog"]


def test_json_labels_and_text_clouds_are_bounded_before_parsing():
    with pytest.raises(DecodeError, match="max_json_bytes"):
        get("label")().decode({"__key__": "k", "json": b"[" + b"1," * 600_000 + b"1]"})
    lines = b"0 0 0\n" * 5000
    with pytest.raises(DecodeError, match="5,000 lines, over max_points=100"):
        get("pointcloud")(max_points=100).decode({"__key__": "k", "xyz": lines})
    assert len(get("pointcloud")(num_points=None).decode({"__key__": "k", "xyz": lines}).values)


def test_a_parquet_row_group_over_the_bound_is_refused_before_reading(tmp_path, monkeypatch):
    from polymodal.datasets import parquet

    with ShardWriter(tmp_path / "data", shard_format="parquet") as writer:
        for n in range(4):
            writer.write({"__key__": f"k{n}", "txt": "some words " * 50})
    monkeypatch.setattr(parquet, "MAX_ROW_GROUP_BYTES", 100)  # below what the footer says
    loader = Stream(tmp_path / "data", {"text": "text"}, batch_size=2, shuffle=False).loader(0)
    with pytest.raises(StreamError):
        list(loader)
    (skip, *_) = loader.report()["samples"]
    assert "row group 0 takes" in skip["reason"] and "over 100" in skip["reason"]


def test_an_oversized_sidecar_is_refused_without_reading_it_whole(tmp_path):
    data = _dataset(tmp_path / "data", shards=1)
    sidecar = data / ".shard-000000.tar.idx"
    sidecar.write_bytes(sidecar.read_bytes() + bytes(2 * 2**20))  # far more than 4 offsets
    problems = validate_dataset(str(data))
    assert any("is not a sidecar" in p["reason"] and "larger than" in p["reason"] for p in problems)


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "src", "out", "--workers", "0"],
        ["build", "src", "out", "--shard-samples", "0"],
        ["build", "src", "out", "--shard-size", "0"],
        ["validate", "data", "--workers", "-2"],
        ["demo", "--classes", "1"],
    ],
)
def test_out_of_range_arguments_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "must be" in capsys.readouterr().err


def test_lost_shards_are_skipped_once_and_a_resume_skips_the_same(tmp_path):
    """Shards deleted after indexing: every sample of each is reported once, a resumed run
    goes on with the same batches and skips, and the state stays the same size however many
    shards were lost (it was once a list of all of them, taken after every batch)."""
    data = _dataset(tmp_path / "data", shards=8, per_shard=3)
    for n in (1, 2, 4, 5):
        (data / f"shard-{n:06d}.tar").unlink()

    def run(loader, state=None):
        if state is not None:
            loader.load_state_dict(state)
        out = []
        for batch in loader:
            out.append((batch.keys, batch.repeated.tolist(), loader.state_dict()))
        return out, loader.report()

    def loader():
        return Stream(data, png_fields(), batch_size=2, buffer_size=4, seed=5).loader(0)

    whole, report = run(loader())
    lost = {s["key"] for s in report["samples"]}
    assert (
        report["skipped"] == 12
        and len(lost) == 12
        and all("missing" in s["reason"] for s in report["samples"])
    )
    assert {k for keys, rep, _ in whole for k, r in zip(keys, rep, strict=True) if not r} == {
        f"k{n:04d}" for n in range(24) if n // 3 not in (1, 2, 4, 5)
    }
    assert max(len(state["workers"][0]["reader"]["failed"]) for *_, state in whole) == 1
    for at in range(1, len(whole) - 1):
        state = json.loads(json.dumps(whole[at - 1][2]))
        rest, resumed = run(loader(), state)
        assert [keys for keys, *_ in rest] == [keys for keys, *_ in whole[at:]]
        assert resumed["skipped"] == 12

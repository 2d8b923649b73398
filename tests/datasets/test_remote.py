"""Read-only shards on real servers on 127.0.0.1: an HTTP server that drops connections
mid-shard, and an S3-compatible one (moto's server mode). `polymodal index URL --out DIR`
indexes them where they are, and the stream reads them through that index."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest
from testdata import numbered_pngs, png_fields, serving

from polymodal.cli import main
from polymodal.datasets.files import Remote
from polymodal.datasets.index import ShardIndex
from polymodal.pipelines.stream.stages import StreamError
from polymodal.pipelines.stream.stream import Stream

TOTAL = 54


class _DroppingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; the first GET of each `.tar` (after each `reset`) sends its headers
    and half the shard, then closes the connection. A `gone` name is always 404."""

    dropped: ClassVar[set[str]] = set()
    gone: ClassVar[set[str]] = set()
    gets: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        type(self).gets.append(name)
        if name in self.gone:
            self.send_error(404)
            return
        if not name.endswith(".tar") or name in self.dropped:
            super().do_GET()
            return
        self.dropped.add(name)
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    data = tmp_path / "www" / "ds"
    assert numbered_pngs(data) == TOTAL
    for name in ("index.json", "rejects.jsonl"):  # only shards: a folder of someone's tars
        (data / name).unlink()
    for sidecar in data.glob(".*.idx"):
        sidecar.unlink()
    _DroppingHandler.dropped, _DroppingHandler.gone, _DroppingHandler.gets = set(), set(), []
    with serving(tmp_path / "www", _DroppingHandler) as url:
        yield f"{url}/ds", data


def _keys(loader) -> list[str]:
    return [k for b in loader for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]


@pytest.mark.slow
def test_index_read_only_http_shards_through_dropped_connections(served, tmp_path):
    url, data = served
    remote = Remote(connect_timeout=2, read_timeout=2, tries=3, backoff=0.05)
    before = sorted(p.name for p in data.iterdir())
    assert main(["index", url, "--out", str(tmp_path / "idx")]) == 0
    index = ShardIndex.load(tmp_path / "idx")
    assert index.samples == TOTAL and index.shards_at == url
    assert sorted(p.name for p in data.iterdir()) == before  # the shards' folder: read only
    drops = {n for n in _DroppingHandler.gets if n.endswith(".tar")}
    assert all(_DroppingHandler.gets.count(n) >= 2 for n in drops - {"shard-001.tar"})
    _DroppingHandler.dropped = set()  # every shard drops once more, mid-read, in the stream
    streamed = Stream(tmp_path / "idx", png_fields(), batch_size=5, remote=remote).loader(0)
    keys = _keys(streamed)
    assert sorted(keys) == sorted(f"k{n:04d}" for n in range(TOTAL))
    assert streamed.report()["skipped"] == 0  # each drop resumed where it was
    local = ShardIndex.load(tmp_path / "idx")
    assert [s.sha256 for s in local.shards] == [s.sha256 for s in index.shards]


@pytest.mark.slow
def test_a_shard_that_stays_unreachable_is_reported(served, tmp_path, capsys):
    url, _ = served
    _DroppingHandler.gone = {"shard-002.tar"}
    assert main(["index", url, "--out", str(tmp_path / "idx"), "--strict"]) == 1
    index = ShardIndex.load(tmp_path / "idx")
    assert "shard-002.tar" not in {s.name for s in index.shards} and index.shards
    (reject,) = [
        json.loads(x) for x in (tmp_path / "idx" / "rejects.jsonl").read_text().split("\n") if x
    ]
    assert reject["path"] == "shard-002.tar" and reject["reason"].startswith("missing")
    assert main(["index", url]) == 2  # remote: only with --out
    assert "pass out (--out DIR)" in capsys.readouterr().err


@pytest.mark.slow
def test_index_and_stream_s3_shards_on_a_local_s3_server(tmp_path, monkeypatch):
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        data = tmp_path / "ds"
        numbered_pngs(data)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="shards")
        for tar in sorted(data.glob("*.tar")):
            s3.upload_file(str(tar), "shards", f"public/ds/{tar.name}")
        options = ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
        assert (
            main(["index", "s3://shards/public/ds", "--out", str(tmp_path / "idx"), *options]) == 0
        )
        remote = Remote(fs_options={"client_kwargs": {"endpoint_url": endpoint}})
        index = ShardIndex.load(tmp_path / "idx")
        assert index.shards_at == "s3://shards/public/ds" and index.samples == TOTAL
        streamed = Stream(tmp_path / "idx", png_fields(), batch_size=5, remote=remote)
        on_disk = Stream(data, png_fields(), batch_size=5)
        assert _keys(streamed.loader(0)) == _keys(on_disk.loader(0))
    finally:
        server.stop()


class _HostileHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; each shard named in `modes` misbehaves, every time: `trickle` (a byte
    every 0.2 s), `cut` (half the Content-Length, then closed), `freeze` (100 bytes, then
    nothing), `error` (503), `gone` (404). Every loop ends by itself within 20 s."""

    modes: ClassVar[dict[str, str]] = {}
    release = threading.Event()

    def do_GET(self) -> None:
        mode = self.modes.get(self.path.rsplit("/", 1)[-1])
        if mode is None:
            super().do_GET()
            return
        if mode in ("error", "gone"):
            self.send_error(503 if mode == "error" else 404)
            return
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if mode == "trickle":
                for byte in data[:100]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if self.release.wait(0.2):
                        return
            elif mode == "freeze":
                self.wfile.write(data[:100])
                self.wfile.flush()
                self.release.wait(20)
            else:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:  # the client gave up: what it should do
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hostile(tmp_path):
    """(url, data folder, stop): shards of `numbered_pngs` behind a `_HostileHandler`."""
    data = tmp_path / "www" / "ds"
    numbered_pngs(data)
    _HostileHandler.modes = {}
    _HostileHandler.release = threading.Event()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_HostileHandler, directory=str(tmp_path / "www"))
    )
    server.daemon_threads, server.block_on_close = True, False
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        _HostileHandler.release.set()
        server.shutdown()
        server.server_close()

    yield f"http://127.0.0.1:{server.server_address[1]}/ds", data, stop
    stop()


FAST = Remote(connect_timeout=1, read_timeout=1, tries=2, backoff=0.05)


@pytest.mark.slow
def test_index_reports_every_kind_of_bad_server_and_keeps_the_good_shards(hostile, tmp_path):
    from polymodal.datasets.build import index_shards

    url, _, _ = hostile
    _HostileHandler.modes = {  # shard-001 is empty, so never written
        "shard-002.tar": "trickle",
        "shard-003.tar": "cut",
        "shard-004.tar": "freeze",
        "shard-005.tar": "error",
        "shard-006.tar": "gone",
    }
    started = time.monotonic()
    report = index_shards(url, progress=False, out=tmp_path / "idx", remote=FAST)
    assert time.monotonic() - started < 30  # each bad shard: two short tries, not hours
    rejects = {
        r["path"]: r["reason"]
        for r in map(json.loads, (tmp_path / "idx" / "rejects.jsonl").read_text().splitlines())
    }
    assert rejects["shard-002.tar"].startswith("stalled after 2 tries: ")
    assert "bytes/s a read must keep up" in rejects["shard-002.tar"]
    assert rejects["shard-003.tar"].startswith("short read after 2 tries")
    assert rejects["shard-004.tar"] == "stalled after 2 tries: no byte for 1 s"
    assert rejects["shard-005.tar"].startswith("server error after 2 tries")
    assert rejects["shard-006.tar"].startswith("missing")
    index = ShardIndex.load(tmp_path / "idx")
    assert [s.name for s in index.shards] == ["shard-000.tar"]
    assert report.samples == 7


@pytest.mark.slow
def test_index_of_a_server_that_always_cuts_short_is_one_line_and_a_reject(
    hostile, tmp_path, capsys
):
    url, _, _ = hostile
    _HostileHandler.modes = {"shard-003.tar": "cut"}
    assert main(["index", url, "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    (reject,) = map(json.loads, (tmp_path / "idx" / "rejects.jsonl").read_text().splitlines())
    assert reject["path"] == "shard-003.tar" and reject["reason"].startswith("short read")
    assert ShardIndex.load(tmp_path / "idx").samples == TOTAL - 1


@pytest.mark.slow
def test_the_stream_names_a_stalled_shard_and_a_server_that_is_gone(hostile, tmp_path):
    url, _, stop = hostile
    assert main(["index", url, "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    _HostileHandler.modes = {"shard-005.tar": "trickle"}  # the 20-sample shard
    loader = Stream(tmp_path / "idx", png_fields(), batch_size=5, remote=FAST).loader(0)
    started = time.monotonic()
    keys = _keys(loader)
    assert time.monotonic() - started < 20
    assert len(keys) == TOTAL - 20
    reasons = {s["reason"] for s in loader.report()["samples"]}
    assert len(reasons) == 1 and reasons.pop().startswith("stalled after 2 tries")
    stop()  # the server is gone: refused connections, retried, then named as such
    gone = Stream(tmp_path / "idx", png_fields(), batch_size=5, remote=FAST).loader(0)
    with pytest.raises(StreamError, match="unreachable after 2 tries"):
        _keys(gone)

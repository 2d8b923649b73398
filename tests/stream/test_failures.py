"""Failures while streaming: unreadable batches, a dead worker, a hung decoder, a frozen HTTP
server, a rank outside its world. Each ends in a reported skip or one clear error, never a
traceback from inside a worker or a hang."""

import hashlib
import http.server
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from testdata import png_fields, two_class_pngs

from polymodal.adapters import get
from polymodal.datasets.files import Remote
from polymodal.pipelines.stream.stream import Stream, StreamError


def _digest(batch) -> list:
    values = batch["image"].values.numpy().tobytes()
    return [list(batch.keys), batch.repeated.tolist(), hashlib.sha256(values).hexdigest()]


def _real_keys(batches) -> list[str]:
    return [k for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_batch_with_no_readable_sample_is_padded_and_reported(tmp_path, workers):
    data = two_class_pngs(tmp_path / "data")
    (data / "shard-000000.tar").unlink()  # the whole first batch is unreadable
    stream = Stream(data, png_fields(), batch_size=4, shuffle=False)
    loader = stream.loader(workers)
    epochs = [list(loader) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == len(loader) == 3  # the rank keeps its batch count
        assert batches[0].repeated.all()  # padded with marked repeats
        assert sorted(_real_keys(batches)) == [f"k{n:04d}" for n in range(4, 12)]
    report = loader.report()
    assert report["skipped"] == 4 and {s["key"] for s in report["samples"]} == {
        f"shard-000000.tar#{i}" for i in range(4)
    }
    assert all(s["url"].endswith("shard-000000.tar") for s in report["samples"])
    whole = [_digest(b) for b in stream.loader(workers)]  # resume after the padded batch
    first = stream.loader(workers)
    it = iter(first)
    next(it)
    state = first.state_dict()
    resumed = stream.loader(workers)
    resumed.load_state_dict(state)
    assert [_digest(b) for b in resumed] == whole[1:]


def test_nothing_readable_is_one_clear_error_from_the_loader(tmp_path):
    data = two_class_pngs(tmp_path / "data", shards=2)
    for shard in data.glob("*.tar"):
        shard.unlink()
    loader = Stream(data, png_fields(), batch_size=4).loader(2)
    with pytest.raises(StreamError, match="not one sample of the dataset could be read"):
        list(loader)


@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_a_dead_worker_is_one_clear_error(tmp_path, where):
    """A worker killed mid-epoch (as by the out-of-memory killer) is a StreamError in the
    iterating process, soon, not after the 600 s batch timeout. Run in a child: PyTorch's
    SIGCHLD handler is process-wide state. From another thread PyTorch sets no handler, so
    only the loader's own look at its workers can tell."""
    data = two_class_pngs(tmp_path / "data")
    script = textwrap.dedent(f"""
        import os, signal, threading, time
        from polymodal.adapters import get
        from polymodal.pipelines.stream.stream import Stream, StreamError

        class KillerImage(type(get("image")())):
            def decode_clips(self, sample, rngs):
                if sample["__key__"] == "k0005":
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().decode_clips(sample, rngs)

        fields = {{"image": KillerImage(size=None, extensions=["png"]), "label": get("label")()}}
        loader = Stream({str(data)!r}, fields, batch_size=2, shuffle=False).loader(2)

        def run():
            try:
                list(loader)
            except StreamError as exc:
                print("STREAM ERROR", exc)

        start = time.monotonic()
        if {where!r} == "main thread":
            run()
        else:
            thread = threading.Thread(target=run)
            thread.start()
            thread.join()
        print("SECONDS", round(time.monotonic() - start))
        print("BATCHES", loader.state_dict()["batches"], "OF", len(loader))
        """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "STREAM ERROR" in result.stdout and "out of memory, or a decoder" in result.stdout
    assert "OF 6" in result.stdout and "BATCHES 6" not in result.stdout
    seconds = int(result.stdout.split("SECONDS ")[1].split()[0])
    assert seconds < 60, result.stdout


class _HangingImage(type(get("image")())):
    """An image adapter whose decoder hangs on one key, as a decoder stuck on crafted input."""

    def decode_clips(self, sample, rngs):
        if sample["__key__"] == "k0005":
            time.sleep(60)
        return super().decode_clips(sample, rngs)


@pytest.mark.slow
def test_a_hung_decoder_is_one_clear_error_after_the_batch_timeout(tmp_path):
    data = two_class_pngs(tmp_path / "data")
    fields = {"image": _HangingImage(size=None, extensions=["png"]), "label": get("label")()}
    loader = Stream(data, fields, batch_size=2, shuffle=False).loader(2, batch_timeout=2)
    start = time.perf_counter()
    with pytest.raises(StreamError, match=r"no batch came from the workers in 2 s .*decoder hung"):
        list(loader)
    assert time.perf_counter() - start < 30  # not the 60 s the decoder would take
    with pytest.raises(ValueError, match="batch_timeout"):
        Stream(data, fields).loader(2, batch_timeout=0)


class _FreezingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the dataset, except that for its first shard it sends the headers and 100 bytes,
    then stalls (until the test ends) as a frozen server does."""

    release = threading.Event()

    def do_GET(self):
        if not self.path.endswith("shard-000000.tar"):
            return super().do_GET()
        path = Path(self.translate_path(self.path))
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:100])
        self.wfile.flush()
        self.release.wait(30)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_frozen_http_server_is_reported_within_the_timeouts(tmp_path):
    assert Remote().worst_case_seconds < 60  # the default: reported within a minute
    data = two_class_pngs(tmp_path / "data", shards=2)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_FreezingHandler, directory=str(data))
    )
    server.daemon_threads, server.block_on_close = True, False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        remote = Remote(connect_timeout=1, read_timeout=1, tries=2, backoff=0.1)
        loader = Stream(url, png_fields(), batch_size=4, shuffle=False, remote=remote).loader(0)
        start = time.perf_counter()
        assert _real_keys(loader) == [f"k{n:04d}" for n in range(4, 8)]
        assert time.perf_counter() - start < 20
        report = loader.report()
        assert report["skipped"] == 4
        assert all(s["reason"].startswith("stalled after 2 tries") for s in report["samples"])
    finally:
        _FreezingHandler.release.set()
        server.shutdown()


def test_a_rank_outside_the_world_is_an_error_naming_both(tmp_path, monkeypatch):
    data = two_class_pngs(tmp_path / "data", shards=1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=2 with WORLD_SIZE=2"):
        Stream(data, png_fields()).loader(0)

"""Hostile conditions in motion: unreadable batches, a frozen HTTP server, broken checkpoints,
out-of-range settings, missing paths and a full disk. Each must end in a reported skip or one
readable line with a non-zero exit, never a traceback from inside a worker or a hang."""

import hashlib
import http.server
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from testmedia import image_train_toml

from polymodal.adapters import DecodeError, get
from polymodal.cli import main
from polymodal.datasets.files import Remote
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.synthetic import encode_image, photo
from polymodal.datasets.writer import ShardWriter
from polymodal.pipelines.stream.stream import Stream, StreamError


def _images(directory: Path, shards: int = 3, per_shard: int = 4, start: int = 0) -> Path:
    """Shards of 8×8 PNGs of two classes told apart by brightness."""
    with ShardWriter(directory, max_samples=per_shard) as writer:
        for n in range(start, start + shards * per_shard):
            level = 40 if n % 2 else 210
            png = encode_image(np.full((8, 8, 3), level, np.uint8), "PNG")
            writer.write({"__key__": f"k{n:04d}", "png": png, "cls": str(n % 2)})
    return directory


def _fields():
    return {"image": get("image")(size=None, extensions=["png"]), "label": get("label")()}


def _digest(batch) -> list:
    values = batch["image"].values.numpy().tobytes()
    return [list(batch.keys), batch.repeated.tolist(), hashlib.sha256(values).hexdigest()]


def _real_keys(batches) -> list[str]:
    return [k for b in batches for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]


# --- 4. failures are reported, not raised inside workers, and nothing hangs -------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_a_batch_with_no_readable_sample_is_padded_and_reported(tmp_path, workers):
    data = _images(tmp_path / "data")
    (data / "shard-000000.tar").unlink()  # the whole first batch is unreadable
    stream = Stream(data, _fields(), batch_size=4, shuffle=False)
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
    data = _images(tmp_path / "data", shards=2)
    for shard in data.glob("*.tar"):
        shard.unlink()
    loader = Stream(data, _fields(), batch_size=4).loader(2)
    with pytest.raises(StreamError, match="not one sample of the dataset could be read"):
        list(loader)


def test_a_dead_worker_is_one_clear_error(tmp_path):
    """A worker killed mid-epoch (as by the out-of-memory killer) is a StreamError in the
    iterating process. Run in a child: PyTorch's SIGCHLD handler is process-wide state."""
    data = _images(tmp_path / "data")
    script = textwrap.dedent(f"""
        import os, signal
        from polymodal.adapters import get
        from polymodal.pipelines.stream.stream import Stream, StreamError

        class KillerImage(type(get("image")())):
            def decode_clips(self, sample, rngs):
                if sample["__key__"] == "k0005":
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().decode_clips(sample, rngs)

        fields = {{"image": KillerImage(size=None, extensions=["png"]), "label": get("label")()}}
        loader = Stream({str(data)!r}, fields, batch_size=2, shuffle=False).loader(2)
        try:
            list(loader)
        except StreamError as exc:
            print("STREAM ERROR", exc)
        print("BATCHES", loader.state_dict()["batches"], "OF", len(loader))
        """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "STREAM ERROR" in result.stdout and "out of memory, or a decoder" in result.stdout
    assert "OF 6" in result.stdout and "BATCHES 6" not in result.stdout


class _HangingImage(type(get("image")())):
    """An image adapter whose decoder hangs on one key, as a decoder stuck on crafted input."""

    def decode_clips(self, sample, rngs):
        if sample["__key__"] == "k0005":
            time.sleep(60)
        return super().decode_clips(sample, rngs)


@pytest.mark.slow
def test_a_hung_decoder_is_one_clear_error_after_the_batch_timeout(tmp_path):
    data = _images(tmp_path / "data")
    fields = {"image": _HangingImage(size=None, extensions=["png"]), "label": get("label")()}
    loader = Stream(data, fields, batch_size=2, shuffle=False).loader(2, batch_timeout=2)
    start = time.perf_counter()
    with pytest.raises(StreamError, match=r"no batch came from the workers in 2 s .*decoder hung"):
        list(loader)
    assert time.perf_counter() - start < 30  # not the 60 s the decoder would take
    with pytest.raises(ValueError, match="batch_timeout"):
        Stream(data, fields).loader(2, batch_timeout=0)


def _train_config(tmp_path: Path, train: Path, val: Path | None, **extra: object) -> Path:
    return image_train_toml(
        tmp_path / "train.toml", train, val or "", tmp_path / "run", epochs=2, **extra
    )


def test_training_survives_a_missing_first_validation_shard(tmp_path, capsys, caplog):
    """The issue's case: `polymodal train` died at every evaluation."""
    train = _images(tmp_path / "train", shards=2)
    val = _images(tmp_path / "val", shards=3, start=100)
    (val / "shard-000000.tar").unlink()
    assert main(["train", str(_train_config(tmp_path, train, val))]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["val_samples"] == 8  # the 8 readable validation samples, once each
    assert summary["val_skipped"] == 4
    logged = [r.getMessage() for r in caplog.records if r.name == "polymodal.train"]
    assert any("validation skipped 4 samples" in m and "shard-000000.tar#" in m for m in logged)


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
    data = _images(tmp_path / "data", shards=2)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_FreezingHandler, directory=str(data))
    )
    server.daemon_threads, server.block_on_close = True, False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        remote = Remote(connect_timeout=1, read_timeout=1, tries=2, backoff=0.1)
        loader = Stream(url, _fields(), batch_size=4, shuffle=False, remote=remote).loader(0)
        start = time.perf_counter()
        assert _real_keys(loader) == [f"k{n:04d}" for n in range(4, 8)]
        assert time.perf_counter() - start < 20
        report = loader.report()
        assert report["skipped"] == 4
        assert all(s["reason"].startswith("stalled after 2 tries") for s in report["samples"])
    finally:
        _FreezingHandler.release.set()
        server.shutdown()


def _pickle_with_code(marker: Path) -> bytes:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"model": Exploit()}, protocol=2)


def test_resume_passes_over_checkpoints_that_do_not_load(tmp_path, caplog):
    train = _images(tmp_path / "train", shards=2)
    config = _train_config(
        tmp_path, train, None, max_steps=4, checkpoint_every=2, keep_checkpoints=3
    )
    assert main(["train", str(config)]) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    newest = checkpoints / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short, as by a full disk
    marker = tmp_path / "PWNED"
    (checkpoints / "step-00000005.pt").write_bytes(_pickle_with_code(marker))
    stale = checkpoints / "step-00000006.pt.4242.tmp"
    stale.write_bytes(b"half a checkpoint")
    with caplog.at_level("WARNING", logger="polymodal.train"):
        assert main(["train", str(config), "--set", "max_steps=6", "--resume"]) == 0
    skipped = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(skipped) == 2 and "step-00000005.pt" in skipped[0] and "00000004" in skipped[1]
    assert not marker.exists() and not stale.exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run/metrics.jsonl").open()]
    assert steps[-4:] == [3, 4, 5, 6]  # resumed from step 2, the newest that loads


def test_corrupt_jpeg_data_is_never_a_silently_wrong_sample():
    """libjpeg only warns about these and fills the rest grey; strict decoding refuses them."""
    small = encode_image(photo(0, 128), "JPEG")
    large = encode_image(photo(0, 512), "JPEG")  # 512 → 112 decodes at 1/4 in the DCT domain
    noise = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    for data in (small, large):
        middle = len(data) // 2
        cases = {
            "cut-and-closed": data[:middle] + b"\xff\xd9",
            "noise-in-the-scan": data[:middle] + noise + data[middle + 200 :],
        }
        for name, bad in cases.items():
            with pytest.raises(DecodeError):
                get("image")(size=112).decode({"__key__": name, "jpg": bad})
        assert get("image")(size=112).decode({"__key__": "ok", "jpg": data}).grid == (112, 112)


def test_ffmpeg_errors_reach_users_as_plain_reasons():
    for name in ("video", "audio"):
        with pytest.raises(DecodeError) as err:
            get(name)().decode({"__key__": "k", "mp4": b"not a video at all" * 40})
        assert "Errno" not in err.value.reason and "FFmpeg: " in err.value.reason


def test_a_rank_outside_the_world_is_an_error_naming_both(tmp_path, monkeypatch):
    data = _images(tmp_path / "data", shards=1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=2 with WORLD_SIZE=2"):
        Stream(data, _fields()).loader(0)


# --- 5. values and mistakes are checked up front ------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("optim.grad_clip=-1", "optim.grad_clip: must be at least 0"),
        ("checkpoint_every=0", "checkpoint_every: must be positive"),
        ("optim.accumulate=0", "optim.accumulate: must be positive"),
        ("max_steps=-1", "max_steps: must be at least 0"),
        ("data.workers=-1", "data.workers: must be at least 0"),
        ("optim.lr=-0.1", "optim.lr: must be a positive number"),
        ("optim.weight_decay=-1", "optim.weight_decay: must be at least 0"),
        ("keep_checkpoints=0", "keep_checkpoints: must be positive"),
        ("model.dropout=1.5", "model.dropout: must be in"),
        ("model.self_heads=3", "model.self_heads: 3 heads do not divide"),
        ("data.fields.image.options.size=-5", "data.fields.image.options: size must be positive"),
        ("data.fields.image.options.sise=5", "options.sise: unknown option \\(known: size"),
        ("data.fields.image.encoder.bands=5", "encoder.bands: unknown option"),
        ("data.fields.image.adapter='imgae'", "adapter: no adapter named 'imgae'"),
        ("data.label='txt'", "data.label: the dataset .* has no txt member"),
        ("data.train='/no/such/dataset'", "data.train: /no/such/dataset: no dataset here"),
        ("data.remote.read_timeout=0", "data.remote: timeouts must be positive"),
        ("data.remote.tries=0", "data.remote: tries must be at least 1"),
        ("data.remote.timeout=5", "data.remote.timeout: unknown field"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_field(tmp_path, capsys, setting, message):
    train = _images(tmp_path / "train", shards=1)
    config = _train_config(tmp_path, train, None)
    assert main(["train", str(config), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_missing_paths_are_one_line_each(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    for argv in (
        ["validate", missing],
        ["inspect", missing],
        ["index", missing],
        ["train", missing + ".toml"],
        ["preprocess", missing, str(tmp_path / "out"), "--op", "dedupe"],
        ["build", missing, str(tmp_path / "out")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert "nope" in err


def test_a_full_disk_and_an_impossible_output_are_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"img{i}.png").write_bytes(encode_image(photo(i, 64), "PNG"))

    def limit_file_size():  # writes past 64 KB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    command = [sys.executable, "-m", "polymodal", "build", str(src), str(tmp_path / "out")]
    full = subprocess.run(  # one shard of 20 PNGs, over the limit
        command,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=120,
    )
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert "File too large" in full.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "out").glob("*.tmp"))  # nothing half-written stays
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert ShardIndex.load(tmp_path / "out").samples == 20
    (tmp_path / "a-file").write_text("")
    blocked = subprocess.run(
        [*command[:-1], str(tmp_path / "a-file" / "out")], capture_output=True, text=True
    )
    assert blocked.returncode == 2 and "Traceback" not in blocked.stderr
    assert "Not a directory" in blocked.stderr


def test_a_run_directory_inside_a_dataset_is_refused(tmp_path, capsys):
    train = _images(tmp_path / "train", shards=1)
    config = _train_config(tmp_path, train, None)
    before = sorted(p.name for p in train.iterdir())
    assert main(["train", str(config), "--set", f"run_dir='{train / 'run'}'"]) == 2
    assert "run_dir: the output" in capsys.readouterr().err
    assert sorted(p.name for p in train.iterdir()) == before


def test_training_on_data_with_nothing_left_to_read_is_an_error_not_a_wait(tmp_path, capsys):
    """Every shard cut short since it was indexed: all are left out, and `train` says so at
    once (it used to wait forever for a first batch of an empty epoch)."""
    train = _images(tmp_path / "train", shards=1)
    for shard in train.glob("*.tar"):
        shard.write_bytes(shard.read_bytes()[:2048])
    config = image_train_toml(tmp_path / "c.toml", train, "", tmp_path / "run", max_steps=2)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data.train: the dataset" in err and "has no sample to read; left out: " in err
    assert "the shard is 2,048 bytes, the index says" in err

"""Small real datasets and the helpers several test folders share: numbered PNG shards whose
pixels and labels encode the sample number, two-class PNG shards, the fields that read them, a
batch digest for bitwise comparisons, a rank environment, torchrun, a training config over them
and a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testmedia import image_train_toml

from polymodal.adapters import get
from polymodal.datasets.build import index_shards
from polymodal.datasets.synthetic import encode_image
from polymodal.datasets.writer import ShardWriter

TESTS = Path(__file__).resolve().parent  # the shared helpers, for child processes' sys.path
REPO = TESTS.parent  # examples/ and polymodal/
SHARD_SIZES = [7, 0, 13, 1, 9, 20, 4]  # uneven, one empty


def numbered_pngs(
    directory: Path, sizes: Sequence[int] = SHARD_SIZES, prefix: str = "k", bad: Sequence[int] = ()
) -> int:
    """An indexed dataset of tiny PNGs whose pixel value and label encode the sample number
    (samples in `bad` are broken PNGs); returns the number of samples."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for shard, size in enumerate(sizes):
        with ShardWriter(directory / f"part{shard:03d}", prefix="tmp", max_samples=None) as writer:
            for _ in range(size):
                pixels = np.full((4, 4, 3), n % 256, np.uint8)
                png = b"\x89PNG broken" if n in bad else encode_image(pixels, "PNG")
                writer.write({"__key__": f"{prefix}{n:04d}", "png": png, "cls": str(n % 10)})
                n += 1
    # one dataset: gather the shards into a single folder and index them
    for i, part in enumerate(sorted(directory.glob("part*"))):
        for tar in part.glob("*.tar"):
            tar.rename(directory / f"shard-{i:03d}.tar")
    index_shards(directory, progress=False)
    return n


def two_class_pngs(directory: Path, shards: int = 3, per_shard: int = 4, start: int = 0) -> Path:
    """Shards of 8×8 PNGs of two classes told apart by brightness."""
    with ShardWriter(directory, max_samples=per_shard) as writer:
        for n in range(start, start + shards * per_shard):
            level = 40 if n % 2 else 210
            png = encode_image(np.full((8, 8, 3), level, np.uint8), "PNG")
            writer.write({"__key__": f"k{n:04d}", "png": png, "cls": str(n % 2)})
    return directory


def png_fields() -> dict[str, Any]:
    """The image (at its own size) and label fields of the PNG datasets above."""
    return {"image": get("image")(size=None, extensions=["png"]), "label": get("label")()}


def batch_digest(batch: Any) -> list:
    """Keys, repeat marks and every field's values and mask as hashes: equal digests are
    bitwise-equal batches."""
    out = [list(batch.keys), batch.repeated.tolist()]
    for name in sorted(batch):
        field = batch[name]
        out.append(hashlib.sha256(field.values.numpy().tobytes()).hexdigest())
        out.append(hashlib.sha256(field.mask.numpy().tobytes()).hexdigest())
    return out


def tree_digests(directory: Path, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """Every file under `directory`, by relative path, as its size and sha256: two trees
    compared this way name the files that differ, where comparing their bytes prints
    megabytes of tar padding and hides which file it was."""

    def digest(path: Path) -> str:
        return f"{path.stat().st_size} {hashlib.sha256(path.read_bytes()).hexdigest()}"

    files = (p for p in sorted(directory.rglob("*")) if p.is_file() and not skip(p))
    return {str(p.relative_to(directory)): digest(p) for p in files}


def set_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    """This process as `rank` of `world`, as torchrun would say it."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def torchrun(
    args: Sequence[str], processes: int = 2, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """`args` (a script, or `-m module ...`) under `torchrun --standalone` with gloo, one thread
    per process. With `check`, a failed launch fails the test with the end of its stderr (a
    rank's traceback), which a bare CalledProcessError leaves out."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(processes), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert done.returncode == 0, f"torchrun exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def train_toml(tmp_path: Path, train: Path, val: Path | None, **extra: object) -> Path:
    """A two-epoch image classification config over `train` (and `val`), run in tmp_path."""
    return image_train_toml(
        tmp_path / "train.toml", train, val or "", tmp_path / "run", epochs=2, **extra
    )


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that keeps its request log to itself."""

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(directory: Path, handler: type = QuietHandler) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving `directory` with `handler`; yields its URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(directory))
    )
    server.daemon_threads, server.block_on_close = True, False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

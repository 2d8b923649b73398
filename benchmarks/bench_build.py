"""Build throughput against copying the same bytes into tars with `tarfile`, in one process.

    .venv/bin/python benchmarks/bench_build.py [--images 2000] [--clips 100] [--repeats 3]

A folder of 256² JPEGs and 10 s 320×240 h264/aac clips of noise (5 MB each at 4 Mbit/s; 526
MB with the defaults), made here, built into 4 MB tar shards with 1 and 2 workers (hashing,
offsets, sidecars, fsync, atomic renames, index), against reading every file and adding it to
4 MB tars with Python's `tarfile` (no index, no fsync); and once with `build`'s default 256
MB shards. Rates are medians over repeats, the contenders taking turns, with the page cache warm
for every contender. The last run's output is removed before each run, untimed: a build's
shards are on disk, a copy's still in the page cache, so deleting them costs more, which
no build pays (1 worker, shards hashed on two commit threads: 0.60-0.62× untimed against
0.50-0.55× timed; hashed on the writer, one commit thread: 0.43-0.48× against 0.40-0.46×).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from turns import in_turns, median_run, round_ratios, spread  # sibling script: stdlib only

from polymodal.datasets.build import build

SHARD_BYTES = 4 * 2**20


def make_source(root: Path, images: int, clips: int) -> None:
    """The source folder. Run in a child process: the encoders (PyAV) must not be loaded
    here, or the build's worker pool would take the slower forkserver path (see
    `build._pool_context`) that the `polymodal build` command does not."""
    import numpy as np

    from polymodal.datasets.synthetic import encode_image, encode_media, photo, tone

    (root / "images").mkdir(parents=True)
    (root / "clips").mkdir()
    for i in range(images):
        (root / "images" / f"{i:05d}.jpg").write_bytes(encode_image(photo(i, 256), quality=90))
    clip = None
    for i in range(clips):
        if clip is None or i % 20 == 0:  # a few distinct clips: encoding is slow, not measured
            noise = np.random.default_rng(i).integers(0, 256, (250, 240, 320, 3), dtype=np.uint8)
            clip = encode_media("mp4", noise, fps=25, audio=tone(220 + i, 10.0))
        (root / "clips" / f"{i:05d}.mp4").write_bytes(clip)
        (root / "clips" / f"{i:05d}.cls").write_text(str(i % 10))


def raw_tar_copy(src: Path, out: Path) -> None:
    """The baseline: every file, in sorted order, into 4 MB tars with `tarfile`."""
    out.mkdir()
    number, size, tar = 0, 0, None
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if tar is None or size + len(data) > SHARD_BYTES:
            if tar is not None:
                tar.close()
            tar = tarfile.open(out / f"raw-{number:06d}.tar", "w")  # noqa: SIM115
            number, size = number + 1, 0
        info = tarfile.TarInfo(path.relative_to(src).as_posix())
        info.size = len(data)
        tar.addfile(info, fileobj=io.BytesIO(data))
        size += len(data)
    if tar is not None:
        tar.close()


def switched_off(what: str, fn: Callable[[Path], object]) -> Callable[[Path], object]:
    """`fn` with every fsync (`fsync`: shards, sidecars, index) or the shards' sha256 and the
    read back it hashes (`sha256`) made a no-op while it runs, to state what each costs (the
    index's hashes are then wrong: these builds are thrown away)."""
    from polymodal.datasets import shard

    def run(out: Path) -> object:
        if what == "fsync":
            patch = mock.patch.object(shard.os, "fsync", lambda fd: None)
        else:
            patch = mock.patch.object(shard, "file_sha256", lambda path: "0" * 64)
        with patch:
            return fn(out)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--make-source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_source:
        make_source(args.make_source, args.images, args.clips)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--make-source",
                str(work / "src"),
                "--images",
                str(args.images),
                "--clips",
                str(args.clips),
            ],
            check=True,
        )
        samples = args.images + args.clips
        total = sum(p.stat().st_size for p in (work / "src").rglob("*") if p.is_file())
        raw_tar_copy(work / "src", work / "warm")  # read everything once: a warm page cache
        shutil.rmtree(work / "warm")
        # the source just written would be flushed by the kernel 30 s on (dirty_expire),
        # inside some contender's timed run: flushed now, untimed
        os.sync()
        cases = {
            "tarfile copy (baseline)": lambda out: raw_tar_copy(work / "src", out),
            "polymodal build, 1 worker": lambda out: build(
                work / "src", out, shard_bytes=SHARD_BYTES, workers=1, progress=False
            ),
            "polymodal build, 2 workers": lambda out: build(
                work / "src", out, shard_bytes=SHARD_BYTES, workers=2, progress=False
            ),
            "  1 worker, 256 MB shards": lambda out: build(work / "src", out, progress=False),
        }
        single = cases["polymodal build, 1 worker"]
        for name in ("fsync", "sha256"):
            cases[f"  1 worker without {name}"] = switched_off(name, single)
        out = work / "out"
        runs = in_turns(
            {name: lambda fn=fn: fn(out) for name, fn in cases.items()},
            args.repeats,
            before=lambda: shutil.rmtree(out, ignore_errors=True),
        )
        rows = {name: median_run(r) for name, r in runs.items()}
    baseline = runs["tarfile copy (baseline)"]
    print(
        f"{samples} samples ({args.images} JPEGs, {args.clips} clips), {total / 2**20:.1f} MB, "
        f"4 MB shards; median of {args.repeats} in turns; × baseline: the median of each "
        "round's ratio (lowest–highest); cores: CPU seconds over wall seconds"
    )
    print(
        f"  {'what':30s} {'seconds':>8s} {'samples/s':>10s} {'MB/s':>8s} {'× baseline':>18s} "
        f"{'CPU s':>6s} {'cores':>6s}"
    )
    for name, row in rows.items():
        seconds, cpu = row.wall, row.cpu
        print(
            f"  {name:30s} {seconds:8.2f} {samples / seconds:10.0f} "
            f"{total / 2**20 / seconds:8.1f} {spread(round_ratios(runs[name], baseline)):>18s} "
            f"{cpu:6.2f} {cpu / seconds:6.2f}"
        )
    one, one_cpu = rows["polymodal build, 1 worker"].wall, rows["polymodal build, 1 worker"].cpu
    two = round_ratios(runs["polymodal build, 2 workers"], runs["polymodal build, 1 worker"])
    cores = os.cpu_count() or 1
    print(
        f"  2 workers vs 1 worker: {spread(two)}× (at most {cores * one / one_cpu:.2f}× on "
        f"{cores} cores: 1 worker keeps {one_cpu / one:.2f} busy)"
    )
    print(
        "  (each shard is hashed and fsynced on a thread of its own while the next is written; "
        "256 MB is `build`'s default shard size)"
    )


if __name__ == "__main__":
    main()

"""Preprocessing jobs against running the same ops in a plain Python loop, in one process.

    .venv/bin/python benchmarks/bench_preprocess.py [--audio 96] [--clips 32] [--repeats 3]

Two jobs over shards made here: resample 5 s stereo 44.1 kHz flac tones to 16 kHz mono flac,
and resize 4 s 320×240 h264/aac clips to a 128-pixel shorter side. Contenders: the plain loop
(read each shard, apply the op, write a tar shard: no pool, no records, no index), the local
engine with 1 and 2 workers, and Ray with 2 CPUs (started before timing; its start-up is
printed apart). Times are medians over repeats; ratios are speed relative to the loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from polymodal.datasets.index import ShardIndex
from polymodal.datasets.shard import TarShard, shard_name
from polymodal.datasets.synthetic import counter_frames, encode_audio, encode_media, tone
from polymodal.datasets.writer import ShardWriter
from polymodal.pipelines import preprocess
from polymodal.pipelines.preprocess.ops import make_op


def make_audio(root: Path, count: int) -> Path:
    with ShardWriter(root / "audio", max_samples=8) as writer:
        for i in range(count):
            flac = encode_audio(tone(200 + 10 * i, 5.0, 44100, channels=2), 44100, "flac")
            writer.write({"__key__": f"a{i:05d}", "flac": flac, "cls": str(i % 10).encode()})
    return root / "audio"


def make_clips(root: Path, count: int) -> Path:
    clip = None
    with ShardWriter(root / "video", max_samples=4) as writer:
        for i in range(count):
            if clip is None or i % 8 == 0:  # a few distinct clips: encoding is not measured
                frames = counter_frames(100, 240, 320, step=2)
                clip = encode_media("mp4", frames, fps=25, audio=tone(220 + i, 4.0))
            writer.write({"__key__": f"v{i:05d}", "mp4": clip, "cls": str(i % 10).encode()})
    return root / "video"


def plain_loop(src: Path, out: Path, op_text: str) -> None:
    """The baseline: the same op over every sample, written to tar shards, one process."""
    op = make_op(op_text)
    out.mkdir(parents=True, exist_ok=True)
    index = ShardIndex.load(src)
    for number, shard in enumerate(index.shards):
        writer = TarShard(out, shard_name("shard", number, "tar"))
        task = preprocess.ShardTask(index.base, index.format, shard, number, [op])
        for sample in task.samples(on_problem=print):
            writer.add(op(sample))
        writer.finish()


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=int, default=96, help="5 s stereo flac samples")
    parser.add_argument("--clips", type=int, default=32, help="4 s 320x240 clips")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = [
            (
                "resample audio",
                make_audio(root, args.audio),
                "resample_audio:rate=16000,channels=1",
            ),
            ("resize video", make_clips(root, args.clips), "transcode_video:size=128"),
        ]
        ray_start = None
        if not args.no_ray:
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
            ray_start = time.perf_counter() - start
        print(f"{'job':16s} {'contender':18s} {'median s':>9s} {'samples/s':>10s} {'vs loop':>8s}")
        for name, src, op in jobs:
            samples = ShardIndex.load(src).samples
            contenders: dict[str, Callable[[], object]] = {
                "plain loop": lambda src=src, op=op: plain_loop(src, root / "loop", op)
            }
            for workers in (1, 2):
                contenders[f"local, {workers} worker{'s' * (workers > 1)}"] = (
                    lambda src=src, op=op, w=workers: preprocess.run(
                        src, root / f"local{w}", [op], workers=w, overwrite=True, progress=False
                    )
                )
            if ray_start is not None:
                contenders["ray, 2 CPUs"] = lambda src=src, op=op: preprocess.run(
                    src, root / "ray", [op], engine="ray", overwrite=True, progress=False
                )
            base = None
            for label, fn in contenders.items():
                seconds = timed(fn, args.repeats)
                base = base or seconds
                rate = samples / seconds
                print(f"{name:16s} {label:18s} {seconds:9.2f} {rate:10.1f} {base / seconds:7.2f}×")
            same = all(
                (root / d / "shard-000000.tar").read_bytes()
                == (root / "local1" / "shard-000000.tar").read_bytes()
                for d in ("loop", "local2", *(["ray"] if ray_start is not None else []))
            )
            print(f"{name:16s} first output shard identical across contenders: {same}")
        if ray_start is not None:
            print(f"Ray start-up (ray.init, 2 CPUs, not in the times above): {ray_start:.1f} s")


if __name__ == "__main__":
    main()

"""Stream throughput against webdataset's pipeline, stage overhead, and resume cost.

    .venv/bin/python benchmarks/bench_stream.py [--samples 2000] [--repeats 3]

2,000 photo-like 256² JPEG samples with labels in 8 tar shards. Contenders, each a full epoch
of batches of 64 with 0, 1 and 2 DataLoader workers: our Stream (image adapter, resize 256 /
crop 224, shuffle buffer 1000), and `WebDataset(...).shuffle(1000).decode("pil")` +
torchvision `Resize(256), CenterCrop(224), PILToTensor` + `.batched(64)`. Also: a bare loop
reading the tar and decoding with the same adapter (no stages) against our Stream in-process
(and the same loop stacking each 64 images, to show what batching itself costs),
the time to the first batch after resuming at step k against re-decoding k steps, and what the
reader's checks against the index cost (each sample's offset and key hash against its
sidecar, one sidecar read a shard): a label-only epoch (no media decode, so the checks are
all there is to see) with them, against the same epoch with them switched off.

Contenders compared with each other run in turns, a median of `--repeats` each; a ratio
or an overhead is the median of each round's (the contenders of a round ran back to back),
with the lowest and highest round's beside it, since this machine's speed drifts by more
than the overhead being measured from minute to minute. The Stream
hashes a local shard once a version of the file per process: its repeated epochs here, and
the DataLoader workers forked after them, read verified shards without hashing them again,
as a training process's later epochs do (the first epoch of a fresh process hashes all).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader
from torchvision import transforms
from turns import in_turns, median_rate, round_ratios, spread  # a sibling script

from polymodal.adapters import get
from polymodal.datasets.build import build
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.reader import read_shard
from polymodal.datasets.synthetic import encode_image, photo
from polymodal.pipelines.stream.stream import Stream

BATCH = 64


def make_dataset(root: Path, samples: int) -> Path:
    src = root / "src"
    for i in range(samples):
        folder = src / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(encode_image(photo(i, 256), quality=90))
    out = root / "data"
    build(src, out, shard_samples=samples // 8, shuffle=True, progress=False)
    return out


def fields() -> dict:
    return {"image": get("image")(size=224, extensions=["jpg"]), "label": get("label")()}


def ours(data: Path, workers: int) -> int:
    loader = Stream(data, fields(), batch_size=BATCH, buffer_size=1000).loader(workers)
    return sum(len(b.keys) for b in loader)


def webdataset_pipeline(data: Path, workers: int) -> int:
    urls = sorted(str(p) for p in data.glob("*.tar"))
    transform = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()]
    )
    pipeline = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .shuffle(1000)
        .decode("pil")
        .to_tuple("jpg", "cls")
        .map_tuple(transform, lambda c: int(c))
        .batched(BATCH)
    )
    loader = DataLoader(pipeline, batch_size=None, num_workers=workers)
    return sum(len(b[1]) for b in loader)


def bare_loop(data: Path, stack: bool = False) -> int:
    """Read and decode every sample with the same adapters, and nothing else; with `stack`,
    also `torch.stack` each 64 decoded images into a batch, the one copy any batching makes."""
    index = ShardIndex.load(data)
    image, label = fields().values()
    n, pending = 0, []
    for shard in index.shards:
        for sample in read_shard(index, shard):
            pixels = image.decode(sample).values
            label.decode(sample)
            n += 1
            if stack:
                pending.append(pixels)
                if len(pending) == BATCH:
                    torch.stack(pending)
                    pending = []
    return n


def resume_cost(data: Path, k: int) -> tuple[float, float]:
    """(seconds to the first batch after resuming at step k, seconds to decode k steps)."""
    loader = Stream(data, fields(), batch_size=BATCH, buffer_size=1000).loader(0)
    batches = iter(loader)
    start = time.perf_counter()
    for _ in range(k):
        next(batches)
    decode_k = time.perf_counter() - start
    state = loader.state_dict()
    resumed = Stream(data, fields(), batch_size=BATCH, buffer_size=1000).loader(0)
    resumed.load_state_dict(state)
    start = time.perf_counter()
    next(iter(resumed))
    first = time.perf_counter() - start
    one_batch = decode_k / k
    return first - one_batch, decode_k


def index_check_cost(data: Path, repeats: int) -> tuple[float, float]:
    """(samples/s with the reader's index checks, without): label-only epochs, in-process."""
    from polymodal.pipelines.stream.stages import read

    saved = read._check_sample, read._sidecar
    off = (lambda *a: None), (lambda *a, **k: None)

    def epoch(checked: bool) -> int:
        read._check_sample, read._sidecar = saved if checked else off
        try:
            loader = Stream(data, {"label": get("label")()}, batch_size=BATCH).loader(0)
            return sum(len(b.keys) for b in loader)
        finally:
            read._check_sample, read._sidecar = saved

    runs = in_turns(
        {"with": lambda: epoch(True), "without": lambda: epoch(False)}, max(3, repeats), True
    )
    return median_rate(runs["with"]), median_rate(runs["without"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp), args.samples)
        print(
            f"{args.samples} samples, 256² JPEG → 224², batch {BATCH}; samples/s, median of "
            f"{args.repeats}"
        )
        print(
            f"  {'workers':>7s} {'webdataset':>11s} {'polymodal':>10s} "
            f"{'ratio, median of rounds (lowest–highest)':>42s}"
        )
        for workers in (0, 1, 2):
            pair = in_turns(
                {
                    "theirs": lambda w=workers: webdataset_pipeline(data, w),
                    "ours": lambda w=workers: ours(data, w),
                },
                args.repeats,
                warm_up=True,
            )
            theirs, mine = median_rate(pair["theirs"]), median_rate(pair["ours"])
            ratios = spread(round_ratios(pair["ours"], pair["theirs"]))
            print(f"  {workers:7d} {theirs:11.0f} {mine:10.0f} {ratios:>42s}")
        loops = in_turns(
            {
                "bare": lambda: bare_loop(data),
                "stacked": lambda: bare_loop(data, stack=True),
                "stream": lambda: ours(data, 0),
            },
            args.repeats,
            warm_up=True,
        )
        bare, stacked, stream = (median_rate(loops[n]) for n in ("bare", "stacked", "stream"))

        def overhead(baseline: str) -> str:
            """The Stream's loss against a loop, round by round, in per cent."""
            lost = [100 * (1 - r) for r in round_ratios(loops["stream"], loops[baseline])]
            return spread(lost, "{:.1f}%")

        print(
            f"\nbare read+decode loop {bare:.0f}/s, Stream in-process {stream:.0f}/s: stage "
            f"overhead {overhead('bare')}\n"
            f"bare loop that also stacks batches {stacked:.0f}/s: overhead beyond batching "
            f"{overhead('stacked')}\n"
            "(overheads: median of the rounds, lowest–highest in brackets)"
        )
        k = (args.samples // BATCH) * 3 // 4
        extra, decode_k = resume_cost(data, k)
        print(
            f"resume at step {k}: {extra:.3f} s beyond one batch, vs {decode_k:.2f} s to "
            f"re-decode {k} steps ({100 * extra / decode_k:.1f}%)"
        )
        checked, unchecked = index_check_cost(data, args.repeats)
        print(
            f"index checks (offset + key hash a sample, a sidecar a shard), label-only epoch: "
            f"{checked:.0f}/s with, {unchecked:.0f}/s without ({checked / unchecked:.2f}×)"
        )


if __name__ == "__main__":
    main()

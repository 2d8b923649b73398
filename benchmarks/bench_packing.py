"""Packed batches against padding to the longest, on samples of their natural lengths.

    .venv/bin/python benchmarks/bench_packing.py [--samples 192] [--batch 16] [--repeats 5]
        [--digits 2000] [--epochs 12] [--seeds 0 1 2] [--device cpu] [--tables steps learning]

`steps`: the model's training step (forward, backward, the trainer's fused AdamW) over the
same decoded batches, padded (each batch padded to its longest sample, `mask`: what the loader
does by default) and length buckets (padded, the samples of `--lookahead` batches regrouped by
length: the stream's `buckets="auto"`), `budget` (the same, cut by the elements each batch
ships: `max_tokens`) and packed (`collate(..., packed=...)`: no padding, offsets), at equal
model and equal samples per step; and `packed-tokens`: packed at equal elements per step (its
batches of as many samples as ship, on the mean, what a padded batch ships with its padding:
what packing buys where a step's memory is what sets the batch). Datasets made with real
encoders:

- `speech`: sound clips of 1 to 10 s uniformly (tones under noise at 16 kHz, flac by PyAV),
  log-mel as `examples/audio_small.toml` has it, `duration="full"`;
- `bytes`: UTF-8 strings of 64 to 4,096 bytes;
- `images`: JPEGs (Pillow) of 64 to 192 px a side, each side drawn apart, at their own size
  packed; pictures of different shapes cannot be padded into one batch, so their baseline is
  what a user does today, one size for all (`size=128`: 256 patches, about the mean), which
  buckets cannot change (no row).

Columns: the padding share of the elements shipped, the most elements one batch ships (what
sets a step's memory), samples/s (median over `--repeats`, the
forms taking turns), the ratio to padded from the same run, its bound (the ratio were a step's
time proportional to the elements it ships: padded's shipped over this form's), `floor`: the
bound once what a step costs whatever its inputs is counted (the latents' self-attention, the
decoder, the optimizer: a pass over the same batches with every sample cut to a sliver,
`FLOOR`, timed in the same turns, and one in `packed-tokens`'s larger batches for it; the rest
of padded's time taken as proportional to the elements shipped), the peak memory of a
pass (CUDA only: the CPU has no per-pass counter), and the cross-attention's kernel (`varlen`:
one variable-length flash kernel over the pack, on CUDA under bf16 autocast; `sdpa`: SDPA with
a mask, or once per packed sample).

`learning`: accuracy after a fixed number of samples on spoken digits (espeak-ng voices,
`polymodal.datasets.spoken`) at natural lengths: each digit at a random place in 1 to 4 s of
noise, `examples/audio_small.toml` trained `--epochs` epochs padded, in length buckets and
packed (the same seed, for each of `--seeds`), val accuracy and its median, samples/s, padding
share; and each form's accuracy less padded's of the same seed (packed steps over the same
samples as padded, so only rounding tells them apart; buckets regroup them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_learning import EXAMPLES
from turns import in_turns  # a sibling script

from polymodal.adapters import Batch, collate, get
from polymodal.datasets.build import build
from polymodal.datasets.spoken import SPEECH_RATE, WORDS, SpokenDigits, spoken_clip
from polymodal.datasets.synthetic import encode_audio, encode_image, photo
from polymodal.perceiver import EncoderConfig, MultimodalInput, Perceiver
from polymodal.pipelines.stream.partition import Reference
from polymodal.pipelines.stream.stages.buckets import LengthBuckets
from polymodal.pipelines.train.config import load_config
from polymodal.pipelines.train.trainer import Trainer

RATE = 16000
MODEL = EncoderConfig(
    num_latents=64, latent_dim=128, num_self_attends_per_block=2, self_heads=4, cross_heads=4
)


def speech(i: int) -> dict[str, bytes]:
    rng = np.random.default_rng(i)
    t = np.arange(round(rng.uniform(1.0, 10.0) * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 2000) * t) * (1 + np.sin(3 * t)) / 2
    wave = wave + rng.normal(0, 0.05, len(t))
    return {"flac": encode_audio(wave[:, None].astype(np.float32), RATE)}


def text(i: int) -> dict[str, bytes]:
    rng = np.random.default_rng(i)
    words = " ".join(WORDS[int(w)] for w in rng.integers(0, 10, 1000))
    return {"txt": words.encode()[: int(rng.integers(64, 4097))]}


def image(i: int) -> dict[str, bytes]:
    rng = np.random.default_rng(i)
    height, width = (int(rng.integers(8, 25)) * 8 for _ in range(2))
    return {"jpg": encode_image(photo(i, 192)[:height, :width])}


# dataset → (make sample i, adapter, encoder options)
DATASETS: dict[str, tuple[Callable[[int], dict[str, bytes]], Callable, dict]] = {
    "speech": (
        speech,
        lambda: get("audio")(sample_rate=RATE, duration="full", max_seconds=10.0),
        {"features": "logmel", "n_mels": 64, "hop": 160, "patch": (2, 64), "num_bands": 16},
    ),
    "bytes": (text, lambda: get("text")(max_length=4096), {"dim": 64}),
    "images": (image, lambda: get("image")(size=None), {"patch_size": 8, "num_bands": 16}),
}
FIXED = {"images": lambda: get("image")(size=128)}  # the padded form's adapter, where it differs
# Every sample cut to a sliver (a few tokens): a pass over these batches costs what a step
# costs whatever its inputs' lengths (the latents, the decoder, the optimizer), the floor
# under every form's time.
FLOOR = {
    "speech": lambda: get("audio")(sample_rate=RATE, duration=0.05),
    "bytes": lambda: get("text")(max_length=16),
    "images": lambda: get("image")(size=16),
}
TOKENS = "packed-tokens"  # packed at the padded form's elements per step
BY_ELEMENTS = 2**62  # a budget no batch reaches: the cut by elements alone, with no warning


def batches(name: str, samples: int, size: int, form: str, lookahead: int) -> list[Batch]:
    """The dataset's samples decoded and batched `size` at a time in `form`: `padded`,
    `packed`, `buckets` (padded, regrouped by length within `lookahead` batches by the
    stream's own stage, `stages.buckets.LengthBuckets`), `budget` (the same, cut by
    elements: `max_tokens`) or `floor` (padded, each sample cut to a sliver: `FLOOR`)."""
    make, adapter, _ = DATASETS[name]
    decode = {"packed": adapter, "floor": FLOOR[name]}.get(form, FIXED.get(name, adapter))()
    decoded = [{"__key__": str(i), "x": decode.decode(make(i))} for i in range(samples)]
    planned = [decoded[i : i + size] for i in range(0, samples, size)]
    if form in ("buckets", "budget"):
        refs = (
            [(Reference(0, 0, int(d["__key__"]), False), [d]) for d in batch] for batch in planned
        )
        cut = LengthBuckets(lookahead, [], (0,), BY_ELEMENTS if form == "budget" else None)
        planned = [[items[0] for _, items in group] for group in cut.regroup(refs, lambda _: [])]
    return [collate(batch, packed=["x"] if form == "packed" else []) for batch in planned]


def one_pass(name: str, data: list[Batch], device: torch.device) -> tuple[float, float, str]:
    """Seconds of a training pass over `data` from the same initial weights (bf16 autocast on
    CUDA, fp32 elsewhere), its peak memory in MiB (CUDA; NaN elsewhere), and the kernel its
    cross-attention ran (by the profiler, on the first step)."""
    torch.manual_seed(0)
    _, adapter, options = DATASETS[name]
    inputs = MultimodalInput(inputs={"x": adapter().encoder(**options)})
    model = Perceiver(input_channels=inputs.channels, num_classes=10, encoder=MODEL, input=inputs)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # as the trainer
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    half = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    kernel = "sdpa"  # the CPU has no variable-length kernel (and its profiler floods stderr)
    if device.type == "cuda":
        with torch.profiler.profile() as profile, half:
            model({"x": (data[0]["x"].to(device),)})
        if any("varlen" in event.name for event in profile.events()):
            kernel = "varlen"
    started = time.perf_counter()
    for n, batch in enumerate(data):
        field = batch["x"].to(device)
        labels = (torch.arange(batch.size, device=device) + n) % 10
        with half:
            loss = F.cross_entropy(model({"x": (field,)}), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - started, torch.cuda.max_memory_allocated() / 2**20, kernel
    return time.perf_counter() - started, float("nan"), kernel


def elements(data: list[Batch]) -> tuple[int, int]:
    """Real and shipped elements, over every batch."""
    real, shipped = map(sum, zip(*(b.elements(["x"]) for b in data), strict=True))
    return real, shipped


def largest(data: list[Batch]) -> int:
    """The most elements one batch ships: what sets a step's memory."""
    return max(b.elements(["x"])[1] for b in data)


def steps_table(
    samples: int,
    size: int,
    repeats: int,
    device: torch.device,
    lookahead: int = 8,
    title: str = "steps",
) -> None:
    print(f"\n{title}: {samples} samples, {size} a batch, buckets over {lookahead}, on {device}")
    head = f"{'data':<8} {'form':<14} {'padding':>8} {'largest':>9} {'samples/s':>10} {'ratio':>6}"
    print(f"{head} {'bound':>6} {'floor':>6} {'peak MiB':>9} {'attention':>9}")
    for name in DATASETS:
        kinds = ["padded", "packed"] if name in FIXED else ["padded", "buckets", "budget", "packed"]
        forms = {form: batches(name, samples, size, form, lookahead) for form in kinds}
        counts = {form: elements(data) for form, data in forms.items()}  # (real, shipped)
        # Equal tokens per step: packed batches of as many samples as ship, on the mean, the
        # elements a padded batch ships (padding included), as a user who packs to the memory
        # padding took would set `batch_size`; its floor: slivers in batches of that size.
        wide = round(size * counts["padded"][1] / counts["packed"][0])
        forms[TOKENS] = batches(name, samples, wide, "packed", lookahead)
        counts[TOKENS] = elements(forms[TOKENS])
        for count in {size, wide}:
            forms[f"floor of {count}"] = batches(name, samples, count, "floor", lookahead)
        one_pass(name, forms["padded"][:1], device)  # warm-up: kernels, caches, allocator
        runs = in_turns(
            {form: lambda d=data, n=name: one_pass(n, d, device) for form, data in forms.items()},
            repeats,
        )
        # a pass's own seconds (its result), not the run's, which builds the model too
        median = {form: statistics.median(r.result[0] for r in rs) for form, rs in runs.items()}
        peaks = {form: rs[-1].result[1] for form, rs in runs.items()}
        kernels = {form: rs[-1].result[2] for form, rs in runs.items()}
        floor = {count: median.pop(f"floor of {count}") for count in {size, wide}}
        padded = median["padded"]
        per_element = max(0.0, padded - floor[size])  # none where slivers took as long
        for form, (real, shipped) in counts.items():
            share = shipped / counts["padded"][1]
            under = floor[wide if form == TOKENS else size]
            print(
                f"{name:<8} {form:<14} {1 - real / shipped:>8.1%} "
                f"{largest(forms[form]):>9} {samples / median[form]:>10.1f} "
                f"{padded / median[form]:>6.2f} {1 / share:>6.2f} "
                f"{padded / (under + per_element * share):>6.2f} "
                f"{peaks[form]:>9.0f} {kernels[form]:>9}",
                flush=True,
            )
        print(
            f"{name:<8} {'floor':<14} a pass over slivers: {floor[size] / padded:.0%} of "
            f"padded's time in batches of {size}, {floor[wide] / padded:.0%} in {wide}"
        )


def spoken_dataset(root: Path, count: int) -> Path:
    """Spoken digits of their natural lengths (1 to 4 s) as `CLASS/KEY.flac`, built to shards."""
    for i in range(count):
        rng = np.random.default_rng(i)
        spec = SpokenDigits(seconds=float(rng.uniform(1.0, 4.0)))
        label = i % 10
        out = root / "clips" / WORDS[label] / f"{i:05d}.flac"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_audio(spoken_clip(spec, label, rng), SPEECH_RATE))
    quiet = {"progress": False, "print_": lambda _: None}
    build(root / "clips", root / "data", split="val=0.2", shuffle=True, **quiet)
    return root / "data"


def learning_table(root: Path, count: int, epochs: int, seeds: list[int]) -> None:
    data = spoken_dataset(root, count)
    print(f"\nlearning: spoken digits of 1-4 s, {count} clips (val 20 %), {epochs} epochs")
    head = f"{'seed':>4} {'form':<7} {'val acc':>8} {'padding':>8} {'samples/s':>10} {'ratio':>6}"
    print(f"{head} {'s':>6}")
    accuracy: dict[str, list[float]] = {"padded": [], "buckets": [], "packed": []}
    for seed in seeds:
        rates: dict[str, float] = {}
        for form in accuracy:
            config = load_config(
                EXAMPLES / "audio_small.toml",
                [
                    f"data.train={data / 'train'}",
                    f"data.val={data / 'val'}",
                    f"run_dir={root / f'{form}-{seed}'}",
                    f"epochs={epochs}",
                    f"seed={seed}",
                    "data.workers=0",
                    "data.fields.audio.options.duration=full",
                    "data.fields.audio.options.max_seconds=4.0",
                    f"data.packing={str(form == 'packed').lower()}",
                    f"data.buckets={'auto' if form == 'buckets' else ''}",
                ],
            )
            summary = Trainer(config, progress=False).run()
            rates[form] = summary["samples_per_s"]
            accuracy[form].append(summary["val_accuracy"])
            print(
                f"{seed:>4} {form:<7} {summary['val_accuracy']:>8.3f} {summary['padding']:>8.1%} "
                f"{rates[form]:>10.1f} {rates[form] / rates['padded']:>6.2f} "
                f"{summary['seconds']:>6.1f}",
                flush=True,
            )
    for form, values in accuracy.items():
        line = f"median {form:<7} {statistics.median(values):>8.3f}"
        if form != "padded":  # the same seed's padded run: the same samples in the same steps
            diffs = [a - b for a, b in zip(values, accuracy["padded"], strict=True)]
            line += (
                f"   - padded, seed by seed: mean {statistics.mean(diffs):+.3f}, from "
                f"{min(diffs):+.3f} to {max(diffs):+.3f}"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    # 400 val clips (a clip is 0.0025 of accuracy) trained to near its plateau: at 480 clips and
    # 6 epochs the seeds alone spread it over 0.55-0.78, too wide to tell forms apart by 0.01
    parser.add_argument("--digits", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lookahead", type=int, default=8, help="batches a bucket group spans")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--tables", nargs="+", default=["steps", "learning"], choices=["steps", "learning"]
    )
    args = parser.parse_args()
    if "steps" in args.tables:
        device = torch.device(args.device)
        steps_table(args.samples, args.batch, args.repeats, device, args.lookahead)
    if "learning" in args.tables:
        with tempfile.TemporaryDirectory() as tmp:
            learning_table(Path(tmp), args.digits, args.epochs, args.seeds)


if __name__ == "__main__":
    main()

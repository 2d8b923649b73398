"""Decode once, train many: trainer throughput and data starvation on mp4 shards, on the same
shards materialised (`preprocess --op materialize`), and on mp4 with K clips per decode, against
the same model stepped on batches already in memory (the ceiling), all in one run.

    .venv/bin/python benchmarks/bench_train.py [--tasks demo kinetics] [--steps 40]

Two tasks: the demo's (8 frames of 32², 1 s of 16 kHz audio, one clip per 1 s source) and a
Kinetics-sized clip (16 frames of 112² at 8 fps, 2 s of 16 kHz audio, cut from 2.5 s sources
of 170×128 at 25 fps, materialised with a shorter side of 128). Crops and clip starts are
random in every form. For each task and form:

- bytes per sample on disk;
- the data path alone (the stream in the main process, one thread): clips/s per core, median of
  three passes, and its ratio to the mp4 decode rate;
- the trainer's samples/s and data-wait share with 0, 1 and 2 DataLoader workers (after a
  warm-up epoch), and the ratio to the in-memory ceiling measured just before it; medians of
  `--repeats` such pairs (a shared machine's speed drifts by a third from minute to minute);
  and with 2 workers, at the step's own CPU priority (`data.worker_nice = 0`, not the default
  +19: the baseline for it), and with the step on the cores they leave (`data.step_threads`,
  at least one);
- the CPU-budget limit: the most samples/s the machine's cores allow when every sample costs
  the step's work plus the data path's (one core at its clips/s), whatever the split between
  workers and step, and at most the ceiling. The step's work is its CPU on one thread: on
  every core, GNU OpenMP's threads spin between ops and count that as CPU too (the ceiling's
  CPU a sample is its wall time times the cores), which no worker needs left to it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from polymodal.codecs.containers import set_decode_threads
from polymodal.datasets.build import build
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.synthetic import encode_media
from polymodal.machine import cores as machine_cores
from polymodal.perceiver import EncoderConfig
from polymodal.pipelines import preprocess
from polymodal.pipelines.stream.fields import FieldSpec
from polymodal.pipelines.stream.loader import WORKER_NICE
from polymodal.pipelines.train.config import TrainConfig
from polymodal.pipelines.train.demo import demo_config, make_clips
from polymodal.pipelines.train.tasks import dataset_stream, make_task
from polymodal.pipelines.train.trainer import Trainer, torch_threads

K = 4  # clips per decode in the K form


@dataclass(frozen=True)
class Form:
    name: str
    data: str  # "mp4" or "materialised"
    clips: int = 1


FORMS = (Form("mp4", "mp4"), Form("materialised", "materialised"), Form(f"mp4, K={K}", "mp4", K))


def kinetics_clips(folder: Path, samples: int, classes: int) -> None:
    """2.5 s sources of 170×128 at 25 fps, 600 kbit/s: a class-coloured square moving over a
    grainy gradient, and a class-pitched tone under noise (h264 + aac, as Kinetics is kept)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:170]
    t = np.arange(40000) / 16000
    for i in range(samples):
        label = i % classes
        out = folder / f"class{label}" / f"clip{i:05d}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        frames = np.empty((62, 128, 170, 3), np.float32)
        base = (x[..., None] * 0.6 + y[..., None] * 0.4) * np.array([1.0, 0.8, 0.6])
        for k in range(62):
            frame = base + rng.normal(0, 3, base.shape)
            cx, cy = (20 + 3 * k + 7 * i) % 140, (30 + 2 * k) % 100
            frame[cy : cy + 28, cx : cx + 28] = [60 * (label + 1), 255 - 50 * label, 90]
            frames[k] = frame
        sound = 0.3 * np.sin(2 * np.pi * 220 * 2 ** (label / 3) * t) + rng.normal(0, 0.05, len(t))
        out.write_bytes(
            encode_media(
                "mp4",
                frames.clip(0, 255).astype(np.uint8),
                fps=25,
                audio=sound[:, None].astype(np.float32),
                audio_rate=16000,
                bit_rate=600_000,  # Kinetics' 128p copies run at a few hundred kbit/s
            )
        )


def task_config(task: str, data: Path, run: Path, workers: int) -> TrainConfig:
    config = demo_config(data, run, ["audio", "video"], 4, epochs=1000, workers=workers)
    video, audio = config.data.fields["video"], config.data.fields["audio"]
    if task == "kinetics":
        video = FieldSpec(
            "video",
            ["mp4"],
            {"num_frames": 16, "fps": 8.0, "size": 112, "crop_fraction": 0.875},
            {"patch": [2, 16, 16], "num_bands": 6},
        )
        audio = FieldSpec("audio", ["mp4"], {"sample_rate": 16000, "duration": 2.0}, audio.encoder)
        config.model = EncoderConfig(
            num_latents=32, latent_dim=64, num_self_attends_per_block=2, self_heads=4
        )
    video = replace(video, options={**video.options, "crop": "random"})
    audio = replace(audio, options={**audio.options, "crop": "random"})
    config.data.fields = {"video": video, "audio": audio}
    config.data.train, config.data.val = str(data), ""
    config.eval_every_epoch, config.checkpoint_every = False, 10**9
    return config.validate()


def disk_bytes(data: Path) -> float:
    index = ShardIndex.load(data)
    return index.bytes / max(1, index.samples)


def data_path_rate(config: TrainConfig, data: Path, clips: int) -> float:
    """Clips/s of the stream alone, in this process on one thread (torch and FFmpeg)."""
    set_decode_threads(1)
    try:
        with torch_threads(1):
            task = make_task(config)
            stream = dataset_stream(
                config, "data", str(data), task.fields(), shuffle=True, clips_per_sample=clips
            )
            rates = []
            for epoch in range(3):
                stream.set_epoch(epoch)
                started, items = time.perf_counter(), 0
                for batch in stream:
                    items += batch.size
                rates.append(items / (time.perf_counter() - started))
            return statistics.median(rates)
    finally:
        set_decode_threads(0)


def trainer_rate(config: TrainConfig, steps: int, clips: int) -> tuple[float, float]:
    """The trainer's samples/s and data-wait share over `steps` steps after a warm-up of one
    whole epoch (worker start, caches): the timed steps then begin as a long run's epochs do,
    the workers already on the next one. A warm-up cut mid-epoch would start them with the
    workers restarted after an abandoned epoch, which no run does (~46 ms here)."""
    config.data.clips_per_sample = clips
    trainer = Trainer(config, progress=False)
    Path(config.run_dir).mkdir(parents=True)
    trainer.total_steps = trainer.steps_per_epoch
    trainer._loop()
    trainer.total_steps += steps
    summary = trainer._loop()
    return summary["samples_per_s"], summary["data_wait"]


def ceiling(config: TrainConfig, steps: int) -> tuple[float, float]:
    """The same model and optimiser (and precision) on batches already on the trainer's
    device, no data loading at all: (samples/s, this process's CPU seconds per sample)."""
    trainer = Trainer(config, progress=False)
    device = trainer.device
    batches = [b.to(device) for _, b in zip(range(8), trainer.train_loader, strict=False)]
    model, optimizer = trainer.model.train(), trainer.optimizer
    bf16 = config.precision == "bf16"
    start, samples = 0.0, 0
    for step in range(steps + 5):
        if step == 5:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, cpu, samples = time.perf_counter(), time.process_time(), 0
        batch = batches[step % len(batches)]
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = trainer.task.loss(model, batch)
        loss.backward()
        optimizer.step()
        samples += batch.size
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return samples / (time.perf_counter() - start), (time.process_time() - cpu) / samples


def bench(task: str, root: Path, samples: int, steps: int, repeats: int) -> None:
    clips = root / "clips"
    (make_clips if task == "demo" else kinetics_clips)(clips, samples, 4)
    quiet = {"progress": False, "print_": lambda _: None}
    build(clips, root / "mp4", shuffle=True, shard_samples=64, **quiet)  # type: ignore[arg-type]
    base = task_config(task, root / "mp4", root / "run", 0)
    spec = root / "config.json"
    spec.write_text(base.to_json())
    preprocess.run(
        root / "mp4", root / "materialised", [f"materialize:config={spec}"], progress=False
    )
    data = {"mp4": root / "mp4", "materialised": root / "materialised"}
    mp4_rate = 0.0
    leave = max(1, machine_cores() - 2)  # the cores 2 workers leave the step
    print(
        f"\n{task} task (audio + video, batch {base.data.batch_size}), {steps} steps, "
        f"{torch.get_num_threads()} torch threads, medians of {repeats} runs"
    )
    print(
        f"  {'form':>15s} {'bytes/sample':>12s} {'clips/s/core':>12s} {'× mp4':>6s}   "
        + "  ".join(f"{f'{w} workers: samples/s wait × ceiling':>34s}" for w in (0, 1, 2))
        + f"  {'2 workers at the step priority':>34s}"
        + f"  {f'2 workers, step on {leave} thread(s)':>34s}"
    )
    ceilings, step_cpu, limits = [], [], []
    for form in FORMS:
        rate = data_path_rate(base, data[form.data], form.clips)
        mp4_rate = mp4_rate or rate
        cells = []
        for workers, threads, nice in (
            (0, 0, WORKER_NICE),
            (1, 0, WORKER_NICE),
            (2, 0, WORKER_NICE),
            (2, 0, 0),
            (2, leave, WORKER_NICE),
        ):
            runs = []
            for repeat in range(repeats):
                name = f"{form.name}-{workers}-{threads}-{nice}-{repeat}"
                name = name.replace(" ", "").replace(",", "")
                top, cpu = ceiling(
                    task_config(task, data["mp4"], root / f"ceiling-{name}", 0), steps
                )
                step_cpu.append(cpu)
                config = task_config(task, data[form.data], root / name, workers)
                config.data.step_threads, config.data.worker_nice = threads, nice
                speed, wait = trainer_rate(config, steps, form.clips)
                runs.append((speed, wait, speed / top))
                ceilings.append(top)
            speed, wait, ratio = (statistics.median(r[i] for r in runs) for i in range(3))
            cells.append(f"{speed:16.1f} {wait:5.0%} {ratio:10.2f}×")
        print(
            f"  {form.name:>15s} {disk_bytes(data[form.data]):12,.0f} {rate:12.1f} "
            f"{rate / mp4_rate:5.1f}×   " + "  ".join(cells),
            flush=True,
        )
        limits.append((form.name, rate))
    top, cpu = statistics.median(ceilings), statistics.median(step_cpu)
    with torch_threads(1):
        work = statistics.median(
            ceiling(task_config(task, data["mp4"], root / f"one-thread-{i}", 0), steps)[1]
            for i in range(repeats)
        )
    print(
        f"  in-memory ceiling: median {top:.1f} samples/s (from {min(ceilings):.1f} to "
        f"{max(ceilings):.1f}), {1000 * cpu:.2f} ms of CPU a sample; on one thread "
        f"{1000 * work:.2f} ms (the step's work)"
    )
    cores = machine_cores()
    for name, rate in limits:
        limit = min(top, cores / (work + 1 / rate))
        print(
            f"  CPU-budget limit, {name}: {limit:.1f} samples/s ({limit / top:.2f}× the "
            f"ceiling): {cores} cores shared by the step's work and the data path's"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", nargs="+", default=["demo", "kinetics"], choices=["demo", "kinetics"]
    )
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for task in args.tasks:
        with tempfile.TemporaryDirectory() as tmp:
            bench(task, Path(tmp), args.samples, args.steps, args.repeats)


if __name__ == "__main__":
    main()

"""Trainer throughput and data starvation on the demo's audio-video task, against the same
model stepped on batches already in memory (the ceiling the data pipeline should reach).

    .venv/bin/python benchmarks/bench_train.py [--samples 320] [--steps 60]

For 0, 1 and 2 DataLoader workers: samples/s over `--steps` optimiser steps (after 5 warm-up
steps) and the fraction of step time spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from polymodal.datasets.build import build
from polymodal.pipelines.demo import demo_config, make_clips
from polymodal.pipelines.train import Trainer


def trainer_rate(data: Path, run: Path, workers: int, steps: int) -> tuple[float, float]:
    config = demo_config(data, run, ["audio", "video"], 4, epochs=1000, workers=workers)
    config.max_steps, config.eval_every_epoch, config.checkpoint_every = steps + 5, False, 10**9
    trainer = Trainer(config, progress=False)
    run.mkdir(parents=True)
    trainer.total_steps = 5
    trainer._loop()  # warm-up: worker start, caches
    trainer.total_steps = steps + 5
    summary = trainer._loop()
    return summary["samples_per_s"], summary["data_wait"]


def ceiling(data: Path, run: Path, steps: int) -> float:
    """The same model and optimiser on in-memory batches: no data loading at all."""
    config = demo_config(data, run, ["audio", "video"], 4, epochs=1, workers=0)
    trainer = Trainer(config, progress=False)
    batches = [b for _, b in zip(range(8), trainer.train_loader, strict=False)]
    model, optimizer = trainer.model.train(), trainer.optimizer
    start, samples = 0.0, 0
    for step in range(steps + 5):
        if step == 5:
            start, samples = time.perf_counter(), 0
        batch = batches[step % len(batches)]
        optimizer.zero_grad()
        trainer.task.loss(model, batch).backward()
        optimizer.step()
        samples += batch.size
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_clips(root / "clips", args.samples, 4)
        build(
            root / "clips",
            root / "data",
            split="val=0.2",
            shuffle=True,
            shard_samples=64,
            progress=False,
            print_=lambda _: None,
        )
        top = ceiling(root / "data", root / "ceiling", args.steps)
        print(
            f"demo task (audio+video, batch 16), {args.steps} steps, {torch.get_num_threads()} "
            "torch threads"
        )
        print(f"  {'workers':>7s} {'samples/s':>10s} {'data wait':>10s} {'× ceiling':>10s}")
        for workers in (0, 1, 2):
            rate, wait = trainer_rate(root / "data", root / f"w{workers}", workers, args.steps)
            print(f"  {workers:7d} {rate:10.1f} {wait:9.0%} {rate / top:9.2f}×")
        print(f"  in-memory ceiling: {top:.1f} samples/s")


if __name__ == "__main__":
    main()

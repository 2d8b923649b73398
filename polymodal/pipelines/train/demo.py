"""`polymodal demo`: make an audio-video dataset with real encoders, shard it, train an
audio+video Perceiver classifier on it, evaluate, and say where the run is.

Each clip's picture and sound both carry its class, each with its own noise: the picture is a
colour (one hue per class) under pixel noise, the sound a tone (one pitch per class) under
white noise; the clips are h264/aac mp4 files, one `.mp4` feeding both fields.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.datasets.build import build
from polymodal.datasets.synthetic import encode_media
from polymodal.perceiver import EncoderConfig
from polymodal.pipelines.stream.fields import FieldSpec
from polymodal.pipelines.train.config import DataConfig, OptimConfig, TrainConfig
from polymodal.pipelines.train.trainer import Trainer

PALETTE = np.array(
    [
        [220, 40, 40],
        [40, 200, 60],
        [50, 80, 230],
        [230, 200, 40],
        [200, 60, 220],
        [40, 210, 210],
        [240, 140, 30],
        [150, 150, 150],
    ]
)


def make_clips(folder: Path, samples: int, classes: int, seed: int = 0) -> None:
    """`samples` one-second clips (8 frames of 32², 16 kHz audio) in class sub-folders."""
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    for i in range(samples):
        label = i % classes
        out = folder / f"class{label}" / f"clip{i:05d}.mp4"
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        colour = PALETTE[label % len(PALETTE)] * rng.uniform(0.6, 1.0)
        frames = colour + rng.normal(0, 40, (8, 32, 32, 3))
        pitch = 220 * 2 ** (label * 4 / 12) * rng.uniform(0.97, 1.03)
        sound = 0.3 * np.sin(2 * np.pi * pitch * t) + rng.normal(0, 0.1, len(t))
        out.write_bytes(
            encode_media(
                "mp4",
                frames.clip(0, 255).astype(np.uint8),
                fps=8,
                audio=sound[:, None].astype(np.float32),
                audio_rate=16000,
            )
        )


def demo_config(
    data: Path, run_dir: Path, modalities: list[str], classes: int, epochs: int, workers: int
) -> TrainConfig:
    fields = {
        "video": FieldSpec(
            "video",
            ["mp4"],
            {"num_frames": 8, "fps": 8.0, "size": 32},
            {"patch": [1, 8, 8], "num_bands": 6},
        ),
        "audio": FieldSpec(
            "audio",
            ["mp4"],
            {"sample_rate": 16000, "duration": 1.0},
            {"samples_per_patch": 320, "num_bands": 8},
        ),
    }
    return TrainConfig(
        data=DataConfig(
            train=str(data / "train"),
            val=str(data / "val"),
            fields={m: fields[m] for m in modalities},
            num_classes=classes,
            batch_size=16,
            workers=workers,
            buffer_size=200,
        ),
        model=EncoderConfig(
            num_latents=32, latent_dim=64, num_self_attends_per_block=2, self_heads=4
        ),
        optim=OptimConfig(lr=2e-3, warmup_steps=5),
        epochs=epochs,
        run_dir=str(run_dir),
        checkpoint_every=1000,
    ).validate()


def run_demo(
    out: Path = Path("runs/demo"),
    modalities: tuple[str, ...] = ("audio", "video"),
    samples: int = 320,
    classes: int = 4,
    epochs: int = 6,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    started = time.perf_counter()
    source, data = out / "clips", out / "data"
    make_clips(source, samples, classes)
    build(
        source,
        data,
        split="val=0.2",
        shuffle=True,
        shard_samples=64,
        progress=False,
        print_=lambda _: None,
    )
    name = "+".join(modalities)
    config = demo_config(data, out / f"run-{name}", list(modalities), classes, epochs, workers)
    summary = Trainer(config, progress=progress).run()
    summary["wall_seconds"] = time.perf_counter() - started
    return summary

"""Learning on real recordings: the small-data recipes against simple baselines, same splits.

    .venv/bin/python benchmarks/bench_learning.py [--train 2000] [--test 500] [--out DIR]

Makes spoken digits (`polymodal.datasets.spoken`: espeak-ng voices, system fonts, h264/aac
mp4 + png), builds train/val shards from one seed and a held-out test set from another, then in
the same run: logistic regression (scikit-learn) on raw pixels, on mean/std log-mel features
and on both, and our recipes (`examples/av_small.toml` on audio+video, audio alone, video alone;
`examples/image_small.toml` on the pictures). Recipes were set looking at `val` only; the
`test` column is the held-out split. Prints one table; the data stays in `--out` (not in git).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from polymodal.adapters import get
from polymodal.datasets.build import build
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.reader import read_shard
from polymodal.datasets.spoken import make_spoken_digits
from polymodal.pipelines.train.config import load_config
from polymodal.pipelines.train.evaluate import evaluate_checkpoint
from polymodal.pipelines.train.trainer import Trainer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def features(dataset: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw 32² pixels, mean/std log-mel (64 bands) and labels of every sample of a dataset."""
    image = get("image")(size=32, crop_fraction=1.0)
    audio = get("audio")(sample_rate=16000, duration=1.0)
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=64)
    pixels, sounds, labels = [], [], []
    index = ShardIndex.load(dataset)
    for sample in (s for shard in index.shards for s in read_shard(index, shard)):
        pixels.append(image.decode(sample).values.numpy().reshape(-1) / 255)
        wave = audio.decode(sample).values.float()[:, 0] / 32768
        logmel = (mel(wave) + 1e-6).log()
        sounds.append(torch.cat([logmel.mean(1), logmel.std(1)]).numpy())
        labels.append(int(sample["cls"]))
    return np.array(pixels), np.array(sounds), np.array(labels)


def baselines(data: Path, test: Path) -> list[tuple[str, float, float, float]]:
    train, val, held = features(data / "train"), features(data / "val"), features(test)
    rows = []
    for name, pick in (
        ("logistic regression, raw pixels", lambda f: f[0]),
        ("logistic regression, mean log-mel", lambda f: f[1]),
        ("logistic regression, pixels + log-mel", lambda f: np.concatenate(f[:2], 1)),
    ):
        started = time.perf_counter()
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        model.fit(pick(train), train[2])
        seconds = time.perf_counter() - started
        rows.append(
            (name, model.score(pick(val), val[2]), model.score(pick(held), held[2]), seconds)
        )
    return rows


def recipe(
    example: str, data: Path, test: Path, run: Path, drop: str | None = None
) -> tuple[float, float, float]:
    """Train an example recipe (without field `drop`); val and held-out test accuracy, and the
    seconds of training. A run already finished in `run` is scored again, not retrained."""
    config = load_config(
        EXAMPLES / example,
        [f"data.train={data / 'train'}", f"data.val={data / 'val'}", f"run_dir={run}"],
    )
    if drop:
        del config.data.fields[drop]
    done = run / "summary.json"
    summary = json.loads(done.read_text()) if done.exists() else Trainer(config).run()
    held = evaluate_checkpoint(config, run, split=str(test))
    return summary["val_accuracy"], held["accuracy"], summary["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="train + val samples")
    parser.add_argument("--test", type=int, default=500, help="held-out samples (another seed)")
    parser.add_argument("--out", type=Path, default=None, help="keep the data here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-learning-"))
    started = time.perf_counter()
    make_spoken_digits(out / "clips", args.train, seed=0)
    make_spoken_digits(out / "held-out", args.test, seed=1)
    made = time.perf_counter() - started
    quiet = {"progress": False, "print_": lambda _: None}
    build(out / "clips", out / "data", split="val=0.2", shuffle=True, **quiet)
    build(out / "held-out", out / "test", shuffle=True, **quiet)
    print(f"data: {args.train} + {args.test} spoken digits in {made:.0f} s at {out}")
    held = out / "test"  # built from its own seed, never looked at while setting recipes
    rows = baselines(out / "data", held)
    for name, example, drop in (
        ("av_small: audio + video (mp4)", "av_small.toml", None),
        ("av_small: audio alone (mp4)", "av_small.toml", "video"),
        ("av_small: video alone (mp4)", "av_small.toml", "audio"),
        ("audio_small (mp4 sound)", "audio_small.toml", None),
        ("image_small (png)", "image_small.toml", None),
    ):
        run = out / "runs" / f"{example}-{drop or 'all'}"
        rows.append((name, *recipe(example, out / "data", held, run, drop)))
    print(f"\n{'input':<40} {'val acc':>8} {'test acc':>9} {'train s':>8}")
    for name, val, test, seconds in rows:
        print(f"{name:<40} {val:>8.3f} {test:>9.3f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()

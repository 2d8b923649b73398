"""Learning on real recordings: the small-data recipes against simple baselines, same splits.

    .venv/bin/python benchmarks/bench_learning.py [--train 2000] [--test 500] [--out DIR]
        [--tables digits fewlabel fusion]

Makes spoken digits (`polymodal.datasets.spoken`: espeak-ng voices, system fonts, h264/aac
mp4 + png), builds train/val shards from one seed and a held-out test set from another. Recipes
were set looking at `val` only; the `test` column is the held-out split. Three tables, each
with its wall time per row; the data stays in `--out` (not in git):

- `digits`: logistic regression (scikit-learn) on raw pixels, on mean/std log-mel features and
  on both, and our recipes (`examples/av_small.toml` on audio+video, audio alone, video alone;
  `audio_small.toml` on the sound, `image_small.toml` on the pictures).
- `fewlabel`: 10 % of the training clips keep their labels (every class alike): (a)
  `av_fewlabel.toml` from scratch on them, (b) `av_contrastive.toml` pretrained on all the
  training clips without labels (decoded once first: `materialize`), then `av_fewlabel.toml`
  from it, (c) the same with the pretrained weights frozen (a probe), (d) `av_small.toml`
  with every label, (e) `av_fewlabel.toml` from `av_correspondence.toml` pretrained on all
  the training clips without labels, (f) its probe, and logistic regression on the 10 %;
  and the contrastive pretraining's retrieval recall@1 both ways on the held-out clips
  against chance.
- `fusion`: the spoken digits' `match` mode (is the spoken digit the drawn one?), where each
  sense alone is at chance: `av_fusion.toml` (late fusion) from scratch and from
  `av_correspondence.toml` pretrained on the digit clips without labels, and `av_small.toml`
  (2 classes, early fusion) on audio+video, audio alone, video alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

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
from polymodal.datasets.spoken import SpokenDigits, make_spoken_digits
from polymodal.pipelines.preprocess import run as preprocess
from polymodal.pipelines.train.config import TrainConfig, load_config
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


BOTH = ("logistic regression, pixels + log-mel", lambda f: np.concatenate(f[:2], 1))
Row = tuple[str, float, float, float]  # name, val accuracy, test accuracy, seconds


def baselines(train_data: Path, val_data: Path, test: Path, which: tuple = ()) -> list[Row]:
    """Logistic regression on features of `train_data`, scored on `val_data` and `test`."""
    train, val, held = features(train_data), features(val_data), features(test)
    rows = []
    for name, pick in which or (
        ("logistic regression, raw pixels", lambda f: f[0]),
        ("logistic regression, mean log-mel", lambda f: f[1]),
        BOTH,
    ):
        started = time.perf_counter()
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        model.fit(pick(train), train[2])
        seconds = time.perf_counter() - started
        rows.append(
            (name, model.score(pick(val), val[2]), model.score(pick(held), held[2]), seconds)
        )
    return rows


def trained(
    example: str, train: Path, val: Path, run: Path, drop: str | None = None, *sets: str
) -> tuple[TrainConfig, dict[str, Any]]:
    """An example recipe trained on `train` (without field `drop`, with `--set`s `sets`), and
    its summary; a run already finished in `run` is read back, not retrained."""
    config = load_config(
        EXAMPLES / example, [f"data.train={train}", f"data.val={val}", f"run_dir={run}", *sets]
    )
    if drop:
        del config.data.fields[drop]
    done = run / "summary.json"
    return config, json.loads(done.read_text()) if done.exists() else Trainer(config).run()


def recipe(
    example: str, train: Path, val: Path, test: Path, run: Path, drop: str | None, *sets: str
) -> tuple[float, float, float]:
    """Val and held-out test accuracy of a trained recipe (`trained`), and its seconds."""
    config, summary = trained(example, train, val, run, drop, *sets)
    held = evaluate_checkpoint(config, run, split=str(test))
    return summary["val_accuracy"], held["accuracy"], summary["seconds"]


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n{title}\n{'input':<52} {'val acc':>8} {'test acc':>9} {'train s':>8}")
    for name, val, test, seconds in rows:
        print(f"{name:<52} {val:>8.3f} {test:>9.3f} {seconds:>8.1f}", flush=True)


def spoken_data(out: Path, name: str, spec: SpokenDigits, train: int, test: int) -> Path:
    """`out/name`: train/val shards from seed 0 and held-out test shards from seed 1."""
    started = time.perf_counter()
    make_spoken_digits(out / name / "clips", train, spec, seed=0)
    make_spoken_digits(out / name / "held-out", test, spec, seed=1)
    quiet = {"progress": False, "print_": lambda _: None}
    for source, target, split in (("clips", "data", "val=0.2"), ("held-out", "test", None)):
        build(out / name / source, out / name / target, split=split, shuffle=True, **quiet)
    print(f"data: {train} + {test} {name} in {time.perf_counter() - started:.0f} s at {out / name}")
    return out / name


def digits_table(root: Path) -> None:
    data, held = root / "data", root / "test"  # test: never looked at while setting recipes
    rows = baselines(data / "train", data / "val", held)
    for name, example, drop in (
        ("av_small: audio + video (mp4)", "av_small.toml", None),
        ("av_small: audio alone (mp4)", "av_small.toml", "video"),
        ("av_small: video alone (mp4)", "av_small.toml", "audio"),
        ("audio_small (mp4 sound)", "audio_small.toml", None),
        ("image_small (png)", "image_small.toml", None),
    ):
        run = root / "runs" / f"{example}-{drop or 'all'}"
        rows.append((name, *recipe(example, data / "train", data / "val", held, run, drop)))
    print_rows("spoken digits", rows)


def labelled_few(root: Path, share: float) -> Path:
    """A dataset of `share` of the training clips of every class (the first of each class in
    the training index's order), built from their files: the labelled few."""
    index = ShardIndex.load(root / "data" / "train")
    keys = [s["__key__"] for shard in index.shards for s in read_shard(index, shard)]
    by_class: dict[str, list[str]] = {}
    for key in keys:
        by_class.setdefault(Path(key).parent.name, []).append(Path(key).name)
    few = root / "few-clips"
    for label, names in by_class.items():
        (few / label).mkdir(parents=True, exist_ok=True)
        for name in names[: max(1, round(share * len(names)))]:
            for ext in (".mp4", ".png"):
                target = few / label / (name + ext)
                if not target.exists():
                    target.symlink_to(root / "clips" / label / (name + ext))
    build(few, root / "few", shuffle=True, progress=False, print_=lambda _: None)
    return root / "few"


def materialized(dataset: Path, out: Path, example: str) -> Path:
    """`dataset` with the example's video and audio fields decoded once (`polymodal
    preprocess --op materialize`); a copy already made is reused."""
    if not (out / "index.json").exists():
        preprocess(dataset, out, [f"materialize:config={EXAMPLES / example}"], progress=False)
    return out


def fewlabel_table(root: Path, share: float) -> None:
    data, held = root / "data", root / "test"
    train, val = data / "train", data / "val"
    few = labelled_few(root, share)
    runs = root / "runs"
    decoded = {  # decoded once (`materialize`): the pretraining's 100 epochs in minutes
        split: materialized(data / split, root / f"decoded-{split}", "av_contrastive.toml")
        for split in ("train", "val")
    }
    pretrain, summary = trained(
        "av_contrastive.toml", decoded["train"], decoded["val"], runs / "contrastive"
    )
    correspondence = pretrained_correspondence(root)
    retrieval = evaluate_checkpoint(pretrain, runs / "contrastive", split=str(held))
    rows = baselines(few, val, held, (BOTH,))
    rows[0] = (f"{rows[0][0]}, {share:.0%} labels", *rows[0][1:])
    few_sets = (f"init={runs / 'contrastive'}",)
    for name, example, run, sets in (
        (
            "(a) av_fewlabel from scratch",
            "av_fewlabel.toml",
            "scratch",
            ("init=''", "optim.lr=0.002"),
        ),
        ("(b) av_contrastive, then av_fewlabel", "av_fewlabel.toml", "finetune", few_sets),
        (
            "(c) probe: (b) with the encoder frozen",
            "av_fewlabel.toml",
            "probe",
            (*few_sets, "freeze=['input', 'encoder']"),
        ),
        (
            "(e) av_correspondence, then av_fewlabel",
            "av_fewlabel.toml",
            "finetune-correspondence",
            (f"init={correspondence}",),
        ),
        (
            "(f) probe: (e) with the encoder frozen",
            "av_fewlabel.toml",
            "probe-correspondence",
            (f"init={correspondence}", "freeze=['input', 'encoder']"),
        ),
    ):
        rows.append((name, *recipe(example, few, val, held, runs / run, None, *sets)))
    rows.append(
        (
            "(d) av_small, every label",
            *recipe("av_small.toml", train, val, held, runs / "av_small.toml-all", None),
        )
    )
    print_rows(f"few labels: {share:.0%} of the training clips labelled ({few})", rows)
    ways = ("audio_to_video", "video_to_audio")
    at = {n: " / ".join(f"{retrieval[f'{w}_recall_at_{n}']:.3f}" for w in ways) for n in (1, 5)}
    print(
        f"pretraining ({summary['seconds']:.0f} s), held-out retrieval audio→video / "
        f"video→audio: recall@1 {at[1]} (chance {1 / retrieval['samples']:.3f}), recall@5 "
        f"{at[5]} (chance {5 / retrieval['samples']:.3f})"
    )


def pretrained_correspondence(digits: Path) -> Path:
    """`av_correspondence.toml` trained on the spoken digits' training clips, decoded once,
    without their labels: clips whose sound and picture belong together."""
    decoded = {
        split: materialized(
            digits / "data" / split, digits / f"decoded-{split}", "av_correspondence.toml"
        )
        for split in ("train", "val")
    }
    run = digits / "runs" / "correspondence"
    _, summary = trained("av_correspondence.toml", decoded["train"], decoded["val"], run)
    print(
        f"correspondence pretraining ({summary['seconds']:.0f} s): together / apart pairs told "
        f"apart at val {summary['val_accuracy']:.3f} (chance 0.5)"
    )
    return run


def fusion_table(root: Path, digits: Path) -> None:
    data, held = root / "data", root / "test"
    pretrained = pretrained_correspondence(digits)
    decoded = {
        split: materialized(data / split, root / f"decoded-{split}", "av_fusion.toml")
        for split in ("train", "val")
    }
    rows = [
        (
            name,
            *recipe(
                "av_fusion.toml",
                decoded["train"],
                decoded["val"],
                held,
                root / "runs" / run,
                None,
                f"init={init}",
            ),
        )
        for name, run, init in (
            ("av_fusion from scratch", "av_fusion-scratch", "''"),
            ("av_fusion from av_correspondence (no labels)", "av_fusion", pretrained),
        )
    ]
    for name, drop in (("audio + video", None), ("audio alone", "video"), ("video alone", "audio")):
        run = root / "runs" / f"av_small-{drop or 'all'}"
        row = recipe(
            "av_small.toml", data / "train", data / "val", held, run, drop, "data.num_classes=2"
        )
        rows.append((f"av_small: {name}", *row))
    print_rows("fusion: is the spoken digit the drawn one? (chance 0.5)", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="train + val samples")
    parser.add_argument("--test", type=int, default=500, help="held-out samples (another seed)")
    parser.add_argument("--out", type=Path, default=None, help="keep the data here")
    parser.add_argument("--share", type=float, default=0.1, help="labelled share (fewlabel)")
    parser.add_argument(
        "--tables",
        nargs="+",
        default=["digits", "fewlabel", "fusion"],
        choices=["digits", "fewlabel", "fusion"],
    )
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-learning-"))
    digits = spoken_data(out, "digits", SpokenDigits(), args.train, args.test)  # fusion too
    for table in args.tables:
        started = time.perf_counter()
        if table == "digits":
            digits_table(digits)
        elif table == "fewlabel":
            fewlabel_table(digits, args.share)
        else:
            match = SpokenDigits(mode="match")
            fusion_table(spoken_data(out, "match", match, args.train, args.test), digits)
        print(f"({table}: {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

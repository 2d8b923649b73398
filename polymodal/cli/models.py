"""Models: `train`, `evaluate`, `predict`, `export`, `demo`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polymodal.cli.table import Command, at_least, quiet
from polymodal.errors import UserError


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, nargs="?")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument(
        "--seed", type=int, help="the run's seed: data order and model initialisation"
    )
    parser.add_argument("--json", action="store_true", help="only the summary, as JSON")


def train(args: argparse.Namespace) -> int:
    from polymodal.pipelines.train import Trainer, load_config

    seed = [] if args.seed is None else [f"seed={args.seed}"]
    config = load_config(args.config, [*seed, *args.set])
    trainer = Trainer(config, resume=args.resume, progress=not quiet(args))
    summary = trainer.run()
    if trainer.rank == 0:  # one summary for the run, not one per torchrun process
        print(json.dumps(summary, indent=1))
    return 0


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="the run's TOML or config.json")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder")
    parser.add_argument("--split", default="val", help="val, train or a dataset (default: val)")
    parser.add_argument("--out", type=Path, help="metrics.json and confusion.png go here")


def evaluate(args: argparse.Namespace) -> int:
    from polymodal.pipelines.train import evaluate as evaluation
    from polymodal.pipelines.train import load_config, weights

    config = load_config(args.config)
    out = args.out or weights.checkpoint_path(args.checkpoint).parent.parent / "evaluation"
    metrics = evaluation.evaluate_checkpoint(config, args.checkpoint, args.split, out)
    print(json.dumps(metrics, indent=1))
    return 0 if metrics.get("samples") else 1


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file or a run folder")
    parser.add_argument("inputs", nargs="+", help="media files (grouped by key) or one dataset")
    parser.add_argument("--config", type=Path, help="default: the run's config.json")
    parser.add_argument("--top-k", type=at_least(1), default=5)
    parser.add_argument("--out", type=Path, help="where autoencoding writes reconstructions")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a folder of other files"
    )


def predict(args: argparse.Namespace) -> int:
    from polymodal.pipelines.train import evaluate as evaluation
    from polymodal.pipelines.train import load_config

    config = load_config(args.config) if args.config else None
    records = evaluation.predict(
        args.checkpoint, args.inputs, config, args.top_k, args.out, args.overwrite
    )
    good = 0
    for record in records:
        print(json.dumps(record), flush=True)
        good += "error" not in record
    return 0 if good else 1


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run, a checkpoint, hf:NAME or a save_pretrained folder")
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", choices=["safetensors", "hf"], default="safetensors")
    parser.add_argument(
        "--overwrite", action="store_true", help="write over another export or other files"
    )


def export(args: argparse.Namespace) -> int:
    from polymodal.pipelines.train import weights

    print(weights.export(args.source, args.out, args.format, args.overwrite))
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--modalities", default="audio,video", help="audio, video or both")
    parser.add_argument("--samples", type=at_least(8), default=320, help="clips to make")
    parser.add_argument("--classes", type=at_least(2), default=4)
    parser.add_argument("--epochs", type=at_least(1), default=6)
    parser.add_argument("--workers", type=at_least(0), default=2, help="DataLoader workers")


def demo(args: argparse.Namespace) -> int:
    from polymodal.pipelines.train.demo import run_demo

    modalities = tuple(sorted(m.strip() for m in args.modalities.split(",") if m.strip()))
    if not modalities or set(modalities) - {"audio", "video"}:
        raise UserError("--modalities takes audio, video or audio,video")
    summary = run_demo(args.out, modalities, args.samples, args.classes, args.epochs, args.workers)
    print(
        f"\n{'+'.join(modalities)}: validation accuracy {summary['val_accuracy']:.3f} on "
        f"{summary['val_samples']} clips, {summary['steps']} steps, "
        f"{summary['wall_seconds']:.0f} s in all ({summary['data_wait']:.0%} of training time "
        f"waiting for data); run directory: {summary['run_dir']}"
    )
    return 0


COMMANDS = [
    Command(
        "train", "train a Perceiver from a TOML config", _train_arguments, train, quiet_after=True
    ),
    Command("evaluate", "score a checkpoint on a dataset", _evaluate_arguments, evaluate),
    Command("predict", "run a checkpoint over files or a dataset", _predict_arguments, predict),
    Command("export", "write a model's weights as safetensors or hf", _export_arguments, export),
    Command("demo", "train an audio+video classifier on made-up clips", _demo_arguments, demo),
]

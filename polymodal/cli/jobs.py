"""Shard-to-shard jobs: `preprocess`, `ops`."""

from __future__ import annotations

import argparse
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

from polymodal.cli.table import Command, at_least, print_json, quiet
from polymodal.errors import UserError

RECIPE_KEYS = {"ops", "engine", "workers", "address"}


def _preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="dataset folder or URL prefix holding index.json")
    parser.add_argument("dst", type=Path, help="output folder")
    parser.add_argument(
        "--op",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="an op, e.g. resample_audio:rate=16000,channels=1 (repeat: applied in order)",
    )
    parser.add_argument("--recipe", type=Path, help="TOML file: [[ops]] tables, engine, workers")
    parser.add_argument("--engine", choices=["local", "ray"], help="default: local")
    parser.add_argument("--workers", type=at_least(1), help="processes (local) or CPUs (local Ray)")
    parser.add_argument("--address", help="Ray cluster address (e.g. auto, ray://head:10001)")
    parser.add_argument("--overwrite", action="store_true", help="replace another job's output")
    parser.add_argument("--strict", action="store_true", help="stop at the first rejected sample")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _recipe(path: Path | None) -> dict[str, Any]:
    """A recipe file's tables (`[[ops]]`, `engine`, `workers`, `address`)."""
    if path is None:
        return {}
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: {exc}") from None
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise UserError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(RECIPE_KEYS)})")
    return recipe


def preprocess(args: argparse.Namespace) -> int:
    from polymodal.datasets.index import REJECTS_NAME
    from polymodal.pipelines import preprocess as jobs

    recipe = _recipe(args.recipe)
    report = jobs.run(
        args.src,
        args.dst,
        [*recipe.get("ops", []), *args.op],
        engine=args.engine or recipe.get("engine", "local"),
        workers=args.workers or recipe.get("workers"),
        address=args.address or recipe.get("address"),
        overwrite=args.overwrite,
        errors="raise" if args.strict else "skip",
        progress=not quiet(args),
    )
    if args.json:
        print_json(report)
    else:
        print(jobs.summary(report))
    if (report.rejected or report.unreadable) and not quiet(args):
        print(f"rejected samples are listed in {args.dst / REJECTS_NAME}")
    if not report.samples_out:
        print("no sample was written: every one was rejected or filtered", file=sys.stderr)
        return 1
    return 0


def _ops_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def list_ops(args: argparse.Namespace) -> int:
    from polymodal.pipelines.preprocess.ops import available_ops, get_op

    for name in available_ops():
        # the docstring's first sentence, whole, wrapped under its name
        paragraph = " ".join((get_op(name).__doc__ or "").strip().split("\n\n")[0].split())
        sentence = paragraph.split(". ")[0].rstrip(".") + "."
        print(
            textwrap.fill(
                sentence,
                100,
                initial_indent=f"{name:18s} ",
                subsequent_indent=" " * 19,
                break_on_hyphens=False,
            )
        )
    return 0


COMMANDS = [
    Command(
        "preprocess",
        "run ops over a dataset's shards into new shards",
        _preprocess_arguments,
        preprocess,
        (KeyError, RuntimeError, ValueError),
        True,
    ),
    Command("ops", "list preprocessing ops", _ops_arguments, list_ops),
]

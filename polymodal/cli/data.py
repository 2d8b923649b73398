"""Datasets at rest: `build`, `index`, `inspect`, `validate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from polymodal.cli.table import Command, at_least, print_json, quiet, size, storage_options
from polymodal.errors import UserError


def _field_rule(text: str) -> tuple[str, str]:
    """An argparse type: `EXT=MODALITY` (`npy=pointcloud`), the modality of an extension that
    the adapters leave ambiguous."""
    ext, sep, modality = text.partition("=")
    if not sep or not ext or not modality:
        raise argparse.ArgumentTypeError(
            f"expected EXT=MODALITY (e.g. npy=pointcloud), got {text!r}"
        )
    return ext, modality


class _FieldRules(argparse.Action):
    """Collects repeated `--field EXT=MODALITY` into one dict."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        rules = dict(getattr(namespace, self.dest) or {})
        rules[value[0]] = value[1]
        setattr(namespace, self.dest, rules)


def _shared(parser: argparse.ArgumentParser, workers_help: str = "processes") -> None:
    """What `build` and `index` both take."""
    parser.add_argument("--workers", type=at_least(1), default=1, help=workers_help)
    parser.add_argument("--strict", action="store_true", help="exit non-zero on rejected input")
    parser.add_argument(
        "--field",
        type=_field_rule,
        action=_FieldRules,
        default={},
        metavar="EXT=MODALITY",
        help="read members with this extension as this modality (repeat), e.g. npy=pointcloud",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="folder, CSV/JSONL/Parquet manifest, HF Parquet")
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", choices=["tar", "parquet"], default="tar")
    parser.add_argument("--shard-size", type=size, default="256MB", help="bytes per shard")
    parser.add_argument("--shard-samples", type=at_least(1), help="samples per shard")
    _shared(parser, "processes (local) or CPUs (local Ray)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--address", help="Ray cluster address (e.g. auto, ray://head:10001)")
    parser.add_argument("--shuffle", action="store_true", help="shuffle samples across shards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", help="e.g. val=0.1 (by key hash; the rest is train)")
    parser.add_argument("--overwrite", action="store_true", help="replace another build in OUT")
    parser.add_argument(
        "--allow-paths",
        type=Path,
        metavar="ROOT",
        help="path-only Parquet Image/Audio cells may point anywhere inside ROOT",
    )


def build(args: argparse.Namespace) -> int:
    from polymodal.datasets import build as builder

    if args.src.is_dir() and any(args.src.glob("*.tar")) and not any(args.src.glob("*/")):
        raise UserError(
            f"{args.src} holds WebDataset shards: index them in place with "
            f"`polymodal index {args.src}` (shards are not copied)"
        )
    report = builder.build(
        args.src,
        args.out,
        shard_format=args.format,
        shard_bytes=args.shard_size,
        shard_samples=args.shard_samples,
        workers=args.workers,
        shuffle=args.shuffle,
        seed=args.seed,
        split=args.split,
        overwrite=args.overwrite,
        fields=args.field,
        allow_paths=args.allow_paths,
        engine=args.engine,
        address=args.address,
        progress=not quiet(args),
        print_=lambda line: None if args.quiet else print(line, file=sys.stderr),
    )
    return _report(report, args.out, args)


def _report(report: Any, folder: Path, args: argparse.Namespace) -> int:
    """A build's or an index's summary (or, with `--json`, its report); exit code 1 when it
    holds no sample (a useless result) or when `--strict` found rejects."""
    from polymodal.datasets import build as builder

    if args.json:
        print_json(report)
    else:
        print(builder.summary(report))
    if report.rejects and not quiet(args):
        print(f"rejected inputs are listed in {folder / builder.REJECTS_NAME}")
    if not report.samples:
        print("no sample was written: the dataset is empty", file=sys.stderr)
        return 1
    return 1 if args.strict and report.rejects else 0


def _index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory", help="a folder, or a URL prefix (http(s)://, s3://) with --out"
    )
    parser.add_argument(
        "--out", type=Path, help="write the sidecars and index here; the shards are only read"
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec option for remote shards (repeat; dots nest: "
        "client_kwargs.endpoint_url=http://127.0.0.1:9000, key=..., secret=...)",
    )
    parser.add_argument(
        "--upgrade",
        action="store_true",
        help="rewrite a dataset's version-1 index.json (every shard listed in it) as the "
        "columnar layout (a header and index.arrow); the shards are not read",
    )
    _shared(parser)


def index(args: argparse.Namespace) -> int:
    from polymodal.datasets import build as builder
    from polymodal.datasets.files import Remote

    if args.upgrade:
        return _upgrade_index(args.directory)
    report = builder.index_shards(
        args.directory,
        workers=args.workers,
        progress=not quiet(args),
        fields=args.field,
        out=args.out,
        remote=Remote(fs_options=storage_options(args.storage_option)),
    )
    return _report(report, args.out or Path(args.directory), args)


def _upgrade_index(directory: str) -> int:
    """`polymodal index --upgrade`: the same index, in the columnar layout (the table first,
    the header last, so a killed upgrade leaves the old index readable)."""
    from polymodal.datasets.files import local_path
    from polymodal.datasets.index import FORMAT_VERSION, TABLE_NAME, ShardIndex

    folder = local_path(directory)
    if folder is None:
        raise UserError(f"{directory}: --upgrade rewrites a local folder")
    loaded = ShardIndex.load(folder)
    if loaded.version == FORMAT_VERSION:
        print(f"{directory}: already index version {FORMAT_VERSION}; nothing to do")
        return 0
    old = loaded.version
    loaded.save(folder, card=False)
    print(
        f"{directory}: index version {old} → {FORMAT_VERSION}: {len(loaded.shards):,} shards in "
        f"{folder / TABLE_NAME}"
    )
    return 0


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="folder or URL prefix holding index.json")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--samples", type=at_least(0), default=64, help="samples probed for statistics"
    )
    parser.add_argument("--preview", type=Path, help="write a contact sheet PNG here")


def inspect(args: argparse.Namespace) -> int:
    from polymodal.datasets.inspect import format_report, inspect_dataset

    report = inspect_dataset(args.dataset, args.samples)
    if args.preview:
        from polymodal.datasets.preview import contact_sheet

        report["preview"] = str(contact_sheet(args.dataset, args.preview))
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if args.preview and not args.json:
        print(f"contact sheet: {args.preview}")
    return 0


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workers", type=at_least(1), default=1)


def validate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from polymodal.datasets.index import ShardIndex
    from polymodal.datasets.inspect import problem_sentence, validate_dataset

    loaded = ShardIndex.load(args.dataset)
    with tqdm(total=len(loaded.shards), unit="shard", disable=args.json, file=sys.stderr) as bar:
        problems = validate_dataset(args.dataset, args.workers, lambda _: bar.update(1))
    if args.json:
        print(json.dumps({"ok": not problems, "samples": loaded.samples, "problems": problems}))
    else:
        for p in problems:
            print(problem_sentence(p))
        verdict = "OK" if not problems else f"{len(problems)} problems"
        print(
            f"{args.dataset}: {loaded.samples:,} samples in {len(loaded.shards)} shards: {verdict}"
        )
    return 1 if problems else 0


COMMANDS = [
    Command("build", "build a sharded dataset", _build_arguments, build, (ValueError,), True),
    Command(
        "index",
        "index WebDataset shards (in place, or into --out)",
        _index_arguments,
        index,
        (ValueError,),
        True,
    ),
    Command("inspect", "describe a dataset", _inspect_arguments, inspect, quiet_after=True),
    Command(
        "validate", "check and decode every sample", _validate_arguments, validate, quiet_after=True
    ),
]

"""The `polymodal` command: a face over the four packages.

polymodal adapters | decode FILE... | tour      what adapters make of files
polymodal build | index | inspect | validate    datasets at rest
polymodal preprocess | ops                      shard-to-shard jobs
polymodal train | evaluate | predict | export   models
polymodal demo                                  made-up clips → shards → a trained model

Mistakes (a config, a path, a dataset) print one line and exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polymodal import __version__

if TYPE_CHECKING:  # adapters import torch: only the commands that decode pay for it
    from polymodal.adapters import Adapter, Field


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A mistake in what was asked (`UserError`: a config, a dataset, an
    overlap of input and output) or a file-system error (a missing path, a read-only or full
    disk) is one line on stderr and exit code 2; `--debug` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    from polymodal.errors import UserError

    try:
        return _run(args)
    except ImportError as exc:  # an optional package (s3fs, transformers, ray, lightning)
        if args.debug:
            raise
        print(f"polymodal {args.command}: a package is missing: {exc}", file=sys.stderr)
        return 2
    except (UserError, OSError, RuntimeError) as exc:
        if args.debug or not (isinstance(exc, (UserError, OSError)) or _dead_worker(exc)):
            raise
        print(f"polymodal {args.command}: {error_line(exc)}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """Every command and its options."""
    parser = argparse.ArgumentParser(prog="polymodal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"polymodal {__version__}")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or notes: results and errors only"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("adapters", help="list adapters and the extensions they read")
    decode = commands.add_parser("decode", help="decode files with adapters and describe them")
    decode.add_argument("files", nargs="+", type=Path)
    decode.add_argument("--adapter", help="adapter name (default: every adapter that reads it)")
    decode.add_argument(
        "--opt", action="append", default=[], metavar="KEY=VALUE", help="adapter option"
    )
    tour = commands.add_parser("tour", help="encode sample media, decode and batch them")
    tour.add_argument("--keep", type=Path, help="write the generated media to this folder")
    train = commands.add_parser("train", help="train a Perceiver from a TOML config")
    train.add_argument("config", type=Path, nargs="?")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4",
    )
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument(
        "--seed", type=int, help="the run's seed: data order and model initialisation"
    )
    train.add_argument("--json", action="store_true", help="only the summary, as JSON")
    evaluate = commands.add_parser("evaluate", help="score a checkpoint on a dataset")
    evaluate.add_argument("config", type=Path, help="the run's TOML or config.json")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder")
    evaluate.add_argument("--split", default="val", help="val, train or a dataset (default: val)")
    evaluate.add_argument("--out", type=Path, help="metrics.json and confusion.png go here")
    predict = commands.add_parser("predict", help="run a checkpoint over files or a dataset")
    predict.add_argument("checkpoint", help="a checkpoint file or a run folder")
    predict.add_argument("inputs", nargs="+", help="media files (grouped by key) or one dataset")
    predict.add_argument("--config", type=Path, help="default: the run's config.json")
    predict.add_argument("--top-k", type=at_least(1), default=5)
    predict.add_argument("--out", type=Path, help="where autoencoding writes reconstructions")
    predict.add_argument(
        "--overwrite", action="store_true", help="write into a folder of other files"
    )
    export = commands.add_parser("export", help="write a model's weights as safetensors or hf")
    export.add_argument("source", help="a run, a checkpoint, hf:NAME or a save_pretrained folder")
    export.add_argument("out", type=Path)
    export.add_argument("--format", choices=["safetensors", "hf"], default="safetensors")
    export.add_argument(
        "--overwrite", action="store_true", help="write over another export or other files"
    )
    demo = commands.add_parser("demo", help="train an audio+video classifier on made-up clips")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--modalities", default="audio,video", help="audio, video or both")
    demo.add_argument("--samples", type=at_least(8), default=320, help="clips to make")
    demo.add_argument("--classes", type=at_least(2), default=4)
    demo.add_argument("--epochs", type=at_least(1), default=6)
    demo.add_argument("--workers", type=at_least(0), default=2, help="DataLoader workers")
    _add_dataset_commands(commands)
    for name, command in commands.choices.items():
        if name in ("build", "index", "preprocess", "train", "validate", "inspect"):
            command.add_argument(  # also after the command's name; absent: the global one
                "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
    return parser


def _dead_worker(exc: BaseException) -> bool:
    """PyTorch's SIGCHLD handler raises a dead DataLoader worker wherever the main process is
    at that moment, so it can surface here rather than as the stream's StreamError. Only then
    is the stream (and torch, already loaded by whatever ran) imported."""
    if not isinstance(exc, RuntimeError):
        return False
    from polymodal.pipelines.stream.loader import is_dead_worker

    return is_dead_worker(exc)


def error_line(exc: BaseException) -> str:
    """An error as one line: an OSError as `reason: path` rather than `[Errno 28] ...`."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc).replace("\n", " ")


def _run(args: argparse.Namespace) -> int:
    if args.command in DATASET_COMMANDS:
        return DATASET_COMMANDS[args.command](args)
    if args.command == "adapters":
        return _list_adapters()
    if args.command == "train":
        return _train(args)
    if args.command in ("evaluate", "predict", "export"):
        return _use_weights(args)
    if args.command == "demo":
        return _train_demo(args)
    if args.command == "decode":
        jobs = [
            (path, [args.adapter] if args.adapter else _readers(_ext(path))) for path in args.files
        ]
        from polymodal.literals import parse_pairs

        try:
            options = parse_pairs(args.opt, "--opt")
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        return _decode_files(jobs, options)
    return _tour(args.keep)


def _list_adapters() -> int:
    from polymodal import adapters

    for name in adapters.available():
        cls = adapters.get(name)
        print(f"{name:12s} {cls.__module__}.{cls.__qualname__:20s} {' '.join(cls.extensions)}")
    return 0


def _ext(path: Path) -> str:
    """The WebDataset-style extension: everything after the first dot of the name."""
    return path.name.partition(".")[2].lower()


def _readers(ext: str) -> list[str]:
    from polymodal import adapters

    return [name for name in adapters.available() if ext in adapters.get(name).extensions]


def describe(field: Field) -> str:
    """One line: shape, dtype, size in bytes, grid or coordinates, padding."""
    parts = [f"{tuple(field.values.shape)} {str(field.values.dtype).removeprefix('torch.')}"]
    parts.append(f"{field.values.numel() * field.values.element_size():,} B")
    if field.grid is not None:
        parts.append(f"grid {field.grid}")
    if field.coords is not None:
        parts.append(f"coords {tuple(field.coords.shape)}")
    if field.mask is not None:
        parts.append(f"mask {int(field.mask.sum())}/{field.mask.numel()} real")
    return ", ".join(parts)


def _decode_one(adapter: Adapter, key: str, ext: str, data: bytes) -> tuple[Field, float]:
    start = time.perf_counter()
    field = adapter.decode({"__key__": key, ext: data})
    return field, (time.perf_counter() - start) * 1000


def _decode_files(jobs: list[tuple[Path, list[str]]], options: dict[str, Any]) -> int:
    """Decode each file with each named adapter and print one line per result."""
    from polymodal import adapters
    from polymodal.adapters import DecodeError

    failures = 0
    for path, names in jobs:
        ext = _ext(path)
        if not names:
            print(f"{path}: no adapter reads .{ext}", file=sys.stderr)
            failures += 1
            continue
        for adapter_name in names:
            try:
                adapter = adapters.get(adapter_name)(**options, extensions=[ext])
                field, ms = _decode_one(adapter, path.stem, ext, path.read_bytes())
                print(f"{path}  {adapter_name:10s} {describe(field)}  ({ms:.1f} ms)")
            except (DecodeError, OSError, TypeError, ValueError) as exc:
                print(f"{path}  {adapter_name:10s} error: {exc}", file=sys.stderr)
                failures += 1
    return 1 if failures else 0


def _tour(keep: Path | None) -> int:
    """Encode one sample of every modality with real encoders, decode each, batch two clips."""
    import numpy as np

    from polymodal import adapters
    from polymodal.datasets import synthetic

    clip = synthetic.encode_media(
        "mp4",
        synthetic.counter_frames(75, 120, 160, step=3),
        fps=25,
        audio=synthetic.tone(440, 3.0),
        audio_rate=44100,
    )
    short_clip = synthetic.encode_media(
        "webm", synthetic.counter_frames(25, 120, 160), audio=synthetic.tone(880, 1.0)
    )
    rng = np.random.default_rng(0)
    files = {  # name: (bytes, adapters that read it)
        "clip.mp4": (clip, ["video", "audio"]),
        "short.webm": (short_clip, ["video", "audio"]),
        "photo.jpg": (synthetic.encode_image(synthetic.photo(0, 320)), ["image"]),
        "cloud.ply": (synthetic.encode_ply(rng.normal(size=(5000, 3))), ["pointcloud"]),
        "caption.txt": (b"a grey square counting up, and a 440 Hz tone", ["text"]),
        "clip.cls": (b"3", ["label"]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, (data, _) in files.items():
            (folder / name).write_bytes(data)
        print(f"Encoded {len(files)} files with Pillow and PyAV (h264/aac, vp9/opus) in {folder}\n")
        status = _decode_files([(folder / name, names) for name, (_, names) in files.items()], {})
    print("\nA batch of the two clips (video at 8 fps, 16 frames; audio 16 kHz, 3 s):")
    video, audio = adapters.VideoAdapter(), adapters.AudioAdapter(duration=3.0)
    samples = [
        {"__key__": key, "video": video.decode({ext: data}), "audio": audio.decode({ext: data})}
        for key, ext, data in (("clip", "mp4", clip), ("short", "webm", short_clip))
    ]
    batch = adapters.collate(samples)
    for name, field in batch.items():
        print(f"  {name:6s} {describe(field)}")
    print(f"  keys {batch.keys}")
    return status


# ---------------------------------------------------------------------------------------------
# Datasets: build, index, inspect, validate


def _size(text: str) -> int:
    """`256MB`, `1GiB`, `500k`, `1000000` → bytes (at least one)."""
    units = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    number = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = number[-1] if number and number[-1] in units else ""
    try:
        size = int(float(number.removesuffix(unit)) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return size


def at_least(minimum: int) -> Any:
    """An argparse type: an integer no smaller than `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def field_rule(text: str) -> tuple[str, str]:
    """An argparse type: `EXT=MODALITY` (`npy=pointcloud`), the modality of an extension that
    the adapters leave ambiguous."""
    ext, sep, modality = text.partition("=")
    if not sep or not ext or not modality:
        raise argparse.ArgumentTypeError(
            f"expected EXT=MODALITY (e.g. npy=pointcloud), got {text!r}"
        )
    return ext, modality


class FieldRules(argparse.Action):
    """Collects repeated `--field EXT=MODALITY` into one dict."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        rules = dict(getattr(namespace, self.dest) or {})
        rules[value[0]] = value[1]
        setattr(namespace, self.dest, rules)


def _add_field_rules(command: Any) -> None:
    command.add_argument(
        "--field",
        type=field_rule,
        action=FieldRules,
        default={},
        metavar="EXT=MODALITY",
        help="read members with this extension as this modality (repeat), e.g. npy=pointcloud",
    )


def _add_dataset_commands(commands: Any) -> None:
    build = commands.add_parser("build", help="build a sharded dataset")
    build.add_argument("src", type=Path, help="folder, CSV/JSONL/Parquet manifest, HF Parquet")
    build.add_argument("out", type=Path)
    build.add_argument("--format", choices=["tar", "parquet"], default="tar")
    build.add_argument("--shard-size", type=_size, default="256MB", help="bytes per shard")
    build.add_argument("--shard-samples", type=at_least(1), help="samples per shard")
    build.add_argument(
        "--workers", type=at_least(1), default=1, help="processes (local) or CPUs (local Ray)"
    )
    build.add_argument("--engine", choices=["local", "ray"], default="local")
    build.add_argument("--address", help="Ray cluster address (e.g. auto, ray://head:10001)")
    build.add_argument("--shuffle", action="store_true", help="shuffle samples across shards")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--split", help="e.g. val=0.1 (by key hash; the rest is train)")
    build.add_argument("--strict", action="store_true", help="exit non-zero on rejected input")
    build.add_argument("--overwrite", action="store_true", help="replace another build in OUT")
    _add_field_rules(build)
    build.add_argument("--json", action="store_true", help="print the report as JSON")
    build.add_argument(
        "--allow-paths",
        type=Path,
        metavar="ROOT",
        help="path-only Parquet Image/Audio cells may point anywhere inside ROOT",
    )
    index = commands.add_parser("index", help="index WebDataset shards (in place, or into --out)")
    index.add_argument("directory", help="a folder, or a URL prefix (http(s)://, s3://) with --out")
    index.add_argument(
        "--out", type=Path, help="write the sidecars and index here; the shards are only read"
    )
    index.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec option for remote shards (repeat; dots nest: "
        "client_kwargs.endpoint_url=http://127.0.0.1:9000, key=..., secret=...)",
    )
    index.add_argument("--workers", type=at_least(1), default=1)
    index.add_argument("--strict", action="store_true", help="exit non-zero on rejected input")
    index.add_argument(
        "--upgrade",
        action="store_true",
        help="rewrite a dataset's version-1 index.json (every shard listed in it) as the "
        "columnar layout (a header and index.arrow); the shards are not read",
    )
    _add_field_rules(index)
    index.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect = commands.add_parser("inspect", help="describe a dataset")
    inspect.add_argument("dataset", help="folder or URL prefix holding index.json")
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument(
        "--samples", type=at_least(0), default=64, help="samples probed for statistics"
    )
    inspect.add_argument("--preview", type=Path, help="write a contact sheet PNG here")
    validate = commands.add_parser("validate", help="check and decode every sample")
    validate.add_argument("dataset")
    validate.add_argument("--json", action="store_true")
    validate.add_argument("--workers", type=at_least(1), default=1)
    pre = commands.add_parser("preprocess", help="run ops over a dataset's shards into new shards")
    pre.add_argument("src", help="dataset folder or URL prefix holding index.json")
    pre.add_argument("dst", type=Path, help="output folder")
    pre.add_argument(
        "--op",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="an op, e.g. resample_audio:rate=16000,channels=1 (repeat: applied in order)",
    )
    pre.add_argument("--recipe", type=Path, help="TOML file: [[ops]] tables, engine, workers")
    pre.add_argument("--engine", choices=["local", "ray"], help="default: local")
    pre.add_argument("--workers", type=at_least(1), help="processes (local) or CPUs (local Ray)")
    pre.add_argument("--address", help="Ray cluster address (e.g. auto, ray://head:10001)")
    pre.add_argument("--overwrite", action="store_true", help="replace another job's output")
    pre.add_argument("--strict", action="store_true", help="stop at the first rejected sample")
    pre.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser("ops", help="list preprocessing ops")


def _build(args: argparse.Namespace) -> int:
    from polymodal.datasets import build

    if args.src.is_dir() and any(args.src.glob("*.tar")) and not any(args.src.glob("*/")):
        print(
            f"{args.src} holds WebDataset shards: index them in place with "
            f"`polymodal index {args.src}` (shards are not copied)",
            file=sys.stderr,
        )
        return 2
    try:
        report = build.build(
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
            progress=not _quiet(args),
            print_=lambda line: None if args.quiet else print(line, file=sys.stderr),
        )
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"polymodal build: {exc}", file=sys.stderr)
        return 2
    return _report(report, args.out, args.strict, args)


def _quiet(args: argparse.Namespace) -> bool:
    """No progress bars or notes: asked for, or the output is a JSON document."""
    return bool(args.quiet or getattr(args, "json", False))


def _print_json(report: Any) -> None:
    """A command's report (a dataclass) as one JSON document on stdout."""
    import dataclasses
    import json

    print(json.dumps(dataclasses.asdict(report), default=str, indent=1))


def _report(report: Any, folder: Path, strict: bool, args: argparse.Namespace) -> int:
    """Print a build's summary (or, with `--json`, its report); exit code 1 when it holds no
    sample (a useless result) or when `--strict` found rejects."""
    from polymodal.datasets import build

    if args.json:
        _print_json(report)
    else:
        print(build.summary(report))
    if report.rejects and not _quiet(args):
        print(f"rejected inputs are listed in {folder / build.REJECTS_NAME}")
    if not report.samples:
        print("no sample was written: the dataset is empty", file=sys.stderr)
        return 1
    return 1 if strict and report.rejects else 0


def storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`--storage-option` pairs as fsspec's nested options (`a.b=1` → `{"a": {"b": 1}}`)."""
    from polymodal.literals import parse_pairs, set_path

    options: dict[str, Any] = {}
    for key, value in parse_pairs(pairs, "--storage-option").items():
        set_path(options, key, value)
    return options


def _index(args: argparse.Namespace) -> int:
    from polymodal.datasets import build
    from polymodal.datasets.files import Remote

    if args.upgrade:
        return _upgrade_index(args.directory)
    try:
        report = build.index_shards(
            args.directory,
            workers=args.workers,
            progress=not _quiet(args),
            fields=args.field,
            out=args.out,
            remote=Remote(fs_options=storage_options(args.storage_option)),
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"polymodal index: {exc}", file=sys.stderr)
        return 2
    return _report(report, args.out or Path(args.directory), args.strict, args)


def _upgrade_index(directory: str) -> int:
    """`polymodal index --upgrade`: the same index, in the columnar layout (the table first,
    the header last, so a killed upgrade leaves the old index readable)."""
    from polymodal.datasets.files import local_path
    from polymodal.datasets.index import FORMAT_VERSION, TABLE_NAME, ShardIndex

    folder = local_path(directory)
    if folder is None:
        print(f"polymodal index: {directory}: --upgrade rewrites a local folder", file=sys.stderr)
        return 2
    index = ShardIndex.load(folder)
    if index.version == FORMAT_VERSION:
        print(f"{directory}: already index version {FORMAT_VERSION}; nothing to do")
        return 0
    old = index.version
    index.save(folder, card=False)
    print(
        f"{directory}: index version {old} → {FORMAT_VERSION}: {len(index.shards):,} shards in "
        f"{folder / TABLE_NAME}"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from polymodal.datasets.inspect import format_report, inspect_dataset

    report = inspect_dataset(args.dataset, args.samples)
    if args.preview:
        from polymodal.datasets.preview import contact_sheet

        report["preview"] = str(contact_sheet(args.dataset, args.preview))
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if args.preview and not args.json:
        print(f"contact sheet: {args.preview}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from polymodal.datasets.index import ShardIndex
    from polymodal.datasets.inspect import problem_sentence, validate_dataset

    index = ShardIndex.load(args.dataset)
    with tqdm(total=len(index.shards), unit="shard", disable=args.json, file=sys.stderr) as bar:
        problems = validate_dataset(args.dataset, args.workers, lambda _: bar.update(1))
    if args.json:
        print(json.dumps({"ok": not problems, "samples": index.samples, "problems": problems}))
    else:
        for p in problems:
            print(problem_sentence(p))
        verdict = "OK" if not problems else f"{len(problems)} problems"
        print(f"{args.dataset}: {index.samples:,} samples in {len(index.shards)} shards: {verdict}")
    return 1 if problems else 0


def _preprocess(args: argparse.Namespace) -> int:
    import tomllib

    from polymodal.datasets.index import REJECTS_NAME
    from polymodal.pipelines import preprocess
    from polymodal.pipelines.preprocess.ops.base import OpOptionError

    recipe: dict[str, Any] = {}
    if args.recipe:
        try:
            recipe = tomllib.loads(args.recipe.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            print(f"polymodal preprocess: {args.recipe}: {exc}", file=sys.stderr)
            return 2
        unknown = set(recipe) - {"ops", "engine", "workers", "address"}
        if unknown:
            print(
                f"polymodal preprocess: {args.recipe}: unknown keys {sorted(unknown)}",
                file=sys.stderr,
            )
            return 2
    ops = [*recipe.get("ops", []), *args.op]
    try:
        report = preprocess.run(
            args.src,
            args.dst,
            ops,
            engine=args.engine or recipe.get("engine", "local"),
            workers=args.workers or recipe.get("workers"),
            address=args.address or recipe.get("address"),
            overwrite=args.overwrite,
            errors="raise" if args.strict else "skip",
            progress=not _quiet(args),
        )
    except OpOptionError as exc:
        print(f"polymodal preprocess: {exc}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, KeyError, RuntimeError, ValueError) as exc:
        print(f"polymodal preprocess: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(report)
    else:
        print(preprocess.summary(report))
    if (report.rejected or report.unreadable) and not _quiet(args):
        print(f"rejected samples are listed in {args.dst / REJECTS_NAME}")
    if not report.samples_out:
        print("no sample was written: every one was rejected or filtered", file=sys.stderr)
        return 1
    return 0


def _list_ops(args: argparse.Namespace) -> int:
    from polymodal.pipelines.preprocess.ops import available_ops, get_op

    for name in available_ops():
        doc = (get_op(name).__doc__ or "").strip().split("\n")[0]
        print(f"{name:18s} {doc}")
    return 0


DATASET_COMMANDS = {
    "build": _build,
    "index": _index,
    "inspect": _inspect,
    "validate": _validate,
    "preprocess": _preprocess,
    "ops": _list_ops,
}


# ---------------------------------------------------------------------------------------------
# Training


def _train(args: argparse.Namespace) -> int:
    import json

    from polymodal.errors import ConfigError
    from polymodal.pipelines.train.config import load_config
    from polymodal.pipelines.train.trainer import Trainer

    try:
        seed = [] if args.seed is None else [f"seed={args.seed}"]
        config = load_config(args.config, [*seed, *args.set])
        trainer = Trainer(config, resume=args.resume, progress=not _quiet(args))
    except ConfigError as exc:
        print(f"polymodal train: invalid config: {exc}", file=sys.stderr)
        return 2
    summary = trainer.run()
    print(json.dumps(summary, indent=1))
    return 0


def _use_weights(args: argparse.Namespace) -> int:
    """`evaluate`, `predict` and `export`: what a trained model is for."""
    import json

    from polymodal.pipelines.train import evaluate, weights
    from polymodal.pipelines.train.config import load_config

    if args.command == "export":
        print(weights.export(args.source, args.out, args.format, args.overwrite))
        return 0
    config = load_config(args.config) if args.config else None
    if args.command == "evaluate":
        out = args.out or weights.checkpoint_path(args.checkpoint).parent.parent / "evaluation"
        metrics = evaluate.evaluate_checkpoint(config, args.checkpoint, args.split, out)
        print(json.dumps(metrics, indent=1))
        return 0 if metrics.get("samples") else 1
    records = 0
    records_of = evaluate.predict(
        args.checkpoint, args.inputs, config, args.top_k, args.out, args.overwrite
    )
    for record in records_of:
        print(json.dumps(record), flush=True)
        records += "error" not in record
    return 0 if records else 1


def _train_demo(args: argparse.Namespace) -> int:
    from polymodal.pipelines.train.demo import run_demo

    modalities = tuple(sorted(m.strip() for m in args.modalities.split(",") if m.strip()))
    if not modalities or set(modalities) - {"audio", "video"}:
        print("polymodal demo: --modalities takes audio, video or audio,video", file=sys.stderr)
        return 2
    summary = run_demo(args.out, modalities, args.samples, args.classes, args.epochs, args.workers)
    print(
        f"\n{'+'.join(modalities)}: validation accuracy {summary['val_accuracy']:.3f} on "
        f"{summary['val_samples']} clips, {summary['steps']} steps, "
        f"{summary['wall_seconds']:.0f} s in all ({summary['data_wait']:.0%} of training time "
        f"waiting for data); run directory: {summary['run_dir']}"
    )
    return 0

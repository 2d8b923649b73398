"""What adapters make of files: `adapters`, `decode FILE...`, `tour`."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polymodal.cli.table import Command

if TYPE_CHECKING:  # adapters import torch: only the commands that decode pay for it
    from polymodal.adapters import Adapter, Field


def _adapters_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def list_adapters(args: argparse.Namespace) -> int:
    from polymodal import adapters

    for name in adapters.available():
        cls = adapters.get(name)
        print(f"{name:12s} {cls.__module__}.{cls.__qualname__:20s} {' '.join(cls.extensions)}")
    return 0


def _decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--adapter", help="adapter name (default: every adapter that reads it)")
    parser.add_argument(
        "--opt", action="append", default=[], metavar="KEY=VALUE", help="adapter option"
    )


def decode(args: argparse.Namespace) -> int:
    from polymodal.literals import parse_pairs

    options = parse_pairs(args.opt, "--opt")
    jobs = [(path, [args.adapter] if args.adapter else _readers(_ext(path))) for path in args.files]
    return decode_files(jobs, options)


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


def decode_files(jobs: list[tuple[Path, list[str]]], options: dict[str, Any]) -> int:
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


def _tour_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", type=Path, help="write the generated media to this folder")


def tour(args: argparse.Namespace) -> int:
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
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, (data, _) in files.items():
            (folder / name).write_bytes(data)
        print(f"Encoded {len(files)} files with Pillow and PyAV (h264/aac, vp9/opus) in {folder}\n")
        status = decode_files([(folder / name, names) for name, (_, names) in files.items()], {})
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


COMMANDS = [
    Command(
        "adapters", "list adapters and the extensions they read", _adapters_arguments, list_adapters
    ),
    Command(
        "decode",
        "decode files with adapters and describe them",
        _decode_arguments,
        decode,
        user_errors=(ValueError,),
    ),
    Command("tour", "encode sample media, decode and batch them", _tour_arguments, tour),
]

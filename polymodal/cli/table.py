"""What a command is to the table, and the option types and report helpers commands share."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One command: its name and help, what it adds to its parser, its handler, the error
    types that are its user's mistakes beside `UserError` and `OSError`, and whether it takes
    `--quiet` after its name."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Handler
    user_errors: tuple[type[BaseException], ...] = field(default_factory=tuple)
    quiet_after: bool = False


def at_least(minimum: int) -> Callable[[str], int]:
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


def size(text: str) -> int:
    """`256MB`, `1GiB`, `500k`, `1000000` → bytes (at least one)."""
    units = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    number = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = number[-1] if number and number[-1] in units else ""
    try:
        value = int(float(number.removesuffix(unit)) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


def quiet(args: argparse.Namespace) -> bool:
    """No progress bars or notes: asked for, or the output is a JSON document."""
    return bool(args.quiet or getattr(args, "json", False))


def print_json(report: Any) -> None:
    """A command's report (a dataclass or a plain value) as one JSON document on stdout."""
    dataclass = dataclasses.is_dataclass(report) and not isinstance(report, type)
    doc = dataclasses.asdict(report) if dataclass else report
    print(json.dumps(doc, default=str, indent=1))


def note(args: argparse.Namespace, line: str) -> None:
    """A note for a person on stderr, unless quiet."""
    if not quiet(args):
        print(line, file=sys.stderr)


def storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`--storage-option` pairs as fsspec's nested options (`a.b=1` → `{"a": {"b": 1}}`)."""
    from polymodal.literals import parse_pairs, set_path

    options: dict[str, Any] = {}
    for key, value in parse_pairs(pairs, "--storage-option").items():
        set_path(options, key, value)
    return options

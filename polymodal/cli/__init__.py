"""The `polymodal` command: a face over the packages, never a library.

polymodal adapters | decode FILE... | tour      what adapters make of files
polymodal build | index | inspect | validate    datasets at rest
polymodal preprocess | ops                      shard-to-shard jobs
polymodal train | evaluate | predict | export   models
polymodal demo                                  made-up clips → shards → a trained model

One command table (`COMMANDS`: each command's options beside its handler, in the module of its
kind) and one error route: a mistake in what was asked (`UserError`, a file-system error, or an
error type the command names) is one line on stderr and its exit code (2, or the error's own
`exit_code`); `--debug` shows the traceback instead. A handler returns 0, or 1 for a useless
result, and raises for everything else. A reader of stdout that stops early (`| head`) ends
the command quietly with 141, as SIGPIPE ends a Unix tool.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from polymodal import __version__
from polymodal.cli import data, jobs, media, models
from polymodal.cli.table import Command
from polymodal.errors import UserError

SIGPIPE_EXIT = 128 + signal.SIGPIPE  # what a shell reports for a tool whose reader left

COMMANDS: dict[str, Command] = {
    c.name: c for module in (media, data, jobs, models) for c in module.COMMANDS
}


def build_parser() -> argparse.ArgumentParser:
    """Every command and its options, from the table."""
    parser = argparse.ArgumentParser(prog="polymodal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"polymodal {__version__}")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or notes: results and errors only"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help)
        command.arguments(sub)
        if command.quiet_after:  # `--quiet` after the command's name too
            sub.add_argument(
                "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (see the module docstring for the exit codes)."""
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    caught: tuple[type[BaseException], ...] = (UserError, OSError, RuntimeError)
    try:
        return command.run(args)
    except BrokenPipeError:
        # whoever read stdout stopped (`polymodal predict ... | head`): end quietly, as a Unix
        # tool killed by SIGPIPE does; stdout goes nowhere so Python's exit flush is silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    except ImportError as exc:  # an optional package (s3fs, transformers, ray, lightning)
        if args.debug:
            raise
        print(f"polymodal {args.command}: a package is missing: {exc}", file=sys.stderr)
        return 2
    except caught + command.user_errors as exc:
        if args.debug or not _users(exc, command.user_errors):
            raise
        print(f"polymodal {args.command}: {error_line(exc)}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))


def _users(exc: BaseException, named: tuple[type[BaseException], ...]) -> bool:
    """Whether an error is the user's to mend (one line), not a bug (a traceback). A dead
    DataLoader worker can surface as PyTorch's RuntimeError wherever the main process is (its
    SIGCHLD handler raises there): only then is the stream (and torch, already loaded by
    whatever ran) imported to tell."""
    if isinstance(exc, (UserError, OSError, *named)):
        return True
    if isinstance(exc, RuntimeError):
        from polymodal.pipelines.stream.loader import is_dead_worker

        return is_dead_worker(exc)
    return False


def error_line(exc: BaseException) -> str:
    """An error as one line: an OSError as `reason: path` rather than `[Errno 28] ...`."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc).replace("\n", " ")


__all__ = ["COMMANDS", "build_parser", "error_line", "main"]

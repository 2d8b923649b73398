"""One reading of `KEY=VALUE` text for every command line option that takes one (`train
--set`, `preprocess --op`, `decode --opt`), so `true`, `3`, `[1, 2]` and `fn=pkg.mod:f` mean
the same thing everywhere; and one check of such options against what a function takes."""

from __future__ import annotations

import ast
import collections.abc
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_literal(text: str) -> Any:
    """A Python literal where it parses (numbers, lists, tuples, quoted strings); `true` /
    `false` / `none` in any case; else the text itself, stripped."""
    text = text.strip()
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_pairs(pairs: Iterable[str], what: str) -> dict[str, Any]:
    """`["a=1", "b=x"]` → `{"a": 1, "b": "x"}`; `what` names the option in the error."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = parse_literal(value)
    return out


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """`doc[a][b][c] = value` for `path = "a.b.c"`, creating tables on the way."""
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def check_arguments(fn: Callable[..., Any], options: Mapping[str, Any], where: str) -> None:
    """Refuse, before any work, options that `fn` does not take or whose value does not fit
    the parameter's annotation (`int`, `float`, `str`, `bool`, `None`, unions, lists and
    tuples of those); `where` names the thing in the message (`op resample_audio`). Other
    annotations are left to `fn` itself."""
    signature = inspect.signature(fn)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # annotations that do not resolve here: nothing to check
        hints = {}
    for name, value in options.items():
        if name not in signature.parameters:
            if takes_any:
                continue
            known = [n for n in signature.parameters if n not in ("self", "args", "kwargs")]
            raise ValueError(
                f"{where}: unknown option {name!r} (known: {', '.join(known)})"
                f"{did_you_mean(name, known)}"
            )
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            raise ValueError(f"{where}: {name} must be {_describe(hint)}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin in (list, tuple, Sequence, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return len(inner) != 1 or all(_fits(v, inner[0]) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    return True  # callables, paths, classes: the function checks those itself


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`"; did you mean 'size'?"` for a misspelt `name` close to one of `known`, else ``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""

"""One reading of `KEY=VALUE` text for every command line option that takes one (`train
--set`, `preprocess --op`, `decode --opt`), so `true`, `3`, `[1, 2]` and `fn=pkg.mod:f` mean
the same thing everywhere."""

from __future__ import annotations

import ast
from collections.abc import Iterable
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

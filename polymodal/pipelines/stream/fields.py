"""A field of a stream, as a spec and as the adapter built from it: the one way every caller
(the training config, the tasks, the materialise op, `Stream`) turns `{adapter, extensions,
options}` into an `Adapter`, with its options checked against the adapter's signature first,
so a typo names the option and the ones there are.

`field_specs` reads the `[data.fields]` tables of a training TOML or a run's `config.json`
without the training configuration: what a preprocessing job (materialise) needs of it.
"""

from __future__ import annotations

import inspect
import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from polymodal.adapters import Adapter, get
from polymodal.errors import ConfigError
from polymodal.literals import did_you_mean

FieldSpecLike = Adapter | str | tuple[str, Sequence[str]]


@dataclass
class FieldSpec:
    """One input field: the adapter, the extensions it reads, its decode `options` and its
    `encoder` options. An `optional` field may be missing from some samples (masked out;
    `batch.present` says which)."""

    adapter: str
    extensions: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] = field(default_factory=dict)
    optional: bool = False


def known_options(fn: Callable[..., Any]) -> list[str]:
    """The option names `fn` (an adapter's `__init__` or `encoder`) takes from a config."""
    return [n for n in inspect.signature(fn).parameters if n not in ("self", "extensions", "field")]


def build_adapter(spec: FieldSpec | FieldSpecLike, where: str = "field") -> Adapter:
    """The adapter of a field spec (a `FieldSpec`, an adapter instance, a registered name or
    `(name, extensions)`); an unknown adapter, an option it does not take or a value it
    refuses is a `ConfigError` naming `where` and the option. A spec with `encoder` options
    also builds its encoder once, so a bad encoder value fails here, not in the trainer."""
    if isinstance(spec, Adapter):
        return spec
    if isinstance(spec, str):
        spec = FieldSpec(spec)
    elif isinstance(spec, tuple):
        spec = FieldSpec(spec[0], list(spec[1]))
    try:
        cls = get(spec.adapter)
    except KeyError as exc:
        raise ConfigError(f"{where}.adapter: {exc.args[0]}") from None
    for options, fn, label in (
        (spec.options, cls.__init__, "options"),
        (spec.encoder, cls.encoder, "encoder"),
    ):
        known = known_options(fn)
        for name in options:
            if name not in known:
                raise ConfigError(
                    f"{where}.{label}.{name}: unknown option (known: {', '.join(known) or 'none'})"
                    f"{did_you_mean(name, known)}"
                )
    try:
        adapter = cls(**spec.options, extensions=spec.extensions or None)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.options: {exc}") from None
    if spec.encoder:
        try:  # cheap, and a bad size fails at load
            adapter.encoder(**spec.encoder)
        except (TypeError, ValueError, ArithmeticError, RuntimeError) as exc:
            raise ConfigError(f"{where}.encoder: {exc}") from None
    return adapter


def field_specs(path: str | Path) -> dict[str, FieldSpec]:
    """The `[data.fields]` of a training TOML or a run's `config.json`, as specs."""
    path = Path(path)
    try:
        text = path.read_text()
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read its [data.fields] ({exc})") from None
    tables = doc.get("data", {}).get("fields", {}) if isinstance(doc, Mapping) else {}
    if not isinstance(tables, Mapping):
        raise ConfigError(f"{path}: data.fields must be a table of fields")
    names = {f.name for f in fields(FieldSpec)}
    out = {}
    for name, table in tables.items():
        where = f"{path}: data.fields.{name}"
        if not isinstance(table, Mapping) or "adapter" not in table:
            raise ConfigError(f"{where}: a field is a table with an adapter")
        unknown = sorted(set(table) - names)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown field (known: {sorted(names)})")
        out[name] = FieldSpec(**table)
    return out

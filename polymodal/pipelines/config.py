"""Training configuration: one TOML file, typed sections, `--set key=value` overrides.

Invalid configurations fail before any work, with a message naming the field
(`model.num_latents: expected int, got 'many'`). The resolved configuration is saved with
every run.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polymodal.perceiver.encoder import EncoderConfig


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; names the field."""


@dataclass
class FieldConfig:
    """One input field: the adapter, the extensions it reads, and its options."""

    adapter: str
    extensions: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    train: str = ""
    val: str = ""
    fields: dict[str, FieldConfig] = field(default_factory=dict)
    label: str = "cls"  # the extension holding the target
    num_classes: int = 2
    batch_size: int = 32
    workers: int = 0
    buffer_size: int = 500
    seed: int = 0


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0
    accumulate: int = 1


@dataclass
class TrainConfig:
    """The whole run: data, model, task, optimiser, schedule, precision, checkpoints."""

    data: DataConfig = field(default_factory=DataConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)  # the Perceiver's sizes
    optim: OptimConfig = field(default_factory=OptimConfig)
    task: str = "classification"  # classification | multilabel | autoencode | mlm
    loss_weights: dict[str, float] = field(default_factory=dict)  # autoencode: per field
    subsample: int = 2048  # autoencode: output queries per field per training step
    mask_probability: float = 0.15  # mlm: share of bytes masked
    epochs: int = 1
    max_steps: int = 0  # 0: epochs decide
    precision: str = "fp32"  # fp32 | bf16
    seed: int = 0
    run_dir: str = "runs/run"
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_every_epoch: bool = True

    def validate(self) -> TrainConfig:
        tasks = ("classification", "multilabel", "autoencode", "mlm")
        if self.task not in tasks:
            raise ConfigError(f"task: expected one of {', '.join(tasks)}, got {self.task!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision: expected fp32 or bf16, got {self.precision!r}")
        if self.optim.name not in ("adamw", "lamb"):
            raise ConfigError(f"optim.name: expected adamw or lamb, got {self.optim.name!r}")
        if not self.data.train:
            raise ConfigError("data.train: a training dataset is required")
        if not self.data.fields:
            raise ConfigError("data.fields: at least one input field is required")
        for name, spec in (
            ("data.batch_size", self.data.batch_size),
            ("epochs", self.epochs),
            ("model.num_latents", self.model.num_latents),
        ):
            if spec < 1:
                raise ConfigError(f"{name}: must be positive, got {spec}")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against (and, for dataclasses, built from) the type `hint`."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(hint, value, where)
    if origin in (dict,):
        _, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {k: _coerce(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if origin in (list,):
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any or origin in (typing.Union, types.UnionType):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"{where + '.' if where else ''}{key}: unknown field (known: {sorted(known)})"
            )
    kwargs = {
        k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in values.items()
    }
    return cls(**kwargs)


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """`doc[a][b][c] = value` for `path = "a.b.c"`, creating tables on the way."""
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def parse_value(text: str) -> Any:
    """A `--set` value: a Python literal where it parses (numbers, lists, booleans), else text."""
    lowered = {"true": True, "false": False}.get(text.lower())
    if lowered is not None:
        return lowered
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a TOML file (or start from defaults), apply `key=value` overrides, validate."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set needs key=value, got {item!r}")
        set_path(doc, key.strip(), parse_value(value.strip()))
    return _build(TrainConfig, doc).validate()

"""The op contract: one raw sample in, zero, one or many raw samples out.

A preprocessing job applies a chain of ops to every sample of a dataset. An op is a small,
picklable object built from plain options (so a job can be fingerprinted, shipped to a worker
process or a Ray node, and rerun to the same bytes), registered by name like an adapter:
`@register_op("resize_image")` in code, or the entry-point group `polymodal.ops` for third-party
packages.

An op returns the sample (changed or not), a list of samples (one clip becomes several), or
`None` to drop it. It raises `Filtered(reason)` to drop a sample on purpose (it is counted under
that reason) and any other exception when it cannot process the sample (the job rejects the
sample, writes key, op and reason to `rejects.jsonl`, and goes on).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from polymodal.adapters import modality_of
from polymodal.errors import UserError
from polymodal.literals import check_arguments, parse_pairs
from polymodal.registry import Registry

ENTRY_POINT_GROUP = "polymodal.ops"

Sample = dict[str, Any]  # "__key__", "__origin__" (the input key), then extension → bytes
Result = Sample | list[Sample] | None


class Filtered(Exception):  # not an ...Error: the sample is dropped on purpose
    """Raised by an op to drop a sample on purpose; the reason is what the summary counts."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason,))


class Op:
    """Base class of preprocessing ops; subclasses take keyword options and implement
    `__call__`. Ops that need to see the whole input first (dedupe) also implement `scan` and
    `plan`: the job runs `scan` over every input sample in a first pass and hands the results,
    shard by shard in input order, to `plan` before any sample is processed."""

    name: ClassVar[str] = ""
    scans: ClassVar[bool] = False

    def __call__(self, sample: Sample) -> Result:
        raise NotImplementedError

    def scan(self, sample: Sample) -> Any:
        raise NotImplementedError

    def plan(self, scans: list[list[Any]]) -> None:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The op's name and options: what a job's fingerprint and summary record of it."""
        options = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"op": self.name, **json.loads(json.dumps(options, default=str))}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "op")
        return f"{self.name}({options})"


_OPS: Registry[type[Op]] = Registry(Op, ENTRY_POINT_GROUP, "op")
register_op = _OPS.register
get_op = _OPS.get
available_ops = _OPS.available


class OpOptionError(UserError, ValueError):
    """An op's option is one it does not take, or of a type it cannot be: found before the
    job starts (`polymodal preprocess` exits 1, as for a job that would output nothing)."""

    exit_code = 1


def make_op(spec: Op | str | Mapping[str, Any] | Callable[[Sample], Result]) -> Op:
    """An op from an instance, a `"name:key=value,key=value"` string, a mapping with an `op`
    key and options (a recipe's `[[ops]]` table), or a plain callable (wrapped by `call`)."""
    if isinstance(spec, Op):
        return spec
    if isinstance(spec, str):
        name, options = parse_op(spec)
    elif isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("op", None)
        if not name:
            raise ValueError(f"an op table needs an 'op' key naming the op, got {dict(spec)}")
    elif callable(spec):
        name, options = "call", {"fn": spec}
    else:
        raise TypeError(f"not an op: {spec!r}")
    cls = get_op(name)
    try:  # wrong names and types fail before the job, not as rejects of every sample
        check_arguments(cls.__init__, options, f"op {name}")
    except ValueError as exc:
        raise OpOptionError(str(exc)) from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"op {name!r}: {exc}") from None


def parse_op(text: str) -> tuple[str, dict[str, Any]]:
    """`"resample_audio:rate=16000,channels=1"` → name and options. Values are Python literals
    where they parse (`labels=[1,2]`, `size=(256,256)`), else strings (`fn=pkg.mod:func`)."""
    name, _, rest = text.partition(":")
    parts: list[str] = []
    for piece in rest.split(",") if rest else []:
        if "=" in piece or not parts:  # a comma inside a value: `labels=[1,2]`
            parts.append(piece)
        else:
            parts[-1] += "," + piece
    return name.strip(), parse_pairs(parts, f"op {text!r}: an option")


def media_members(sample: Sample, modality: str, ext: str | None = None) -> list[str]:
    """The member extensions of `sample` holding `modality` (or just `ext` when given)."""
    if ext is not None:
        return [ext] if ext in sample else []
    return [e for e in sample if not e.startswith("_") and modality_of(e) == modality]


def retype(ext: str, file_type: str) -> str:
    """`ext` with its file type changed: `wav` → `flac`, `left.wav` → `left.flac`."""
    return ext.rsplit(".", 1)[0] + "." + file_type if "." in ext else file_type


def replace_member(sample: Sample, old: str, file_type: str, data: bytes) -> str:
    """Put `data` in place of member `old`, as a `file_type` file (a wav becomes a flac);
    returns the new extension."""
    new = retype(old, file_type)
    if new != old and new in sample:
        raise ValueError(f"cannot write {new!r}: the sample already has one")
    del sample[old]
    sample[new] = data
    return new

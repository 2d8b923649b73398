"""A user's function, wherever the work runs: by import path (`pkg.mod:fn`, what a config or a
command line names) or as the function itself, which travels to DataLoader workers, process
pools and Ray by value (cloudpickle), so one defined in a script's `__main__`, a lambda or a
closure works on every engine.

A function that cannot travel (it holds a lock, a socket, an open file) is refused when it is
given, with the reason, not in every worker later. Pickling by value here is of the user's own
code between the user's own processes; shard contents are never unpickled.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import cloudpickle

from polymodal.errors import UserError


class NotPortable(UserError, ValueError):
    """A function that cannot be sent to the processes that would run it."""


@lru_cache(maxsize=64)
def resolve(path: str) -> Callable[..., Any]:
    """The object at `module:attr` or `module.attr` (attr may be dotted: `mod:Class.method`);
    the cache makes a per-sample lookup free."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{path!r}: give a function as module:name or module.name")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None
    if not callable(obj):
        raise ValueError(f"{path!r} is not callable")
    return obj


class Portable:
    """A function by path or by value, callable here and after pickling anywhere."""

    def __init__(self, fn: str | Callable[..., Any]) -> None:
        if isinstance(fn, str):
            self.fn, self.name = resolve(fn), fn  # an unknown path fails now
        elif callable(fn):
            qualname = getattr(fn, "__qualname__", type(fn).__name__)
            self.fn, self.name = fn, f"{getattr(fn, '__module__', '')}:{qualname}"
            try:
                cloudpickle.loads(cloudpickle.dumps(fn))
            except Exception as exc:  # any failure to travel: say which function and why
                raise NotPortable(
                    f"{self.name} cannot be sent to worker processes ({type(exc).__name__}: "
                    f"{exc}); define it at the top level of a module or script"
                ) from None
        else:
            raise TypeError(f"not a function or an import path: {fn!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {"fn": cloudpickle.dumps(self.fn), "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.fn, self.name = cloudpickle.loads(state["fn"]), state["name"]

    def __str__(self) -> str:  # what a job's record and a report say of it
        return self.name

    def __repr__(self) -> str:
        return f"Portable({self.name})"

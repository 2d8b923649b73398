"""Classes registered by name, in code or by installed packages: what adapters and
preprocessing ops share.

`@registry.register("name")` makes a subclass of the registry's base findable with
`registry.get("name")`; a third-party package lists its classes under the registry's
entry-point group (`polymodal.adapters`, `polymodal.ops`) and they are found the same way,
loaded only when first asked for. Built-in classes may be named by where they are
(`builtins`: name → module), imported when first asked for, so knowing the names costs no
import (the adapters' modules import torch; asking which modality `.mp4` is must not).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, cast

from polymodal.errors import UserError
from polymodal.literals import did_you_mean

T = TypeVar("T", bound=type)


class UnknownName(UserError, KeyError):
    """No class is registered (or installed) under the name asked for; the message lists the
    names there are."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError would quote it


class Registry(Generic[T]):
    """Name → subclass of `base`, filled by `register` and by the entry points of `group`."""

    def __init__(
        self,
        base: T | str,
        group: str,
        kind: str,
        builtins: Mapping[str, str] | None = None,
    ) -> None:
        self._base, self.group, self.kind = base, group, kind
        self.builtins = dict(builtins or {})  # name → the module that registers it
        self.classes: dict[str, T] = {}
        self._scanned = False  # installed packages are looked through once a process

    @property
    def base(self) -> T:
        """The base class, imported when first needed where it was given as `module:Class`."""
        if isinstance(self._base, str):
            module, _, name = self._base.partition(":")
            self._base = cast(T, getattr(importlib.import_module(module), name))
        return self._base

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make a subclass of the base available as `get(name)`."""

        def decorate(cls: T) -> T:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(
                    f"registering {name!r} needs a {self.base.__name__} subclass, got {cls!r}"
                )
            existing = self.classes.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered to {existing.__qualname__}"
                )
            cast(Any, cls).name = name  # every registered class knows its name
            self.classes[name] = cls
            return cls

        return decorate

    def _entry_points(self, name: str | None = None) -> list[importlib.metadata.EntryPoint]:
        eps = importlib.metadata.entry_points(group=self.group)
        return [ep for ep in eps if name is None or ep.name == name]

    def _load(self, ep: importlib.metadata.EntryPoint) -> None:
        """Load a third-party entry: a subclass of the base, or a module that registers."""
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, self.base) and ep.name not in self.classes:
            self.register(ep.name)(cast(T, obj))

    def get(self, name: str) -> T:
        """The class registered as `name`: a built-in's module is imported, else installed
        packages are looked in, when needed."""
        if name not in self.classes and name in self.builtins:
            importlib.import_module(self.builtins[name])  # registers it
        if name not in self.classes:
            for ep in self._entry_points(name):
                self._load(ep)
        try:
            return self.classes[name]
        except KeyError:
            raise UnknownName(
                f"no {self.kind} named {name!r}; available: {', '.join(self.available())}"
                f"{did_you_mean(name, self.available())}"
            ) from None

    def available(self) -> list[str]:
        """Names of all classes: built-in, registered in code, and installed via entry points
        (read once a process: the extension table asks on every member it looks up)."""
        return sorted(set(self.builtins) | set(self.added()))

    def added(self) -> list[str]:
        """Names beside the built-ins: registered in code, and installed (whose entry points
        are loaded here, once a process)."""
        if self._scanned:
            return sorted(set(self.classes) - set(self.builtins))
        self._scanned = True
        for ep in self._entry_points():
            if ep.name in self.classes:
                continue
            try:
                self._load(ep)
            except Exception as exc:  # one broken plugin must not hide the others
                warnings.warn(
                    f"{self.kind} entry point {ep.name!r} failed to load: {exc}", stacklevel=2
                )
        return sorted(set(self.classes) - set(self.builtins))

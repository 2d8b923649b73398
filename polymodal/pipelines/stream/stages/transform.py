"""The transform stage: the user's own functions on decoded samples, in order, as webdataset's
`.map` / `.select` and Hugging Face's `.map` / `.filter` run them: `map` returns the sample
changed (field name → `Field`, and `__key__`), `filter` says whether to keep it.

They run in the DataLoader workers, after decoding and before batching. A sample a filter
drops, or one a function fails on, becomes a `Skip` (stage `filter` or `transform`, with its
key and why): counted in `report()`, replaced in its batch by a marked repeat like any skipped
sample, so batch counts stay equal on every rank and a resumed run drops the same samples.
Functions travel by value (`callables.Portable`), so a lambda or one defined in `__main__`
works in every worker. They must be deterministic functions of the sample for a resumed run
to equal an uninterrupted one; randomness belongs in the adapters, which draw from the
sample's seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from polymodal.callables import Portable
from polymodal.pipelines.stream.partition import Reference
from polymodal.pipelines.stream.stages.base import Skip

KINDS = ("map", "filter")
Step = tuple[str, Portable]


def transform_step(kind: str, fn: str | Callable[..., Any]) -> Step:
    """One step: `("map", fn)` or `("filter", predicate)`, a function or an import path."""
    if kind not in KINDS:
        raise ValueError(f"a transform is 'map' or 'filter', got {kind!r}")
    return kind, Portable(fn)


def parse_transform(text: str) -> Step:
    """`"map:my_pkg.clean:fix_labels"` / `"filter:my_pkg.clean:is_long"`: a config's form."""
    kind, sep, path = text.partition(":")
    if not sep or not path:
        raise ValueError(f"{text!r}: give a transform as map:module:function or filter:...")
    return transform_step(kind.strip(), path.strip())


class Transform:
    """Applies the steps to each decoded sample (each of its clips); counts what it drops."""

    def __init__(self, steps: Sequence[Step], errors: str) -> None:
        self.steps, self.errors = list(steps), errors
        self.dropped = 0

    def state_dict(self) -> dict[str, int]:
        return {"dropped": self.dropped}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.dropped = state["dropped"]

    def apply(
        self, ref: Reference, items: list[dict[str, Any]] | Skip
    ) -> list[dict[str, Any]] | Skip:
        """The sample's items after every step, or the Skip that says why it is not
        delivered."""
        if isinstance(items, Skip) or not self.steps:
            return items
        key = str(items[0].get("__key__", ""))
        out = []
        for item in items:
            result = self._steps(item, key, ref)
            if isinstance(result, Skip):
                self.dropped += 1
                return result
            out.append(result)
        return out

    def _steps(self, item: dict[str, Any], key: str, ref: Reference) -> dict[str, Any] | Skip:
        for kind, fn in self.steps:
            try:
                result = fn(item)
            except Exception as exc:  # the user's code: any failure is this sample's
                if self.errors == "raise":
                    raise
                reason = f"{kind} {fn}: {type(exc).__name__}: {exc}"
                return Skip(key, "transform", reason, source=ref.source)
            if kind == "filter":
                if not result:
                    return Skip(key, "filter", f"dropped by {fn}", source=ref.source)
                continue
            if not isinstance(result, Mapping):
                reason = f"map {fn} returned {type(result).__name__}, not a sample"
                return Skip(key, "transform", reason, source=ref.source)
            item = {**_private(item), **result}
        return item


def _private(item: Mapping[str, Any]) -> dict[str, Any]:
    """What a map need not return: the key, the repeat mark, the source and metadata."""
    return {k: v for k, v in item.items() if k.startswith("__")}

"""Ops that choose samples rather than change them: filter, dedupe, split, and `call` (a user's
function by import path)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from polymodal.adapters import modality_of
from polymodal.callables import Portable, resolve
from polymodal.codecs.containers import open_container, plain_errors, stream_seconds
from polymodal.datasets.splits import check_splits, split_of
from polymodal.pipelines.preprocess.ops.base import Filtered, Op, Result, Sample, register_op

NOT_MEDIA = (None, "label", "text")  # every other modality, a plugin's too, is media


def is_media(ext: str) -> bool:
    """Whether a member holds media (what a duplicate is judged by), by the registry."""
    return modality_of(ext) not in NOT_MEDIA


def members_of(sample: Sample) -> list[str]:
    return sorted(e for e in sample if not e.startswith("_"))


def duration(sample: Sample) -> float:
    """Seconds of the sample's first audio or video member, from its header."""
    for ext in members_of(sample):
        if modality_of(ext) in ("audio", "video"):
            with plain_errors(), open_container(sample[ext]) as container:
                streams = [s for s in container.streams if s.type in ("audio", "video")]
                if not streams:
                    raise ValueError(f"{ext}: no audio or video stream")
                seconds = stream_seconds(container, streams[0])
            if seconds <= 0:
                raise ValueError(f"{ext}: duration unknown")
            return seconds
    raise ValueError("no audio or video member to measure")


@register_op("filter")
class Filter(Op):
    """Keep samples within bounds: duration (`min_seconds`, `max_seconds`, of the first audio or
    video member), size (`min_bytes`, `max_bytes`, all members), label (`labels`: `cls` values
    to keep, `exclude_labels`: to drop), and a user predicate `where="module:function"`
    (sample → bool). A sample outside is dropped, counted under the bound it missed."""

    def __init__(
        self,
        min_seconds: float | None = None,
        max_seconds: float | None = None,
        min_bytes: int | None = None,
        max_bytes: int | None = None,
        labels: Any = None,
        exclude_labels: Any = None,
        where: str | None = None,
    ) -> None:
        self.min_seconds, self.max_seconds = min_seconds, max_seconds
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        self.labels, self.exclude_labels = _label_set(labels), _label_set(exclude_labels)
        self.where = where
        if where:
            resolve(where)  # an unknown function is an error now, not in every worker later

    def __call__(self, sample: Sample) -> Result:
        if self.labels is not None or self.exclude_labels is not None:
            label = bytes(sample.get("cls", b"")).decode("utf-8", errors="replace").strip()
            if self.labels is not None and label not in self.labels:
                raise Filtered("label not in labels")
            if self.exclude_labels is not None and label in self.exclude_labels:
                raise Filtered("label in exclude_labels")
        if self.min_bytes is not None or self.max_bytes is not None:
            size = sum(len(sample[e]) for e in members_of(sample))
            if self.min_bytes is not None and size < self.min_bytes:
                raise Filtered(f"below min_bytes={self.min_bytes}")
            if self.max_bytes is not None and size > self.max_bytes:
                raise Filtered(f"over max_bytes={self.max_bytes}")
        if self.min_seconds is not None or self.max_seconds is not None:
            seconds = duration(sample)
            if self.min_seconds is not None and seconds < self.min_seconds:
                raise Filtered(f"shorter than min_seconds={self.min_seconds:g}")
            if self.max_seconds is not None and seconds > self.max_seconds:
                raise Filtered(f"longer than max_seconds={self.max_seconds:g}")
        if self.where and not resolve(self.where)(sample):
            raise Filtered(f"{self.where} is false")
        return sample


def _label_set(labels: Any) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, int)):
        labels = str(labels).split("|")
    return sorted(str(label).strip() for label in labels)


@register_op("dedupe")
class Dedupe(Op):
    """Drop exact duplicates: samples whose media bytes (image, audio, video, point-cloud
    members, or `fields`) hash the same as an earlier sample's, in input order.

    It compares the input as read, wherever it stands in the chain, so that the first pass (a
    sha256 per sample) needs no other op; clips cut from a duplicate are dropped with it.
    """

    scans = True

    def __init__(self, fields: list[str] | None = None) -> None:
        self.fields = [fields] if isinstance(fields, str) else fields
        self._duplicates: set[tuple[str, str]] = set()

    def scan(self, sample: Sample) -> str:
        exts = self.fields or [e for e in members_of(sample) if is_media(e)]
        exts = exts or [e for e in members_of(sample) if e != "cls"]
        digest = hashlib.sha256()
        for ext in exts:
            data = sample.get(ext, b"")
            digest.update(f"{ext}:{len(data)}:".encode())
            digest.update(data)
        return digest.hexdigest()

    def plan(self, scans: list[list[tuple[str, str, str]]]) -> None:
        """`scans`: per input shard, (shard, key, digest) of each sample in order."""
        seen: set[str] = set()
        for shard in scans:
            for name, key, digest in shard:
                if digest in seen:
                    self._duplicates.add((name, key))
                seen.add(digest)

    def __call__(self, sample: Sample) -> Result:
        if (sample["__shard__"], sample["__origin__"]) in self._duplicates:
            raise Filtered("exact duplicate of an earlier sample")
        return sample


@register_op("split")
class Split(Op):
    """Assign each sample to a split by a hash of its input key: `split:val=0.1,test=0.05`
    sends about 10% to `val`, 5% to `test`, the rest to `train`; each split becomes its own
    dataset folder. Clips cut from one input stay in one split (no leak between them)."""

    def __init__(self, **fractions: float) -> None:
        self.fractions = check_splits({name: float(f) for name, f in fractions.items()})

    @property
    def names(self) -> list[str]:
        return ["train", *self.fractions]

    def __call__(self, sample: Sample) -> Result:
        sample["__split__"] = split_of(sample["__origin__"], self.fractions)
        return sample


@register_op("call")
class Call(Op):
    """A user's function: `call:fn=my_package.ops:clean` (or `my_package.ops.clean`, or the
    function itself in Python) is called as `clean(sample, **options)` with the other options;
    it returns what an op returns."""

    def __init__(self, fn: str | Callable[..., Result], **options: Any) -> None:
        # by path, or the function itself by value: one from a script's __main__ runs on Ray
        # too; an unknown path or a function that cannot travel is an error now
        self.fn = Portable(fn)
        self.options = options

    def __call__(self, sample: Sample) -> Result:
        return self.fn(sample, **self.options)

"""Class labels: one class id, or a multi-hot vector for multi-label data (AudioSet style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from polymodal.perceiver.io import LabelInput

from .base import Adapter, Preview, load_json
from .field import Field
from .field_input import FieldInput
from .registry import BUILT_IN, register


@register("label")
class LabelAdapter(Adapter):
    """`cls` / `txt` / `json` → int64 class id `[1, 1]`, or uint8 multi-hot `[1, num_classes]`.

    A label is written as an integer (`3`), a class name (`dog`, looked up in `classes`), a
    comma- or whitespace-separated list (`3,7` or `dog cat`) for multi-label, or JSON: a number,
    a name, a list, or an object holding one of those under `json_key` (a `.json` member over
    `max_json_bytes` is refused: a label needs a few bytes).
    """

    extensions = BUILT_IN["label"].extensions
    mixable = False
    default_for = BUILT_IN["label"].default_for

    def __init__(
        self,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
        multi_label: bool = False,
        json_key: str = "label",
        max_json_bytes: int = 2**20,
        extensions: list[str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(extensions, field)
        self.classes = list(classes) if classes is not None else None
        self.class_ids = {name: i for i, name in enumerate(self.classes or [])}
        if num_classes is None and self.classes is not None:
            num_classes = len(self.classes)
        if multi_label and num_classes is None:
            raise ValueError("multi_label needs num_classes or classes (the multi-hot width)")
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.json_key = json_key
        self.max_json_bytes = max_json_bytes

    def encoder(self) -> FieldInput:
        """The label as one one-hot (or multi-hot) token, as the multimodal autoencoder takes it."""
        if self.num_classes is None:
            raise ValueError("a label encoder needs num_classes (or classes)")
        return FieldInput(LabelInput(num_classes=self.num_classes), ("values", "mask"))

    def preview(self, data: bytes, ext: str, classes: Sequence[str] | None) -> Preview:
        raw = data.decode("utf-8", errors="replace").strip()
        return Preview(text=f"label: {class_name(classes, raw)}")

    def decode_bytes(self, data: bytes, ext: str, rng: np.random.Generator | None) -> Field:
        if ext == "json":
            obj = load_json(data, self.max_json_bytes)
            if isinstance(obj, dict):
                if self.json_key not in obj:
                    raise ValueError(f"JSON object has no {self.json_key!r} key")
                obj = obj[self.json_key]
            parts = obj if isinstance(obj, list) else [obj]
        else:
            parts = data.decode("utf-8").replace(",", " ").split()
        ids = [self._class_id(p) for p in parts]
        if not ids:
            raise ValueError("no label")
        if self.multi_label:
            hot = torch.zeros(1, self.num_classes or 0, dtype=torch.uint8)  # set: checked at init
            hot[0, ids] = 1
            return Field(values=hot)
        if len(ids) > 1:
            raise ValueError(f"{len(ids)} labels for a single-label field (set multi_label=True)")
        return Field(values=torch.tensor([[ids[0]]], dtype=torch.int64))

    def _class_id(self, part: Any) -> int:
        if isinstance(part, bool):
            raise ValueError(f"label {part!r} is not a class")
        if isinstance(part, str) and part in self.class_ids:
            return self.class_ids[part]
        if isinstance(part, float) and part.is_integer():
            part = int(part)
        try:
            cid = int(part)
        except (TypeError, ValueError):
            known = f"; known names: {self.classes[:10]}" if self.classes else ""
            raise ValueError(
                f"label {part!r} is neither an integer nor a known class{known}"
            ) from None
        if cid < 0 or (self.num_classes is not None and cid >= self.num_classes):
            raise ValueError(f"class id {cid} outside [0, {self.num_classes})")
        return cid


def class_name(classes: Sequence[str] | None, label: str) -> str:
    """The class name of a `cls` value when the dataset lists names, else the value itself."""
    if classes and label.isdigit() and int(label) < len(classes):
        return classes[int(label)]
    return label

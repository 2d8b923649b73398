"""Modality adapters: raw sample bytes → compact `Field`s, registered by name.

Built-ins: `text`, `image`, `audio`, `video`, `pointcloud`, `label`. Third-party packages add
adapters through the entry-point group `polymodal.adapters`.

The package loads its parts on first use: `registry` (which modality an extension is, the
adapters by name) needs no torch, so `build` and `index` never import it; `field` (`Field`,
`Batch`), `collate`, `field_input`, `base` (the `Adapter` contract) and each modality's module
come when asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .registry import (
    ENTRY_POINT_GROUP,
    available,
    extension_table,
    get,
    is_known,
    modality_of,
    register,
)

if TYPE_CHECKING:  # what `__getattr__` gives, for the type checker
    from . import audio, base, collation, field, image, label, pointcloud, text, video
    from .audio import AudioAdapter
    from .base import Adapter, DecodeError, Preview, Reconstruction
    from .collation import collate
    from .field import Batch, Field
    from .field_input import FieldInput
    from .image import ImageAdapter
    from .label import LabelAdapter
    from .pointcloud import PointCloudAdapter
    from .text import TextAdapter
    from .video import VideoAdapter

# name → the module that holds it
_LAZY: dict[str, str] = {
    "Adapter": "base",
    "DecodeError": "base",
    "Preview": "base",
    "Reconstruction": "base",
    "Field": "field",
    "Batch": "field",
    "FieldInput": "field_input",
    "collate": "collation",
    "AudioAdapter": "audio",
    "ImageAdapter": "image",
    "LabelAdapter": "label",
    "PointCloudAdapter": "pointcloud",
    "TextAdapter": "text",
    "VideoAdapter": "video",
}
_MODULES = ("audio", "image", "label", "pointcloud", "text", "video", "base", "field", "collation")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


__all__ = [
    "ENTRY_POINT_GROUP",
    "Adapter",
    "AudioAdapter",
    "Batch",
    "DecodeError",
    "Field",
    "FieldInput",
    "ImageAdapter",
    "LabelAdapter",
    "PointCloudAdapter",
    "Preview",
    "Reconstruction",
    "TextAdapter",
    "VideoAdapter",
    "audio",
    "available",
    "base",
    "collate",
    "collation",
    "extension_table",
    "field",
    "get",
    "image",
    "is_known",
    "label",
    "modality_of",
    "pointcloud",
    "register",
    "text",
    "video",
]

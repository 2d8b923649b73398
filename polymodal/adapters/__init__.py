"""Modality adapters: raw sample bytes → compact `Field`s, registered by name.

Built-ins: `text`, `image`, `audio`, `video`, `pointcloud`, `label`. Third-party packages add
adapters through the entry-point group `polymodal.adapters`.
"""

from . import audio, image, label, pointcloud, text, video
from .audio import AudioAdapter
from .base import (
    ENTRY_POINT_GROUP,
    Adapter,
    Batch,
    DecodeError,
    Field,
    FieldInput,
    Preview,
    Reconstruction,
    available,
    collate,
    extension_table,
    get,
    is_known,
    modality_of,
    register,
)
from .image import ImageAdapter
from .label import LabelAdapter
from .pointcloud import PointCloudAdapter
from .text import TextAdapter
from .video import VideoAdapter

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
    "collate",
    "extension_table",
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

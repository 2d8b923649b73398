"""Preprocessing ops, registered by name: a raw sample in, zero, one or many samples out.

Built-ins: `resample_audio`, `transcode_video`, `cut_clips`, `extract_audio`, `resize_image`,
`subsample_points`, `materialize`, `filter`, `dedupe`, `split`, `call`. Third-party packages
add ops through the entry-point group `polymodal.ops`.
"""

from polymodal.pipelines.preprocess.ops import materialize, media, select, visual
from polymodal.pipelines.preprocess.ops.base import (
    ENTRY_POINT_GROUP,
    Filtered,
    Op,
    Result,
    Sample,
    available_ops,
    get_op,
    make_op,
    parse_op,
    register_op,
)
from polymodal.pipelines.preprocess.ops.materialize import Materialize
from polymodal.pipelines.preprocess.ops.media import (
    CutClips,
    ExtractAudio,
    ResampleAudio,
    TranscodeVideo,
)
from polymodal.pipelines.preprocess.ops.select import Call, Dedupe, Filter, Split
from polymodal.pipelines.preprocess.ops.visual import ResizeImage, SubsamplePoints

__all__ = [
    "ENTRY_POINT_GROUP",
    "Call",
    "CutClips",
    "Dedupe",
    "ExtractAudio",
    "Filter",
    "Filtered",
    "Materialize",
    "Op",
    "ResampleAudio",
    "ResizeImage",
    "Result",
    "Sample",
    "Split",
    "SubsamplePoints",
    "TranscodeVideo",
    "available_ops",
    "get_op",
    "make_op",
    "materialize",
    "media",
    "parse_op",
    "register_op",
    "select",
    "visual",
]

"""The stages of one stream worker's chain, one per module, behind one small protocol."""

from polymodal.pipelines.stream.stages.base import (
    ShardChanged,
    ShardUnavailable,
    Skip,
    Stage,
    StreamError,
    usable_batch,
)
from polymodal.pipelines.stream.stages.batch import Batcher
from polymodal.pipelines.stream.stages.decode import Decode
from polymodal.pipelines.stream.stages.read import Reader
from polymodal.pipelines.stream.stages.shuffle import BufferOrder, Shuffle
from polymodal.pipelines.stream.stages.transform import (
    Step,
    Transform,
    parse_transform,
    transform_step,
)

__all__ = [
    "Batcher",
    "BufferOrder",
    "Decode",
    "Reader",
    "ShardChanged",
    "ShardUnavailable",
    "Shuffle",
    "Skip",
    "Stage",
    "Step",
    "StreamError",
    "Transform",
    "parse_transform",
    "transform_step",
    "usable_batch",
]

"""The stages of one stream worker's chain, one per module, behind one small protocol."""

from .base import ShardChanged, ShardUnavailable, Skip, Stage, StreamError, usable_batch
from .batch import Batcher
from .decode import Decode
from .read import Reader
from .shuffle import BufferOrder, Shuffle

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
    "StreamError",
    "usable_batch",
]

"""The reader: `Stream` (shards → batches, exactly once per epoch over ranks × workers, bitwise
and elastic resume), its DataLoader-backed `StreamLoader`, the pure plan (`plan`, `partition`,
`mixtures`, `elastic`), the chain's stages (`stages/`) and a process's `Place`. Imports nothing
of `train/` or `preprocess/`."""

from .mixtures import MixSource, MixtureError, SchedulePoint, WeightSchedule
from .place import Place
from .stages import StreamError
from .stream import Stream, StreamLoader

__all__ = [
    "MixSource",
    "MixtureError",
    "Place",
    "SchedulePoint",
    "Stream",
    "StreamError",
    "StreamLoader",
    "WeightSchedule",
]

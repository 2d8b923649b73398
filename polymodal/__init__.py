"""polymodal: stream any modality from sharded storage into a shared Perceiver backbone.

Subpackages: `codecs` (bytes → arrays, torch-free), `adapters` (bytes → fields), `datasets`
(data at rest), `pipelines` (data in motion, in three wings: `stream`, `train`, `preprocess`),
`perceiver` (the model), `cli` (the `polymodal` command). See DESIGN.md for the
contracts between them.

The names most people want are here, loaded on first use, so `import polymodal` stays fast and
torch-free: `from polymodal import Stream, MixSource, build, preprocess, load_config, Trainer`.
These are the public doors; the modules behind them may move.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name → (module, attribute; None: the module itself)
_FRONT_DOOR: dict[str, tuple[str, str | None]] = {
    # data at rest
    "build": ("polymodal.datasets.build", "build"),
    "index_shards": ("polymodal.datasets.build", "index_shards"),
    "ShardIndex": ("polymodal.datasets.index", "ShardIndex"),
    "ShardWriter": ("polymodal.datasets.writer", "ShardWriter"),
    "Remote": ("polymodal.datasets.files", "Remote"),
    # the stream wing
    "Stream": ("polymodal.pipelines.stream", "Stream"),
    "StreamLoader": ("polymodal.pipelines.stream", "StreamLoader"),
    "StreamError": ("polymodal.pipelines.stream", "StreamError"),
    "MixSource": ("polymodal.pipelines.stream", "MixSource"),
    "SchedulePoint": ("polymodal.pipelines.stream", "SchedulePoint"),
    "WeightSchedule": ("polymodal.pipelines.stream", "WeightSchedule"),
    "Place": ("polymodal.pipelines.stream", "Place"),
    # the preprocessing wing
    "preprocess": ("polymodal.pipelines.preprocess", None),
    "Op": ("polymodal.pipelines.preprocess.ops", "Op"),
    "register_op": ("polymodal.pipelines.preprocess.ops", "register_op"),
    # the training wing
    "load_config": ("polymodal.pipelines.train", "load_config"),
    "TrainConfig": ("polymodal.pipelines.train", "TrainConfig"),
    "Trainer": ("polymodal.pipelines.train", "Trainer"),
    # errors a user catches, and the two subpackages used as namespaces
    "ConfigError": ("polymodal.errors", "ConfigError"),
    "UserError": ("polymodal.errors", "UserError"),
    "adapters": ("polymodal.adapters", None),
    "perceiver": ("polymodal.perceiver", None),
}

__all__ = ["__version__", *_FRONT_DOOR]


def __getattr__(name: str) -> Any:
    if name not in _FRONT_DOOR:
        raise AttributeError(f"module 'polymodal' has no attribute {name!r}")
    module, attribute = _FRONT_DOOR[name]
    loaded = importlib.import_module(module)
    value = loaded if attribute is None else getattr(loaded, attribute)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

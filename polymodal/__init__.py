"""polymodal: stream any modality from sharded storage into a shared Perceiver backbone.

Subpackages: `codecs` (bytes → arrays, torch-free), `adapters` (bytes → fields), `datasets`
(data at rest), `pipelines` (data in motion), `perceiver` (the model). See DESIGN.md for the
contracts between them.

The names most people want are here, loaded on first use, so `import polymodal` stays fast and
torch-free: `from polymodal import Stream, build, load_config, Trainer, adapters, perceiver`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name → (module, attribute; None: the module itself)
_FRONT_DOOR: dict[str, tuple[str, str | None]] = {
    "Stream": ("polymodal.pipelines.stream.stream", "Stream"),
    "StreamLoader": ("polymodal.pipelines.stream.loader", "StreamLoader"),
    "build": ("polymodal.datasets.build", "build"),
    "index_shards": ("polymodal.datasets.build", "index_shards"),
    "ShardIndex": ("polymodal.datasets.index", "ShardIndex"),
    "load_config": ("polymodal.pipelines.train.config", "load_config"),
    "Trainer": ("polymodal.pipelines.train.trainer", "Trainer"),
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

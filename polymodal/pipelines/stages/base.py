"""What every stage of a stream worker's chain shares: the `Stage` protocol (its state is a
plain dict, saved with a checkpoint and loaded to resume) and `Skip`, the record of a sample
that was not delivered.

A stage has one verb besides its state: `Reader.read`, `Shuffle.shuffle`, `Decode.decode`,
`Batcher.batch`. `Stream.worker_batches` chains them; one stage per module, so a new stage
(a filter, a second decode) is a file of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class Stage(Protocol):
    """A step of the chain whose position can be saved and restored exactly."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class Skip:
    """A sample that was not delivered, and why; or a shard's worth of them (`samples`), or a
    disagreement with the index found while reading (stage `check`, `samples` 0)."""

    key: str
    stage: str
    reason: str
    url: str = ""
    samples: int = 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "stage": self.stage,
            "reason": self.reason,
            "url": self.url,
        }
        if self.samples != 1:
            out["samples"] = self.samples
        return out


class ShardUnavailable(OSError):
    """A shard could not be opened or read, after retries."""


class ShardChanged(ValueError):
    """The shard on storage is not the one the index describes (not worth another try)."""

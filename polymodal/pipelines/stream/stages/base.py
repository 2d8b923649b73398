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
from typing import TYPE_CHECKING, Any, Protocol

from polymodal.errors import UserError

if TYPE_CHECKING:
    from polymodal.adapters import Batch


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
    source: int = 0  # which of the stream's sources

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "stage": self.stage,
            "reason": self.reason,
            "url": self.url,
            "source": self.source,
        }
        if self.samples != 1:
            out["samples"] = self.samples
        return out


class ShardUnavailable(OSError):
    """A shard could not be opened or read, after retries."""


class ShardChanged(ValueError):
    """The shard on storage is not the one the index describes (not worth another try)."""


class StreamError(UserError, RuntimeError):
    """The stream cannot go on: nothing at all could be read, or a DataLoader worker died or
    hung. Raised in the process that iterates, never inside a worker."""


def usable_batch(
    batch: Batch | None, skips: list[Skip] | list[dict[str, Any]], epoch: int
) -> Batch:
    """The batch, or the `StreamError` that says why there is none (nothing could be read)."""
    if batch is not None:
        return batch
    reasons = sorted({s.reason if isinstance(s, Skip) else s["reason"] for s in skips})
    raise StreamError(
        f"epoch {epoch}: not one sample of the dataset could be read and decoded to fill a "
        f"batch; reasons: {'; '.join(reasons[:3]) or 'none given'}"
    )

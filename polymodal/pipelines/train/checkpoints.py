"""A run's checkpoints on disk: written atomically, the last K kept; on resume, the newest that
loads (each one that does not is named and passed over: cut short by a full disk, damaged, a
pickle with code in it; every load is `torch.load(weights_only=True)`). A checkpoint holds the
RNG states too, so a resumed run draws what the uninterrupted one would have."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from polymodal.datasets.files import atomic_open
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.train.weights import CheckpointError, load_checkpoint

log = logging.getLogger("polymodal.train")
NEEDED = {"model", "optimizer", "scheduler", "step", "best", "rng", "stream"}


def write_checkpoint(path: Path, state: dict[str, Any], keep: int) -> None:
    """`state` to `path` atomically; then all but the newest `keep` `step-*.pt` go."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        torch.save(state, f)
    for old in sorted(path.parent.glob("step-*.pt"))[:-keep]:
        old.unlink()


def latest_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `folder` that loads, and its state; None when none does."""
    for path in sorted(folder.glob("step-*.pt"), reverse=True):
        try:
            state = load_checkpoint(path)
            missing = NEEDED - set(state)
            if missing:
                raise CheckpointError(f"not a checkpoint of this trainer (no {sorted(missing)})")
            return path, state
        except CheckpointError as exc:  # cut short, damaged, a pickle with code in it
            log.warning("skipping checkpoint %s: it does not load (%s)", path, exc)
    return None


def own_stream_state(state: dict[str, Any], place: Place) -> dict[str, Any]:
    """This rank's loader state of a checkpoint (which holds every rank's); after a change of
    world size, rank 0's says how far every rank was (they deliver alike), with every rank's
    worker states (`ranks`: which samples their length-bucket groups had given)."""
    streams = state.get("streams")
    if streams is None:  # saved before checkpoints held every rank's: rank 0's for all
        return {**state["stream"], "rank": place.rank}
    if len(streams) == place.world:
        return streams[place.rank]
    return {**streams[0], "ranks": [s["workers"] for s in streams]}


def rng_state() -> dict[str, Any]:
    """Torch's, Python's and numpy's global generators, as tensors and plain values (what
    `weights_only` loads)."""
    kind, keys, *rest = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), *rest],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what `rng_state` took."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))

"""Where a reader runs: which rank of how many, which DataLoader worker of how many. One
frozen value, made once (`Place.detect`), passed whole, so the four numbers never travel loose
or in two orders."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch.distributed as dist
from torch.utils.data import get_worker_info


@dataclass(frozen=True)
class Place:
    """Rank `rank` of `world`, DataLoader worker `worker` of `workers` (0 of 1 outside a
    DataLoader). A rank outside [0, world) or a worker outside [0, workers) is an error naming
    them: another rank would read nothing but repeats."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(
                f"rank {self.rank} of world size {self.world}: need 0 <= rank < world (another "
                "rank would read nothing but repeats)"
            )
        if self.workers < 1 or not 0 <= self.worker < self.workers:
            raise ValueError(f"worker {self.worker} of {self.workers}: need 0 <= worker < workers")

    @classmethod
    def detect(cls) -> Place:
        """This process: its rank from torch.distributed when initialised, else `RANK` /
        `WORLD_SIZE`; its worker from the DataLoader when it is one."""
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            try:
                rank = int(os.environ.get("RANK", 0))
                world = int(os.environ.get("WORLD_SIZE", 1))
            except ValueError:
                raise ValueError(
                    f"RANK={os.environ.get('RANK')!r} and "
                    f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} must be integers"
                ) from None
            if world < 1 or not 0 <= rank < world:
                raise ValueError(
                    f"RANK={rank} with WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE"
                )
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return cls(rank, world, worker, workers)

    def key(self) -> list[int]:
        """`[rank, world, worker, workers]`: which reader a saved state is of (plain JSON)."""
        return [self.rank, self.world, self.worker, self.workers]

    def reader(self, worker: int, workers: int) -> Place:
        """This rank's DataLoader worker `worker` of `workers` (0 workers: the process)."""
        return replace(self, worker=worker, workers=max(1, workers))


def gathered(value: Any, place: Place) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (this rank's alone in a world of
    one). Every rank must call it."""
    if place.world == 1:
        return [value]
    everything: list[Any] = [None] * place.world
    dist.all_gather_object(everything, value)
    return everything

"""Engines run a job's tasks: a local process pool (the default, no set-up) or Ray (a cluster,
or a local Ray started for the job).

An engine maps a module-level function over picklable tasks and reports each result to the
driver as it arrives (progress, records); it knows nothing of shards or ops. Both engines run
the same function on the same tasks, so a job's output does not depend on the engine. Tasks
must be safe to run twice: both engines run a task again when the process running it dies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from polymodal.datasets.pool import run_tasks

ENGINES = ("local", "ray")


class Engine(Protocol):
    def map(
        self, fn: Callable[[Any], Any], tasks: list[Any], on_done: Callable[[Any, Any], None]
    ) -> None:
        """Run `fn(task)` for every task; call `on_done(task, result)` in the driver as each
        finishes (in completion order)."""

    @property
    def slots(self) -> int:
        """How many tasks it runs at once (known once entered)."""

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


class LocalEngine:
    """A process pool on this machine: `workers` processes (all cores by default; 1 runs the
    tasks in this process), a dead worker's unfinished tasks rerun up to `retries` times."""

    def __init__(self, workers: int | None = None, retries: int = 2) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.retries = retries

    def map(
        self, fn: Callable[[Any], Any], tasks: list[Any], on_done: Callable[[Any, Any], None]
    ) -> None:
        run_tasks(fn, tasks, self.workers, on_done, retries=self.retries)

    @property
    def slots(self) -> int:
        return self.workers

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __repr__(self) -> str:
        return f"local ({self.workers} workers)"


class RayEngine:
    """Ray tasks, one CPU each. With `address` (`"auto"`, `"ray://head:10001"`) it joins that
    cluster, whose nodes must have polymodal installed; without, it starts a local Ray with
    `workers` CPUs (all by default) for the job and stops it after. A task whose worker or node
    dies is retried up to `retries` times by Ray itself; at most `in_flight` tasks are queued
    at once, so a million-shard job does not build a million-entry queue up front."""

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        retries: int = 3,
        in_flight: int = 1000,
    ) -> None:
        self.address, self.workers, self.retries, self.in_flight = (
            address,
            workers,
            retries,
            in_flight,
        )
        self._started = False

    def __enter__(self) -> RayEngine:
        try:
            import ray
        except ImportError:
            raise RuntimeError(
                "the ray engine needs Ray: pip install 'polymodal[ray]' (or 'ray')"
            ) from None
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                num_cpus=None if self.address else self.workers,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
            self._started = True
        return self

    @property
    def slots(self) -> int:
        import ray

        return self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def __exit__(self, *exc: object) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def map(
        self, fn: Callable[[Any], Any], tasks: list[Any], on_done: Callable[[Any, Any], None]
    ) -> None:
        import ray

        remote = ray.remote(num_cpus=1, max_retries=self.retries)(fn)
        queue = list(reversed(tasks))
        pending: dict[Any, Any] = {}
        while queue or pending:
            while queue and len(pending) < self.in_flight:
                task = queue.pop()
                pending[remote.remote(task)] = task
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                on_done(pending.pop(ref), ray.get(ref))

    def __repr__(self) -> str:
        return f"ray ({self.address or 'local'})"


def make_engine(
    name: str | Engine = "local", workers: int | None = None, address: str | None = None
) -> Engine:
    """An engine by name (`local`, `ray`), or the engine given."""
    if not isinstance(name, str):
        return name
    if name == "local":
        return LocalEngine(workers)
    if name == "ray":
        return RayEngine(address, workers)
    raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")

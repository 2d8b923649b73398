"""A local process pool for one-shot tasks (build shards, index shards, validate, preprocess),
that survives a dead worker by running the unfinished tasks again."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: list[Any],
    workers: int,
    on_done: Callable[[Any, Any], None],
    retries: int = 0,
) -> None:
    """Run `fn` over `tasks` on a local process pool (in this process with `workers <= 1`),
    calling `on_done(task, result)` as each finishes, in completion order.

    A worker that dies (killed, out of memory) breaks the whole pool; up to `retries` times a
    new pool then runs the tasks that had not finished, so `fn` must be safe to run twice
    (every task here writes its outputs atomically under names of its own).
    """
    if workers <= 1:
        for task in tasks:
            on_done(task, fn(task))
        return
    context = _pool_context(fn)
    remaining = list(tasks)
    for attempt in range(retries + 1):
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending = {pool.submit(fn, task): task for task in remaining}
            broken = None
            while pending and broken is None:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if isinstance(future.exception(), BrokenProcessPool):
                        broken = future.exception()
                        continue
                    on_done(pending.pop(future), future.result())
        if broken is None:
            return
        remaining = list(pending.values())
        if attempt == retries:
            raise broken
        print(
            f"a worker process died ({broken}); running {len(remaining)} unfinished tasks again",
            file=sys.stderr,
        )


def _pool_context(fn: Callable[[Any], Any]) -> multiprocessing.context.BaseContext:
    """`fork` when this process runs no native thread pools (the `polymodal build` command):
    it starts in milliseconds. Once torch or PyAV are loaded (a notebook, a trainer, the
    validate command), a forked child can deadlock on a lock some pool thread held at the
    fork, so workers come from a clean `forkserver` that imports `fn`'s module once."""
    if "torch" not in sys.modules and "av" not in sys.modules:
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([fn.__module__])
    return context

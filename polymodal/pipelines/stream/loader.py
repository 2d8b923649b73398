"""`StreamLoader`: a `Stream` in `torch.utils.data.DataLoader` workers, one epoch per
iteration. Each batch carries its worker's chain state; the loader keeps the state of the last
batch it handed out per worker, which is exactly what a resumed run must skip. A worker that
dies or hangs is a `StreamError` in the iterating process, never a hang.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from polymodal.adapters import Batch
from polymodal.codecs.containers import set_decode_threads
from polymodal.machine import cores
from polymodal.pipelines.stream.partition import batch_worker
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.stream.stages import StreamError, usable_batch
from polymodal.pipelines.stream.state import check_state

DIGEST_SCHEME = "table-sha256:"  # how a state names its datasets (older states: bare sha256)

if TYPE_CHECKING:
    from polymodal.pipelines.stream.elastic import Rest
    from polymodal.pipelines.stream.stream import Stream

log = logging.getLogger("polymodal.stream")
BATCH_TIMEOUT = 600.0  # seconds a DataLoader worker may take for one batch before it is hung
# How often a wait for a batch looks whether a worker died (see `StreamLoader._patiently`).
WORKER_CHECK = 5.0
ELASTIC = {"world", "workers"}  # what a resumed run may change (`elastic`)

# How far below the consumer's CPU priority the workers run (a Unix nice increment): the
# training step then has the cores when it wants them, and the workers decode on what it
# leaves. A step that waits on both of its threads at every op loses much more to a worker
# taking a core than the worker gains: the demo on 2 cores with 2 workers decoding mp4 trained
# 1.5x faster (bench_train.py), and where the workers are the bottleneck they still get the
# cores the step is not using.
WORKER_NICE = 19
MAX_NICE = 19  # the least priority Unix has


class _EpochDataset(IterableDataset):
    """What DataLoader workers run: the epoch comes from shared memory (workers persist
    across epochs), resume states from the loader, once."""

    def __init__(self, stream: Stream, place: Place) -> None:
        super().__init__()
        self.stream, self.place = stream, place
        self.epoch = multiprocessing.Value("q", 0)
        # (epoch, worker states, the rest of the epoch that is left after an elastic resume)
        self.resume: tuple[int, dict[int, Any], dict[str, Any] | None] | None = None

    def __iter__(self) -> Iterator[tuple[int, Batch | None, dict[str, Any], list[dict[str, str]]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        place = self.place.reader(worker, workers)
        epoch = self.epoch.value
        state, rest = None, None
        if self.resume is not None and self.resume[0] == epoch:
            state = self.resume[1].get(worker)
            rest = self.stream.remainder(epoch, self.resume[2])
        self.resume = None  # this copy resumes once; later epochs start from the beginning
        for batch, new_state, skips in self.stream.worker_batches(epoch, place, state, rest):
            yield worker, batch, new_state, [s.as_dict() for s in skips]


def _short(value: Any) -> str:
    """A value for an error message, cut to a line."""
    text = repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


def _start_worker(threads: int, nice: int, worker_id: int) -> None:
    """A DataLoader worker's start: FFmpeg's threads, its share of the cores, and its CPU
    priority, `nice` below the trainer's. Torch keeps the one thread the DataLoader gives a
    worker: more, in a forked worker once the parent has used its OpenMP pool, hangs at the
    first parallel op (seen here: libgomp is not fork-safe)."""
    set_decode_threads(threads)
    if nice:
        os.nice(nice)


def _quiet_sigchld() -> Any:
    """Set PyTorch's SIGCHLD handler aside (main thread only) and return it. Once a worker
    died, the handler raises for it at every child exit until its loader has stopped its other
    workers, which it does only after joining them."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _restore_sigchld(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGCHLD, previous)


def _a_worker_died(iterator: Any, wait: float = 10.0) -> bool:
    """Whether one of a DataLoader iterator's workers has exited (a worker killed while it
    sends a batch shows first as a broken queue or a reset connection, before it is reaped).
    The wait is long because the exit of a process that holds torch can take seconds on a
    loaded machine: with 2 s, CI once reported such a reset as a crash."""
    workers = getattr(iterator, "_workers", [])
    deadline = time.monotonic() + wait
    while True:
        if any(not w.is_alive() for w in workers):
            return True
        if time.monotonic() > deadline or not workers:
            return False
        time.sleep(0.05)


def _timed_out(exc: BaseException) -> bool:
    """Whether PyTorch says no batch came within the DataLoader's timeout."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader timed out")


def is_dead_worker(exc: BaseException) -> bool:
    """Whether PyTorch says a DataLoader worker process died."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader worker (pid")


def _as_is(item: Any) -> Any:
    """DataLoader's default conversion rebuilds Mappings (a Batch would lose its keys)."""
    return item


class StreamLoader:
    """A DataLoader over a `Stream`, one epoch per iteration, with exact mid-epoch resume.

    Every `iter(loader)` starts the next epoch, whatever the consumer did with the previous
    iterator (ran it out, stopped after `len(loader)` batches as Lightning and `zip` do, or
    dropped it half-way); `set_epoch(e)` makes the next one epoch `e`, from its start.
    `state_dict()` after any batch, in any process later `load_state_dict()`, and the next
    iteration goes on with exactly the batches the uninterrupted run would have yielded next
    (keys and tensors). `report()` lists the samples skipped this epoch, with keys and reasons.
    `dataset`, `batch_size`, `num_workers` and `len()` are what a DataLoader has.

    Each worker decodes video on `threads` FFmpeg threads: by default its share of the cores
    (cores // workers, at least one), so that workers × threads never oversubscribe them, as
    FFmpeg's default (one thread per core, in every worker) would; torch runs one per worker.
    Workers run `nice` below the consumer's CPU priority (`WORKER_NICE`, see there; 0: the
    same).
    """

    def __init__(
        self,
        stream: Stream,
        num_workers: int,
        pin_memory: bool,
        prefetch: int,
        batch_timeout: float = BATCH_TIMEOUT,
        threads: int | None = None,
        nice: int = WORKER_NICE,
    ) -> None:
        if batch_timeout <= 0:
            raise ValueError(f"batch_timeout must be positive, got {batch_timeout}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be positive (or None: cores // workers), got {threads}")
        if not 0 <= nice <= MAX_NICE:
            raise ValueError(f"nice must be 0 to {MAX_NICE}, got {nice}")
        self.threads = threads or max(1, cores() // max(1, num_workers))
        self.nice = nice
        self.batch_timeout = batch_timeout
        self.stream = stream
        self.place = Place.detect()  # this rank; each worker is a `reader` of it
        self.rank, self.world = self.place.rank, self.place.world
        self.num_workers, self.pin_memory, self.prefetch = num_workers, pin_memory, prefetch
        self._epochs = _EpochDataset(stream, self.place)
        self.epoch, self.batches = 0, 0
        self._fresh = True  # `epoch` / `batches` say where the next iteration starts
        self.worker_states: dict[int, Any] = {}
        self.rest: dict[str, Any] | None = None  # this epoch is the rest of a resized run's
        self.skipped: list[dict[str, Any]] = []
        self.delivered = [0] * len(stream.sources)  # this rank's real samples per source
        self._logged: set[str] = set()
        self.report_epoch = 0
        self._loader: DataLoader | None = None
        # (epoch, the DataLoader's iterator already started on it): see `_start_next`
        self._next: tuple[int, Iterator[Any]] | None = None

    @property
    def dataset(self) -> Stream:
        return self.stream

    @property
    def batch_size(self) -> int:
        return self.stream.batch_size

    def __len__(self) -> int:
        """Batches of this epoch (of its rest, after an elastic resume)."""
        return self.stream.batches_per_epoch(self.world, self._rest(), self.epoch)

    def _rest(self) -> Rest | None:
        """What is left of this epoch after an elastic resume; None: a whole epoch."""
        return self.stream.remainder(self.epoch, self.rest)

    def split(self) -> str:
        """Where decoding runs and on how many threads, in words (what the trainer reports)."""
        if not self.num_workers:
            return f"decoding in the main process ({torch.get_num_threads()} torch threads)"
        return (
            f"{self.num_workers} DataLoader workers × {self.threads} FFmpeg thread(s) (and one "
            f"torch thread) at nice +{self.nice} on {cores()} cores"
        )

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = DataLoader(
                self._epochs,
                batch_size=None,
                collate_fn=_as_is,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory and torch.cuda.is_available(),
                prefetch_factor=self.prefetch if self.num_workers else None,
                persistent_workers=self.num_workers > 0,
                timeout=self.batch_timeout if self.num_workers else 0,
                worker_init_fn=functools.partial(_start_worker, self.threads, self.nice),
            )
        return self._loader

    def __iter__(self) -> Iterator[Batch]:
        """One epoch. Batches are handed out in the planned worker order (`batch_worker`),
        whatever order the workers deliver them in: a resumed loader, whose DataLoader starts
        again at worker 0, still continues the uninterrupted order."""
        if not self._fresh:  # the previous iterator was not run out: its epoch is over
            self.epoch, self.batches, self.worker_states = self.epoch + 1, 0, {}
            self._epochs.resume, self.rest = None, None
        self._fresh = False
        self._epochs.epoch.value = self.epoch
        if self.batches == 0:  # a new epoch (not a resumed one): a new report
            self._new_report()
        rest = self._rest()
        counts = self._worker_batches(rest)  # each worker's batches this epoch
        total = sum(counts)
        waiting: dict[int, deque] = {w: deque() for w in range(len(counts))}
        delivered = self._delivery(rest)
        try:
            for worker, batch, state, skips in self._patiently(delivered):
                waiting[worker].append((batch, state, skips))
                while self.batches < total and waiting[due := batch_worker(counts, self.batches)]:
                    batch, state, skips = waiting[due].popleft()
                    self._note_skips(skips)
                    batch = usable_batch(batch, skips, self.epoch)
                    self.worker_states[due] = state
                    self.batches += 1
                    self._count(batch)
                    if self.batches == total:
                        self._start_next()
                    yield batch
                if self._next is not None:  # the workers are on the next epoch already
                    break
            died = None
        except (RuntimeError, EOFError, ConnectionError) as exc:
            quiet = _quiet_sigchld()  # PyTorch's handler would raise again for the dead one
            if not (is_dead_worker(exc) or _timed_out(exc) or _a_worker_died(delivered)):
                _restore_sigchld(quiet)
                raise
            if _timed_out(exc):
                died = f"no batch came from the workers in {self.batch_timeout:g} s"
                hint = "a decoder hung"
            else:
                died = str(exc) if is_dead_worker(exc) else "a DataLoader worker died mid-batch"
                hint = "out of memory, or a decoder crashed"
        if died is not None:  # out of the except block: nothing keeps `delivered` alive
            getattr(delivered, "_shutdown_workers", lambda: None)()
            _restore_sigchld(quiet)
            del delivered
            self._loader = None
            raise StreamError(
                f"epoch {self.epoch}, after batch {self.batches}: {died} ({hint} on a sample; "
                "the state saved so far resumes)"
            )
        if self.batches != total:
            raise StreamError(f"epoch {self.epoch}: {self.batches} of {total} batches arrived")
        self._summarise()
        self.epoch, self.batches, self.worker_states = self.epoch + 1, 0, {}
        self.rest, self._fresh = None, True

    def _patiently(self, delivered: Iterator[Any]) -> Iterator[Any]:
        """The DataLoader's items, waiting up to `batch_timeout` for each, `WORKER_CHECK` at a
        time. With a timeout, PyTorch's DataLoader learns of a dead worker from its SIGCHLD
        handler, or only when the timeout runs out, and the handler is not always there: PyTorch
        sets none when the loader is iterated from another thread, and a CI run once waited past
        its test's 120 s for a killed worker in the main thread. At each slice's end the
        DataLoader looks at its workers itself (a dead one is its RuntimeError). The slice is
        the iterator's own timeout (`_timeout`, which PyTorch reads at every wait) only while a
        batch is awaited: the wait for restarted workers (`iter()` on a used DataLoader) keeps
        the whole one."""
        if not self.num_workers:  # batches made in this process: no worker to die
            yield from delivered
            return
        since = time.monotonic()
        while True:
            delivered._timeout = min(self.batch_timeout, WORKER_CHECK)  # type: ignore[attr-defined]
            try:
                item = next(delivered)
            except StopIteration:
                return
            except RuntimeError as exc:
                if _timed_out(exc) and time.monotonic() - since < self.batch_timeout:
                    continue
                raise
            finally:
                delivered._timeout = self.batch_timeout  # type: ignore[attr-defined]
            yield item
            since = time.monotonic()

    def _new_report(self) -> None:
        """Skips and deliveries counted afresh for a new epoch, the excluded shards first."""
        self.skipped, self.report_epoch, self._logged = [], self.epoch, set()
        self.delivered = [0] * len(self.stream.sources)
        self._note_skips([s.as_dict() for e in self.stream.excluded for s in e.values()])

    def _worker_batches(self, rest: Rest | None) -> list[int]:
        workers = max(1, self.num_workers)
        return [
            self.stream.slice(self.place.reader(w, workers), rest, self.epoch).batches
            for w in range(workers)
        ]

    def _delivery(self, rest: Rest | None) -> Iterator[Any]:
        """The DataLoader's iterator over this epoch: the one `_start_next` began when this
        is that epoch from its start, else the workers started on it now."""
        started, self._next = self._next, None
        if started is not None and started[0] == self.epoch and not self.batches and rest is None:
            return started[1]
        return iter(self._data_loader())

    def _start_next(self) -> None:
        """Once the epoch's last batch is in, the persistent workers start the next epoch,
        while the consumer still steps on that batch: otherwise each epoch began with the
        workers idle until the next iteration asked (the shuffle buffer filled, the first
        batch decoded), 15-38 ms of waiting an epoch in `benchmarks/bench_train.py`'s demo.
        The next iteration takes them up if it is that epoch from its start; `set_epoch`, a
        loaded state or an elastic rest start the workers again, as before."""
        if not self.num_workers:  # in this process nothing runs ahead
            return
        self._epochs.epoch.value = self.epoch + 1
        try:
            self._next = (self.epoch + 1, iter(self._data_loader()))
        except (RuntimeError, EOFError, ConnectionError):
            # a worker that died or hung: not this epoch's failure, whose batches are all in
            # (this one is still to be handed out); the next iteration restarts the workers
            # and reports it there
            self._next = None

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch `epoch`, from its first batch."""
        self._next = None
        self.epoch, self.batches, self.worker_states = epoch, 0, {}
        self._epochs.resume, self.rest = None, None
        self._fresh = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "rank": self.rank,
            "workers": dict(self.worker_states),
            "rest": self.rest,
            "skipped": list(self.skipped),
            "delivered": list(self.delivered),
            "config": self.stream.config(self.world, self.num_workers),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where `state` was taken. A state saved at another world size or worker
        count resumes elastically: the rest of its epoch (every sample no rank had delivered,
        see `elastic`) is cut over this run's ranks and workers, then epochs go on as usual.
        A state of another rank, of other data (the indexes' checksums) or of another
        configuration is a `ValueError` naming the values, and a state that is not one a loader
        wrote, or whose counts the plan cannot have given, a `StateError` naming the field."""
        check_state(state, self.stream, self.world, self.num_workers)
        expected = self.stream.config(self.world, self.num_workers)
        saved = dict(state["config"])
        if not all(str(d).startswith(DIGEST_SCHEME) for d in saved.get("datasets", [None])):
            saved["datasets"] = expected["datasets"]  # states from before table digests
        changed = [k for k in expected if saved.get(k) != expected[k]]
        if set(changed) - ELASTIC:
            raise ValueError(
                "cannot resume: the saved state differs in "
                + "; ".join(
                    f"{k} (saved {_short(saved.get(k))}, now {_short(expected[k])})"
                    for k in changed
                )
            )
        saved_rank = state.get("rank", self.rank)  # states from before ranks were recorded
        if not changed and saved_rank != self.rank:
            raise ValueError(
                f"cannot resume: this state is rank {saved_rank}'s, this is rank {self.rank} "
                f"of {self.world} (each rank resumes from its own state)"
            )
        self.epoch, self.batches = state["epoch"], state["batches"]
        self.worker_states = {int(w): s for w, s in state["workers"].items()}
        self.rest = state.get("rest")
        if changed:  # resized: every rank had delivered as many batches; the rest is re-cut
            if self.batches or self.rest is not None:
                self.rest = {
                    "world": saved["world"],
                    "workers": saved["workers"],
                    "batches": self.batches,
                    "parent": self.rest,
                    **self._begun_groups(state),
                }
            self.batches, self.worker_states = 0, {}
            log.info(
                "elastic resume: epoch %d from %d ranks × %d workers to %d × %d, %d batches "
                "left on this rank",
                self.epoch,
                saved["world"],
                saved["workers"],
                self.world,
                self.num_workers,
                len(self),
            )
        self.skipped, self.report_epoch = list(state["skipped"]), self.epoch
        self.delivered = list(state.get("delivered", [0] * len(self.stream.sources)))
        self._epochs.resume = (self.epoch, dict(self.worker_states), self.rest)
        self._loader = None  # workers copy the dataset when they start: start fresh ones
        self._next = None
        self._fresh = True

    def _begun_groups(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Under length buckets, what a resize needs of the groups the old readers had begun
        (see `elastic`): which samples each had given, from every old rank's worker states
        (`state["ranks"]`, which a trainer's checkpoint adds); without them the begun groups
        are delivered again whole, which is logged with the batches it repeats."""
        if not self.stream.buckets:
            return {}
        ranks = state.get("ranks")
        if ranks is not None:
            workers = max(1, state["config"]["workers"])
            chains = [{int(w): chain for w, chain in rank.items()} for rank in ranks]
            begun = [
                [((c.get(w) or {}).get("buckets") or {}).get("sent", []) for w in range(workers)]
                for c in chains
            ]
            return {"lookahead": self.stream.lookahead, "begun": begun}
        groups = [chain["buckets"] for chain in self.worker_states.values() if chain]
        repeated = sum(g["given"] for g in groups if g["given"] < len(g["sizes"]))
        log.warning(
            "elastic resume with length buckets from one rank's state: the groups the old "
            "readers had begun are delivered again whole (%d batches of this rank's readers, "
            "as many on each old rank); a state with every rank's (`ranks`) resumes exactly",
            repeated,
        )
        return {"lookahead": self.stream.lookahead}

    def report(self) -> dict[str, Any]:
        """Samples skipped in the current (or just finished) epoch, with keys and reasons;
        `skipped` counts samples (a left-out shard counts all of its own), `by_stage` records.
        `sources`, one entry per source: its rule, the samples the epoch takes of it over all
        ranks (`planned`), those this rank delivered and skipped, and where its cycle stands
        after the epoch (`pass` of it, `through` samples of its `of`)."""
        by_stage = Counter(s["stage"] for s in self.skipped)
        return {
            "epoch": self.report_epoch,
            "skipped": sum(s.get("samples", 1) for s in self.skipped),
            "by_stage": dict(by_stage),
            "samples": list(self.skipped),
            "sources": self.stream.source_report(
                self.report_epoch, self.world, self.delivered, self.skipped
            ),
        }

    def _count(self, batch: Batch) -> None:
        """Add a batch's real samples (not padding repeats) to its sources' counts."""
        real = batch.sources[~batch.repeated] if len(batch.sources) else batch.sources
        for source, n in Counter(real.tolist()).items():
            self.delivered[source] += n

    def _note_skips(self, skips: list[dict[str, Any]]) -> None:
        """Keep each skip for the report; log each reason once an epoch."""
        for skip in skips:
            if skip["reason"] not in self._logged:
                self._logged.add(skip["reason"])
                level = logging.INFO if skip["stage"] == "filter" else logging.WARNING  # asked for
                where = skip["key"] or skip["url"]
                log.log(level, "skipped %s (%s): %s", where, skip["stage"], skip["reason"])
            self.skipped.append(skip)

    def _summarise(self) -> None:
        if self.skipped:
            report = self.report()
            log.warning(
                "epoch %d: skipped %d samples (%s); loader.report() lists them",
                self.epoch,
                report["skipped"],
                ", ".join(f"{k}: {v}" for k, v in sorted(report["by_stage"].items())),
            )

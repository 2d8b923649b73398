"""A loader state is untrusted input: a checkpoint may be damaged, edited or from another
version. `check_state` walks it before anything uses it, in the process that loads it (never in
a DataLoader worker), and says in one line which field is wrong and why: a missing or mistyped
field, a count out of range, or positions past what the plan gives that reader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from polymodal.errors import UserError
from polymodal.pipelines.stream.place import Place

if TYPE_CHECKING:
    from polymodal.pipelines.stream.stream import Stream


class StateError(UserError, ValueError):
    """A loader state that cannot be resumed from; names the field."""


def _need(value: Any, kind: type | tuple[type, ...], where: str, least: int | None = None) -> Any:
    """`value` if it is a `kind` (and, for an int, at least `least`), else a `StateError`."""
    if isinstance(value, bool) and kind is not bool:
        raise StateError(f"{where}: expected {_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise StateError(f"{where}: expected {_name(kind)}, got {_short(value)}")
    if least is not None and isinstance(value, int) and value < least:
        raise StateError(f"{where}: must be at least {least}, got {value}")
    return value


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {"Mapping": "a table", "list": "a list", "NoneType": "null"}.get(k.__name__, k.__name__)
        for k in kinds
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(
    table: Mapping[str, Any], key: str, kind: Any, where: str, least: int | None = None
) -> Any:
    if key not in table:
        raise StateError(f"{where}.{key}: missing")
    return _need(table[key], kind, f"{where}.{key}", least)


def check_state(state: Any, stream: Stream, world: int, workers: int) -> None:
    """Refuse a state that is not one the loader of `stream` wrote, or whose counts and
    positions the plan cannot have given (`StateError`, naming the field)."""
    where = "loader state"
    _need(state, Mapping, where)
    config = _field(state, "config", Mapping, where)
    saved_world = _field(config, "world", int, f"{where}.config", 1)
    saved_workers = _field(config, "workers", int, f"{where}.config", 0)
    epoch = _field(state, "epoch", int, where, 0)
    batches = _field(state, "batches", int, where, 0)
    rest = _field(state, "rest", (Mapping, type(None)), where)
    _field(state, "skipped", list, where)
    if "ranks" in state:
        _check_ranks(state["ranks"], saved_world, f"{where}.ranks")
    for n, skip in enumerate(state["skipped"]):
        _need(skip, Mapping, f"{where}.skipped[{n}]")
    delivered = state.get("delivered", [0] * len(stream.sources))
    _need(delivered, list, f"{where}.delivered")
    if len(delivered) != len(stream.sources) or not all(
        isinstance(n, int) and n >= 0 for n in delivered
    ):
        raise StateError(f"{where}.delivered: not a count per source: {_short(delivered)}")
    if rest is not None:
        _check_rest(rest, f"{where}.rest")
    try:
        left = stream.remainder(epoch, rest)
        planned = stream.batches_per_epoch(saved_world, left, epoch)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StateError(
            f"{where}.rest: not the rest of an epoch this plan gives ({exc})"
        ) from None
    if batches > planned:
        raise StateError(
            f"{where}.batches: {batches:,} is past the {planned:,} batches each rank has in "
            f"epoch {epoch} at {saved_world} rank(s)"
        )
    states = _field(state, "workers", Mapping, where)
    if (saved_world, saved_workers) == (world, workers):  # the worker states are used as saved
        for key, worker_state in states.items():
            _check_worker(key, worker_state, stream, epoch, state, left)


def check_reader_state(chain: Any, stream: Stream, place: Place, epoch: Any) -> None:
    """Refuse the chain state of one reader (a `Stream.state_dict()` from torchdata's loader)
    that the plan cannot have given it."""
    if not isinstance(epoch, int) or epoch < 0:
        raise StateError(f"stream state.epoch: not an epoch: {_short(epoch)}")
    config = {"world": place.world, "workers": place.workers}
    _check_worker(place.worker, chain, stream, epoch, {"config": config, "rank": place.rank}, None)


def _check_rest(rest: Mapping[str, Any], where: str) -> None:
    """A rest of an epoch: the resized run's world, workers and batches, and its own rest."""
    for _ in range(64):  # resizes within one epoch, nested
        _field(rest, "world", int, where, 1)
        _field(rest, "workers", int, where, 0)
        _field(rest, "batches", int, where, 0)
        if "lookahead" in rest:
            _field(rest, "lookahead", int, where, 2)
        for r, workers in enumerate(_field(rest, "begun", list, where) if "begun" in rest else []):
            for w, sent in enumerate(_need(workers, list, f"{where}.begun[{r}]")):
                if not (isinstance(sent, list) and all(type(n) is int and n >= 0 for n in sent)):
                    raise StateError(f"{where}.begun[{r}][{w}]: not places in a group")
        parent = _field(rest, "parent", (Mapping, type(None)), where)
        if parent is None:
            return
        rest, where = parent, f"{where}.parent"
    raise StateError(f"{where}: rests nested more than 64 deep")


def _check_worker(
    key: Any, state: Any, stream: Stream, epoch: int, loader_state: Mapping[str, Any], rest: Any
) -> None:
    """One worker's chain state against the run of the plan that worker reads."""
    config = loader_state["config"]
    world, workers = config["world"], max(1, config["workers"])
    where = f"loader state.workers.{key}"
    try:
        worker = int(key)
    except (TypeError, ValueError):
        raise StateError(f"{where}: not a worker number") from None
    if not 0 <= worker < workers:
        raise StateError(f"{where}: there are {workers} worker(s)")
    _need(state, Mapping, where)
    rank = loader_state.get("rank", 0)
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise StateError(f"loader state.rank: not a rank of {world}: {_short(rank)}")
    part = stream.slice(Place(rank, world, worker, workers), rest, epoch)
    done = _field(_field(state, "batch", Mapping, where), "batches", int, f"{where}.batch", 0)
    if done > part.batches:
        raise StateError(
            f"{where}.batch.batches: {done:,} is past the {part.batches:,} batches of this worker"
        )
    _field(_field(state, "decode", Mapping, where), "skipped", int, f"{where}.decode", 0)
    failed = _field(_field(state, "reader", Mapping, where), "failed", list, f"{where}.reader")
    for n, entry in enumerate(failed):
        ok = isinstance(entry, Sequence) and len(entry) == 3
        if (
            not ok
            or not all(isinstance(x, int) for x in entry[:2])
            or not isinstance(entry[2], str)
        ):
            raise StateError(f"{where}.reader.failed[{n}]: not [source, shard, reason]")
        if not 0 <= entry[0] < len(stream.sources):
            raise StateError(f"{where}.reader.failed[{n}]: no source {entry[0]}")
    for lane, (start, stop) in enumerate(part.ranges):
        name = "shuffle" + (f".{lane}" if lane else "")
        _check_shuffle(_field(state, name, Mapping, where), stop - start, f"{where}.{name}")
    if stream.buckets:
        _check_buckets(_field(state, "buckets", Mapping, where), stream, part.batches, where)


def _check_ranks(ranks: Any, world: int, where: str) -> None:
    """Every old rank's worker states, as a resize under length buckets reads them: which
    samples each begun group had given (a lie would leave samples out)."""
    _need(ranks, list, where)
    if len(ranks) != world:
        raise StateError(f"{where}: {len(ranks)} ranks' states for a world of {world}")
    for r, workers in enumerate(ranks):
        for w, chain in _need(workers, Mapping, f"{where}[{r}]").items():
            if not str(w).isdigit():
                raise StateError(f"{where}[{r}]: {_short(w)} is not a worker number")
            group = chain.get("buckets") if isinstance(chain, Mapping) else None
            if not isinstance(group, Mapping):
                continue
            sent, size = group.get("sent", []), len(group.get("group") or [])
            if not (
                isinstance(sent, list)
                and all(type(n) is int and 0 <= n < size for n in sent)
                and len(set(sent)) == len(sent)
            ):
                raise StateError(f"{where}[{r}].{w}.buckets.sent: not places in its group")


def _check_buckets(state: Mapping[str, Any], stream: Stream, batches: int, where: str) -> None:
    """A length-bucket group: planned batches within the worker's, and references to
    samples the plan has (a lying one would be read)."""
    where = f"{where}.buckets"
    planned = _field(state, "planned", int, where, 0)
    sizes = _field(state, "sizes", list, where)
    group = _field(state, "group", list, where)
    given = _field(state, "given", int, where, 0)
    if planned > batches or len(sizes) > min(planned, stream.lookahead) or given > len(sizes):
        raise StateError(f"{where}: planned {planned}, given {given} of {len(sizes)} batches")
    if not all(isinstance(n, int) and n >= 0 for n in sizes) or sum(sizes) != len(group):
        raise StateError(f"{where}.sizes: not the sizes of its {len(group)} samples")
    for n, ref in enumerate(group):
        if not (isinstance(ref, list) and len(ref) == 5 and all(type(v) is int for v in ref)):
            raise StateError(f"{where}.group[{n}]: not [source, shard, index, repeated, draw]")
        source, shard, index = ref[:3]
        counts = stream.counts[source] if 0 <= source < len(stream.counts) else ()
        if not (0 <= shard < len(counts) and 0 <= index < counts[shard]):
            raise StateError(f"{where}.group[{n}]: no sample {ref[:3]} in the plan")


def _check_shuffle(state: Mapping[str, Any], length: int, where: str) -> None:
    """A shuffle buffer's state over a run of `length` positions."""
    emitted = _field(state, "emitted", int, where, 0)
    if emitted > length:
        raise StateError(f"{where}.emitted: {emitted:,} is past the {length:,} positions it reads")
    order = _field(state, "order", (Mapping, type(None)), where)
    if order is None:
        return
    read = _field(order, "read", int, f"{where}.order", 0)
    if read > length:
        raise StateError(f"{where}.order.read: {read:,} is past the {length:,} positions it reads")
    slots = _field(order, "slots", list, f"{where}.order")
    if not all(isinstance(s, int) and 0 <= s < max(read, 1) for s in slots):
        raise StateError(f"{where}.order.slots: not positions it has read: {_short(slots)}")
    _field(order, "draws", list, f"{where}.order")
    _field(order, "draining", bool, f"{where}.order")
    rng = _field(order, "rng", Mapping, f"{where}.order")
    if rng.get("bit_generator") != "PCG64" or not isinstance(rng.get("state"), Mapping):
        raise StateError(f"{where}.order.rng: not a PCG64 generator's state")

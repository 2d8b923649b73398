"""An output folder that belongs to one job: the fingerprint of what it holds, finished shards
found again on a rerun, and never a mix of two jobs' shards."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .card import is_our_card
from .files import remove_temporaries, write_atomic
from .index import INDEX_NAME, PLAN_NAME, TABLE_NAME, ShardInfo, decode_sidecar, sidecar_name
from .sources import PlannedSample


def fingerprint(options: Mapping[str, Any], shards: list[list[PlannedSample]]) -> str:
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for shard in shards:
        for sample in shard:
            parts = [sample.key, [[ext, *ref.identity()] for ext, ref in sample.members]]
            digest.update(json.dumps(parts).encode())
        digest.update(b"|")
    return digest.hexdigest()


def finished_shard(directory: Path, name: str) -> ShardInfo | None:
    """A shard with its final name is complete (renamed last); its sidecar holds its facts."""
    sidecar = directory / sidecar_name(name)
    if not (directory / name).exists() or not sidecar.exists():
        return None
    return decode_sidecar(sidecar.read_bytes()).info


def _previous_fingerprint(directory: Path) -> str | None:
    """The fingerprint of what `directory` holds: a finished build's, or an unfinished one's."""
    for name, doc_key in ((PLAN_NAME, None), (INDEX_NAME, "build")):
        path = directory / name
        if path.exists():
            doc = json.loads(path.read_bytes())
            doc = (doc.get(doc_key) or {}) if doc_key else doc
            return doc.get("fingerprint")
    return None


def dataset_files(directory: Path, plan: bool = False) -> list[Path]:
    """What a job wrote into `directory` as a dataset: shards and their (hidden or older)
    sidecars, the index and its shard table, our dataset card, and with `plan` the job's
    fingerprint."""
    if not directory.is_dir():
        return []
    names = {INDEX_NAME, TABLE_NAME, *([PLAN_NAME] if plan else [])}
    return [
        p
        for p in directory.iterdir()
        if p.name.startswith(("shard-", ".shard-")) or p.name in names or is_our_card(p)
    ]


def prepare_output(directory: Path, fp: str, overwrite: bool) -> bool:
    """Make `directory` ready for the build with fingerprint `fp`; False when already built.

    Shards of another build (other sources or options) are never mixed in: that is an error
    unless `overwrite`, which removes them first.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ours = dataset_files(directory)
    previous = _previous_fingerprint(directory)
    if overwrite:
        for path in ours:
            path.unlink()
    elif previous == fp and (directory / INDEX_NAME).exists():
        return False
    elif ours and previous != fp:
        raise FileExistsError(
            f"{directory} holds shards of another build (other sources or options); "
            "remove them or pass overwrite"
        )
    remove_temporaries(directory)
    write_atomic(directory / PLAN_NAME, json.dumps({"fingerprint": fp}).encode())
    return True

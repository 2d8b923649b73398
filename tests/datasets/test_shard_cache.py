"""Local copies of remote shards, against a real HTTP server on 127.0.0.1 that counts what it
serves: a second epoch reads the disk, a copy is the index's bytes or nothing, and the copies
stay within their limit, least recently used going first."""

import hashlib
from typing import ClassVar

import pytest
from testdata import SHARD_SIZES, QuietHandler, numbered_pngs, png_fields, serving

from polymodal import Stream
from polymodal.datasets.index import ShardIndex

TOTAL = sum(SHARD_SIZES)


class _CountingHandler(QuietHandler):
    gets: ClassVar[list[str]] = []

    def do_GET(self):
        type(self).gets.append(self.path)
        super().do_GET()


@pytest.fixture
def served(tmp_path):
    data = tmp_path / "www" / "ds"
    numbered_pngs(data)
    _CountingHandler.gets = []
    with serving(tmp_path / "www", _CountingHandler) as url:
        yield f"{url}/ds", data


def _keys(loader) -> list[str]:
    return [k for b in loader for k, r in zip(b.keys, b.repeated.tolist(), strict=True) if not r]


def _shard_gets() -> list[str]:
    return [path for path in _CountingHandler.gets if path.endswith(".tar")]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_second_epoch_reads_the_local_copies(served, own_cache, workers):
    url, data = served
    loader = Stream(url, png_fields(), batch_size=4, cache_limit=2**30).loader(workers)
    first = _keys(loader)
    fetched = _shard_gets()
    shards = [s for s in ShardIndex.load(data).shards if s.samples]
    assert sorted(first) == sorted(f"k{i:04d}" for i in range(TOTAL))
    assert sorted(fetched) == sorted(f"/ds/{s.name}" for s in shards)  # each shard once
    second = _keys(loader)
    assert sorted(second) == sorted(first) and second != first  # a new epoch's order
    assert _shard_gets() == fetched  # not one shard from the network again
    copies = {p.name: p.read_bytes() for p in (own_cache / "shards").glob("*.tar")}
    for shard in shards:  # each copy is the index's bytes, named by their digest
        assert hashlib.sha256(copies[f"{shard.sha256}.tar"]).hexdigest() == shard.sha256


def test_a_shard_that_changed_is_never_kept(served, own_cache):
    url, data = served
    index = ShardIndex.load(data)
    changed = next(s for s in index.shards if s.samples)
    body = (data / changed.name).read_bytes()
    (data / changed.name).write_bytes(body[:512] + bytes(len(body) - 512))  # same size
    loader = Stream(url, png_fields(), batch_size=4, cache_limit=2**30).loader(0)
    assert len(_keys(loader)) == TOTAL - changed.samples
    skips = loader.report()["samples"]
    assert skips and all("not the shard the index describes" in s["reason"] for s in skips)
    names = {p.name for p in (own_cache / "shards").iterdir() if p.is_file()}
    assert f"{changed.sha256}.tar" not in names and not any(n.endswith(".tmp") for n in names)


def test_the_copies_stay_within_their_limit(served, own_cache):
    url, data = served
    shards = sorted((s for s in ShardIndex.load(data).shards if s.samples), key=lambda s: s.bytes)
    limit = shards[-1].bytes + shards[-2].bytes  # the two largest fit, not all
    stream = Stream(url, png_fields(), batch_size=4, shuffle=False, cache_limit=limit)
    assert len(_keys(stream.loader(0))) == TOTAL
    kept = list((own_cache / "shards").glob("*.tar"))
    assert 0 < len(kept) < len(shards) and sum(p.stat().st_size for p in kept) <= limit
    last = next(s for s in reversed(ShardIndex.load(data).shards) if s.samples)
    assert (own_cache / "shards" / f"{last.sha256}.tar").exists()  # the most recently used
    with pytest.raises(ValueError, match="cache_limit must be a positive"):
        Stream(url, png_fields(), cache_limit=0)

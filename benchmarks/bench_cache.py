"""A second epoch over HTTP, with and without the local shard cache.

    .venv/bin/python benchmarks/bench_cache.py [--samples 800] [--rate 40] [--repeats 3]

A dataset of photo-like 256² JPEGs with labels in 8 tar shards, served by a local HTTP
server that sends at most `--rate` MB/s per connection (a far object store or a busy link;
0: as fast as the loopback goes). Each run streams two epochs of label-only batches (so the
network is what the time is made of) through 2 DataLoader workers, from a fresh cache folder:
without a cache (`Stream(url)`) both epochs read the server; with one
(`Stream(url, cache_limit=...)`) the first downloads each shard once and the second reads the
disk. Medians over `--repeats` runs; the ratio is against the uncached epoch 2 of the same run.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

from bench_stream import make_dataset

from polymodal.adapters import get
from polymodal.pipelines.stream.stream import Stream


class ThrottledHandler(http.server.SimpleHTTPRequestHandler):
    """Sends files at `rate` bytes a second per connection; counts the bytes it sent."""

    rate = 0.0
    sent = 0

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        started = time.perf_counter()
        total = 0
        while chunk := source.read(64 * 1024):
            outputfile.write(chunk)
            total += len(chunk)
            type(self).sent += len(chunk)
            if self.rate:
                ahead = total / self.rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)

    def log_message(self, *args) -> None:
        pass


def two_epochs(url: str, cache: Path, limit: int | None) -> tuple[float, float, int, int]:
    """Seconds and bytes served for epoch 1 and epoch 2."""
    fields = {"label": get("label")()}
    stream = Stream(url, fields, batch_size=64, cache_dir=cache, cache_limit=limit)
    loader = stream.loader(2)
    out: list[float] = []
    served: list[int] = []
    for _ in range(2):
        before = ThrottledHandler.sent
        started = time.perf_counter()
        for _batch in loader:
            pass
        out.append(time.perf_counter() - started)
        served.append(ThrottledHandler.sent - before)
    return out[0], out[1], served[0], served[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=800)
    parser.add_argument("--rate", type=float, default=40.0, help="MB/s per connection, 0: all")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_dataset(root / "www", args.samples)  # bench_stream's photos, served
        ThrottledHandler.rate = args.rate * 1e6
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(ThrottledHandler, directory=str(root / "www"))
        )
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/data"
        runs: dict[str, list[tuple[float, float, int, int]]] = {"no cache": [], "cache": []}
        for n in range(args.repeats):
            runs["no cache"].append(two_epochs(url, root / f"plain{n}", None))
            runs["cache"].append(two_epochs(url, root / f"cached{n}", 2**34))
        size = sum(p.stat().st_size for p in data.glob("*.tar")) / 1e6
        server.shutdown()
    base = statistics.median(r[1] for r in runs["no cache"])
    print(f"{args.samples} samples, {size:.1f} MB in 8 shards, {args.rate:g} MB/s a connection")
    header = ("epoch 1 s", "epoch 2 s", "MB served 1", "MB served 2", "epoch 2 ratio")
    print(f"{'':10}" + "".join(f"{h:>14}" for h in header))
    for name, results in runs.items():
        cells = [statistics.median(r[i] for r in results) for i in range(4)]
        first, second, mb1, mb2 = cells[0], cells[1], cells[2] / 1e6, cells[3] / 1e6
        row = f"{first:14.2f}{second:14.2f}{mb1:14.1f}{mb2:14.1f}{second / base:14.2f}"
        print(f"{name:10}{row}")


if __name__ == "__main__":
    main()

"""A build killed with SIGKILL at random moments, then run again, ends byte-identical."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from testdata import tree_digests

from polymodal.datasets.build import build

TRIALS = 5


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (src / c).mkdir()
        for i in range(150):
            (src / c / f"{i:04d}.npy").write_bytes(rng.bytes(60_000))  # content is not parsed
            (src / c / f"{i:04d}.txt").write_text(f"sample {c}{i}")
    return src


ARGS = ["--shard-samples", "6", "--shuffle", "--seed", "7", "--split", "val=0.2", "--workers", "2"]


def _command(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "polymodal", "build", str(src), str(out), *ARGS]


@pytest.mark.slow
def test_killed_builds_resume_to_identical_bytes(source, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_command(source, reference), check=True, capture_output=True)
    expected = tree_digests(reference)
    shards = len(list(reference.rglob("*.tar")))
    assert "train/index.json" in expected and "val/index.json" in expected
    rng = np.random.default_rng(1)
    interrupted = 0
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}"
        proc = subprocess.Popen(
            _command(source, out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # a random moment: once a random number of shards is done, plus a random instant
        _wait_for_shards(out, int(rng.integers(0, shards - 5)), proc)
        time.sleep(rng.uniform(0, 0.05))
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its pool workers
        proc.wait()
        if not (out / "train" / "index.json").exists() or not (out / "val/index.json").exists():
            interrupted += 1
            # a killed build leaves nothing that looks complete: no index without all shards
            for split in ("train", "val"):
                assert not (out / split / "index.json").exists() or _complete(out / split)
        subprocess.run(_command(source, out), check=True, capture_output=True)
        assert tree_digests(out) == expected, f"trial {trial}"
    assert interrupted >= TRIALS - 1, "the kills should land before the build finishes"


def _wait_for_shards(out: Path, count: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*.tar"))) < count and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)


def _complete(directory: Path) -> bool:
    from polymodal.datasets.index import ShardIndex

    index = ShardIndex.load(directory)
    return all((directory / s.name).exists() for s in index.shards)


def test_in_process_resume_reuses_finished_shards(source, tmp_path):
    out = tmp_path / "out"
    build(source, out, shard_samples=50, progress=False)
    expected = tree_digests(out)
    (out / "index.json").unlink()
    (out / "shard-000002.tar").unlink()
    (out / "shard-000003.tar.tmp").write_bytes(b"half a shard")
    report = build(source, out, shard_samples=50, progress=False)
    assert report.written_shards == 1
    assert tree_digests(out) == expected


def test_a_killed_runs_temporaries_at_the_top_of_the_output_go(tmp_path):
    """A kill while `rejects.jsonl` or the dataset card (`README.md`, beside the split
    folders) was being written left its temporary behind forever; the rerun removes it."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.txt").write_text(f"sample {i}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "rejects.jsonl.4242.tmp").write_bytes(b"")
    (out / "README.md.4243.tmp").write_bytes(b"")
    build(src, out, split="val=0.5", progress=False, print_=lambda _: None)
    assert not list(out.rglob("*.tmp"))
    assert (out / "rejects.jsonl").exists() and (out / "README.md").exists()


@pytest.mark.slow
def test_a_ray_build_is_the_local_build_and_resumes_after_its_driver_is_killed(source, tmp_path):
    """`--engine ray` on a real local Ray: the same bytes as the local pool; its driver killed
    (with the Ray it started) after a few shards, the rerun finishes only the rest."""
    pytest.importorskip("ray", reason="the ray engine needs `pip install polymodal[ray]`")
    reference = tmp_path / "reference"
    subprocess.run(_command(source, reference), check=True, capture_output=True)
    out = tmp_path / "ray"
    command = [*_command(source, out), "--engine", "ray"]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    _wait_for_shards(out, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = len(list(out.rglob("*.tar")))
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert tree_digests(out) == tree_digests(reference)
    assert left >= 3

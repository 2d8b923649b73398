"""Shared disks and shared folders: a run directory or an output belongs to one live process,
a lock left by a killed one is taken over (and said so), and results never land silently on
someone else's files. Real processes race for real folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testdata import train_toml, two_class_pngs

from polymodal.cli import main
from polymodal.datasets.files import LOCK_NAME, FolderInUse, OwnerLock

POLYMODAL = [sys.executable, "-m", "polymodal"]


def _wait_for(path: Path, lines: int = 1, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() or len(path.read_text().splitlines()) < lines:
        assert time.monotonic() < deadline, f"{path} never got {lines} lines"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_trainer_on_a_run_directory_is_refused_and_the_first_is_untouched(tmp_path):
    train = two_class_pngs(tmp_path / "train", shards=2)
    config = train_toml(tmp_path, train, None, max_steps=100_000, checkpoint_every=100_000)
    # its output goes to a file: a pipe nobody reads fills (the progress bar and an epoch line
    # every 2 steps) and blocks the trainer in a write, where SIGTERM cannot stop it
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([*POLYMODAL, "train", str(config)], stdout=log, stderr=log)
    metrics = tmp_path / "run" / "metrics.jsonl"
    try:
        _wait_for(metrics, lines=3)
        second = subprocess.run([*POLYMODAL, "train", str(config)], capture_output=True, text=True)
        assert second.returncode == 2
        (line,) = second.stderr.strip().splitlines()
        assert f"in use by train (pid {first.pid} on " in line
        first.send_signal(signal.SIGTERM)  # stops at the next step with a checkpoint
        assert first.wait(120) == 0
    finally:
        first.kill()
        log.close()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one writer's lines, whole
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # a finished owner leaves no lock


def test_a_lock_left_by_a_killed_job_is_taken_over_and_said_so(tmp_path, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from polymodal.datasets.files import OwnerLock; "
            f"OwnerLock({str(run)!r}, 'train').acquire(); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderInUse, match=rf"in use by train \(pid {holder.pid} on "):
        OwnerLock(run, "train").acquire()
    holder.kill()  # SIGKILL: no clean-up, the record stays behind
    holder.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid
    with caplog.at_level("WARNING", logger="polymodal.files"), OwnerLock(run, "train"):
        record = json.loads((run / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(FolderInUse, match="already being written by this process"):
            OwnerLock(run, "train").acquire()
    assert any(
        f"pid {holder.pid}" in r.getMessage() and "gone" in r.getMessage() for r in caplog.records
    )
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_builds_and_jobs_into_a_folder_another_process_writes_are_refused(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    for n in range(6):
        (source / f"s{n}.txt").write_text(f"sample {n}")
        (source / f"s{n}.cls").write_text(str(n % 2))
    data, out = tmp_path / "data", tmp_path / "out"
    assert main(["build", str(source), str(data), "--quiet"]) == 0
    assert main(["build", str(source), str(out), "--quiet"]) == 0
    shards = sorted(p.name for p in out.iterdir())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from polymodal.datasets.files import OwnerLock; "
            f"OwnerLock({str(out)!r}, 'build').acquire(); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (
            ["build", str(source), str(out), "--quiet", "--overwrite"],
            ["index", str(out)],
            ["preprocess", str(data), str(out), "--op", "dedupe", "--quiet", "--overwrite"],
        ):
            assert main(command) == 2
            err = capsys.readouterr().err.strip()
            assert f"in use by build (pid {holder.pid} on " in err and len(err.splitlines()) == 1
        assert sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) == shards
    finally:
        holder.kill()
        holder.wait()
    assert main(["index", str(out)]) == 0  # its owner is gone: the lock is taken over


@pytest.mark.slow
def test_exports_and_predictions_never_land_on_other_files(tmp_path, capsys):
    train = two_class_pngs(tmp_path / "train", shards=2)
    config = train_toml(tmp_path, train, None, max_steps=2)
    assert main(["train", str(config)]) == 0
    run = tmp_path / "run"
    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    assert main(["export", str(run), str(out)]) == 0  # the same export again: fine
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace(str(run), str(tmp_path / "run2")))
    assert main(["train", str(other)]) == 0
    capsys.readouterr()
    weights = (out / "model.safetensors").read_bytes()
    assert main(["export", str(tmp_path / "run2"), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"holds results of `export {run}`" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == weights  # untouched
    assert main(["export", str(tmp_path / "run2"), str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != weights
    assert main(["export", str(run), str(train), "--overwrite"]) == 2  # a dataset: never
    assert "is a dataset" in capsys.readouterr().err
    assert not (train / "config.json").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    assert main(["export", str(run), str(mine)]) == 2
    assert "holds files polymodal did not write" in capsys.readouterr().err

"""Preprocessing jobs end to end: real shards in, real shards out, killed and rerun, on the
local pool and on a real local Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from testdata import REPO, tree_digests

from polymodal.datasets.index import ShardIndex
from polymodal.datasets.reader import read_shard
from polymodal.datasets.synthetic import (
    counter_frames,
    encode_audio,
    encode_image,
    encode_media,
    photo,
    tone,
)
from polymodal.datasets.writer import ShardWriter
from polymodal.pipelines import preprocess
from polymodal.pipelines.preprocess.jobs import JOB_DIR, SUMMARY_NAME
from polymodal.pipelines.preprocess.ops import parse_op

OPS = [
    "dedupe",
    "transcode_video:size=32,fps=10",
    "resample_audio:rate=16000,channels=1",
    "resize_image:size=32",
    "split:val=0.3",
]
SLOW_OP = "call:fn=user_slow_op:slow,seconds=0.04"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """8 shards of 4 samples: clips, tones, photos; one broken video and one duplicate."""
    src = tmp_path_factory.mktemp("pre") / "src"
    rng = np.random.default_rng(0)
    with ShardWriter(src, max_samples=4) as writer:
        first_clip = b""
        for i in range(30):
            kind = i % 3
            if kind == 0:
                body = {
                    "mp4": encode_media(
                        "mp4",
                        counter_frames(12, 48, 64, step=10),
                        fps=12,
                        audio=tone(220 + 20 * i, 1.0),
                        audio_rate=44100,
                    )
                }
                first_clip = first_clip or body["mp4"]
            elif kind == 1:
                body = {"wav": encode_audio(tone(300 + 10 * i, 0.5, 22050, 2), 22050, "wav")}
            else:
                body = {"jpg": encode_image(photo(int(rng.integers(1000)), 96))}
            writer.write({"__key__": f"s{i:03d}", **body, "cls": str(i % 4).encode()})
        writer.write({"__key__": "broken", "mp4": b"\x00\x00\x00\x18ftypmp42 truncated"})
        writer.write({"__key__": "copy", "mp4": first_clip})
    return src


def _tree(directory: Path) -> dict[str, str]:
    """Every file a job writes, except what records timings (the summary, task records)."""
    return tree_digests(directory, lambda p: p.name == SUMMARY_NAME or JOB_DIR in p.parts)


def _keys(directory: Path) -> list[str]:
    index = ShardIndex.load(directory)
    return [s["__key__"] for shard in index.shards for s in read_shard(index, shard)]


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "reference"
    preprocess.run(source, out, OPS, workers=2, progress=False)
    return out


def test_job_writes_split_datasets_and_accounts_for_every_sample(source, reference):
    report = preprocess.run(source, reference, OPS, workers=2, progress=False)
    assert report.tasks_run == 0  # finished: nothing to do again
    assert report.samples_in == 32 and report.balanced
    assert report.rejected == 1 and report.filtered == 1 and report.samples_out == 30
    rejects = (reference / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 1 and '"key": "broken", "op": "transcode_video"' in rejects[0]
    assert '"key": "copy", "op": "dedupe"' in (reference / "filtered.jsonl").read_text()
    keys = _keys(reference / "train") + _keys(reference / "val")
    assert sorted(keys) == [f"s{i:03d}" for i in range(30)]
    assert 3 <= len(_keys(reference / "val")) <= 16
    index = ShardIndex.load(reference / "train")
    assert set(index.fields) <= {"mp4", "flac", "jpg", "cls"} and "wav" not in index.fields
    assert index.build["ops"][1] == {**index.build["ops"][1], "op": "transcode_video", "size": 32}
    assert report.op_seconds["transcode_video"] > 0
    text = preprocess.summary(report)
    assert "32 samples in → 30 out, 1 filtered, 1 rejected" in text


def test_output_decodes_with_the_adapters(reference):
    from polymodal import adapters

    video, audio = adapters.get("video")(size=(32, 32)), adapters.get("audio")()
    image = adapters.get("image")(size=(32, 32))
    index = ShardIndex.load(reference / "train")
    seen = set()
    for shard in index.shards:
        for sample in read_shard(index, shard):
            if "mp4" in sample:
                assert video.decode(sample).values.shape[-1] == 3
                assert audio.decode(sample).values.shape[-1] == 1
            elif "flac" in sample:
                assert audio.decode(sample).values.shape[-1] == 1
            else:
                assert image.decode(sample).grid == (32, 32)
            seen |= {ext for ext in sample if not ext.startswith("_")}
    assert seen == {"mp4", "flac", "jpg", "cls"}


def test_one_worker_and_two_give_the_same_bytes(source, reference, tmp_path):
    preprocess.run(source, tmp_path / "one", OPS, workers=1, progress=False)
    assert _tree(tmp_path / "one") == _tree(reference)


def test_another_job_is_not_mixed_in(source, reference, tmp_path):
    out = tmp_path / "out"
    preprocess.run(source, out, ["resample_audio:rate=8000"], workers=1, progress=False)
    with pytest.raises(FileExistsError, match="output of another job"):
        preprocess.run(source, out, OPS, workers=1, progress=False)
    preprocess.run(source, out, OPS, workers=2, progress=False, overwrite=True)
    assert _tree(out) == _tree(reference)
    assert not (out / "index.json").exists()  # the first job's dataset is gone


def test_strict_mode_stops_at_the_first_bad_sample(source, tmp_path):
    with pytest.raises(Exception, match="Invalid data"):
        preprocess.run(source, tmp_path / "o", OPS, workers=1, progress=False, errors="raise")
    assert not (tmp_path / "o" / "train" / "index.json").exists()


def _command(src: Path, out: Path, workers: int = 2) -> list[str]:
    ops = [arg for op in [*OPS, SLOW_OP] for arg in ("--op", op)]
    return [
        sys.executable,
        "-m",
        "polymodal",
        "preprocess",
        str(src),
        str(out),
        *ops,
        "--workers",
        str(workers),
    ]


@pytest.fixture(scope="module")
def slow_env(tmp_path_factory) -> dict[str, str]:
    """A user op module on PYTHONPATH: sleeps, so a kill lands in the middle of the job."""
    folder = tmp_path_factory.mktemp("user_ops")
    (folder / "user_slow_op.py").write_text(
        "import time\n\ndef slow(sample, seconds):\n    time.sleep(seconds)\n    return sample\n"
    )
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.fixture(scope="module")
def slow_reference(source, slow_env, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("pre") / "slow"
    subprocess.run(_command(source, out), check=True, capture_output=True, env=slow_env)
    return _tree(out)


def _records(out: Path) -> int:
    return len(list(out.glob(f"{JOB_DIR}/*/task-*.json")))


def _wait(condition, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)


@pytest.mark.slow
def test_killed_jobs_resume_to_identical_bytes(source, slow_env, slow_reference, tmp_path):
    rng = np.random.default_rng(2)
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        proc = subprocess.Popen(
            _command(source, out),
            env=slow_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        done = int(rng.integers(0, 5))
        _wait(lambda out=out, done=done: _records(out) >= done, proc)
        time.sleep(rng.uniform(0, 0.1))
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers
        proc.wait()
        assert not (out / "train" / "index.json").exists(), "killed before the end"
        finished = _records(out)
        rerun = subprocess.run(_command(source, out), env=slow_env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert f"{8 - finished} of 8 shards processed now" in rerun.stdout  # only the missing
        assert _tree(out) == slow_reference, f"trial {trial}"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _pool_workers(pid: int) -> list[int]:
    """The pool's worker processes: descendants with no children of their own that are not
    multiprocessing's resource tracker."""
    workers = []
    for child in _descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline and not _descendants(child):
            workers.append(child)
    return workers


def test_a_killed_worker_is_replaced_and_the_job_completes(
    source, slow_env, slow_reference, tmp_path
):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _command(source, out), env=slow_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait(lambda: _records(out) >= 1 and len(_pool_workers(proc.pid)) >= 2, proc)
    os.kill(_pool_workers(proc.pid)[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode()
    assert b"a worker process died" in stderr
    assert _tree(out) == slow_reference


@pytest.mark.slow
def test_local_and_ray_give_identical_bytes(source, reference, tmp_path):
    pytest.importorskip("ray", reason="the ray engine needs `pip install polymodal[ray]`")
    report = preprocess.run(source, tmp_path / "ray", OPS, engine="ray", workers=2, progress=False)
    assert report.engine.startswith("ray") and report.tasks_run == 8
    assert _tree(tmp_path / "ray") == _tree(reference)


@pytest.mark.slow
def test_ray_reruns_the_task_of_a_killed_worker(source, slow_env, slow_reference, tmp_path):
    pytest.importorskip("ray", reason="the ray engine needs `pip install polymodal[ray]`")
    out = tmp_path / "out"
    command = [*_command(source, out), "--engine", "ray"]
    proc = subprocess.Popen(command, env=slow_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait(lambda: _records(out) >= 1 and _ray_task_workers(), proc, seconds=120)
    os.kill(_ray_task_workers()[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr.decode()
    assert _tree(out) == slow_reference


def _ray_task_workers() -> list[int]:
    """Ray worker processes running our task: Ray names them `ray::run_task`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(
                b"ray::run_task"
            ):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_cli_recipe_equals_op_flags(source, reference, tmp_path):
    recipe = tmp_path / "recipe.toml"
    tables = []
    for op in OPS:
        name, options = parse_op(op)
        body = "".join(f"{k} = {v!r}\n" for k, v in options.items()).replace("False", "false")
        tables.append(f'[[ops]]\nop = "{name}"\n{body}')
    recipe.write_text("workers = 2\n\n" + "\n".join(tables))
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "polymodal",
            "preprocess",
            str(source),
            str(out),
            "--recipe",
            recipe,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "32 samples in → 30 out" in result.stdout
    assert _tree(out) == _tree(reference)
    bad = subprocess.run(
        [sys.executable, "-m", "polymodal", "preprocess", source, tmp_path / "b", "--op", "x:y=1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no op named 'x'" in bad.stderr


@pytest.mark.parametrize("recipe", sorted(REPO.glob("examples/preprocess/*.toml")))
def test_example_recipes_name_real_ops_and_options(recipe):
    import tomllib

    from polymodal.pipelines.preprocess.ops import make_op

    doc = tomllib.loads(recipe.read_text())
    assert set(doc) <= {"ops", "engine", "workers", "address"}
    assert [make_op(table).name for table in doc["ops"]] == [t["op"] for t in doc["ops"]]


MAIN_SCRIPT = """
import sys
from polymodal import preprocess

def tag(sample):  # defined in __main__: it must travel by value
    sample["note.txt"] = ("seen " + sample["__key__"]).encode()
    return sample

if __name__ == "__main__":  # as every script that starts processes has it
    report = preprocess.run(
        sys.argv[1], sys.argv[2], [tag, lambda s: s], engine=sys.argv[3], workers=2,
        progress=False,
    )
    print(report.samples_out, report.rejected)
    sys.exit(0 if report.samples_out and not report.rejected else 1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_functions_from_a_scripts_main_run_on_every_engine(source, tmp_path, engine):
    """README's `preprocess.run(..., my_op, engine="ray")` from a script: once every sample was
    rejected (the workers could not import `__main__`) and the script exited 0."""
    if engine == "ray":
        pytest.importorskip("ray", reason="the ray engine needs `pip install polymodal[ray]`")
    script = tmp_path / "job.py"
    script.write_text(MAIN_SCRIPT)
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(script), str(source), str(out), engine],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    samples_out, rejected = map(int, run.stdout.split()[-2:])
    assert rejected == 0 and samples_out == ShardIndex.load(source).samples
    index = ShardIndex.load(out)
    for sample in read_shard(index, index.shards[0]):
        assert sample["note.txt"] == f"seen {sample['__key__']}".encode()


def test_a_function_that_cannot_travel_fails_before_the_job(source, tmp_path):
    import threading

    lock = threading.Lock()

    def holds_a_lock(sample):
        with lock:
            return sample

    with pytest.raises(ValueError, match="holds_a_lock cannot be sent to worker processes"):
        preprocess.run(source, tmp_path / "out", [holds_a_lock], progress=False)
    assert not (tmp_path / "out").exists()

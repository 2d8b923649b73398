"""Training runs under hostile conditions: a missing validation shard, checkpoints that do
not load, out-of-range settings, a full disk, a run directory inside a dataset, data with
nothing left to read. Each ends in a reported skip or one readable line with a non-zero exit."""

import json
import os
import pickle
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from testdata import train_toml, two_class_pngs
from testmedia import image_train_toml

from polymodal.cli import main
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.synthetic import encode_image, photo


def test_training_survives_a_missing_first_validation_shard(tmp_path, capsys, caplog):
    """The issue's case: `polymodal train` died at every evaluation."""
    train = two_class_pngs(tmp_path / "train", shards=2)
    val = two_class_pngs(tmp_path / "val", shards=3, start=100)
    (val / "shard-000000.tar").unlink()
    assert main(["train", str(train_toml(tmp_path, train, val))]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["val_samples"] == 8  # the 8 readable validation samples, once each
    assert summary["val_skipped"] == 4
    logged = [r.getMessage() for r in caplog.records if r.name == "polymodal.train"]
    assert any("validation skipped 4 samples" in m and "shard-000000.tar#" in m for m in logged)


def _pickle_with_code(marker: Path) -> bytes:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"model": Exploit()}, protocol=2)


def test_resume_passes_over_checkpoints_that_do_not_load(tmp_path, caplog):
    train = two_class_pngs(tmp_path / "train", shards=2)
    config = train_toml(tmp_path, train, None, max_steps=4, checkpoint_every=2, keep_checkpoints=3)
    assert main(["train", str(config)]) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    newest = checkpoints / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short, as by a full disk
    marker = tmp_path / "PWNED"
    (checkpoints / "step-00000005.pt").write_bytes(_pickle_with_code(marker))
    stale = checkpoints / "step-00000006.pt.4242.tmp"
    stale.write_bytes(b"half a checkpoint")
    with caplog.at_level("WARNING", logger="polymodal.train"):
        assert main(["train", str(config), "--set", "max_steps=6", "--resume"]) == 0
    skipped = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(skipped) == 2 and "step-00000005.pt" in skipped[0] and "00000004" in skipped[1]
    assert not marker.exists() and not stale.exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run/metrics.jsonl").open()]
    assert steps[-4:] == [3, 4, 5, 6]  # resumed from step 2, the newest that loads


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("optim.grad_clip=-1", "optim.grad_clip: must be at least 0"),
        ("checkpoint_every=0", "checkpoint_every: must be positive"),
        ("optim.accumulate=0", "optim.accumulate: must be positive"),
        ("max_steps=-1", "max_steps: must be at least 0"),
        ("data.workers=-1", "data.workers: must be at least 0"),
        ("optim.lr=-0.1", "optim.lr: must be a positive number"),
        ("optim.weight_decay=-1", "optim.weight_decay: must be at least 0"),
        ("keep_checkpoints=0", "keep_checkpoints: must be positive"),
        ("model.dropout=1.5", "model.dropout: must be in"),
        ("model.self_heads=3", "model.self_heads: 3 heads do not divide"),
        ("data.fields.image.options.size=-5", "data.fields.image.options: size must be positive"),
        ("data.fields.image.options.sise=5", "options.sise: unknown option \\(known: size"),
        ("data.fields.image.encoder.bands=5", "encoder.bands: unknown option"),
        ("data.fields.image.adapter='imgae'", "adapter: no adapter named 'imgae'"),
        ("data.label='txt'", "data.label: the dataset .* has no txt member"),
        ("data.train='/no/such/dataset'", "data.train: /no/such/dataset: no dataset here"),
        ("data.remote.read_timeout=0", "data.remote: timeouts must be positive"),
        ("data.remote.tries=0", "data.remote: tries must be at least 1"),
        ("data.remote.timeout=5", "data.remote.timeout: unknown field"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_field(tmp_path, capsys, setting, message):
    train = two_class_pngs(tmp_path / "train", shards=1)
    config = train_toml(tmp_path, train, None)
    assert main(["train", str(config), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_full_disk_and_an_impossible_output_are_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"img{i}.png").write_bytes(encode_image(photo(i, 64), "PNG"))

    def limit_file_size():  # writes past 64 KB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    command = [sys.executable, "-m", "polymodal", "build", str(src), str(tmp_path / "out")]
    full = subprocess.run(  # one shard of 20 PNGs, over the limit
        command,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=120,
    )
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert "File too large" in full.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "out").glob("*.tmp"))  # nothing half-written stays
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert ShardIndex.load(tmp_path / "out").samples == 20
    (tmp_path / "a-file").write_text("")
    blocked = subprocess.run(
        [*command[:-1], str(tmp_path / "a-file" / "out")], capture_output=True, text=True
    )
    assert blocked.returncode == 2 and "Traceback" not in blocked.stderr
    assert "Not a directory" in blocked.stderr


def test_a_run_directory_inside_a_dataset_is_refused(tmp_path, capsys):
    train = two_class_pngs(tmp_path / "train", shards=1)
    config = train_toml(tmp_path, train, None)
    before = sorted(p.name for p in train.iterdir())
    assert main(["train", str(config), "--set", f"run_dir='{train / 'run'}'"]) == 2
    assert "run_dir: the output" in capsys.readouterr().err
    assert sorted(p.name for p in train.iterdir()) == before


def test_training_on_data_with_nothing_left_to_read_is_an_error_not_a_wait(tmp_path, capsys):
    """Every shard cut short since it was indexed: all are left out, and `train` says so at
    once (it used to wait forever for a first batch of an empty epoch)."""
    train = two_class_pngs(tmp_path / "train", shards=1)
    for shard in train.glob("*.tar"):
        shard.write_bytes(shard.read_bytes()[:2048])
    config = image_train_toml(tmp_path / "c.toml", train, "", tmp_path / "run", max_steps=2)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data.train: the dataset" in err and "has no sample to read; left out: " in err
    assert "the shard is 2,048 bytes, the index says" in err

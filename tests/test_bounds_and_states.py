"""Sizes that an input claims are bounded before anything is allocated, and what a run loads
(loader states, checkpoints, pretrained folders, configs) is checked first: one line naming
the field or the file, never a traceback, never inside a worker. Memory is measured in child
processes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from testdata import numbered_pngs, png_fields, train_toml, two_class_pngs

from polymodal.adapters import DecodeError, get
from polymodal.cli import main
from polymodal.datasets.index import ShardIndex
from polymodal.datasets.shard_table import ShardTable
from polymodal.datasets.synthetic import encode_audio, encode_image, encode_media, tone
from polymodal.pipelines.stream.state import StateError
from polymodal.pipelines.stream.stream import Stream


def _grown_kb(code: str) -> tuple[str, int]:
    """Run `code` in a fresh Python; what it printed and how much its peak RSS grew (kB)."""
    script = (
        "import resource\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        + textwrap.dedent(code)
        + "\nprint('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return out, int(out.split("grew_kb")[1])


# --- 4. sizes ---------------------------------------------------------------------------------


def test_a_frame_of_extreme_aspect_is_refused_before_it_is_scaled(tmp_path):
    """2×8192 pixels (100 KB) scaled for a 112 crop would be 128×524,288 per frame: 3 GB."""
    frames = np.zeros((4, 8192, 2, 3), np.uint8)
    clip = tmp_path / "thin.mp4"
    clip.write_bytes(encode_media("mp4", frames, fps=4))
    png = tmp_path / "thin.png"
    png.write_bytes(encode_image(np.zeros((32768, 2, 3), np.uint8), "PNG"))
    started = time.monotonic()
    out, grew = _grown_kb(
        f"""
        from polymodal.adapters import DecodeError, get
        for name, ext, path in (("video", "mp4", {str(clip)!r}), ("image", "png", {str(png)!r})):
            try:
                get(name)(size=112).decode({{"__key__": "thin", ext: open(path, "rb").read()}})
            except DecodeError as exc:
                print("refused", exc.reason)
        """
    )
    assert out.count("refused") == 2 and "over max_pixels" in out, out
    assert grew < 300_000, out
    assert time.monotonic() - started < 60


def test_audio_headers_that_claim_more_than_the_file_are_refused():
    wav = encode_audio(tone(440, 1.0, 16000), 16000, "wav")
    at = wav.find(b"data")
    lying = wav[: at + 4] + struct.pack("<I", 2**31) + wav[at + 8 :]
    with pytest.raises(DecodeError, match=r"'data' chunk says 2,147,483,648 bytes, 32,000 follow"):
        get("audio")().decode({"__key__": "wav", "wav": lying})
    flac = bytearray(encode_audio(tone(440, 1.0, 16000), 16000, "flac"))
    word = int.from_bytes(flac[21:26], "big") | ((1 << 36) - 1)
    flac[21:26] = word.to_bytes(5, "big")
    with pytest.raises(DecodeError, match="FLAC header says 68,719,476,735 samples"):
        get("audio")().decode({"__key__": "flac", "flac": bytes(flac)})


def test_only_regular_files_are_read_from_a_source_folder(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for n in range(3):
        (source / f"s{n}.txt").write_text(f"sample {n}")
    os.mkfifo(source / "pipe.txt")  # opening it would wait forever for a writer
    (source / "zero.txt").symlink_to("/dev/zero")  # reading it would never end
    started = time.monotonic()
    assert main(["build", str(source), str(tmp_path / "out"), "--quiet"]) == 0
    assert time.monotonic() - started < 30
    rejects = {
        r["path"]: r["reason"]
        for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())
    }
    assert rejects["pipe.txt"] == "a FIFO: only regular files are read"
    assert rejects["zero.txt"] == "a link to a character device: only regular files are read"
    assert ShardIndex.load(tmp_path / "out").samples == 3


def test_validate_of_an_index_claiming_a_quadrillion_samples_is_bounded(tmp_path):
    data = tmp_path / "huge"
    numbered_pngs(data, sizes=[5])
    index = ShardIndex.load(data)
    shard = index.shards[0]
    table = ShardTable.from_columns(
        [shard.name], [10**15], [10**18], [bytes.fromhex(shard.sha256)], [{"png": 10**15}]
    )
    ShardIndex(index.format, index.fields, table, index.labels, base=str(data)).save(data)
    out, grew = _grown_kb(
        f"""
        from polymodal.cli import main
        print("exit", main(["validate", {str(data)!r}]))
        """
    )
    assert "exit 1" in out and "the index says 1,000,000,000,000,000" in out, out
    assert grew < 300_000, out


@pytest.mark.slow
def test_a_model_too_large_for_the_machine_is_refused_from_its_config(tmp_path, capsys):
    train = two_class_pngs(tmp_path / "train", shards=1)
    config = train_toml(tmp_path, train, None, max_steps=1)
    text = config.read_text().replace("num_latents = 4", "num_latents = 1_000_000_000")
    config.write_text(text)
    started = time.monotonic()
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "model: training it needs at least" in err and "GiB budget" in err
    assert len(err.splitlines()) == 1 and time.monotonic() - started < 60
    config.write_text(text.replace("1_000_000_000", "4"))
    assert main(["train", str(config), "--set", "memory_budget_gb=0.000001"]) == 2
    assert "over the 0.0 GiB budget" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_draws_no_matrix_for_more_classes_than_it_serves(tmp_path, capsys):
    train = two_class_pngs(tmp_path / "train", shards=2)
    config = train_toml(tmp_path, train, train, max_steps=2)
    config.write_text(config.read_text().replace("num_classes = 2", "num_classes = 150"))
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    checkpoint = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    argv = ["evaluate", str(run / "config.json"), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["confusion_matrix"].startswith("not made: 150 classes, over the 100")
    assert not (tmp_path / "eval" / "confusion.png").exists()


# --- 5. states, checkpoints and folders that are loaded --------------------------------------


@pytest.fixture
def saved(tmp_path):
    """A dataset, and a loader state saved after two batches with two workers."""
    data = tmp_path / "data"
    numbered_pngs(data, sizes=[8, 8])
    loader = Stream(data, png_fields(), batch_size=2).loader(2)
    batches = iter(loader)
    next(batches)
    next(batches)
    return data, json.loads(json.dumps(loader.state_dict()))


def test_a_state_past_its_epoch_is_refused_at_any_worker_count(saved):
    data, state = saved
    state["batches"] = 10**9
    for workers in (2, 3):  # as saved, and resized
        loader = Stream(data, png_fields(), batch_size=2).loader(workers)
        with pytest.raises(StateError, match=r"batches: 1,000,000,000 is past the 8 batches"):
            loader.load_state_dict(state)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s["workers"]["0"].pop("shuffle"), r"workers\.0\.shuffle: missing"),
        (lambda s: s["workers"]["1"]["batch"].update(batches="3"), r"batch\.batches: expected int"),
        (
            lambda s: s["workers"]["0"]["shuffle"]["order"].update(read=10**6),
            r"shuffle\.order\.read: 1,000,000 is past the 8 positions",
        ),
        (lambda s: s["workers"].update({"7": {}}), r"workers\.7: there are 2 worker"),
        (lambda s: s.update(rest={"world": 0}), r"rest\.world: must be at least 1"),
        (lambda s: s.pop("epoch"), r"loader state\.epoch: missing"),
        (lambda s: s["workers"]["0"]["reader"].update(failed=[[9, 0, "x"]]), r"no source 9"),
    ],
)
def test_a_damaged_state_is_one_error_naming_the_field_before_any_worker(saved, damage, message):
    data, state = saved
    damage(state)
    loader = Stream(data, png_fields(), batch_size=2).loader(2)
    with pytest.raises(StateError, match=message):
        loader.load_state_dict(state)


@pytest.mark.slow
def test_resume_after_changing_the_batch_size_is_one_line(tmp_path, capsys):
    train = two_class_pngs(tmp_path / "train", shards=2)
    config = train_toml(tmp_path, train, None, max_steps=2, checkpoint_every=1)
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    assert main(["train", str(config), "--set", "data.batch_size=2", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume from" in err and "batch_size (saved 4, now 2)" in err
    assert len(err.splitlines()) == 1


def test_pretrained_folders_that_do_not_load_name_the_file(tmp_path, capsys):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    assert main(["export", f"hf:{folder}", str(tmp_path / "out"), "--format", "hf"]) == 2
    assert f"{folder / 'config.json'}: not a JSON config" in capsys.readouterr().err
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # cut short
    (folder / "config.json").write_text(json.dumps({"architectures": ["PerceiverModel"]}))
    from polymodal.perceiver.pretrained import PretrainedError, load_weights

    with pytest.raises(PretrainedError, match=r"model\.safetensors: does not load"):
        load_weights(folder)


def test_inspect_of_an_empty_shard_and_a_gzipped_one_say_so(tmp_path, capsys):
    data = tmp_path / "data"
    numbered_pngs(data, sizes=[4, 4])
    (data / "shard-000.tar").write_bytes(b"")
    assert main(["inspect", str(data)]) == 0
    out = capsys.readouterr().out
    assert "shard-000.tar: not read" in out and "empty file" in out
    packed = tmp_path / "packed"
    packed.mkdir()
    import gzip

    (packed / "shard-000.tar").write_bytes(gzip.compress((data / "shard-001.tar").read_bytes()))
    main(["index", str(packed), "--quiet"])
    (reject,) = map(json.loads, (packed / "rejects.jsonl").read_text().splitlines())
    assert "the shard is gzip-compressed" in reject["reason"]


def test_an_impossible_encoder_option_is_a_config_error(tmp_path, capsys):
    train = two_class_pngs(tmp_path / "train", shards=1)
    config = train_toml(tmp_path, train, None, max_steps=1)
    config.write_text(config.read_text().replace("patch_size = 4", "patch_size = 0"))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data.fields.image.encoder: patch sizes must be positive" in err

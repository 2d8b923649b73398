"""`[data] packing = true`: a run over clips of their natural lengths ships no padding, says
so on its epoch line, learns, and evaluates and predicts from the packed checkpoint."""

import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from testmedia import av_train_toml, decoded_clips

from polymodal.adapters import collate
from polymodal.cli import main
from polymodal.datasets.build import build
from polymodal.datasets.synthetic import encode_audio
from polymodal.errors import ConfigError
from polymodal.pipelines.stream.stream import Stream
from polymodal.pipelines.train.config import load_config
from polymodal.pipelines.train.tasks import make_task
from polymodal.pipelines.train.trainer import Trainer


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    """Two classes of noisy tones (low, high) of 0.2 to 1.0 s, flac at 8 kHz."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    for i in range(48):
        label = i % 2
        seconds = rng.uniform(0.2, 1.0)
        t = np.arange(round(seconds * 8000)) / 8000
        pitch = (300 if label == 0 else 1200) * rng.uniform(0.95, 1.05)
        wave = 0.4 * np.sin(2 * np.pi * pitch * t) + rng.normal(0, 0.05, len(t))
        out = root / "clips" / f"class{label}" / f"tone{i:03d}.flac"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_audio(wave[:, None].astype(np.float32), 8000))
    quiet = {"progress": False, "print_": lambda _: None}
    build(root / "clips", root / "data", split="val=0.25", shuffle=True, shard_samples=12, **quiet)
    return root / "data"


def _toml(data: Path, run_dir: Path, packing: bool) -> str:
    return textwrap.dedent(f"""
        run_dir = "{run_dir}"
        epochs = 4
        [data]
        train = "{data / "train"}"
        val = "{data / "val"}"
        batch_size = 6
        packing = {str(packing).lower()}
        [data.fields.audio]
        adapter = "audio"
        extensions = ["flac"]
        options = {{sample_rate = 8000, duration = "full", max_seconds = 1.0}}
        [data.fields.audio.encoder]
        features = "logmel"
        n_mels = 16
        hop = 80
        n_fft = 200
        patch = [4, 8]
        num_bands = 4
        [model]
        num_latents = 8
        latent_dim = 32
        num_self_attends_per_block = 1
        self_heads = 2
        [optim]
        lr = 0.003
        warmup_steps = 2
    """)


def test_a_packed_run_ships_no_padding_and_learns(tmp_path, tones, caplog, capsys):
    summaries = {}
    for packing in (False, True):
        path = tmp_path / f"{packing}.toml"
        path.write_text(_toml(tones, tmp_path / str(packing), packing))
        with caplog.at_level(logging.INFO, logger="polymodal.train"):
            summaries[packing] = Trainer(load_config(path), progress=False).run()
    assert summaries[False]["padding"] > 0.2  # lengths 0.2–1.0 s padded to the longest
    assert summaries[True]["padding"] == 0.0
    assert summaries[True]["val_accuracy"] >= 0.9, summaries[True]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 8 and all("tokens/s" in line for line in lines)
    assert "padding 0%" not in lines[0] and all("padding 0%" in line for line in lines[4:])
    text = (tmp_path / "True" / "metrics.jsonl").read_text()
    records = [json.loads(x) for x in text.splitlines()]
    assert all(r["padding"] == 0.0 and r["tokens_per_s"] > 0 for r in records if "loss" in r)
    path = tmp_path / "True.toml"
    best = str(tmp_path / "True" / "checkpoints" / "best.pt")
    assert main(["evaluate", str(path), "--checkpoint", best, "--out", str(tmp_path / "e")]) == 0
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert evaluated["accuracy"] >= 0.9
    files = sorted((tones.parent / "clips").glob("class*/*.flac"))[::7]
    capsys.readouterr()
    assert main(["predict", best, *map(str, files)]) == 0
    predicted = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    tops = {Path(p["key"]).parent.name: p["top"][0]["name"] for p in predicted}
    assert len(predicted) == len(files) and all(name == top for name, top in tops.items())


def test_a_run_with_length_buckets_pays_little_padding_and_learns(tmp_path, tones):
    path = tmp_path / "b.toml"
    path.write_text(_toml(tones, tmp_path / "run", False))
    for sets, padding in (([], 0.1), (["data.max_tokens=40000"], 0.15)):
        run = f"run_dir={tmp_path / f'run{len(sets)}'}"
        config = load_config(path, ["data.buckets=auto", "data.lookahead=6", run, *sets])
        assert config.data.buckets == "auto"
        summary = Trainer(config, progress=False).run()
        assert summary["padding"] < padding  # padded alike, 0.2 at least (the test above)
        assert summary["val_accuracy"] >= 0.9, summary
    with pytest.raises(ConfigError, match=r"data\.train: buckets: 'auto' or ascending"):
        Trainer(load_config(path, ["data.buckets=[300, 200]"]), progress=False)
    with pytest.raises(ConfigError, match=r"data\.max_tokens: cuts batches of length buckets"):
        load_config(path, ["data.max_tokens=40000"])


def test_packing_refuses_mixing_and_autoencoding_natural_lengths(tmp_path, tones, capsys):
    path = tmp_path / "p.toml"
    path.write_text(_toml(tones, tmp_path / "run", True))
    # clips of their natural lengths have no grid to reconstruct: one line, exit 2
    assert main(["train", str(path), "--set", "task=autoencode"]) == 2
    assert "data.fields.audio: task autoencode reconstructs a fixed grid" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"augment\.mixup: mixes samples"):
        load_config(path, ["augment.mixup=0.4"])
    with pytest.raises(ValueError, match=r"packed names \['video'\], not fields \(\['audio'\]\)"):
        Stream(tones / "train", {"audio": "audio"}, packed=["video"])


def _decoded_clips(tmp_path: Path, task: str, *sets: str) -> tuple[Any, list[dict]]:
    """The task of a small audio-video run and its fields decoded from six real mp4 clips."""
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(tmp_path / "data", tmp_path / "run", task=task))
    made = make_task(load_config(path, ["data.packing=true", *sets]))
    samples = decoded_clips(tmp_path / "clips", made.fields())
    return made, samples


@pytest.mark.parametrize(
    "task, fusion",
    [
        ("contrastive", "early"),
        ("correspondence", "early"),
        ("correspondence", "late"),
        ("autoencode", "early"),
    ],
)
def test_packed_batches_give_the_padded_loss(tmp_path, task, fusion):
    """Contrastive embeds each field apart, correspondence re-pairs rows (`Field.rows` of a
    packed field), early or late fused, and the autoencoder decodes its fixed grids from
    packed latents: all through the packed path, on real mp4 clips, equal to padding."""
    made, samples = _decoded_clips(tmp_path, task, f"fusion={fusion}", "subsample=40")
    padded, packed = collate(samples), collate(samples, packed=made.inputs)
    assert all(packed[n].offsets is not None for n in made.inputs)
    torch.manual_seed(0)
    model = made.model().eval()
    losses, sums = [], []
    with torch.no_grad():
        for b in (padded, packed):
            torch.manual_seed(1)  # the autoencoder's query subset
            losses.append(made.loss(model, b, np.random.default_rng(3)))
            sums.append(made.sums(model, b))
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0)
    assert sums[1].keys() == sums[0].keys()
    for name, value in sums[0].items():
        assert sums[1][name] == pytest.approx(value, rel=1e-5, abs=1e-5), name


def test_a_packed_clip_shorter_than_the_grid_is_reconstructed_on_the_grid(tmp_path):
    """Clips of 4 frames and 1 s packed for an autoencoder of 8 frames and 1.5 s: the targets
    are the padded batch's (the clip, then zeros), and the packed batch trains and
    evaluates on the grid. (Its loss is not the padded one: positions span each sample's own
    grid, see `pad_to_patches`, and a padded sample's span the batch's.)"""
    longer = ["data.fields.video.options.num_frames=8", "data.fields.audio.options.duration=1.5"]
    made, samples = _decoded_clips(tmp_path, "autoencode", *longer)
    padded, packed = collate(samples), collate(samples, packed=made.inputs)
    for name, output in made.outputs.items():
        assert len(packed[name].values) < padded[name].mask.numel()  # each clip short of it
        torch.testing.assert_close(output.target(packed[name]), output.target(padded[name]))
    model = made.model()
    loss = made.loss(model, packed)
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None for p in model.encoder.parameters())
    with torch.no_grad():
        sums = made.sums(model.eval(), packed)
    assert all(sums[f"{n}_n"] == padded[n].values.numel() for n in made.outputs)

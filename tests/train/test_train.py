"""The trainer on real shards of real clips: config errors, learning, exact resume after
SIGKILL, a checkpoint on SIGTERM, two-process evaluation, and the demo."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from testdata import REPO, torchrun
from testmedia import av_train_toml

from polymodal.cli import main
from polymodal.datasets.build import build
from polymodal.datasets.index import ShardIndex
from polymodal.errors import ConfigError
from polymodal.pipelines.train.config import load_config
from polymodal.pipelines.train.demo import make_clips
from polymodal.pipelines.train.trainer import Trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    make_clips(root / "clips", samples=48, classes=2)
    build(
        root / "clips",
        root / "data",
        split="val=0.25",
        shuffle=True,
        shard_samples=8,
        progress=False,
        print_=lambda _: None,
    )
    return root / "data"


def test_invalid_configs_fail_naming_the_field(tmp_path, data):
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(data, tmp_path / "run"))
    assert load_config(path).data.fields["video"].options["size"] == 16
    cases = [
        (["model.num_latents=many"], "model.num_latents: expected int"),
        (["model.latents=3"], "model.latents: unknown field"),
        (["task=regression"], "task: expected one of classification"),
        (["data.batch_size=0"], "data.batch_size: must be positive"),
        (["optim.lr=fast"], "optim.lr: expected float"),
        (["data.step_threads=-1"], "data.step_threads: must be at least 0"),
        (["data.worker_nice=20"], "data.worker_nice: must be 0 to 19"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(path, overrides)
    with pytest.raises(ConfigError, match=r"data\.train"):
        load_config(None)
    assert main(["train", str(path), "--set", "epochs=0"]) == 2


@pytest.mark.slow
def test_training_learns_and_writes_its_run(tmp_path, data):
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(data, tmp_path / "run", epochs=6))
    summary = Trainer(load_config(path), progress=False).run()
    run = tmp_path / "run"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] / 4
    assert summary["val_accuracy"] >= 0.9
    assert summary["val_samples"] == ShardIndex.load(data / "val").samples
    assert 0 <= summary["data_wait"] <= 1
    assert json.loads((run / "summary.json").read_text())["steps"] == summary["steps"]
    assert json.loads((run / "config.json").read_text())["epochs"] == 6
    assert (run / "metrics.png").stat().st_size > 1000
    assert len(list((run / "checkpoints").glob("step-*.pt"))) <= 2  # rotated
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["best"] == max(r["val_accuracy"] for r in records if "val_accuracy" in r)


def test_the_step_runs_on_step_threads_and_gives_them_back(tmp_path, data):
    """`data.step_threads = 1` beside a DataLoader worker: every forward of the training run
    sees one torch thread, and the process has its own count again afterwards."""
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(data, tmp_path / "run", epochs=1))
    config = load_config(path, ["data.workers=1", "data.step_threads=1"])
    before = torch.get_num_threads()
    trainer = Trainer(config, progress=False)
    seen: list[int] = []
    trainer.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    trainer.run()
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


def _final_weights(run: Path, part: str = "model") -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(last, weights_only=True)
    return state["model"] if part == "model" else state["ema"]["weights"]


@pytest.mark.slow
@pytest.mark.parametrize("augmented", [False, True], ids=["plain", "augmented"])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tmp_path, data, augmented):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for run in (reference, killed):
        (tmp_path / f"{run.name}.toml").write_text(
            av_train_toml(data, run, augmented, max_steps=14, checkpoint_every=3, epochs=4)
        )
    command = [sys.executable, "-m", "polymodal", "train"]
    subprocess.run([*command, str(tmp_path / "reference.toml")], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*command, str(tmp_path / "killed.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step-00000006.pt").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (killed / "summary.json").exists()
    subprocess.run(
        [*command, str(tmp_path / "killed.toml"), "--resume"], check=True, capture_output=True
    )
    for part in ("model", "ema") if augmented else ("model",):
        want, got = _final_weights(reference, part), _final_weights(killed, part)
        assert want.keys() == got.keys()
        assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
    assert json.loads((killed / "summary.json").read_text())["steps"] == 14


@pytest.mark.slow
def test_compiled_training_follows_the_eager_loss_curve(tmp_path, data):
    losses = {}
    for compiled in (False, True):
        run = tmp_path / f"run-{compiled}"
        path = tmp_path / f"{compiled}.toml"
        path.write_text(
            av_train_toml(data, run, max_steps=4, compile=compiled, eval_every_epoch=False)
        )
        Trainer(load_config(path), progress=False).run()
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = [r["loss"] for r in records if "loss" in r]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint(tmp_path, data):
    (tmp_path / "c.toml").write_text(
        av_train_toml(
            data, tmp_path / "run", max_steps=10_000, checkpoint_every=10_000, epochs=1000
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "polymodal", "train", str(tmp_path / "c.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and json.loads(out)["stopped_at"] >= 3
    checkpoints = list((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    assert len(checkpoints) == 1
    assert torch.load(checkpoints[0], weights_only=True)["step"] == json.loads(out)["stopped_at"]


@pytest.mark.slow
def test_two_process_evaluation_counts_every_sample_once(tmp_path, data):
    (tmp_path / "c.toml").write_text(av_train_toml(data, tmp_path / "run", max_steps=3, epochs=1))
    out = torchrun(["-m", "polymodal", "train", str(tmp_path / "c.toml")], timeout=240).stdout
    summary = json.loads(out)  # one document for the run, from rank 0 (once one per rank)
    assert summary["val_samples"] == ShardIndex.load(data / "val").samples


@pytest.mark.slow
def test_demo_reaches_high_accuracy_quickly(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--samples", "96", "--epochs", "4"]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("validation accuracy ")[1].split()[0])
    assert accuracy >= 0.9 and "run directory" in out


@pytest.mark.slow
def test_multilabel_training_reports_map(tmp_path, data):
    src = tmp_path / "src"
    make_clips(src, samples=48, classes=4)
    for clip in src.rglob("*.mp4"):  # two labels each: parity of the class, and its half
        k = int(clip.parent.name.removeprefix("class"))
        clip.with_suffix(".cls").write_text(f"{k % 2},{2 + k // 2}")
    build(src, tmp_path / "data", split="val=0.25", progress=False, print_=lambda _: None)
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(tmp_path / "data", tmp_path / "run", epochs=8))
    config = load_config(
        path, ["task=multilabel", "data.num_classes=4", "optim.name=lamb", "optim.lr=0.01"]
    )
    summary = Trainer(config, progress=False).run()
    assert summary["val_map"] > 0.8


def test_mean_average_precision_by_hand():
    from polymodal.pipelines.train.tasks import mean_average_precision

    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6]])
    truths = torch.tensor([[1, 0], [0, 1], [1, 0]])
    # class 0: ranks 1 (hit), 2 (miss), 3 (hit) → (1 + 2/3) / 2; class 1: rank 1 hit → 1
    assert mean_average_precision(scores, truths) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_lamb_minimises():
    from polymodal.pipelines.train.optim import Lamb

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8))
    target = torch.randn(8)
    optimiser = Lamb([w], lr=0.05)
    first = None
    for _ in range(200):
        loss = (w - target).square().sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first or loss.item()
    assert loss.item() < first / 100


@pytest.mark.parametrize("recipe", sorted(REPO.glob("examples/*.toml")))
def test_recipes_are_valid_configs(recipe):
    from polymodal.pipelines.train.trainer import build_model

    config = load_config(recipe)
    assert config.data.fields and config.run_dir.startswith("runs/")
    if config.data.num_classes == 0:  # the small recipes take theirs from the data, not here
        config.data.num_classes = 10
    with torch.device("meta"):
        model, adapters = build_model(config)
    assert set(adapters) == set(config.data.fields) and sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_autoencoding_lowers_the_reconstruction_error(tmp_path, data):
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(data, tmp_path / "run", epochs=6))
    config = load_config(path, ["task=autoencode", "subsample=128", "loss_weights.audio=2.0"])
    trainer = Trainer(config, progress=False)
    before = trainer.evaluate()
    summary = trainer.run()
    assert summary["val_video_mse"] < before["val_video_mse"] / 2
    assert summary["val_audio_mse"] < before["val_audio_mse"]
    assert summary["val_video_psnr"] > before["val_video_psnr"]


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
def test_masked_byte_language_modelling_learns(tmp_path, packing):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):  # a tiny language: each line repeats one word, 3 to 8 times
        word = ["abc", "xyz", "pqr"][i % 3]
        (src / f"t{i:03d}.txt").write_text(" ".join([word] * (3 + i % 6)))
    build(src, tmp_path / "data", split="val=0.2", progress=False, print_=lambda _: None)
    config = load_config(
        None,
        [
            f"data.train={tmp_path / 'data' / 'train'}",
            f"data.val={tmp_path / 'data' / 'val'}",
            "data.fields.text.adapter=text",
            "data.fields.text.options.max_length=32",
            "data.fields.text.encoder.dim=32",
            "data.batch_size=8",
            "task=mlm",
            "epochs=30",
            "mask_probability=0.3",
            "model.num_latents=8",
            "model.latent_dim=32",
            "model.self_heads=2",
            "model.num_self_attends_per_block=1",
            "optim.lr=0.003",
            f"run_dir={tmp_path / 'run'}",
            f"data.packing={str(packing).lower()}",
        ],
    )
    summary = Trainer(config, progress=False).run()
    assert summary["val_masked_accuracy"] > 0.5  # chance is 1/262
    assert (summary["padding"] == 0) == packing


@pytest.mark.slow
@pytest.mark.parametrize(
    ("before", "after", "buckets"), [(2, 1, False), (1, 2, False), (2, 1, True)]
)
def test_resume_after_changing_the_number_of_processes(tmp_path, data, before, after, buckets):
    """Checkpoints hold every rank's loader state; `train --resume` under another
    `--nproc-per-node` goes on with the rest of the epoch (`elastic`) to the planned end, with
    length buckets too (every rank's begun groups read from the checkpoint)."""
    config = tmp_path / "c.toml"
    config.write_text(
        av_train_toml(data, tmp_path / "run", max_steps=3, epochs=1, checkpoint_every=3)
    )

    def train(processes: int, *extra: str) -> subprocess.CompletedProcess:
        grouped = ["--set", "data.buckets=auto", "--set", "data.lookahead=2"] if buckets else []
        command = ["-m", "polymodal", "train", str(config), "--set", "max_steps=5"]
        return torchrun([*command, *grouped, *extra], processes, check=False)

    first = train(before, "--set", "max_steps=3")
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))[-1]
    streams = torch.load(checkpoint, weights_only=True)["streams"]
    assert [s["rank"] for s in streams] == list(range(before))
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:  # a fresh start would remove the file, a resume keeps it
        f.write(json.dumps({"step": 3, "marker": True}) + "\n")
    resumed = train(after, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "delivered again whole" not in resumed.stderr  # every rank's groups were read
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 5
    records = [json.loads(line) for line in metrics.open()]
    assert any(r.get("marker") for r in records)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]
    final = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))[-1]
    assert [s["rank"] for s in torch.load(final, weights_only=True)["streams"]] == list(
        range(after)
    )

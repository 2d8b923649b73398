"""A trained model's everyday path: export it, fine-tune it on new classes (and from a Hugging
Face Perceiver), score it on any split, run it over new files, reload its config; bad
checkpoints are refused with a reason. Real runs of the `polymodal` command on built datasets."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testmedia import image_train_toml

from polymodal.cli import main
from polymodal.datasets.build import build
from polymodal.datasets.synthetic import encode_image
from polymodal.errors import ConfigError
from polymodal.pipelines.train.config import load_config
from polymodal.pipelines.train.tasks import mean_average_precision
from polymodal.pipelines.train.trainer import Trainer
from polymodal.pipelines.train.weights import CheckpointError

LEVELS = {"dark": 30, "mid": 128, "light": 225}


def _images(root: Path, classes: list[str], per_class: int = 12) -> Path:
    """Class folders of 8×8 PNGs whose brightness is the class, with a little noise."""
    rng = np.random.default_rng(len(classes))
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-20, 20, (8, 8, 3))
            pixels = np.clip(LEVELS[name] + noise, 0, 255).astype(np.uint8)
            (root / name / f"{i:02d}.png").write_bytes(encode_image(pixels, "PNG"))
    return root


def _config(path: Path, data: Path, run: Path, classes: int, **top: object) -> Path:
    top = {"max_steps": 12, "checkpoint_every": 6, **top}
    return image_train_toml(path, data / "train", data / "val", run, classes, **top)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    for name, classes in (("two", ["dark", "light"]), ("three", ["dark", "light", "mid"])):
        _images(root / f"src-{name}", classes)
        build(
            root / f"src-{name}",
            root / f"data-{name}",
            split="val=0.25",
            shard_samples=8,
            progress=False,
            print_=lambda _: None,
        )
    config = _config(root / "a.toml", root / "data-two", root / "run-a", 2)
    assert main(["train", str(config)]) == 0
    return {
        "root": root,
        "run": root / "run-a",
        "two": root / "data-two",
        "three": root / "data-three",
    }


def _last_checkpoint(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step-*.pt"))[-1]


def test_export_writes_safetensors_and_refuses_hf_for_a_run(runs, tmp_path, capsys):
    from safetensors.torch import load_file

    assert main(["export", str(runs["run"]), str(tmp_path / "out")]) == 0
    weights = load_file(str(tmp_path / "out/model.safetensors"))
    best = torch.load(runs["run"] / "checkpoints/best.pt", weights_only=True)["model"]
    assert weights.keys() == best.keys() and all(torch.equal(weights[k], best[k]) for k in best)
    assert json.loads((tmp_path / "out/config.json").read_text())["data"]["num_classes"] == 2
    assert main(["export", str(runs["run"]), str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert "no transformers class" in capsys.readouterr().err


def test_fine_tuning_on_new_classes_loads_the_trunk(runs, tmp_path, capsys):
    root = runs["root"]
    base = dict(init=str(runs["run"]))
    config = _config(tmp_path / "b.toml", runs["three"], tmp_path / "run-b", 3, **base)
    with pytest.raises(CheckpointError, match="init_mismatch"):  # a new class count: say so
        Trainer(load_config(config), progress=False)
    assert main(["train", str(config)]) == 2
    assert 'set init_mismatch = "reinit"' in capsys.readouterr().err
    tuned = _config(
        tmp_path / "c.toml",
        runs["three"],
        tmp_path / "run-c",
        3,
        **base,
        init_mismatch="reinit",
        freeze=["encoder.cross_attends"],
    )
    tuned.write_text(
        tuned.read_text().replace("warmup_steps = 1", "warmup_steps = 1\nhead_lr = 0.05")
    )
    trainer = Trainer(load_config(tuned), progress=False)
    source = torch.load(runs["run"] / "checkpoints/best.pt", weights_only=True)["model"]
    state = trainer.model.state_dict()
    assert torch.equal(state["encoder.latents"], source["encoder.latents"])  # the trunk
    report = trainer.init_report
    assert report.reinitialised and all("decoder" in n for n in report.reinitialised)
    assert "encoder.latents" in report.loaded
    groups = [(g["lr"], g["weight_decay"] > 0) for g in trainer.optimizer.param_groups]
    assert groups == [(0.01, True), (0.01, False), (0.05, True), (0.05, False)]  # decay apart
    frozen = {k: v.clone() for k, v in state.items() if k.startswith("encoder.cross_attends")}
    assert frozen and all(
        not p.requires_grad
        for n, p in trainer.model.named_parameters()
        if n.startswith("encoder.cross_attends")
    )
    summary = trainer.run()
    assert summary["steps"] == 12
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # frozen stayed
    assert not torch.equal(after["encoder.latents"], source["encoder.latents"])  # trained on
    init = json.loads((tmp_path / "run-c/init.json").read_text())
    assert init["loaded"] and init["reinitialised"] == report.reinitialised
    with pytest.raises(ConfigError, match="freeze: no parameter starts with 'nope'"):
        Trainer(load_config(tuned, ["freeze=['nope']"]), progress=False)
    with pytest.raises(ConfigError, match=r"'decoder' would keep \d+ parameters at their random"):
        Trainer(load_config(tuned, ["freeze=['decoder']"]), progress=False)  # not loaded
    assert root.exists()


def test_init_from_a_safetensors_export_and_a_hugging_face_folder(runs, tmp_path):
    transformers = pytest.importorskip("transformers")
    assert main(["export", str(runs["run"]), str(tmp_path / "exported")]) == 0
    exported = tmp_path / "exported/model.safetensors"
    config = _config(tmp_path / "d.toml", runs["two"], tmp_path / "run-d", 2, init=str(exported))
    trainer = Trainer(load_config(config), progress=False)
    assert not trainer.init_report.reinitialised and not trainer.init_report.new
    folder = Trainer(load_config(config, [f"init='{exported.parent}'"]), progress=False)
    assert folder.init_report.loaded == trainer.init_report.loaded  # the export's folder too
    with pytest.raises(ConfigError, match="freezes every parameter"):
        Trainer(load_config(config, ["freeze=['']"]), progress=False)
    hf_config = transformers.PerceiverConfig(
        num_latents=4,
        d_latents=16,
        d_model=261,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        num_labels=3,
        image_size=8,
    )
    hf = transformers.PerceiverForImageClassificationFourier(hf_config)
    hf.save_pretrained(tmp_path / "hf")
    config = _config(
        tmp_path / "e.toml",
        runs["two"],
        tmp_path / "run-e",
        2,
        init=str(tmp_path / "hf"),
        init_mismatch="reinit",
    )
    trainer = Trainer(load_config(config), progress=False)
    loaded = trainer.init_report.loaded
    assert "encoder.latents" in loaded and any(n.startswith("encoder.block.0.") for n in loaded)
    expected = hf.state_dict()["perceiver.embeddings.latents"]
    assert torch.equal(trainer.model.state_dict()["encoder.latents"], expected)


def test_evaluate_and_predict_a_trained_run(runs, tmp_path, capsys):
    run = runs["run"]
    checkpoint = _last_checkpoint(run)
    argv = ["evaluate", str(run / "config.json"), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert metrics["accuracy"] == summary["val_accuracy"]  # the numbers training got
    assert metrics["samples"] == summary["val_samples"] and "top5" not in metrics  # 2 classes
    with Image.open(tmp_path / "eval/confusion.png") as png:  # readable: title and names fit
        assert min(png.size) >= 400
    assert json.loads((tmp_path / "eval/metrics.json").read_text()) == metrics
    assert main([*argv, "--split", "train", "--out", str(tmp_path / "eval-train")]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"].endswith("train")

    src = runs["root"] / "src-two"
    files = [str(src / "dark/00.png"), str(src / "light/00.png"), str(tmp_path / "nothing.png")]
    (tmp_path / "nothing.png").write_bytes(b"not a png")
    assert main(["predict", str(checkpoint), *files, "--top-k", "5"]) == 0
    by_key = {r["key"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(by_key) == {f.removesuffix(".png") for f in files}  # one record per sample
    assert "error" in by_key[str(tmp_path / "nothing")]
    for name in ("dark", "light"):
        top = by_key[str(src / name / "00")]["top"]
        assert len(top) == 2 and {t["name"] for t in top} == {"dark", "light"}  # 2 classes
    assert main(["predict", str(run), str(runs["two"] / "val")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == summary["val_samples"]
    assert all(abs(sum(t["score"] for t in json.loads(x)["top"]) - 1) < 1e-5 for x in lines)
    # `polymodal predict ... | head`: a reader that has gone ends it quietly, as SIGPIPE would
    read, write = os.pipe()
    os.close(read)  # gone before the first line
    argv = [
        sys.executable,
        "-m",
        "polymodal",
        "--quiet",
        "predict",
        str(run),
        str(runs["two"] / "val"),
    ]
    done = subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True, check=False)
    os.close(write)
    assert done.returncode == 141 and "Broken pipe" not in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


def test_a_run_config_json_reloads(runs, tmp_path):
    argv = ["train", str(runs["run"] / "config.json"), "--set", "max_steps=2"]
    assert main([*argv, "--set", f"run_dir='{tmp_path / 'again'}'"]) == 0
    assert json.loads((tmp_path / "again/summary.json").read_text())["steps"] == 2


def test_bad_checkpoints_are_refused_with_the_reason(runs, tmp_path, capsys):
    config = str(runs["run"] / "config.json")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(_last_checkpoint(runs["run"]).read_bytes()[:2000])
    marker = tmp_path / "PWNED"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    exploit = tmp_path / "exploit.pt"
    exploit.write_bytes(pickle.dumps({"model": Exploit()}, protocol=2))
    other = tmp_path / "other.pt"
    torch.save({"model": {"encoder.latents": torch.zeros(3, 3)}}, other)
    cases = [(truncated, "not a readable checkpoint"), (exploit, "refused: it holds more than")]
    cases.append((other, "these weights are of another model (missing: "))
    for path, message in cases:
        assert main(["evaluate", config, "--checkpoint", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_map_is_scikit_learns_with_ties():
    """Tied scores: scikit-learn's step-wise AP (2/3 here), not an order-dependent one."""
    scores = torch.tensor([[0.5, 0.3, 0.0], [0.5, 0.3, 0.0], [0.5, 0.9, 0.0], [0.1, 0.3, 0.0]])
    truths = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    # class 0: three tied at 0.5, two of them positive → precision 2/3 at recall 1 → 2/3;
    # class 1: a negative at 0.9 first, then its positive tied with two negatives at 0.3 →
    # precision 1/4 at recall 1 → 1/4; class 2 has no positive and is left out
    assert mean_average_precision(scores, truths) == pytest.approx((2 / 3 + 1 / 4) / 2)


def test_predict_writes_reconstructions_of_an_autoencoder(runs, tmp_path, capsys):
    config = _config(tmp_path / "ae.toml", runs["two"], tmp_path / "run-ae", 2, task="autoencode")
    config.write_text(config.read_text().replace("max_steps = 12", "max_steps = 4"))
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    image = str(runs["root"] / "src-two/dark/03.png")
    assert main(["predict", str(tmp_path / "run-ae"), image]) == 2  # needs --out
    assert "pass --out" in capsys.readouterr().err
    out = tmp_path / "reconstructions"
    assert main(["predict", str(tmp_path / "run-ae"), image, "--out", str(out)]) == 0
    (record,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    pixels = np.load(record["reconstructions"]["image"], allow_pickle=False)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8  # the field's own form


def test_top5_is_reported_only_past_five_classes():
    from polymodal.pipelines.train.tasks import make_task

    sums = {"correct": 3, "top5": 4, "total": 4}
    for classes, has_top5 in ((5, False), (6, True)):
        config = load_config(None, ["data.train=x", "data.fields.i.adapter='image'"])
        config.data.num_classes = classes
        assert ("val_top5" in make_task(config).metrics(sums)) == has_top5

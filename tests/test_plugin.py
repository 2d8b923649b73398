"""A new modality from a real installed package, with no change to polymodal: the
`polymodal-depth` plugin (tests/plugins/polymodal-depth, one module and an entry point) adds
16-bit depth maps as `.depth.png`, and every command takes them through the registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PLUGIN = Path(__file__).parent / "plugins" / "polymodal-depth"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plugin pip-installed into this venv (a real wheel build, offline), then removed."""
    source = tmp_path_factory.mktemp("plugin") / "polymodal-depth"
    shutil.copytree(PLUGIN, source)  # setuptools writes build files beside the sources
    _pip("uninstall", "-y", "polymodal-depth")  # left by a killed run
    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    try:
        yield
    finally:
        _pip("uninstall", "-y", "polymodal-depth")


def _polymodal(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "polymodal", *map(str, args)], capture_output=True, text=True
    )
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def _depth_png(path: Path, millimetres: np.ndarray) -> None:
    Image.fromarray(millimetres.astype(np.uint16)).save(path)  # mode I;16


def _depth_folder(root: Path, per_class: int = 24) -> Path:
    """Two classes of real 16-bit PNGs: a near wall (0.4–1.6 m) and a far one (5–8 m), each a
    random tilted plane with sensor noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:32, 0:32] / 32
    for name, (lo, hi) in {"near": (400, 1600), "far": (5000, 8000)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = rng.uniform(lo, hi)
            plane = base + rng.uniform(-200, 200) * x + rng.uniform(-200, 200) * y
            _depth_png(root / name / f"{name}{i:02d}.depth.png", plane + rng.normal(0, 20, x.shape))
    return root


def _config(path: Path, ds: Path, run: Path, task: str) -> Path:
    path.write_text(
        textwrap.dedent(f"""
        task = "{task}"
        run_dir = "{run}"
        epochs = 8
        subsample = 64
        [data]
        train = "{ds / "train"}"
        val = "{ds / "val"}"
        num_classes = 2
        batch_size = 8
        [data.fields.depth]
        adapter = "depth"
        options = {{size = 16}}
        encoder = {{patch_size = 4, num_bands = 4}}
        [model]
        num_latents = 8
        latent_dim = 32
        num_self_attends_per_block = 1
        self_heads = 2
        [optim]
        lr = 0.003
        warmup_steps = 4
        """)
    )
    return path


@pytest.mark.slow
def test_a_plugin_modality_goes_through_every_command(plugin, tmp_path):
    src = _depth_folder(tmp_path / "src")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(src / "near" / "photo.png")  # an image stays one
    ds = tmp_path / "ds"
    _polymodal("build", src, ds, "--split", "val=0.25")
    index = json.loads((ds / "train" / "index.json").read_text())
    assert index["fields"]["depth.png"] == "depth"  # not taken for an image
    assert index["fields"]["png"] == "image"

    report = json.loads(
        _polymodal("inspect", ds / "train", "--json", "--preview", tmp_path / "sheet.png").stdout
    )
    stats = report["fields"]["depth.png"]["stats"]
    assert stats["width"]["max"] == 32 and 400 < stats["max_mm"]["min"] < stats["max_mm"]["max"]
    assert Image.open(tmp_path / "sheet.png").size[0] > 100
    assert _polymodal("validate", ds / "train").returncode == 0

    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    _depth_png(bad / "x" / "good.depth.png", np.full((8, 8), 900))
    Image.new("L", (8, 8)).save(bad / "x" / "flat.depth.png")  # 8-bit: not a depth map
    _polymodal("build", bad, tmp_path / "bad-ds")
    checked = _polymodal("validate", tmp_path / "bad-ds", "--json", ok=False)
    assert checked.returncode == 1
    (problem,) = json.loads(checked.stdout)["problems"]
    assert problem["key"] == "x/flat" and "16-bit" in problem["reason"]

    batch = subprocess.run(
        [
            sys.executable,
            "-c",
            "from polymodal.pipelines.stream.stream import Stream; "
            f"b = next(iter(Stream({str(ds / 'train')!r}, {{'depth': 'depth'}}, batch_size=4)));"
            "print(b['depth'].values.dtype, tuple(b['depth'].values.shape))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert batch == ["torch.int16", "(4,", "256,", "1)"]

    for task in ("classification", "autoencode"):
        run = tmp_path / f"run-{task}"
        _polymodal("train", _config(tmp_path / f"{task}.toml", ds, run, task))
        summary = json.loads((run / "summary.json").read_text())
        if task == "classification":
            assert summary["val_accuracy"] >= 0.9
        else:
            records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            mse = [r["val_depth_mse"] for r in records if "val_depth_mse" in r]
            assert len(mse) == 8 and mse[-1] < mse[0] / 2, mse  # it learns to rebuild depth

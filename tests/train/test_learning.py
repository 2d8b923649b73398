"""The small-data recipes learn real recordings: spoken digits made with espeak-ng voices and
system fonts (`polymodal.datasets.spoken`), trained with the shipped example configs, changed
only by `--set`, scored on samples they never trained on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from testdata import REPO

from polymodal.datasets.build import build
from polymodal.datasets.spoken import SpokenDigits, make_spoken_digits, speak
from polymodal.pipelines.train.config import load_config
from polymodal.pipelines.train.trainer import Trainer

EXAMPLES = REPO / "examples"
CLASSES = 4


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    make_spoken_digits(root / "clips", 240, SpokenDigits(classes=CLASSES))
    quiet = {"progress": False, "print_": lambda _: None}
    build(root / "clips", root / "data", split="val=0.25", shuffle=True, **quiet)
    return root / "data"


def test_espeak_speaks_each_word_differently():
    one, seven = speak("one", "en-us", 50, 170), speak("seven", "en-us", 50, 170)
    assert 0.2 < len(one) / 22050 < 1.5 and len(seven) != len(one)
    assert abs(one).max() > 0.1


@pytest.mark.slow
def test_audio_recipe_learns_spoken_digits(tmp_path, digits, caplog):
    config = load_config(
        EXAMPLES / "audio_small.toml",
        [
            f"data.train={digits / 'train'}",
            f"data.val={digits / 'val'}",
            f"data.num_classes={CLASSES}",
            f"run_dir={tmp_path / 'run'}",
            "data.workers=0",
            "epochs=15",
        ],
    )
    with caplog.at_level(logging.INFO, logger="polymodal.train"):
        summary = Trainer(config, progress=False).run()
    assert summary["val_accuracy"] >= 0.6, summary  # chance: 0.25
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 15 and "val_accuracy" in epochs[-1] and "samples/s" in epochs[-1]
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 10_000

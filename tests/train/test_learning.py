"""The small-data recipes learn real recordings: spoken digits made with espeak-ng voices and
system fonts (`polymodal.datasets.spoken`), trained with the shipped example configs, changed
only by `--set`, scored on samples they never trained on."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
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


def test_the_match_mode_needs_both_senses(tmp_path):
    """Half the samples say the digit they show; either sense alone is uniform over the digits
    in both classes, so it tells nothing of the class."""
    spec = SpokenDigits(classes=CLASSES, mode="match")
    draws = [spec.sample(i, seed=0) for i in range(8000)]
    assert [name for name, _, _ in draws[:4]] == ["same", "different", "same", "different"]
    assert all((spoken == drawn) == (name == "same") for name, spoken, drawn in draws)
    for name in ("same", "different"):
        for sense in (1, 2):
            counts = np.bincount([d[sense] for d in draws if d[0] == name], minlength=CLASSES)
            assert np.abs(counts / counts.mean() - 1).max() < 0.15, (name, sense, counts)
    make_spoken_digits(tmp_path, 4, spec)
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.mp4"))
    assert made == [f"different/different-0-00000{i}.mp4" for i in (1, 3)] + [
        f"same/same-0-00000{i}.mp4" for i in (0, 2)
    ]
    with pytest.raises(ValueError, match="mode must be 'digit' or 'match'"):
        SpokenDigits(mode="both")


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

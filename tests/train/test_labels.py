"""The classes a run learns come from its data: `num_classes` from the index when not given,
and a config that disagrees with its datasets, or train and validation sets with different
classes, is one line before any model is built."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testdata import two_class_pngs
from testmedia import image_train_toml

from polymodal import build, load_config
from polymodal.cli import main
from polymodal.errors import ConfigError
from polymodal.pipelines.train.labels import settle_classes


def _class_folders(root: Path, classes: list[str], per_class: int = 4) -> Path:
    """Class folders of 8×8 PNGs whose brightness is the class."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((8, 8, 3), 30 + 60 * c + i, np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{i}.png")
    return root


def _built(tmp_path: Path, name: str, classes: list[str]) -> Path:
    out = tmp_path / name
    build(_class_folders(tmp_path / f"{name}-src", classes), out, progress=False, print_=str)
    return out


def _config(tmp_path: Path, train: Path, val: Path | str = "", classes: int | None = None):
    path = image_train_toml(tmp_path / "train.toml", train, val, tmp_path / "run", epochs=1)
    if classes is None:  # leave num_classes to the data
        lines = path.read_text().splitlines()
        path.write_text("\n".join(x for x in lines if not x.startswith("num_classes")))
    else:
        path.write_text(path.read_text().replace("num_classes = 2", f"num_classes = {classes}"))
    return path


def test_num_classes_comes_from_the_index(tmp_path):
    named = _built(tmp_path, "abc", ["a", "b", "c"])
    config = load_config(_config(tmp_path, named))
    assert config.data.num_classes == 0
    settle_classes(config)
    assert config.data.num_classes == 3
    # shards indexed from a tar set: no names, whole-number labels 0 and 1
    numbered = load_config(_config(tmp_path, two_class_pngs(tmp_path / "tars")))
    settle_classes(numbered)
    assert numbered.data.num_classes == 2


def test_a_config_that_disagrees_with_its_data_is_one_line(tmp_path, capsys):
    abc = _built(tmp_path, "abc", ["a", "b", "c"])
    assert main(["train", str(_config(tmp_path, abc, classes=2))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "data.num_classes: 2, but data.train" in err and "3 classes (a, b, c)" in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_train_and_val_with_other_classes_are_refused_unless_meant(tmp_path, capsys):
    abc = _built(tmp_path, "abc", ["a", "b", "c"])
    pets = _built(tmp_path, "pets", ["cat", "dog", "eel"])
    config = _config(tmp_path, abc, pets)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data.val" in err and "(cat, dog, eel)" in err and "(a, b, c)" in err
    allowed = load_config(config, ["data.check_classes=false"])
    settle_classes(allowed)  # the override: no error
    assert allowed.data.num_classes == 3


def test_no_classes_anywhere_asks_for_num_classes(tmp_path):
    data = two_class_pngs(tmp_path / "tars")
    index = json.loads((data / "index.json").read_text())
    index["labels"] = {}  # an index that knows nothing of labels
    (data / "index.json").write_text(json.dumps(index))
    config = load_config(_config(tmp_path, data))
    with pytest.raises(ConfigError, match="lists no classes"):
        settle_classes(config)
    missing = load_config(_config(tmp_path, tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="0 takes the data's, but"):
        settle_classes(missing)

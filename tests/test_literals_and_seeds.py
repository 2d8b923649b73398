"""Each parameter takes one road: one literal parser for every KEY=VALUE option, one seed for
a run unless a part sets its own, one stable-seed helper."""

from __future__ import annotations

import json

import pytest
from testmedia import image_train_toml

from polymodal.cli import build_parser
from polymodal.errors import ConfigError
from polymodal.literals import parse_literal, parse_pairs
from polymodal.pipelines.preprocess.ops import make_op
from polymodal.pipelines.preprocess.ops.base import parse_op
from polymodal.pipelines.train.config import load_config
from polymodal.seeds import stable_fraction, stable_seed


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("False", False),
        ("none", None),
        ("3", 3),
        ("2.5", 2.5),
        ("[1, 2]", [1, 2]),
        ("(256, 256)", (256, 256)),
        ("'x'", "x"),
        ("pkg.mod:fn", "pkg.mod:fn"),
    ],
)
def test_one_reading_of_a_value_for_op_and_opt(text, value):
    assert parse_literal(text) == value
    assert parse_op(f"keep:flag={text}") == ("keep", {"flag": value})
    assert parse_pairs([f"flag={text}"], "--opt") == {"flag": value}


def test_set_reads_values_the_same_way(tmp_path):
    config = image_train_toml(tmp_path / "c.toml", tmp_path / "d", "", tmp_path / "run")
    assert load_config(config, ["eval_every_epoch=FALSE"]).eval_every_epoch is False
    assert load_config(config, ["optim.lr=3e-4", "freeze=['encoder']"]).freeze == ["encoder"]


def test_a_value_without_a_key_is_refused_everywhere(tmp_path):
    config = image_train_toml(tmp_path / "c.toml", tmp_path / "d", "", tmp_path / "run")
    with pytest.raises(ConfigError, match="--set takes KEY=VALUE"):
        load_config(config, ["epochs"])
    with pytest.raises(ValueError, match="takes KEY=VALUE"):
        make_op("resample_audio:16000")


def test_one_seed_orders_the_data_and_initialises_the_model(tmp_path):
    config_path = image_train_toml(tmp_path / "c.toml", tmp_path / "d", "", tmp_path / "run")
    config = load_config(config_path, ["seed=7"])
    assert (config.seed, config.data.seed, config.model_seed) == (7, 7, 7)
    config = load_config(config_path, ["seed=7", "data.seed=1"])
    assert (config.data.seed, config.model_seed) == (1, 7)
    config = load_config(config_path, ["model_seed=3"])
    assert (config.data.seed, config.model_seed) == (0, 3)
    args = build_parser().parse_args(["train", str(config_path), "--seed", "11"])
    assert args.seed == 11
    saved = tmp_path / "config.json"  # what a run saves reloads with the seeds it used
    saved.write_text(json.dumps({"data": {"train": "x", "seed": 4}, "seed": 9}))
    with pytest.raises(ConfigError, match=r"data\.fields"):  # no fields: still invalid, by name
        load_config(saved)


def test_one_stable_seed_helper():
    assert stable_seed("a/b") == stable_seed("a/b") != stable_seed("a/c")
    assert stable_seed("k", 0) != stable_seed("k", 1)
    assert 0 <= stable_fraction("k") < 1
    shares = sum(stable_fraction(f"key{i}") < 0.25 for i in range(4000)) / 4000
    assert 0.22 < shares < 0.28  # uniform over keys: splits get the share they ask for


def test_adapter_and_encoder_options_are_checked_at_load(tmp_path):
    config = image_train_toml(tmp_path / "c.toml", tmp_path / "d", "", tmp_path / "run")
    video = ["data.fields.video.adapter=video"]
    with pytest.raises(
        ConfigError,
        match=r"^data\.fields\.video\.options\.num_frame: unknown option \(known: num_frames, fps",
    ):
        load_config(config, [*video, "data.fields.video.options.num_frame=8"])
    with pytest.raises(ConfigError, match=r"data\.fields\.video\.encoder\.patches: unknown option"):
        load_config(config, [*video, "data.fields.video.encoder.patches=[1, 4, 4]"])
    with pytest.raises(ConfigError, match=r"data\.fields\.video\.options: num_frames must be"):
        load_config(config, [*video, "data.fields.video.options.num_frames=0"])


def test_a_misspelt_name_gets_a_suggestion(tmp_path, capsys):
    from polymodal.cli import main

    config = image_train_toml(tmp_path / "t.toml", tmp_path, "", tmp_path / "run")
    for setting, hint in (
        ("epoch=1", "did you mean 'epochs'?"),
        ("data.batch_sise=4", "did you mean 'batch_size'?"),
        ("data.fields.image.options.sise=8", "did you mean 'size'?"),
        ("data.fields.image.adapter='imgae'", "did you mean 'image'?"),
    ):
        assert main(["train", str(config), "--set", setting]) == 2
        assert hint in capsys.readouterr().err, setting
    with pytest.raises(ValueError, match="did you mean 'rate'"):
        make_op("resample_audio:rat=16000")

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from polymodal import adapters
from polymodal.adapters import Adapter, Field, register

BUILTINS = ["audio", "image", "label", "pointcloud", "text", "video"]


def test_builtins_are_registered_and_construct_with_defaults():
    assert set(BUILTINS) <= set(adapters.available())
    for name in BUILTINS:
        cls = adapters.get(name)
        assert cls.name == name
        instance = cls()
        assert isinstance(instance, Adapter) and instance.extensions


def test_unknown_name_lists_what_exists():
    with pytest.raises(KeyError, match=r"no adapter named 'nope'.*image"):
        adapters.get("nope")


def test_register_in_code_and_refuse_a_second_class_under_the_same_name():
    @register("test-upper")
    class Upper(Adapter):
        extensions = ("upper.txt",)  # its own: `txt` stays the text adapter's for later tests

        def decode_bytes(self, data, ext, rng):
            import torch

            return Field(values=torch.tensor(list(data.upper()), dtype=torch.uint8)[:, None])

    assert adapters.get("test-upper") is Upper
    field = Upper().decode({"__key__": "k", "upper.txt": b"ab"})
    assert field.values[:, 0].tolist() == [ord("A"), ord("B")]
    with pytest.raises(ValueError, match="already registered"):

        @register("test-upper")
        class Other(Adapter):
            extensions = ("upper.txt",)

    with pytest.raises(TypeError):
        register("test-not-an-adapter")(dict)


PLUGIN = '''
import numpy as np
import torch
from polymodal.adapters import Adapter, Field
from polymodal.pipelines.preprocess.ops import Op


class WaveAdapter(Adapter):
    """Raw little-endian int16 samples."""

    extensions = ("pcm",)

    def decode_bytes(self, data, ext, rng):
        samples = np.frombuffer(data, dtype="<i2").copy()
        return Field(values=torch.from_numpy(samples)[:, None], grid=(len(samples),))


class ReversePcm(Op):
    """A preprocessing op from the same package: plays the samples backwards."""

    def __call__(self, sample):
        sample["pcm"] = np.frombuffer(sample["pcm"], dtype="<i2")[::-1].tobytes()
        return sample
'''


@pytest.mark.slow
def test_third_party_package_registers_through_entry_point(tmp_path: Path):
    """A separate package, pip-installed into this venv, is found by name."""
    pkg = tmp_path / "plugin"
    pkg.mkdir()
    (pkg / "polymodal_wave_plugin.py").write_text(PLUGIN)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "polymodal-wave-plugin"
            version = "0.0.1"

            [project.entry-points."polymodal.adapters"]
            wave = "polymodal_wave_plugin:WaveAdapter"

            [project.entry-points."polymodal.ops"]
            reverse_pcm = "polymodal_wave_plugin:ReversePcm"

            [tool.setuptools]
            py-modules = ["polymodal_wave_plugin"]
            """
        )
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(pkg)], check=True)
    try:
        check = textwrap.dedent(
            """
            from polymodal import adapters
            assert "wave" in adapters.available(), adapters.available()
            cls = adapters.get("wave")
            field = cls().decode({"__key__": "k", "pcm": bytes([1, 0, 2, 0, 255, 255])})
            print(cls.__module__, cls.name, field.values[:, 0].tolist(), field.grid)
            from polymodal.pipelines.preprocess.ops import available_ops, make_op
            assert "reverse_pcm" in available_ops(), available_ops()
            print(make_op("reverse_pcm")({"__key__": "k", "pcm": bytes([1, 0, 2, 0])})["pcm"])
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", check], capture_output=True, text=True, check=True
        ).stdout
        assert out.split("\n")[0].split() == [
            "polymodal_wave_plugin",
            "wave",
            "[1,",
            "2,",
            "-1]",
            "(3,)",
        ]
        assert out.split("\n")[1] == repr(bytes([2, 0, 1, 0]))
    finally:
        subprocess.run([*pip, "uninstall", "-y", "polymodal-wave-plugin"], check=True)


def _npy(array) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32))
    return buf.getvalue()


def test_the_adapters_are_the_one_extension_table():
    from polymodal.adapters import extension_table, modality_of

    table = extension_table()
    assert table["jpg"] == "image" and table["cls"] == "label" and table["txt"] == "text"
    assert table["mp4"] == "video" and table["flac"] == "audio"  # audio reads mp4, claims flac
    assert table["npy"] is None and table["json"] is None  # read by several, claimed by none
    assert modality_of("left.mp4") == "video" and modality_of("npy", {"npy": "pointcloud"})


def test_an_ambiguous_extension_takes_the_users_rule_and_validate_checks_it(tmp_path, capsys):
    import json

    import numpy as np

    from polymodal.cli import main

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        (src / "a" / f"c{i}.npy").write_bytes(_npy(rng.normal(size=(50, 3))))
    (src / "a" / "bad.npy").write_bytes(_npy([[0.0, np.nan, 1.0]] * 5))
    assert main(["build", str(src), str(tmp_path / "plain")]) == 0
    index = json.loads((tmp_path / "plain" / "index.json").read_text())
    assert index["fields"]["npy"] == ""  # no default: nothing checks it
    assert main(["validate", str(tmp_path / "plain")]) == 0
    ds = tmp_path / "clouds"
    assert main(["build", str(src), str(ds), "--field", "npy=pointcloud"]) == 0
    assert json.loads((ds / "index.json").read_text())["fields"]["npy"] == "pointcloud"
    capsys.readouterr()
    assert main(["validate", str(ds), "--json"]) == 1
    (problem,) = json.loads(capsys.readouterr().out)["problems"]
    assert problem["key"] == "a/bad" and "NaN" in problem["reason"]
    assert main(["build", str(src), str(tmp_path / "x"), "--field", "npy=cloud"]) == 2
    assert "no adapter named 'cloud'" in capsys.readouterr().err

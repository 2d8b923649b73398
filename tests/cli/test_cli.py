import json
import subprocess
import sys
from pathlib import Path

from polymodal.cli import main
from polymodal.datasets.synthetic import encode_audio, encode_image, photo, tone


def test_tour_decodes_every_modality_and_batches(capsys):
    assert main(["tour"]) == 0
    out = capsys.readouterr().out
    for adapter in ("video", "audio", "image", "pointcloud", "text", "label"):
        assert f" {adapter} " in out
    assert "(2, 200704, 3) uint8" in out  # two 16×112×112 clips
    assert "(2, 48000, 1) int16" in out  # two 3 s, 16 kHz clips, the shorter one masked
    assert "keys ['clip', 'short']" in out


def test_decode_reports_each_file_and_fails_on_bad_ones(tmp_path, capsys):
    good = tmp_path / "a.jpg"
    good.write_bytes(encode_image(photo(1, 64)))
    sound = tmp_path / "b.flac"
    sound.write_bytes(encode_audio(tone(), 44100, "flac"))
    assert main(["decode", str(good), str(sound), "--opt", "size=32"]) != 0  # audio has no size
    assert main(["decode", str(good), "--opt", "size=32"]) == 0
    assert "(1024, 3) uint8" in capsys.readouterr().out
    bad = tmp_path / "c.png"
    bad.write_bytes(b"not a png")
    assert main(["decode", str(bad)]) == 1
    assert "sample 'c', field 'image'" in capsys.readouterr().err


def test_python_dash_m_lists_adapters():
    out = subprocess.run(
        [sys.executable, "-m", "polymodal", "adapters"], capture_output=True, text=True, check=True
    ).stdout
    names = [line.split()[0] for line in out.splitlines()]
    assert names == ["audio", "image", "label", "pointcloud", "text", "video"]


def test_the_front_door_is_lazy_and_torch_free():
    code = (
        "import sys, polymodal; assert 'torch' not in sys.modules, 'torch at import'; "
        "from polymodal import Stream, build, load_config, Trainer, adapters, perceiver; "
        "from torch.utils.data import IterableDataset; "
        "assert issubclass(Stream, IterableDataset) and callable(build) and callable(load_config); "
        "print(polymodal.__version__, Trainer.__name__, adapters.get('image').name, "
        "perceiver.Perceiver.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0.1.0", "Trainer", "image", "Perceiver"]
    version = subprocess.run(
        [sys.executable, "-m", "polymodal", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.strip() == "polymodal 0.1.0"


def _images(folder: Path, count: int = 3) -> Path:
    (folder / "a").mkdir(parents=True)
    for i in range(count):
        (folder / "a" / f"x{i}.jpg").write_bytes(encode_image(photo(i, 32)))
    return folder


def test_json_reports_and_exit_codes_a_script_can_trust(tmp_path, capsys):
    src = _images(tmp_path / "src")
    assert main(["build", str(src), str(tmp_path / "ds"), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 3 and report["datasets"][""] == str(tmp_path / "ds")
    nothing = ["preprocess", str(tmp_path / "ds"), str(tmp_path / "none"), "--json"]
    assert main([*nothing, "--op", "filter:min_bytes=100000000"]) == 1  # wrote no sample
    out = capsys.readouterr()
    assert json.loads(out.out)["samples_out"] == 0 and "no sample was written" in out.err
    typo = ["preprocess", str(tmp_path / "ds"), str(tmp_path / "typo"), "--op"]
    assert main([*typo, "resize_image:size=big"]) == 1  # refused before the job starts
    assert "size must be int or None, got 'big'" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    for argv, message in [
        (["train", str(tmp_path / "missing.toml")], "cannot read the config"),
        (["inspect", str(tmp_path / "nowhere")], "no dataset here"),
        (["validate", str(src)], "no index.json"),
        (["decode", "--adapter", "nosuch", str(src / "a" / "x0.jpg")], "no adapter named"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_missing_paths_are_one_line_each(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    for argv in (
        ["validate", missing],
        ["inspect", missing],
        ["index", missing],
        ["train", missing + ".toml"],
        ["preprocess", missing, str(tmp_path / "out"), "--op", "dedupe"],
        ["build", missing, str(tmp_path / "out")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert "nope" in err


def test_ops_lists_each_op_with_a_whole_sentence(capsys):
    assert main(["ops"]) == 0
    lines = capsys.readouterr().out.splitlines()
    entries: list[str] = []
    for line in lines:
        if line.startswith(" "):
            entries[-1] += " " + line.strip()
        else:
            entries.append(line)
    assert len(entries) >= 11 and all(len(line) <= 100 for line in lines)
    assert all(entry.endswith(".") for entry in entries), entries

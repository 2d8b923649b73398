import subprocess
import sys

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

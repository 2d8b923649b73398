import io

import numpy as np
import pytest
import torch
from PIL import Image
from testmedia import png_bomb

from polymodal.adapters import DecodeError, get
from polymodal.datasets.synthetic import encode_image, photo

COLOUR = (200, 30, 90)
FORMATS = [
    ("JPEG", "jpg", {"quality": 95}),
    ("PNG", "png", {}),
    ("WEBP", "webp", {"lossless": True}),
    ("BMP", "bmp", {}),
    ("GIF", "gif", {}),
    ("TIFF", "tiff", {}),
]


def _decode(data: bytes, ext: str = "png", **kwargs):
    return get("image")(**kwargs).decode({"__key__": "img", ext: data})


@pytest.mark.parametrize(("fmt", "ext", "args"), FORMATS)
def test_solid_colour_decodes_to_that_colour(fmt, ext, args):
    pixels = np.zeros((60, 90, 3), np.uint8)
    pixels[:] = COLOUR
    field = _decode(encode_image(pixels, fmt, **args), ext, size=32)
    assert field.values.dtype == torch.uint8 and field.values.shape == (32 * 32, 3)
    assert field.grid == (32, 32)
    assert np.abs(field.values.float().mean(0).numpy() - COLOUR).max() <= 2


def test_native_size_is_kept_without_a_size():
    field = _decode(encode_image(photo(0, 64)[:40], "PNG"), size=None)
    assert field.grid == (40, 64) and field.values.shape == (40 * 64, 3)


def test_centre_crop_covers_the_crop_fraction_of_the_shorter_side():
    # left third red, middle green, right third blue; a centre crop of a wide image is green
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, :100, 0] = pixels[:, 100:200, 1] = pixels[:, 200:, 2] = 255
    field = _decode(encode_image(pixels, "PNG"), size=50, crop_fraction=1.0)
    mean = field.values.float().mean(0)
    assert mean[1] > 250 and mean[0] < 5 and mean[2] < 5


def test_random_crop_follows_the_generator():
    data = encode_image(photo(3, 200), "PNG")
    adapter = get("image")(size=64, crop="random", crop_fraction=0.5)

    def crop(seed):
        return adapter.decode({"__key__": "k", "png": data}, np.random.default_rng(seed)).values

    assert torch.equal(crop(1), crop(1))
    assert not torch.equal(crop(1), crop(2))
    # without a generator the key seeds it: the same sample crops the same way
    assert torch.equal(
        adapter.decode({"__key__": "k", "png": data}).values,
        adapter.decode({"__key__": "k", "png": data}).values,
    )


def test_modes_become_rgb():
    grey = _decode(encode_image(np.full((20, 20), 77, np.uint8), "PNG"), size=None)
    assert grey.values.float().mean(0).tolist() == [77.0] * 3
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    deep = _decode(buf.getvalue(), size=None)
    assert deep.values.float().mean(0).tolist() == [float(40000 >> 8)] * 3
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0], rgba[:10, :, 3], rgba[10:, :, 3] = 255, 255, 0
    comp = _decode(encode_image(rgba, "PNG"), size=None).values.reshape(20, 20, 3)
    assert comp[:10].float().mean((0, 1)).tolist() == [255.0, 0.0, 0.0]  # opaque red
    assert comp[10:].float().mean((0, 1)).tolist() == [255.0, 255.0, 255.0]  # on white
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), COLOUR, np.uint8)).convert("P").save(buf, "PNG")
    pal = _decode(buf.getvalue(), size=None)
    assert np.abs(pal.values.float().mean(0).numpy() - COLOUR).max() <= 3


@pytest.mark.parametrize(("fmt", "ext"), [("JPEG", "jpg"), ("PNG", "png")])
def test_exif_orientation_is_applied(fmt, ext):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20, 0] = 255  # left half red
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # stored rotated: display turns it 90° clockwise, left goes to the top
    buf = io.BytesIO()
    img.save(buf, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    field = _decode(buf.getvalue(), ext, size=None)
    assert field.grid == (40, 20)
    red = field.values.reshape(40, 20, 3)[..., 0].float()
    assert red[:20].mean() > 240 and red[20:].mean() < 15


def test_draft_decoding_matches_a_full_decode():
    """A 1024² JPEG shrunk to 112² in the DCT domain looks like the full decode shrunk."""
    data = encode_image(photo(5, 1024), "JPEG", quality=90)
    drafted = _decode(data, "jpg", size=112)  # 1024 → 128 is 1/8: libjpeg draft
    full = _decode(encode_image(photo(5, 1024), "PNG"), size=112)  # PNG: no draft
    assert drafted.grid == full.grid == (112, 112)
    diff = (drafted.values.float() - full.values.float()).abs().mean()
    assert diff < 6, diff


def test_full_and_reduced_jpeg_decodes_agree():
    data = encode_image(photo(7, 256), "JPEG", quality=92)
    full = _decode(data, "jpg", size=224)  # no reduction possible
    reduced = _decode(data, "jpg", size=112)  # 1/2 in the DCT domain
    assert full.grid == (224, 224)
    small = torch.nn.functional.interpolate(
        full.values.reshape(1, 224, 224, 3).permute(0, 3, 1, 2).float(),
        size=(112, 112),
        mode="bilinear",
        antialias=True,
    )
    ref = small[0].permute(1, 2, 0).reshape(-1, 3)
    assert (ref - reduced.values.float()).abs().mean() < 6


def test_decompression_bomb_is_refused_from_the_header():
    with pytest.raises(DecodeError, match=r"over max_pixels|decompression bomb") as err:
        _decode(png_bomb(40000, 40000), max_pixels=64 * 2**20)
    assert err.value.key == "img" and err.value.field == "image"
    with pytest.raises(DecodeError, match="over max_pixels"):
        _decode(encode_image(photo(0, 300), "JPEG"), "jpg", max_pixels=300 * 299)

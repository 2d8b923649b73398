import io

import numpy as np
import pytest
import torch

from polymodal.adapters import DecodeError, get
from polymodal.datasets.synthetic import encode_ply


def _cloud(n=500, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)) * [3.0, 1.0, 0.5] + [10.0, -4.0, 2.0]
    return np.concatenate([xyz, rng.random((n, 2))], axis=1).astype(np.float32)


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _text(arr, header=""):
    return (header + "\n".join(" ".join(f"{v:.6f}" for v in row) for row in arr)).encode()


def _off(arr):
    return _text(arr[:, :3], f"OFF\n{len(arr)} 0 0\n")


def _ply_big_endian(arr):
    head = f"ply\nformat binary_big_endian 1.0\nelement vertex {len(arr)}\n"
    head += "property double x\nproperty double y\nproperty double z\n"
    head += "property uchar red\nproperty uchar green\n"
    head += "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
    rec = np.zeros(len(arr), ">f8,>f8,>f8,u1,u1")
    for i, name in enumerate(rec.dtype.names[:3]):
        rec[name] = arr[:, i]
    rec["f3"], rec["f4"] = 7, 9
    return head.encode() + rec.tobytes()


FORMATS = {
    "npy": (lambda a: _npy(a), 5),
    "npz": (lambda a: _npz(points=a, other=np.zeros(3)), 5),
    "ply": (lambda a: encode_ply(a, binary=True), 5),
    "ply-ascii": (lambda a: encode_ply(a, binary=False), 5),
    "ply-be": (_ply_big_endian, 5),
    "off": (_off, 3),
    "xyz": (lambda a: _text(a), 5),
    "pts": (lambda a: _text(a, f"{len(a)}\n"), 5),
}


@pytest.mark.parametrize("name", FORMATS)
def test_formats_decode_to_normalised_points(name):
    make, width = FORMATS[name]
    cloud = _cloud(500)
    ext = name.split("-")[0]
    field = get("pointcloud")(num_points=256).decode({"__key__": "pc", ext: make(cloud)})
    assert field.values.dtype == torch.float32 and field.values.shape == (256, width)
    xyz = field.coords.numpy()
    assert np.allclose(xyz, field.values[:, :3].numpy())
    assert xyz.min() >= -1 - 1e-6 and xyz.max() <= 1 + 1e-6
    # the widest axis (x, std 3) fills [-1, 1]; the narrow one (z) stays narrow: shape is kept
    assert np.ptp(xyz[:, 0]) > 1.5 and np.ptp(xyz[:, 2]) < np.ptp(xyz[:, 0]) / 2
    if name == "ply-be":
        assert field.values[:, 3].tolist() == [7.0] * 256 and field.values[:, 4].eq(9).all()


def test_all_points_of_the_full_cloud_normalise_to_the_unit_box():
    cloud = _cloud(300)
    field = get("pointcloud")(num_points=None).decode({"__key__": "k", "npy": _npy(cloud)})
    xyz = field.coords.numpy()
    assert len(xyz) == 300
    assert np.isclose(np.abs(xyz).max(), 1.0, atol=1e-6)
    centre = (xyz.min(0) + xyz.max(0)) / 2
    assert np.allclose(centre, 0, atol=1e-6)


def test_sampling_is_seeded_and_pads_small_clouds_with_repeats():
    cloud = _cloud(100)
    adapter = get("pointcloud")(num_points=64)
    a = adapter.decode({"__key__": "k", "npy": _npy(cloud)}, np.random.default_rng(1))
    b = adapter.decode({"__key__": "k", "npy": _npy(cloud)}, np.random.default_rng(1))
    c = adapter.decode({"__key__": "k", "npy": _npy(cloud)}, np.random.default_rng(2))
    assert torch.equal(a.values, b.values) and not torch.equal(a.values, c.values)
    assert len(np.unique(a.values.numpy(), axis=0)) == 64  # no repeats when it can avoid them
    small = get("pointcloud")(num_points=250).decode({"__key__": "k", "npy": _npy(cloud)})
    assert small.values.shape == (250, 5)
    assert len(np.unique(small.values.numpy(), axis=0)) == 100  # every point, some repeated


@pytest.mark.parametrize(
    ("ext", "data", "reason"),
    [
        ("npy", _npy(np.array([[0, 0, np.nan]], np.float32)), "NaN"),
        ("npy", _npy(np.array([[0, 0, np.inf]], np.float32)), "NaN or infinite"),
        ("npy", _npy(np.zeros((4, 2), np.float32)), r"\[N, 3\+F\]"),
        ("npy", _npy(np.array([{"x": 1}], dtype=object)), "pickle"),
        (
            "ply",
            b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float q\n"
            b"end_header\n" + bytes(12),
            "x, y, z",
        ),
        (
            "ply",
            b"ply\nformat ascii 1.0\nelement vertex 2\nproperty floaty x\nend_header\n",
            "header line",
        ),
        ("ply", b"ply\nno end header", "end_header"),
        ("ply", encode_ply(np.zeros((10, 3)))[:-20], "truncated"),
        ("ply", encode_ply(np.zeros((10, 3)), binary=False)[:-20], "columns|shape"),
        (
            "ply",
            b"ply\nformat binary_little_endian 1.0\nelement vertex 999999999\n"
            b"property float x\nproperty float y\nproperty float z\nend_header\n",
            "max_points",
        ),
        ("off", b"OFF\n5 0 0\n0 0 0\n", "5 vertices"),
        ("xyz", b"1 2\n3 4\n", r"\[N, 3\+F\]"),
    ],
)
def test_bad_clouds_raise(ext, data, reason):
    with pytest.raises(DecodeError, match=reason) as err:
        get("pointcloud")().decode({"__key__": "pc9", ext: data})
    assert err.value.key == "pc9" and err.value.field == "pointcloud"

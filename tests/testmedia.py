"""What the tests measure in decoded media, and the hostile files they feed adapters."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tarfile
import textwrap
import wave
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from polymodal.adapters import Adapter, Field
from polymodal.pipelines.train.demo import make_clips


def frame_levels(field: Field) -> np.ndarray:
    """Mean grey level of each frame of a decoded video field."""
    return field.values.reshape(*field.grid, 3).float().mean((1, 2, 3)).numpy()


def peak_hz(samples: np.ndarray, rate: int) -> float:
    """Frequency of the strongest component of a mono signal."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def png_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A valid 1-bit PNG of `width`×`height` black pixels: a few hundred KB on disk, gigabytes
    decoded. Written chunk by chunk with zlib, since Pillow takes seconds to encode it."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def empty_wav(rate: int = 16000) -> bytes:
    """A valid WAV header with no samples: audio of zero length."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
    return buf.getvalue()


def gnu_sparse_member(name: str, real_size: int, stored: bytes = b"x" * 512) -> bytes:
    """A GNU sparse tar member (old format, type 'S'): `stored` on disk, `real_size` bytes once
    expanded (zeros, then `stored` at the end). Python's tarfile reads these but cannot write
    them, so the header is patched by hand from a regular one."""
    info = tarfile.TarInfo(name)
    info.size = len(stored)
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = tarfile.itn(real_size - len(stored), 12, tarfile.GNU_FORMAT)  # offset
    header[398:410] = tarfile.itn(len(stored), 12, tarfile.GNU_FORMAT)  # bytes at it
    header[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)  # real size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    padding = bytes(-len(stored) % 512)
    return bytes(header) + stored + padding


def peak_memory_growth_mb(setup: str, code: str, timeout: float = 120) -> tuple[float, str]:
    """Run `setup`, then `code`, in a fresh Python; how much the peak resident memory grew
    while `code` ran (MB), and what it printed."""
    script = (
        "import resource\n"
        + textwrap.dedent(setup)
        + "\n_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        + textwrap.dedent(code)
        + "\nprint('GREW_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    return int(out.rsplit("GREW_KB", 1)[1]) / 1024, out


# every decode-time and per-batch augmentation, and a moving average of the weights
AV_AUGMENTED = {
    "options = {num_frames = 4, fps = 4.0, size = 16}": (
        'options = {num_frames = 4, fps = 4.0, size = 16, crop = "random", scale = [0.5, 1.0],'
        " flip = true}"
    ),
    "options = {sample_rate = 8000, duration = 0.5}": (
        "options = {sample_rate = 8000, duration = 0.5, shift = 0.1, gain = [-3.0, 3.0],"
        " noise = 0.01}"
    ),
    "encoder = {samples_per_patch = 200, num_bands = 4}": (
        'encoder = {features = "logmel", n_mels = 32, patch = [4, 8], num_bands = 4,'
        " time_masks = 2, freq_masks = 2}"
    ),
    "warmup_steps = 2": (
        "warmup_steps = 2\nema = 0.9\n[augment]\nmixup = 0.4\ncutmix = 1.0\nlabel_smoothing = 0.1"
    ),
}


def decoded_clips(folder: Path, fields: Mapping[str, Adapter], samples: int = 6) -> list[dict]:
    """`samples` real mp4 clips of 2 classes made in `folder` (`make_clips`), each decoded by
    every adapter of `fields`: samples as a Stream's decode gives them, for `collate`."""
    make_clips(folder, samples=samples, classes=2)
    return [
        {"__key__": f.stem, **{n: a.decode({"mp4": f.read_bytes()}) for n, a in fields.items()}}
        for f in sorted(folder.rglob("*.mp4"))
    ]


def av_train_toml(data: Path, run_dir: Path, augmented: bool = False, **top: object) -> str:
    """A small audio+video classification run over `data/train` and `data/val` (2 classes,
    batches of 8, 8 latents × 32; contrastive embeddings and late fusion's concepts 4 wide, so
    that they are whitened across the batch); `augmented`: with every augmentation switched
    on; `top` adds top-level keys."""
    head = "\n".join(f"{k} = {json.dumps(v)}" for k, v in top.items())
    text = head + _AV_BODY.format(train=data / "train", val=data / "val", run_dir=run_dir)
    for plain, augmentation in AV_AUGMENTED.items() if augmented else ():
        assert plain in text
        text = text.replace(plain, augmentation)
    return text


_AV_BODY = textwrap.dedent("""
        run_dir = "{run_dir}"
        embed_dim = 4
        fusion_concepts = 4
        [data]
        train = "{train}"
        val = "{val}"
        num_classes = 2
        batch_size = 8
        [data.fields.video]
        adapter = "video"
        extensions = ["mp4"]
        options = {{num_frames = 4, fps = 4.0, size = 16}}
        encoder = {{patch = [1, 8, 8], num_bands = 4}}
        [data.fields.audio]
        adapter = "audio"
        extensions = ["mp4"]
        options = {{sample_rate = 8000, duration = 0.5}}
        encoder = {{samples_per_patch = 200, num_bands = 4}}
        [model]
        num_latents = 8
        latent_dim = 32
        num_self_attends_per_block = 1
        self_heads = 2
        [optim]
        lr = 0.003
        warmup_steps = 2
""")


def image_train_toml(
    path: Path, train: Path, val: Path | str, run_dir: Path, classes: int = 2, **top: object
) -> Path:
    """A small image-classification config for training tests (8×8 pixels, 4 latents × 16,
    batches of 4), written to `path`; `top` adds top-level keys (`epochs`, `init`, ...)."""
    head = "\n".join(f"{key} = {json.dumps(value)}" for key, value in top.items())
    path.write_text(
        head
        + textwrap.dedent(f"""
        run_dir = "{run_dir}"
        [data]
        train = "{train}"
        val = "{val}"
        num_classes = {classes}
        batch_size = 4
        [data.fields.image]
        adapter = "image"
        options = {{size = 8}}
        encoder = {{patch_size = 4, num_bands = 2}}
        [model]
        num_latents = 4
        latent_dim = 16
        num_self_attends_per_block = 1
        self_heads = 2
        [optim]
        lr = 0.01
        warmup_steps = 1
        """)
    )
    return path


def index_doc(directory: Path) -> dict:
    """A dataset's index as one version-1 document (the shards listed in it), to edit."""
    from polymodal.datasets.index import ShardIndex

    index = ShardIndex.load(directory)
    doc = json.loads(index.header(""))
    del doc["table"]
    doc["version"] = 1
    doc["shards"] = [
        {
            "name": s.name,
            "samples": s.samples,
            "bytes": s.bytes,
            "sha256": s.sha256,
            "fields": s.fields,
        }
        for s in index.shards
    ]
    return doc


def write_index_doc(directory: Path, doc: dict, version: int) -> None:
    """Write `doc` (as `index_doc` gives it) unchecked: version 1 as it is, version 2 as a
    shard table and a header naming it — how an index another tool wrote might look."""
    from polymodal.datasets.shard_table import TABLE_NAME, ShardTable

    doc = dict(doc)
    if version == 2:
        table = ShardTable.from_entries(doc.pop("shards"), "test")
        digest = table.write(directory / TABLE_NAME)
        doc.update(version=2, table={"name": TABLE_NAME, "shards": len(table), "digest": digest})
    else:
        (directory / "index.arrow").unlink(missing_ok=True)
    (directory / "index.json").write_text(json.dumps(doc))

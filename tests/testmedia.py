"""What the tests measure in decoded media, and the hostile files they feed adapters."""

from __future__ import annotations

import io
import struct
import wave
import zlib

import numpy as np

from polymodal.adapters import Field


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

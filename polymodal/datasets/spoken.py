"""Spoken digits: a small audio-visual dataset made from real voices and real fonts.

Each sample is one class (a digit) in two modalities, each varied the way real recordings vary:

- the sound is the digit's name spoken by espeak-ng (Debian's `espeak-ng` package), in one of
  several accents and voice variants, at a random pitch, speed, loudness and place in the
  clip, under background noise;
- the picture is the digit drawn with one of the TrueType fonts the system ships (Debian's
  DejaVu, Liberation and FreeFont), at a random size, angle, colour and contrast over a noisy
  background, moving in a straight line across the frames.

A sample is written as `CLASS/KEY.mp4` (h264 frames with the speech as its aac track: one file
feeds a `video` and an `audio` field) and `CLASS/KEY.png` (the clip's middle frame, for image
recipes), so `polymodal build` shards it like any folder of class sub-folders. This is what
`benchmarks/bench_learning.py` and the learning tests train on: unlike the demo's colours and
tones, a linear model does not solve it, and neither modality alone is trivial.

`SpokenDigits(mode="match")` makes a task that needs both senses: the spoken digit is drawn
at random and the drawn digit is the same one (class `same`) or another one at random
(class `different`), half each, so the sound alone and the picture alone say nothing of the
class (each is uniform over the digits in both), and only comparing them does.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from polymodal.errors import UserError
from polymodal.seeds import stable_seed

from .synthetic import encode_image, encode_media

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029")
VARIANTS = ("", "+m2", "+m3", "+m7", "+f1", "+f2", "+f4", "+klatt")
FONT_FOLDERS = ("/usr/share/fonts/truetype",)
SPEECH_RATE = 22050  # espeak-ng's output rate


@dataclass(frozen=True)
class SpokenDigits:
    """What one dataset holds: `classes` digits, clips of `seconds` at `fps`, `size`² frames."""

    classes: int = 10
    seconds: float = 1.0
    fps: float = 8.0
    size: int = 64
    noise: float = 0.2  # the largest std of the speech's background noise (full scale: 1)
    mode: str = "digit"  # digit: the class is the digit | match: whether sound and picture agree

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(WORDS):
            raise ValueError(f"classes must be in [2, {len(WORDS)}], got {self.classes}")
        if self.mode not in ("digit", "match"):
            raise ValueError(f"mode must be 'digit' or 'match', got {self.mode!r}")

    def sample(self, i: int, seed: int) -> tuple[str, int, int]:
        """Sample `i`'s class name, the digit spoken and the digit drawn."""
        if self.mode == "digit":
            label = i % self.classes
            return WORDS[label], label, label
        rng = np.random.default_rng(stable_seed(f"spoken-match:{i}", seed))
        spoken = int(rng.integers(self.classes))
        if i % 2 == 0:
            return "same", spoken, spoken
        other = (spoken + 1 + int(rng.integers(self.classes - 1))) % self.classes
        return "different", spoken, other


@functools.cache
def fonts() -> tuple[Path, ...]:
    """The TrueType fonts installed that can draw digits, in a stable order."""
    found = tuple(sorted(p for d in FONT_FOLDERS for p in Path(d).rglob("*.ttf")))
    if not found:
        raise UserError("no TrueType fonts found: install fonts-dejavu-core (apt-get)")
    return found


def speak(word: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    """`word` spoken by espeak-ng: float32 samples at 22,050 Hz."""
    if shutil.which("espeak-ng") is None:
        raise UserError("espeak-ng is not installed: apt-get install espeak-ng")
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", word],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    data = wav[wav.index(b"data") + 8 :]  # --stdout streams: the header's sizes are unset
    samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32)
    return samples / 32768


def spoken_clip(spec: SpokenDigits, label: int, rng: np.random.Generator) -> np.ndarray:
    """Digit `label`'s name in a random voice, at a random place in `spec.seconds` of
    background noise: float32 `[samples, 1]` at `SPEECH_RATE`."""
    voice = str(rng.choice(ACCENTS)) + str(rng.choice(VARIANTS))
    speech = speak(WORDS[label], voice, int(rng.integers(25, 75)), int(rng.integers(140, 210)))
    speech = _trim(speech)
    length = round(spec.seconds * SPEECH_RATE)
    speech = speech[:length] * rng.uniform(0.35, 1.0) / max(np.abs(speech).max(), 1e-3)
    clip = rng.normal(0, spec.noise * rng.uniform(0.3, 1.0), length).astype(np.float32)
    start = int(rng.integers(0, length - len(speech) + 1))
    clip[start : start + len(speech)] += speech
    return clip.clip(-1, 1)[:, None]


def _trim(speech: np.ndarray) -> np.ndarray:
    """The speech without the silence espeak-ng puts around it."""
    loud = np.flatnonzero(np.abs(speech) > 0.01)
    return speech[loud[0] : loud[-1] + 1] if len(loud) else speech


def _frames(spec: SpokenDigits, label: int, rng: np.random.Generator) -> np.ndarray:
    """`T` frames of the digit moving across a noisy background."""
    count, size = round(spec.seconds * spec.fps), spec.size
    choices = fonts()
    font = ImageFont.truetype(str(choices[int(rng.integers(len(choices)))]), int(size * 0.55))
    glyph = Image.new("L", (size, size), 0)
    ImageDraw.Draw(glyph).text((size / 2, size / 2), str(label), fill=255, font=font, anchor="mm")
    scale = rng.uniform(0.6, 1.0)
    glyph = glyph.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BILINEAR)
    glyph = glyph.resize((round(size * scale),) * 2, Image.Resampling.BILINEAR)
    ink = np.asarray(glyph, dtype=np.float32) / 255
    room = size - ink.shape[0]
    begin, end = rng.uniform(0, room, 2), rng.uniform(0, room, 2)
    tint = rng.uniform(0.7, 1.0, 3)  # a colour cast shared by both, so the ink always contrasts
    background = rng.uniform(150, 240) * tint
    colour = (background - rng.uniform(100, 140)).clip(0, 255)
    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    for t in range(count):
        y, x = np.round(begin + (end - begin) * t / max(count - 1, 1)).astype(int)
        alpha = np.zeros((size, size, 1), dtype=np.float32)
        alpha[y : y + ink.shape[0], x : x + ink.shape[1], 0] = ink
        picture = background * (1 - alpha) + colour * alpha
        frames[t] = (picture + rng.normal(0, 12, picture.shape)).clip(0, 255).astype(np.uint8)
    return frames


def make_sample(spec: SpokenDigits, spoken: int, drawn: int, seed: int) -> tuple[bytes, bytes]:
    """One sample saying digit `spoken` and showing digit `drawn`: the `.mp4` (frames and
    speech) and the `.png` still."""
    rng = np.random.default_rng(seed)
    frames = _frames(spec, drawn, rng)
    sound = spoken_clip(spec, spoken, rng)
    mp4 = encode_media("mp4", frames, fps=spec.fps, audio=sound, audio_rate=SPEECH_RATE)
    return mp4, encode_image(frames[len(frames) // 2], "PNG")


def make_spoken_digits(
    folder: Path, samples: int, spec: SpokenDigits = SpokenDigits(), seed: int = 0, workers: int = 4
) -> Path:
    """`samples` samples (classes in turn) as `folder/CLASS/KEY.mp4` + `.png` (CLASS: the
    digit's word, or `same` / `different`); a sample already there is kept, so an interrupted
    run finishes what is missing. Every file is written under a temporary name and renamed; a
    killed run's temporaries are removed first."""

    def write(i: int) -> None:
        name, spoken, drawn = spec.sample(i, seed)
        out = folder / name / f"{name}-{seed}-{i:06d}"
        if out.with_suffix(".png").exists():
            return
        mp4, png = make_sample(spec, spoken, drawn, stable_seed(f"spoken-digits:{i}", seed))
        out.parent.mkdir(parents=True, exist_ok=True)
        for data, ext in ((mp4, ".mp4"), (png, ".png")):  # the .png last: it marks completion
            tmp = out.with_suffix(ext + ".tmp")
            tmp.write_bytes(data)
            tmp.rename(out.with_suffix(ext))

    for stale in folder.glob("*/*.tmp") if folder.is_dir() else ():  # a killed run's
        stale.unlink()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(write, range(samples)))
    return folder

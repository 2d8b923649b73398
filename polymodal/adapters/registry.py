"""Adapters by name, and which modality an extension is, without importing torch.

The built-in adapters' claims (the extensions each reads, and those it is the default modality
of) are data here, which their classes take as their own: asking which modality `.mp4` is
costs no import, so `build` and `index` never load torch or the model. An adapter registered
in code (`@register("depth")`) or installed (entry-point group `polymodal.adapters`) adds its
class's `extensions` / `default_for`: the adapters are the only extension table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from polymodal.registry import Registry

if TYPE_CHECKING:
    from polymodal.adapters.base import Adapter

ENTRY_POINT_GROUP = "polymodal.adapters"


@dataclass(frozen=True)
class Claim:
    """What a built-in adapter reads (`extensions`, in order of preference) and which of
    those are its modality when a dataset does not say (`default_for`; None: all)."""

    module: str
    extensions: tuple[str, ...]
    default_for: tuple[str, ...] | None = None


AUDIO_FILES = ("flac", "wav", "mp3", "ogg", "opus", "m4a", "aac")
VIDEO_FILES = ("mp4", "webm", "mkv", "mov", "avi", "m4v")
BUILT_IN: dict[str, Claim] = {
    "text": Claim("polymodal.adapters.text", ("txt", "text", "npy", "json"), ("txt", "text")),
    "image": Claim(
        "polymodal.adapters.image", ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tiff", "tif")
    ),
    # the audio adapter reads video containers too, yet an `.mp4` is video
    "audio": Claim("polymodal.adapters.audio", AUDIO_FILES + VIDEO_FILES, AUDIO_FILES),
    "video": Claim("polymodal.adapters.video", VIDEO_FILES),
    # `npy` may be token ids too
    "pointcloud": Claim(
        "polymodal.adapters.pointcloud",
        ("npy", "npz", "ply", "off", "xyz", "pts"),
        ("npz", "ply", "off", "xyz", "pts"),
    ),
    "label": Claim("polymodal.adapters.label", ("cls", "txt", "json"), ("cls",)),
}

ADAPTERS: Registry[type[Adapter]] = Registry(
    "polymodal.adapters.base:Adapter",
    ENTRY_POINT_GROUP,
    "adapter",
    builtins={name: claim.module for name, claim in BUILT_IN.items()},
)
register = ADAPTERS.register
get = ADAPTERS.get
available = ADAPTERS.available
_TABLE: dict[str, Any] = {}


def extension_table() -> dict[str, str | None]:
    """Every extension some adapter reads → the modality it is by default, or None where
    that is ambiguous (claimed by several adapters, or by none: `npy`, `json`)."""
    added = ADAPTERS.added()
    if _TABLE.get("added") != added:
        claims: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
            name: (c.extensions, c.default_for) for name, c in BUILT_IN.items()
        }
        for name in added:
            cls = get(name)
            claims[name] = (cls.extensions, cls.default_for)
        by_ext: dict[str, set[str]] = {}
        for name, (extensions, default_for) in claims.items():
            for ext in extensions:
                by_ext.setdefault(ext, set())
            for ext in extensions if default_for is None else default_for:
                by_ext.setdefault(ext, set()).add(name)
        table = {ext: next(iter(c)) if len(c) == 1 else None for ext, c in by_ext.items()}
        _TABLE.update(added=added, table=table)
    return _TABLE["table"]


def modality_of(ext: str, fields: Mapping[str, str] | None = None) -> str | None:
    """The modality of a member extension: the dataset's or the user's rule (`fields`, e.g.
    `{"npy": "pointcloud"}`), else the registry's default for the whole extension
    (`depth.png`), else for its last part (`left.mp4` → video); None when none applies."""
    if fields and fields.get(ext):
        return fields[ext]
    table = extension_table()
    if ext in table:
        return table[ext]
    return table.get(ext.rsplit(".", 1)[-1])


def is_known(ext: str) -> bool:
    """Whether some adapter reads members with this extension (whole, or by its last part)."""
    table = extension_table()
    return ext in table or ext.rsplit(".", 1)[-1] in table

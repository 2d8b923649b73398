"""A dataset card (`README.md`) beside `index.json`, so Hugging Face `datasets` loads the
folder as what it is: `load_dataset(folder)` and `load_dataset(root, data_dir=split)` read
the shards through the card's `configs` (only `*.tar` or `*.parquet`), never the index, the
sidecars or the reject list, which its WebDataset loader would take for shards."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from .files import write_atomic

CARD_NAME = "README.md"
MARKER = "<!-- written by polymodal with index.json; edits are replaced -->"


# Hugging Face's WebDataset loader types a column by its file extension; these are the ones it
# types the same way in every version we know, so the card may name them
HF_AUDIO = ("wav", "flac", "mp3", "ogg", "opus")
HF_VIDEO = ("mp4", "mkv", "avi", "mov")


def tar_features(fields: Mapping[str, str], classes: Sequence[str] | None) -> str:
    """The card's `dataset_info` for tar shards whose class names are known, so `cls` loads
    as a `ClassLabel` with its names (HF would infer a plain integer); empty when the names
    are unknown or a member is of a type whose column HF infers by content (json, npy), as a
    card that names one column must name them all."""
    if not classes:
        return ""
    rows = ["  - name: __key__\n    dtype: string", "  - name: __url__\n    dtype: string"]
    for ext, modality in sorted(fields.items()):
        last = ext.rsplit(".", 1)[-1]
        if ext == "cls":
            names = "".join(f"          '{i}': {json.dumps(n)}\n" for i, n in enumerate(classes))
            rows.append(f"  - name: cls\n    dtype:\n      class_label:\n        names:\n{names}")
            rows[-1] = rows[-1].rstrip("\n")
        elif modality in ("image", "audio", "video") and (
            modality == "image" or last in (HF_AUDIO if modality == "audio" else HF_VIDEO)
        ):
            rows.append(f"  - name: {json.dumps(ext)}\n    dtype: {modality}")
        elif last == "txt":
            rows.append(f"  - name: {json.dumps(ext)}\n    dtype: string")
        else:
            return ""
    return "dataset_info:\n  features:\n" + "\n".join(rows) + "\n"


def card_text(splits: Mapping[str, str], summary: str, features: str = "") -> str:
    """A card whose one config maps each split name to a glob of its shards (and, with
    `features`, the columns' types: `tar_features`)."""
    files = "".join(f'  - split: {name}\n    path: "{glob}"\n' for name, glob in splits.items())
    return (
        f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}{features}---\n\n"
        f"# A polymodal dataset\n\n{summary}\n\n"
        "`index.json`, `index.arrow` and the `*.idx` sidecars are polymodal's index of the shards; "
        "`datasets.load_dataset` reads the shards themselves.\n\n"
        f"{MARKER}\n"
    )


def is_our_card(path: Path) -> bool:
    """Whether `path` is a card polymodal wrote (and may replace or remove)."""
    if path.name != CARD_NAME or not path.is_file():
        return False
    return MARKER in path.read_text(errors="replace")


def write_card(
    directory: Path, splits: Mapping[str, str], summary: str, features: str = ""
) -> bool:
    """Write the card unless the folder holds a README of someone else's (kept as it is);
    whether it was written."""
    path = Path(directory) / CARD_NAME
    if path.exists() and not is_our_card(path):
        return False
    write_atomic(path, card_text(splits, summary, features).encode())
    return True

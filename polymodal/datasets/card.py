"""A dataset card (`README.md`) beside `index.json`, so Hugging Face `datasets` loads the
folder as what it is: `load_dataset(folder)` and `load_dataset(root, data_dir=split)` read
the shards through the card's `configs` (only `*.tar` or `*.parquet`), never the index, the
sidecars or the reject list, which its WebDataset loader would take for shards."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .files import write_atomic

CARD_NAME = "README.md"
MARKER = "<!-- written by polymodal with index.json; edits are replaced -->"


def card_text(splits: Mapping[str, str], summary: str) -> str:
    """A card whose one config maps each split name to a glob of its shards."""
    files = "".join(f'  - split: {name}\n    path: "{glob}"\n' for name, glob in splits.items())
    return (
        f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}---\n\n"
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


def write_card(directory: Path, splits: Mapping[str, str], summary: str) -> bool:
    """Write the card unless the folder holds a README of someone else's (kept as it is);
    whether it was written."""
    path = Path(directory) / CARD_NAME
    if path.exists() and not is_our_card(path):
        return False
    write_atomic(path, card_text(splits, summary).encode())
    return True

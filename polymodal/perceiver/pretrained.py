"""Pretrained weights in and out: DeepMind's Perceiver checkpoints from the Hugging Face Hub or a
local folder, and our converted models back to transformers.

`from_pretrained("deepmind/vision-perceiver-fourier")` (or a folder in the `save_pretrained`
layout: `config.json` plus `model.safetensors` or `pytorch_model.bin`) returns the module
`from_hf` makes. `to_hf(module)` / `save_pretrained(module, folder)` go back. These need the
`hf` extra (transformers, huggingface_hub, safetensors), imported only here and only when called,
so `polymodal.perceiver` itself still imports only torch.

Offline, or with the Hub out of reach, `from_pretrained` fails within seconds with one line
naming the model, the cache it looked in and `HF_HUB_OFFLINE`, instead of transformers' retries.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from polymodal.errors import UserError

from .hf import RULES, SUPPORTED, from_hf, rename

HUB_PROBE_SECONDS = 3.0  # how long the Hub may take to accept a connection


class PretrainedError(UserError, ValueError):
    """A pretrained model cannot be had: not cached and out of reach, or not a Perceiver."""


def from_pretrained(name_or_path: str | Path) -> nn.Module:
    """Our module for a Hugging Face Perceiver checkpoint: a local folder or a Hub name."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        folder = hub_folder(str(name_or_path))
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PretrainedError(f"{folder}: no config.json (not a save_pretrained folder)")
    try:
        doc = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PretrainedError(f"{config_file}: not a JSON config ({exc})") from None
    if not isinstance(doc, dict):
        raise PretrainedError(f"{config_file}: not a config (a JSON table)")
    kind = next(iter(doc.get("architectures") or []), None)
    if kind not in SUPPORTED:
        raise PretrainedError(
            f"{folder}: a {kind or 'model of no stated class'}, not one of {SUPPORTED}"
        )
    transformers = _hf_extra("transformers")
    try:
        config = transformers.PerceiverConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, OSError) as exc:
        raise PretrainedError(f"{config_file}: not a Perceiver config ({exc})") from None
    return from_hf(load_weights(folder), config, kind)


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a `save_pretrained` folder: safetensors first, else a `.bin` loaded
    with `weights_only=True` (a pickle is never run)."""
    safetensors_file = folder / "model.safetensors"
    bin_file = folder / "pytorch_model.bin"
    try:
        if safetensors_file.is_file():
            return _hf_extra("safetensors.torch").load_file(str(safetensors_file))
        if bin_file.is_file():
            return torch.load(bin_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # SafetensorError, an unpickling error, a short file: its name
        path = safetensors_file if safetensors_file.is_file() else bin_file
        raise PretrainedError(f"{path}: does not load ({type(exc).__name__}: {exc})") from None
    raise PretrainedError(f"{folder}: no model.safetensors or pytorch_model.bin")


def hub_folder(name: str) -> Path:
    """The local snapshot of a Hub model: from the cache, else downloaded. Fails within
    `HUB_PROBE_SECONDS` when offline or when the Hub does not answer."""
    hub = _hf_extra("huggingface_hub")
    from huggingface_hub import constants

    try:
        return Path(hub.snapshot_download(name, local_files_only=True))
    except Exception:  # not cached (or a partial cache): try the Hub below
        pass
    where = (
        f"{name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}"
    )
    if constants.HF_HUB_OFFLINE:
        raise PretrainedError(f"{where}: download it where there is a network, or pass a folder")
    if not _reachable(constants.ENDPOINT):
        raise PretrainedError(
            f"{where}, and {constants.ENDPOINT} did not answer in {HUB_PROBE_SECONDS:g} s: "
            "download it where there is a network, or pass a folder"
        )
    try:
        return Path(hub.snapshot_download(name))
    except Exception as exc:
        raise PretrainedError(f"{where}, and the download failed: {exc}") from None


def _reachable(endpoint: str) -> bool:
    """Whether `endpoint` accepts a connection within `HUB_PROBE_SECONDS` (DNS included: it
    runs in a thread, since name resolution takes no timeout)."""
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    port = 443 if endpoint.startswith("https") else 80
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS)
    return bool(answer and answer[0])


def to_hf(module: nn.Module) -> Any:
    """The transformers model our converted `module` came from, with our current weights.

    `module` is what `from_hf` / `from_pretrained` made (it knows its kind and config); each of
    the transformers model's parameters takes our tensor of the name `hf.RULES` gives it."""
    kind, config = getattr(module, "hf_kind", None), getattr(module, "hf_config", None)
    if kind is None or config is None:
        raise PretrainedError(
            f"{type(module).__name__} was not made by from_hf or from_pretrained: only those "
            f"convert back to transformers ({', '.join(SUPPORTED)})"
        )
    transformers = _hf_extra("transformers")
    hf = getattr(transformers, kind)(transformers.PerceiverConfig(**config)).eval()
    ours = cast(nn.Module, module.model).state_dict()
    target = hf.state_dict()
    state = {key: ours[rename(key, RULES[kind])].reshape(t.shape) for key, t in target.items()}
    hf.load_state_dict(state)
    return hf


def save_pretrained(module: nn.Module, folder: str | Path) -> Path:
    """Write `module` as a transformers `save_pretrained` folder (config.json and
    model.safetensors) that `transformers` and `from_pretrained` both load."""
    to_hf(module).save_pretrained(str(folder))
    return Path(folder)


def _hf_extra(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise PretrainedError(
            f"this needs {module.split('.')[0]}: pip install 'polymodal[hf]'"
        ) from None

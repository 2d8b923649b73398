"""Weights in and out of runs: checkpoints read safely, a run's config found from its checkpoint,
initial weights for fine-tuning, and export.

Every checkpoint is read with `torch.load(weights_only=True)`: a file that holds more than
tensors and plain values (a pickle with code in it) is refused, never run. A state dict that
does not fit a model names the keys that are missing, unexpected or of another shape.

Initial weights (`init` in a training config) come from `hf:NAME` (a Hugging Face Perceiver,
through `polymodal.perceiver.from_pretrained`), a `save_pretrained` folder, a `.safetensors`
file (as `polymodal export` writes), one of our checkpoints (`.pt`) or a run folder. Each of the
model's tensors takes the source's tensor of the same name (after the converted modules'
`model.` prefix) when the shapes agree; one whose shape differs (a new class count) is an error
unless `init_mismatch = "reinit"` keeps it freshly initialised. The report lists what was
loaded, re-initialised, new and left unused.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polymodal.datasets.files import claim_output, write_atomic
from polymodal.errors import UserError
from polymodal.pipelines.train.config import TrainConfig, load_config

CHECKPOINTS = "checkpoints"
CONFIG_NAME = "config.json"


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot be read, or does not fit the model."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, refused with the reason when it is missing, damaged, cut short
    or holds Python objects that only an unsafe load would create."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: refused: it holds more than weights ({reason}); polymodal only loads "
            "tensors and plain values (torch.load weights_only=True)"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: not a readable checkpoint (cut short or damaged: {reason})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a checkpoint")
    return state


def checkpoint_path(run_or_checkpoint: str | Path) -> Path:
    """A checkpoint file: the path itself, or in a run folder `best.pt`, else the newest step."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    folder = path / CHECKPOINTS
    candidates = [folder / "best.pt"] if (folder / "best.pt").is_file() else []
    candidates += sorted(folder.glob("step-*.pt"), reverse=True)
    if not candidates:
        raise CheckpointError(f"{path}: neither a checkpoint file nor a run with checkpoints")
    return candidates[0]


def run_config(checkpoint: Path) -> TrainConfig:
    """The config of the run a checkpoint belongs to (`RUN/config.json` beside `checkpoints/`)."""
    config = checkpoint.resolve().parent.parent / CONFIG_NAME
    if not config.is_file():
        raise CheckpointError(
            f"{checkpoint}: no {CONFIG_NAME} of its run at {config}; pass --config"
        )
    return load_config(config)


def model_state(run_or_checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a run or checkpoint: their moving average where the run kept one
    (`optim.ema`), since that is what it evaluated."""
    path = checkpoint_path(run_or_checkpoint)
    state = load_checkpoint(path)
    if isinstance(state.get("ema"), dict) and isinstance(state["ema"].get("weights"), dict):
        return state["ema"]["weights"]
    if "model" not in state or not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: not a polymodal checkpoint (no model weights)")
    return state["model"]


def load_model(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """`model.load_state_dict(state)`, or an error naming what does not fit."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(ours[k].shape)}"
        for k in sorted(set(ours) & set(state))
        if state[k].shape != ours[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape", shapes),
            )
            if items
        ]
        raise CheckpointError(
            f"{where}: these weights are of another model ({'; '.join(parts)}); a new class "
            'count or other fields need fine-tuning (init = ..., init_mismatch = "reinit")'
        )
    model.load_state_dict(state)


def is_hugging_face(spec: str) -> bool:
    """Whether a weights source is a Hugging Face Perceiver: `hf:NAME`, or a folder whose
    config.json names a transformers class (`polymodal export` writes our config there)."""
    config = Path(spec) / CONFIG_NAME
    if spec.startswith("hf:"):
        return True
    try:
        return "architectures" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def source_weights(spec: str) -> dict[str, torch.Tensor]:
    """The tensors an `init` names (see the module docstring), by our parameter names."""
    if is_hugging_face(spec):
        from polymodal.perceiver.pretrained import from_pretrained

        module = from_pretrained(spec.removeprefix("hf:"))
        return {k.removeprefix("model."): v for k, v in module.state_dict().items()}
    path = Path(spec)
    if path.is_dir() and (path / "model.safetensors").is_file():  # what `export` wrote
        path = path / "model.safetensors"
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file")
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError on a cut or forged file: named, one line
            raise CheckpointError(f"{path}: does not load ({type(exc).__name__}: {exc})") from None
    return model_state(path)


@dataclass
class InitReport:
    """What an `init` did to each of the model's tensors."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        fresh = ", ".join(self.reinitialised[:4]) or "-"
        return (
            f"init from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.reinitialised)} re-initialised ({fresh}), "
            f"{len(self.new)} new, {len(self.unused)} of the source unused"
        )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()


def apply_init(model: nn.Module, spec: str, mismatch: str = "error") -> InitReport:
    """Copy the source's tensors into `model` where names and shapes agree (see the module
    docstring); `mismatch="reinit"` allows shapes that differ."""
    source = source_weights(spec)
    report = InitReport(spec)
    mine = model.state_dict()
    shapes = []
    with torch.no_grad():
        for name, tensor in mine.items():
            if name not in source:
                report.new.append(name)
            elif source[name].shape != tensor.shape:
                report.reinitialised.append(name)
                shapes.append(f"{name} {tuple(source[name].shape)} → {tuple(tensor.shape)}")
            else:
                tensor.copy_(source[name])
                report.loaded.append(name)
    report.unused = sorted(set(source) - set(mine))
    if shapes and mismatch != "reinit":
        raise CheckpointError(
            f"init: {spec} has tensors of other shapes ({'; '.join(shapes[:4])}): another class "
            'count or other inputs; set init_mismatch = "reinit" to train those afresh'
        )
    if not report.loaded:
        raise CheckpointError(f"init: no tensor of {spec} fits this model (names or shapes differ)")
    return report


def export(source: str, out: str | Path, fmt: str = "safetensors", overwrite: bool = False) -> Path:
    """Write a run's or checkpoint's model (or a Hugging Face Perceiver, `hf:NAME` or a
    folder) as `out/model.safetensors` with the run's config beside it, or as a transformers
    folder (`fmt="hf"`, for models that have a transformers class). `out` must be empty or an
    earlier export of the same source (`overwrite`: another's, or other files); never a
    dataset."""
    out = Path(out)
    if fmt not in ("safetensors", "hf"):
        raise CheckpointError(f"--format must be safetensors or hf, got {fmt!r}")
    if fmt == "hf" and not is_hugging_face(source):
        raise CheckpointError(
            f"{source}: a polymodal run's model has no transformers class to become; "
            "use --format safetensors (transformers folders come from Hugging Face models)"
        )
    weights = source_weights(source) if fmt == "safetensors" else {}
    claim_output(out, {"command": "export", "source": str(source), "format": fmt}, overwrite)
    if fmt == "hf":
        from polymodal.perceiver.pretrained import from_pretrained, save_pretrained

        return save_pretrained(from_pretrained(source.removeprefix("hf:")), out)
    from safetensors.torch import save

    weights = {k: v.contiguous() for k, v in weights.items()}
    if not is_hugging_face(source):
        config = run_config(checkpoint_path(source))
        write_atomic(out / CONFIG_NAME, config.to_json().encode())
    write_atomic(out / "model.safetensors", save(weights, {"format": "pt", "source": source}))
    return out / "model.safetensors"

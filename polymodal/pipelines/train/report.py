"""What a run says about itself: one line per epoch for a person (`epoch_line`), each step's and
each evaluation's numbers in `metrics.jsonl` and TensorBoard (`RunLog`, rank 0 only), and
`metrics.png`, the curves drawn with real axes (`plot_metrics`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any


class RunLog:
    """`metrics.jsonl` (one JSON record a line, always) and TensorBoard scalars (when
    tensorboard is installed) of one run; a no-op where `active` is False (ranks but 0)."""

    def __init__(self, run_dir: Path, active: bool) -> None:
        self.run_dir, self.path, self.active = run_dir, run_dir / "metrics.jsonl", active

    @cached_property
    def tensorboard(self) -> Any:
        """Made at the first record, not with the log: TensorBoard's writer makes its folder
        and an event file at once, and a run that the folder's lock refuses leaves nothing."""
        return _tensorboard(self.run_dir)

    def start(self, resumed: bool) -> None:
        """A fresh run starts a fresh file; a resumed one appends."""
        if self.active and not resumed:
            self.path.unlink(missing_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer when tensorboard is installed, else None (JSONL is always kept)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def source_names(sources: Sequence[dict[str, Any]]) -> list[str]:
    """Short names of a mixture's sources: their folders' names, numbered where two agree."""
    names = [Path(str(s["source"]).rstrip("/")).name or str(s["source"]) for s in sources]
    if len(set(names)) < len(names):
        names = [f"{n}:{name}" for n, name in enumerate(names)]
    return names


def source_metrics(sources: list[dict[str, Any]]) -> dict[str, int]:
    """`source/NAME/delivered` and `/skipped` for metrics.jsonl and TensorBoard."""
    out = {}
    for name, source in zip(source_names(sources), sources, strict=True):
        out[f"source/{name}/delivered"] = source["delivered"]
        out[f"source/{name}/skipped"] = source["skipped"]
    return out


def epoch_line(
    epoch: int,
    step: int,
    losses: list[float],
    metrics: dict[str, Any],
    rates: tuple[float, float, float],
    sources: Sequence[dict[str, Any]] = (),
) -> str:
    """`epoch 3 (step 150): train loss 0.4120 · val_accuracy 0.9530 · 212.5 samples/s ·
    1.31M tokens/s · padding 48%` (`rates`: samples/s, real input elements/s, the share of
    shipped elements that were padding), and for a mixture `· web 700 (pass 2, 45%) · studio
    300`: each source's samples this epoch, its skips, and where a source taken in part
    stands in its cycle."""
    parts = [f"train loss {sum(losses) / max(len(losses), 1):.4f}"]
    parts += [
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in metrics.items()
        if k not in ("val_samples",) and not (k == "val_skipped" and not v)
    ]
    samples, tokens, padding = rates
    parts += [f"{samples:.1f} samples/s", f"{tokens / 1e6:.3g}M tokens/s", f"padding {padding:.0%}"]
    if len(sources) > 1:
        for name, source in zip(source_names(sources), sources, strict=True):
            text = f"{name} {source['delivered']}"
            cycle = source["cycle"]
            if cycle["pass"] or cycle["through"]:
                text += f" (pass {cycle['pass'] + 1}, {cycle['through'] / cycle['of']:.0%})"
            if source["skipped"]:
                text += f", {source['skipped']} skipped"
            parts.append(text)
    return f"epoch {epoch} (step {step}): " + " · ".join(parts)


def plot_metrics(metrics: Path, out: Path) -> None:
    """The training loss (per step, and its mean per epoch when there are many steps) and the
    validation metrics against the step, as a PNG with real axes (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw into the file
    from matplotlib import pyplot as plt

    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    names = sorted(
        {
            k
            for r in records
            for k, v in r.items()
            if k.startswith("val_")
            and k not in ("val_samples", "val_skipped")
            and isinstance(v, float)
            and math.isfinite(v)
        }
    )
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    if train:
        left.plot(*zip(*train, strict=True), linewidth=1, label="train loss")
    left.set(xlabel="step", ylabel="loss", title="training loss")
    left.grid(alpha=0.3)
    for name in names:
        points = [(r["step"], r[name]) for r in records if name in r]
        right.plot(*zip(*points, strict=True), marker="o", label=name)
    right.set(xlabel="step", ylabel="value", title="validation")
    right.grid(alpha=0.3)
    if names:
        right.legend()
    figure.savefig(out, dpi=100)
    plt.close(figure)

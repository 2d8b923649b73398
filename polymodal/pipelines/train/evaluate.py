"""Scoring a model on a dataset, and running it over new files.

`evaluation_pass` is the one loop that scores a model on a stream: the trainer's validation and
`polymodal evaluate` both run it, so a checkpoint scored later gets the numbers it got in
training. Metrics follow the standard definitions: mAP is scikit-learn's
`average_precision_score`, macro over the classes that have a positive (ties included), and a
confusion matrix is scikit-learn's.

`polymodal predict` runs a checkpoint over files or a dataset: one JSON line per sample, with the
top-k classes (names from the training dataset's index) or, for autoencoding, the paths of the
reconstructions it wrote (`.npy`, in the field's own dtype and grid).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from polymodal.adapters import Batch, DecodeError, collate
from polymodal.datasets.files import atomic_open, claim_output, is_remote, write_atomic
from polymodal.datasets.layout import split_name
from polymodal.datasets.shardlist import open_dataset
from polymodal.pipelines.stream.place import Place, gathered
from polymodal.pipelines.stream.stages import Skip
from polymodal.pipelines.stream.stream import Stream, StreamError
from polymodal.pipelines.train.config import TrainConfig
from polymodal.pipelines.train.tasks import (
    AutoencodeTask,
    ClassificationTask,
    Task,
    dataset_stream,
    make_task,
    model_inputs,
)
from polymodal.pipelines.train.weights import (
    CheckpointError,
    checkpoint_path,
    load_model,
    model_state,
    run_config,
)

log = logging.getLogger("polymodal.train")


@dataclass
class Evaluation:
    """What one rank saw: metric sums, and per sample the scores and targets when collected."""

    sums: dict[str, float] = field(default_factory=dict)
    scores: list[torch.Tensor] = field(default_factory=list)
    truths: list[torch.Tensor] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


@torch.no_grad()
def evaluation_pass(
    task: Task,
    model: nn.Module,
    stream: Stream,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
    collect: str | None = None,
    progress: bool = False,
) -> Evaluation:
    """Every sample of `stream` for this rank exactly once (padding repeats dropped), under a
    progress bar over its batches when `progress`. `collect` keeps, per sample, the class
    `"scores"` (for mAP) or only the `"predictions"` (the top class, for a confusion matrix:
    O(samples) memory, whatever the number of classes), with the targets."""
    model.eval()
    out = Evaluation()
    batches = stream.worker_batches(0, Place(rank, world))
    bar = tqdm(
        batches,
        total=stream.batches_per_epoch(world),
        desc="validation",
        unit="batch",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    )
    for batch, _, skips in bar:
        out.skipped += [s for s in skips if s.samples]
        if batch is None:
            raise StreamError("evaluation: not one sample could be read and decoded")
        batch = batch.select(~batch.repeated).to(device)
        if not batch.keys:
            continue
        for key, value in task.sums(model, batch).items():
            out.sums[key] = out.sums.get(key, 0.0) + value
        if collect is not None:
            scores, truths = task.scores(model, batch)
            kept = scores if collect == "scores" else scores.argmax(-1)
            out.scores.append(kept.cpu())
            out.truths.append(truths.cpu())
    return out


def evaluate_ranks(
    task: Task,
    model: nn.Module,
    stream: Stream,
    place: Place,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """The `val_` metrics over every sample of `stream` exactly once across the ranks: each
    rank's `evaluation_pass`, then its sums, skipped samples and (where the task collects
    them) scores combined on every rank. Every rank must call it (it holds collectives)."""
    collect = "scores" if task.collects_scores else None
    result = evaluation_pass(
        task, model, stream, place.rank, place.world, device, collect, progress
    )
    sums, skipped = _over_ranks(result.sums, place), _skipped_over_ranks(result, place, device)
    scored: tuple[torch.Tensor, ...] = ()
    if collect is not None:
        mine = (torch.cat(result.scores), torch.cat(result.truths))
        parts = gathered(mine, place)
        scored = (torch.cat([s for s, _ in parts]), torch.cat([t for _, t in parts]))
    return metrics_of(task, sums, skipped, *scored)


def _over_ranks(sums: dict[str, float], place: Place) -> dict[str, float]:
    parts = gathered(sums, place)
    keys = sorted({k for part in parts for k in part})
    return {k: sum(part.get(k, 0.0) for part in parts) for k in keys}


def _skipped_over_ranks(result: Evaluation, place: Place, device: torch.device | str) -> int:
    """Log this rank's skipped validation samples (each reason once, with a key); their count
    over all ranks."""
    count = sum(s.samples for s in result.skipped)
    if result.skipped:
        reasons = {s.reason: s.key for s in result.skipped}
        log.warning(
            "validation skipped %d samples on rank %d: %s",
            count,
            place.rank,
            "; ".join(f"{key}: {reason}" for reason, key in list(reasons.items())[:5]),
        )
    if place.world > 1:
        total = torch.tensor([count], device=device)
        dist.all_reduce(total)
        count = int(total.item())
    return count


def metrics_of(
    task: Task,
    sums: dict[str, float],
    skipped: int,
    scores: torch.Tensor | None = None,
    truths: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The `val_` metrics of summed evaluation results (over every rank): the task's own, the
    samples skipped, and those of the collected scores (multi-label mAP, retrieval recall)."""
    out: dict[str, Any] = task.metrics(sums) if sums else {"val_samples": 0}
    out["val_skipped"] = skipped
    if scores is not None and truths is not None:
        out.update(task.collected_metrics(scores, truths))
    return out


def model_from(
    run_or_checkpoint: str | Path, config: TrainConfig | None = None
) -> tuple[TrainConfig, Task, nn.Module]:
    """A run's task and trained model, from its checkpoint (and its config unless given)."""
    path = checkpoint_path(run_or_checkpoint)
    config = config or run_config(path)
    task = make_task(config)
    model = task.model()
    load_model(model, model_state(path), str(path))
    return config, task, model.eval()


MAX_CONFUSION_CLASSES = 100  # above it no matrix (10^6 classes would be a 7 TiB one): top-k only


def evaluate_checkpoint(
    config: TrainConfig | None,
    checkpoint: str | Path,
    split: str = "val",
    out: Path | None = None,
) -> dict[str, Any]:
    """Metrics of a checkpoint on `split` (`val`, `train` or a dataset), written with a
    confusion-matrix PNG (classification) to `out`. `config` None: the run's own."""
    config, task, model = model_from(checkpoint, config)
    train = config.train_paths()  # a mixture's datasets, each once
    named: dict[str, str | list[str]] = {
        "val": config.data.val,
        "train": train[0] if len(train) == 1 else train,
    }
    source = named.get(split, split)
    if not source:
        raise CheckpointError(f"--split {split}: the config names no {split} dataset")
    classification = isinstance(task, ClassificationTask)
    multi_label = isinstance(task, ClassificationTask) and task.multi_label
    classes = config.data.num_classes
    matrix = classification and not multi_label and classes <= MAX_CONFUSION_CLASSES
    collect = "scores" if task.collects_scores else "predictions" if matrix else None
    stream = dataset_stream(config, f"--split {split}", source, task.fields())
    result = evaluation_pass(task, model, stream, collect=collect)
    collected = bool(collect and result.scores)
    scores = torch.cat(result.scores) if collected else None
    truths = torch.cat(result.truths) if collected else None
    skipped = sum(s.samples for s in result.skipped)
    collected_scores = (scores, truths) if task.collects_scores else ()
    found = metrics_of(task, result.sums, skipped, *collected_scores)
    metrics = {k.removeprefix("val_"): v for k, v in found.items()}
    metrics["dataset"] = source
    if classification and not multi_label and not matrix:
        metrics["confusion_matrix"] = (
            f"not made: {classes:,} classes, over the {MAX_CONFUSION_CLASSES} a matrix serves "
            "(accuracy and top-5 above)"
        )
    if out is not None:
        if matrix and scores is not None and truths is not None:
            names = class_names(config)
            path = confusion_png(scores, truths, classes, names, out)
            metrics["confusion_matrix"] = str(path)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "metrics.json", (json.dumps(metrics, indent=1) + "\n").encode())
    return metrics


def class_names(config: TrainConfig) -> list[str] | None:
    """The class names of the training dataset's index, when it has them."""
    try:
        return open_dataset(config.train_paths()[0], config.data.remote).classes
    except (OSError, ValueError):
        return None


def confusion_png(
    predictions: torch.Tensor,
    truths: torch.Tensor,
    classes: int,
    names: Sequence[str] | None,
    out: Path,
) -> Path:
    """The confusion matrix (rows: true class, columns: predicted; scikit-learn's) drawn by
    matplotlib with real axes, its counts written in when they fit. At most
    `MAX_CONFUSION_CLASSES` classes: the caller says so above it."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw into the file
    from matplotlib import pyplot as plt
    from sklearn.metrics import confusion_matrix

    if classes > MAX_CONFUSION_CLASSES:
        raise ValueError(f"{classes:,} classes: over the {MAX_CONFUSION_CLASSES} a matrix shows")
    matrix = confusion_matrix(truths.numpy(), predictions.numpy(), labels=list(range(classes)))
    labels = [(names[i] if names and i < len(names) else str(i))[:16] for i in range(classes)]
    side = max(4.5, 0.32 * classes + 2.5)
    figure, axes = plt.subplots(figsize=(side, side), layout="constrained")
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8, label="samples")
    axes.set_xticks(range(classes), labels, rotation=90 if classes > 6 else 0)
    axes.set_yticks(range(classes), labels)
    axes.set(xlabel="predicted class", ylabel="true class", title="confusion matrix")
    if classes <= 30:
        top = max(int(matrix.max()), 1)
        for (row, col), count in np.ndenumerate(matrix):
            colour = "white" if count > top / 2 else "black"
            axes.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "confusion.png") as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)
    return out / "confusion.png"


def predict(
    run_or_checkpoint: str | Path,
    inputs: Sequence[str],
    config: TrainConfig | None = None,
    top_k: int = 5,
    out: Path | None = None,
    overwrite: bool = False,
) -> Iterator[dict[str, Any]]:
    """One record per sample of `inputs` (files, grouped by key, or one dataset);
    reconstructions go to `out`, which must be empty or an earlier `predict` of the same
    checkpoint's (`overwrite` writes into a folder of other files)."""
    config, task, model = model_from(run_or_checkpoint, config)
    if not isinstance(task, ClassificationTask | AutoencodeTask):
        raise CheckpointError(f"predict serves classification and autoencoding, not {config.task}")
    if isinstance(task, AutoencodeTask) and out is None:
        raise CheckpointError("autoencoding writes reconstructions: pass --out DIR")
    if out is not None:
        claim_output(out, {"command": "predict", "source": str(run_or_checkpoint)}, overwrite)
    names = class_names(config)
    for batch, errors in _batches(config, task, inputs):
        yield from errors
        if batch is None:
            continue
        with torch.no_grad():
            if isinstance(task, ClassificationTask):
                yield from _top_classes(task, model, batch, top_k, names)
            elif out is not None:  # checked above: autoencoding needs a folder
                yield from _reconstructions(task, model, batch, out)


def _batches(
    config: TrainConfig, task: Task, inputs: Sequence[str]
) -> Iterator[tuple[Batch | None, list[dict[str, Any]]]]:
    """Batches of the input fields: a dataset's, or files' grouped by key, the path less its
    extension (`a/clip.mp4` and `a/clip.flac` are one sample, `b/clip.mp4` another), with a
    record per sample that does not decode."""
    if len(inputs) == 1 and (Path(inputs[0]).is_dir() or is_remote(inputs[0])):
        stream = dataset_stream(config, "the dataset to predict on", inputs[0], task.adapters)
        for batch, _, skips in stream.worker_batches(0, Place()):
            errors = [{"key": s.key, "error": s.reason} for s in skips if s.samples]
            yield (None if batch is None else batch.select(~batch.repeated)), errors
        return
    samples: dict[str, dict[str, Any]] = {}
    for name in inputs:
        path = Path(name)
        parts = split_name(path.name)
        if not path.is_file() or parts is None:
            problem = "no such file" if not path.is_file() else "no extension to read it by"
            yield None, [{"key": name, "error": problem}]
            continue
        key = name[: -len(parts[1]) - 1]  # the path as given, less its extension
        samples.setdefault(key, {"__key__": key})[parts[1]] = path.read_bytes()
    decoded, errors = [], []
    packed = list(task.adapters) if config.data.packing else []  # as the model trained
    for key, sample in samples.items():
        try:
            decoded.append(
                {"__key__": key, **{n: a.decode(sample) for n, a in task.adapters.items()}}
            )
        except DecodeError as exc:
            errors.append({"key": key, "error": str(exc)})
        if len(decoded) == config.data.batch_size:
            yield collate(decoded, packed=packed), errors
            decoded, errors = [], []
    yield (collate(decoded, packed=packed) if decoded else None), errors


def _top_classes(
    task: ClassificationTask,
    model: nn.Module,
    batch: Batch,
    top_k: int,
    names: Sequence[str] | None,
) -> Iterator[dict[str, Any]]:
    logits = model(model_inputs(batch, task.inputs)).float()
    scores = logits.sigmoid() if task.multi_label else logits.softmax(-1)
    values, indices = scores.topk(min(top_k, scores.shape[-1]), -1)
    for key, row_values, row_indices in zip(
        batch.keys, values.tolist(), indices.tolist(), strict=True
    ):
        top = [
            {"class": c, "name": names[c] if names and c < len(names) else str(c), "score": v}
            for v, c in zip(row_values, row_indices, strict=True)
        ]
        yield {"key": key, "top": top}


def _reconstructions(
    task: AutoencodeTask, model: nn.Module, batch: Batch, out: Path
) -> Iterator[dict[str, Any]]:
    outputs = model(model_inputs(batch, task.inputs), chunk_size=4096)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {name: task.outputs[name].values(o.float()) for name, o in outputs.items()}
    for i, key in enumerate(batch.keys):
        paths = {}
        for name, values in arrays.items():
            path = out / f"{key.replace('/', '_')}.{name}.npy"
            with atomic_open(path) as f:
                np.save(f, values[i], allow_pickle=False)
            paths[name] = str(path)
        yield {"key": key, "reconstructions": paths}

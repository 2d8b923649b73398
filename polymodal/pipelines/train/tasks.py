"""What a run learns: each task builds its model from the fields' adapters, gives the loss of a
batch and the validation metrics. The trainer is the same for all of them.

- `classification` / `multilabel`: a Perceiver over the fields, targets from a label member
  (accuracy and top-5 / mAP).
- `autoencode`: Perceiver IO reconstructs every field (video and image pixels, audio sample
  patches) from the latents, training on a random subset of output queries per step
  (mean squared error weighted per field; MSE and PSNR).
- `mlm`: byte-level masked language modelling of a text field (masked-byte accuracy).
- `contrastive`: no labels; two fields of a clip (its sound and its picture) embedded apart by
  the shared encoder learn to find each other among the other clips of the batch on every
  rank (InfoNCE both ways; retrieval recall@1/5 both ways over the whole validation set).
- `correspondence`: no labels; whether a clip's two fields belong together, told apart from
  the clip with the second field of another clip of the batch (accuracy over both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from polymodal.adapters import Adapter, Batch, Field, LabelAdapter
from polymodal.adapters.text import MASK, NUM_SPECIAL, VOCAB_SIZE, TextAdapter
from polymodal.errors import ConfigError
from polymodal.perceiver import (
    ContrastivePerceiver,
    FourierQueries,
    FusionPerceiver,
    MaskedLanguageModel,
    MultimodalAutoencoder,
    MultimodalDecoder,
    MultimodalInput,
    Perceiver,
)
from polymodal.perceiver.io import masked_rows, patchify
from polymodal.pipelines.stream.fields import build_adapter
from polymodal.pipelines.stream.stream import MissingMember, SourceSpec, Stream
from polymodal.pipelines.train.augment import mix_batch
from polymodal.pipelines.train.config import TrainConfig
from polymodal.pipelines.train.labels import settle_classes

TARGET = "target"  # the label field a classification task adds (input fields cannot use it)


def model_inputs(batch: Batch, names: list[str]) -> dict[str, tuple]:
    """The model's input fields of a batch, as `MultimodalInput` takes them (an optional field
    no sample of the batch has is left out)."""
    return {name: (batch[name],) for name in names if name in batch}


class Task:
    """The model, the extra fields it reads (targets), a batch's loss, validation sums, and
    what "best" means: `score_name`, the validation metric whose rise makes a checkpoint the
    best (None: no best), and whether validation needs every sample's scores
    (`collects_scores`: multi-label mAP), gathered from every rank."""

    score_name: str | None = None
    collects_scores: bool = False

    def __init__(self, config: TrainConfig, adapters: Mapping[str, Adapter]) -> None:
        self.config, self.adapters = config, dict(adapters)
        self.inputs = list(adapters)

    def fields(self) -> dict[str, Adapter]:
        return dict(self.adapters)

    def multimodal_input(self) -> MultimodalInput:
        """The input fields' encoders (with their configured options), side by side."""
        return MultimodalInput(
            inputs={
                name: a.encoder(**self.config.data.fields[name].encoder)
                for name, a in self.adapters.items()
            }
        )

    def model(self) -> nn.Module:
        raise NotImplementedError

    def classifier(self, num_classes: int) -> nn.Module:
        """The fields fused to `num_classes` logits, early or late (`config.fusion`)."""
        inputs = self.multimodal_input()
        if self.config.fusion == "late":
            return FusionPerceiver(
                inputs=inputs,
                encoder=self.config.model,
                num_classes=num_classes,
                concepts=self.config.fusion_concepts,
            )
        return Perceiver(
            input_channels=inputs.channels,
            num_classes=num_classes,
            encoder=self.config.model,
            input=inputs,
        )

    def loss(
        self, net: nn.Module, batch: Batch, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        """The training loss of a batch; `rng` (seeded per step by the trainer) draws the
        per-batch augmentation, none without it."""
        raise NotImplementedError

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        """Validation sums of one batch of real samples (repeats already dropped)."""
        raise NotImplementedError

    def scores(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class scores and targets of a batch, where the task has classes."""
        raise NotImplementedError(f"task {self.config.task} has no class scores")

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def collected_metrics(self, scores: torch.Tensor, truths: torch.Tensor) -> dict[str, float]:
        """The metrics of every validation sample's `scores` at once (`collects_scores`)."""
        raise NotImplementedError(f"task {self.config.task} collects no scores")


class ClassificationTask(Task):
    def __init__(self, config: TrainConfig, adapters: Mapping[str, Adapter]) -> None:
        super().__init__(config, adapters)
        if TARGET in adapters:
            raise ValueError(f"data.fields.{TARGET}: the name is taken by the training target")
        self.multi_label = config.task == "multilabel"
        self.score_name = "val_accuracy"
        self.collects_scores = self.multi_label

    def fields(self) -> dict[str, Adapter]:
        target = LabelAdapter(
            num_classes=self.config.data.num_classes,
            multi_label=self.multi_label,
            extensions=[self.config.data.label],
        )
        return {**self.adapters, TARGET: target}

    def model(self) -> nn.Module:
        return self.classifier(self.config.data.num_classes)

    def targets(self, batch: Batch) -> torch.Tensor:
        values = batch[TARGET].values[:, 0]
        return values.float() if self.multi_label else values[:, 0]

    def loss(
        self, net: nn.Module, batch: Batch, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        augment = self.config.augment
        targets = self.targets(batch)
        if rng is not None and (augment.mixup or augment.cutmix):
            if not self.multi_label:
                targets = F.one_hot(targets, self.config.data.num_classes).float()
            batch, targets = mix_batch(batch, self.inputs, targets, augment, rng)
        logits = net(model_inputs(batch, self.inputs)).float()
        smoothing = augment.label_smoothing
        if self.multi_label:
            targets = targets * (1 - smoothing) + smoothing / 2
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)

    def scores(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return model(model_inputs(batch, self.inputs)).float(), self.targets(batch)

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        logits, targets = self.scores(model, batch)
        if self.multi_label:
            exact = ((logits > 0) == targets.bool()).all(-1).sum().item()
            return {"correct": exact, "total": len(targets)}
        top = logits.topk(min(5, logits.shape[-1]), -1).indices
        return {
            "correct": (logits.argmax(-1) == targets).sum().item(),
            "top5": (top == targets[:, None]).any(-1).sum().item(),
            "total": len(targets),
        }

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        total = max(sums["total"], 1)
        out = {"val_samples": int(sums["total"]), "val_accuracy": sums["correct"] / total}
        if not self.multi_label and self.config.data.num_classes > 5:  # else top-5 is always 1
            out["val_top5"] = sums["top5"] / total
        return out

    def collected_metrics(self, scores: torch.Tensor, truths: torch.Tensor) -> dict[str, float]:
        return {"val_map": mean_average_precision(scores, truths)}


def mean_average_precision(scores: torch.Tensor, truths: torch.Tensor) -> float:
    """mAP over the classes that have a positive (AudioSet's metric), as scikit-learn."""
    from sklearn.metrics import average_precision_score

    has_positive = (truths > 0).any(0).numpy()
    if not has_positive.any():
        return 0.0
    y = (truths > 0).numpy()[:, has_positive]
    return float(average_precision_score(y, scores.numpy()[:, has_positive], average="macro"))


class _Reconstruction:
    """How one field is decoded: its output queries and target values in [-1, 1], from the
    adapter's `reconstruction` hook."""

    def __init__(self, name: str, adapter: Adapter, encoder: Mapping[str, Any]) -> None:
        spec = adapter.reconstruction(encoder)
        if spec is None:
            raise ConfigError(
                f"data.fields.{name}: task autoencode reconstructs a fixed grid; this "
                f"{type(adapter).__name__} has none (video and pictures with a size, audio "
                "with a duration in seconds have one)"
            )
        self.grid, self.patch, self.channels = spec.grid, spec.patch, spec.channels
        self.scale, self.offset, self.dtype = spec.scale, spec.offset, spec.dtype
        self.length = math.prod(spec.grid)  # elements a sample has on the grid
        bands = int(encoder.get("num_bands", 16))
        if spec.patch is None:
            self.queries = FourierQueries(shape=spec.grid, num_bands=bands)
        else:
            cells = tuple(g // p for g, p in zip(spec.grid, spec.patch, strict=True))
            self.queries = FourierQueries(shape=cells, num_bands=bands, max_resolution=spec.grid)

    def target(self, field: Field) -> torch.Tensor:
        """`[B, M, C]` targets on the grid. A packed field is padded again to the grid: a
        sample shorter than the grid (a clip of fewer frames) has zeros after its own elements,
        the targets its padded batch has."""
        values = field.values if field.offsets is None else field.padded(self.length).values
        x = values.float() * self.scale + self.offset
        return patchify(x, self.grid, self.patch) if self.patch else x

    def values(self, outputs: torch.Tensor) -> np.ndarray:
        """Decoded outputs `[B, M, C]` back in the field's units, dtype and grid (the inverse of
        `target`): `[B, *grid, 3]` pixels, or `[B, samples, channels]` audio."""
        batch = outputs.shape[0]
        x = (outputs.detach().cpu().float() - self.offset) / self.scale
        shape = (batch, *self.grid, -1)  # one query per element, or per 1-d patch
        limits = np.iinfo(self.dtype) if issubclass(self.dtype, np.integer) else None
        if limits is not None:
            x = x.round().clamp(limits.min, limits.max)
        return x.reshape(shape).numpy().astype(self.dtype)


class AutoencodeTask(Task):
    def __init__(self, config: TrainConfig, adapters: Mapping[str, Adapter]) -> None:
        super().__init__(config, adapters)
        self.outputs = {
            name: _Reconstruction(name, a, config.data.fields[name].encoder)
            for name, a in adapters.items()
        }

    def model(self) -> nn.Module:
        inputs = self.multimodal_input()
        latent = self.config.model.latent_dim
        decoder = MultimodalDecoder(
            queries={n: o.queries for n, o in self.outputs.items()},
            latent_dim=latent,
            out_channels=latent,
        )
        heads = {n: nn.Linear(latent, o.channels) for n, o in self.outputs.items()}
        return MultimodalAutoencoder(
            inputs=inputs, encoder=self.config.model, decoder=decoder, heads=heads
        )

    def loss(
        self, net: nn.Module, batch: Batch, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        indices = {
            n: torch.randperm(o.queries.length)[: self.config.subsample]
            for n, o in self.outputs.items()
        }
        outputs = net(model_inputs(batch, self.inputs), indices)
        total = torch.zeros((), device=batch[self.inputs[0]].values.device)
        for name, out in outputs.items():
            target = self.outputs[name].target(batch[name])[:, indices[name]]
            weight = self.config.loss_weights.get(name, 1.0)
            total = total + weight * F.mse_loss(out.float(), target)
        return total

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        outputs = model(model_inputs(batch, self.inputs), chunk_size=4096)
        sums: dict[str, float] = {}
        for name, out in outputs.items():
            target = self.outputs[name].target(batch[name])
            sums[f"{name}_se"] = (out.float() - target).square().sum().item()
            sums[f"{name}_n"] = target.numel()
        sums["total"] = len(batch.keys)
        return sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {"val_samples": int(sums["total"])}
        for name in self.outputs:
            mse = sums[f"{name}_se"] / max(sums[f"{name}_n"], 1)
            out[f"val_{name}_mse"] = mse
            out[f"val_{name}_psnr"] = 10 * math.log10(4 / mse) if mse > 0 else float("inf")
        return out


class MaskedLMTask(Task):
    score_name = "val_masked_accuracy"

    def __init__(self, config: TrainConfig, adapters: Mapping[str, Adapter]) -> None:
        super().__init__(config, adapters)
        texts = {n: a for n, a in adapters.items() if isinstance(a, TextAdapter)}
        if len(adapters) != 1 or not texts:
            raise ValueError("task mlm takes exactly one field, a text field")
        ((self.name, self.text),) = texts.items()

    def model(self) -> nn.Module:
        adapter = self.text
        dim = int(self.config.data.fields[self.name].encoder.get("dim", 256))
        return MaskedLanguageModel(
            encoder=self.config.model,
            vocab_size=VOCAB_SIZE,
            dim=dim,
            max_length=adapter.max_length,
            decoder_heads=1,
            decoder_qk_channels=None,
        )

    def _masked(self, batch: Batch, generator: torch.Generator | None = None) -> tuple:
        """The ids with bytes masked, the ids, which were masked, and the model's other
        arguments (padded: the mask; packed: no mask and the offsets, ids `[T]`)."""
        field = batch[self.name]
        ids = field.values[..., 0].long()
        mask = field.mask if field.mask is not None else torch.ones_like(ids, dtype=torch.bool)
        real = mask & (ids >= NUM_SPECIAL)
        draw = torch.rand(ids.shape, generator=generator).to(ids.device)
        chosen = real & (draw < self.config.mask_probability)
        return ids.masked_fill(chosen, MASK), ids, chosen, (field.mask, field.offsets)

    def loss(
        self, net: nn.Module, batch: Batch, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        masked, ids, chosen, layout = self._masked(batch)
        logits = net(masked, *layout)
        return F.cross_entropy(masked_rows(logits, chosen).float(), ids[chosen])

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        generator = torch.Generator().manual_seed(0)  # the same masks every evaluation
        masked, ids, chosen, layout = self._masked(batch, generator)
        predictions = model(masked, *layout).argmax(-1)
        return {
            "correct": (predictions == ids)[chosen].sum().item(),
            "masked": chosen.sum().item(),
            "total": len(batch.keys),
        }

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {
            "val_samples": int(sums["total"]),
            "val_masked_accuracy": sums["correct"] / max(sums["masked"], 1),
        }


class ContrastiveTask(Task):
    """Learning from the pairing itself (AVID, CAV-MAE's contrastive loss): the two fields of
    each clip are embedded apart by one shared encoder (`ContrastivePerceiver`); a clip's two
    embeddings are positives, every other clip of the batch on every rank a negative. No label
    is read. "Best" is the mean recall@1 of both directions on the validation set."""

    score_name = "val_recall_at_1"
    collects_scores = True

    def __init__(self, config: TrainConfig, adapters: Mapping[str, Adapter]) -> None:
        super().__init__(config, adapters)
        self.pair = sorted(adapters)  # config.validate: exactly two

    def model(self) -> nn.Module:
        return ContrastivePerceiver(
            inputs=self.multimodal_input(),
            encoder=self.config.model,
            embed_dim=self.config.embed_dim,
        )

    def embeddings(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, ...]:
        """The batch's two embeddings (in `pair` order) and the inverse temperature."""
        embedded, scale = net(model_inputs(batch, self.inputs))
        return embedded[self.pair[0]], embedded[self.pair[1]], scale

    def loss(
        self, net: nn.Module, batch: Batch, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        a, b, scale = self.embeddings(net, batch)
        return info_nce(a, b, scale, ~batch.repeated.to(a.device), across_ranks=True)

    def scores(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, _ = self.embeddings(model, batch)
        return a, b

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        a, b, scale = self.embeddings(model, batch)
        valid = torch.ones(len(a), dtype=torch.bool, device=a.device)  # repeats are dropped
        n = len(batch.keys)
        return {"loss": info_nce(a, b, scale, valid, across_ranks=False).item() * n, "total": n}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        total = max(sums["total"], 1)
        return {"val_samples": int(sums["total"]), "val_loss": sums["loss"] / total}

    def collected_metrics(self, scores: torch.Tensor, truths: torch.Tensor) -> dict[str, float]:
        return retrieval_recall(scores, truths, self.pair)


class CorrespondenceTask(Task):
    """Audio-visual correspondence (Look, Listen and Learn): does this sound belong to this
    picture? A classifier over both fields fused, so it must compare the senses. Each batch is
    shown twice: as it is ("together") and with every clip's second field taken from another
    clip of the batch ("apart"; a random cycle, so never its own), drawn by the step's seeded
    generator, so a resumed run draws the same pairs; an "apart" pair of a padding repeat and
    its original (the same clip) is left out. Validation draws with a fixed seed: the same
    pairs every evaluation."""

    score_name = "val_accuracy"

    def __init__(self, config: TrainConfig, adapters: Mapping[str, Adapter]) -> None:
        super().__init__(config, adapters)
        self.pair = sorted(adapters)  # config.validate: exactly two

    def model(self) -> nn.Module:
        return self.classifier(1)

    def pairs(
        self, batch: Batch, rng: np.random.Generator
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The together and apart pairs (each field's rows of the batch, on its device),
        their targets and weights."""
        n = batch.size
        cycle = torch.from_numpy(rng.permutation(n))
        partner = torch.empty_like(cycle)
        partner[cycle] = cycle.roll(-1)
        device = batch[self.pair[0]].values.device
        keys = batch.keys
        same = torch.tensor([keys[i] == keys[j] for i, j in enumerate(partner.tolist())])
        mine = torch.arange(n)
        first, second = self.pair
        rows = {first: torch.cat([mine, mine]), second: torch.cat([mine, partner])}
        targets = torch.cat([torch.ones(n), torch.zeros(n)]).to(device)
        weights = torch.cat([torch.ones(n), (~same).float()]).to(device)
        return {name: at.to(device) for name, at in rows.items()}, targets, weights

    def pair_logits(
        self, net: nn.Module, batch: Batch, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`pairs` through the model: late fused, each field of the batch is read once and
        its readings paired (half the encoder's work of reading every pair); early fused,
        the pairs' tokens, which the encoder reads together."""
        rows, targets, weights = self.pairs(batch, rng)
        if self.config.fusion == "late":  # a FusionPerceiver (`classifier`)
            logits = net(model_inputs(batch, self.inputs), rows)
        else:
            logits = net({name: (batch[name].rows(at),) for name, at in rows.items()})
        return logits.float()[:, 0], targets, weights

    def loss(
        self, net: nn.Module, batch: Batch, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        logits, targets, weights = self.pair_logits(net, batch, rng or np.random.default_rng(0))
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (losses * weights).sum() / weights.sum()

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        logits, targets, weights = self.pair_logits(model, batch, np.random.default_rng(0))
        right = ((logits > 0) == targets.bool()).float()
        return {
            "correct": (right * weights).sum().item(),
            "pairs": weights.sum().item(),
            "total": batch.size,
        }

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {
            "val_samples": int(sums["total"]),
            "val_accuracy": sums["correct"] / max(sums["pairs"], 1),
        }


def info_nce(
    a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, valid: torch.Tensor, across_ranks: bool
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss): `a[i]`'s positive is `b[i]`, its negatives every other
    `b`, and the same from `b`'s side, mean of the two. `across_ranks`: the negatives are the
    whole global batch, gathered with their gradients (`torch.distributed.nn`), so every rank
    must call it. `valid` False marks a padding repeat, neither an anchor nor a negative: it is
    a copy of a sample in the batch, so it would be a negative identical to a positive."""
    rank, keys_a, keys_b, keys_valid = 0, a, b, valid
    if across_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        flags = [torch.empty_like(valid, dtype=torch.float32) for _ in range(dist.get_world_size())]
        dist.all_gather(flags, valid.float())
        rank, keys_valid = dist.get_rank(), torch.cat(flags).bool()
        keys_a, keys_b = torch.cat(all_gather(a)), torch.cat(all_gather(b))
    targets = torch.arange(len(a), device=a.device) + rank * len(a)
    losses = []
    for anchors, keys in ((a, keys_b), (b, keys_a)):
        logits = (scale * anchors @ keys.T).float()  # float32 under bf16 autocast too
        logits = logits.masked_fill(~keys_valid[None], torch.finfo(logits.dtype).min)
        losses.append(F.cross_entropy(logits, targets, reduction="none"))
    per_anchor = (losses[0] + losses[1]) / 2
    # a rank whose batch is all repeats still joins the graph (its gathers' backward is a
    # collective every rank must enter), with a zero loss
    return torch.where(valid, per_anchor, 0).sum() / valid.sum().clamp(min=1)


def retrieval_recall(
    a: torch.Tensor, b: torch.Tensor, names: list[str], ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Recall@k both ways over the whole set: the share of clips whose own partner is among
    the k most similar of all N candidates (chance: k / N), and the mean of both ways at 1."""
    out: dict[str, float] = {}
    for queries, keys, way in ((a, b, names), (b, a, names[::-1])):
        ranks = []
        for start in range(0, len(queries), 1024):  # N × 1024 similarities at a time
            chunk = queries[start : start + 1024]
            sims = chunk @ keys.T
            # a clip's own similarity read from the same product: computed apart, it differs
            # from its entry in `sims` by rounding, and the clip then outranked itself
            rows = torch.arange(len(chunk), device=sims.device)
            own = sims[rows, start + rows][:, None]
            ranks.append((sims > own).sum(-1))
        rank = torch.cat(ranks)
        for k in ks:
            out[f"val_{way[0]}_to_{way[1]}_recall_at_{k}"] = float((rank < k).float().mean())
    both = [v for key, v in out.items() if key.endswith("_recall_at_1")]
    out["val_recall_at_1"] = sum(both) / 2
    return out


TASKS = {
    "classification": ClassificationTask,
    "multilabel": ClassificationTask,
    "autoencode": AutoencodeTask,
    "mlm": MaskedLMTask,
    "contrastive": ContrastiveTask,
    "correspondence": CorrespondenceTask,
}


def make_task(config: TrainConfig) -> Task:
    """The config's task with its fields' adapters; its classes settled with the data first
    (`labels.settle_classes`), so no model is built for a class count the data disagrees
    with."""
    settle_classes(config)
    adapters = {}
    for name, spec in config.data.fields.items():
        adapters[name] = build_adapter(spec, f"data.fields.{name}")
    return TASKS[config.task](config, adapters)


def dataset_stream(
    config: TrainConfig,
    where: str,
    source: SourceSpec,
    fields: Mapping[str, Any],
    shuffle: bool = False,
    clips_per_sample: int = 1,
    buckets: str | list[int] = "",
    **mixture: Any,
) -> Stream:
    """The `Stream` of `fields` over one dataset or a mixture (`mixture`: the Stream's
    `epoch_size`, `batching`, `schedule`), as the config sets batches, buffer, seed and remote
    reads (`clips_per_sample`: the training stream's clips per decode, `buckets` its length
    buckets, within `data.lookahead` batches). A dataset that is
    missing or broken, or that lacks a member one of the fields reads, or a mixture that
    cannot be planned on them, is a `ConfigError` naming `where` (`data.train`, `--split
    val`, ...), checked on the indexes the stream loads, before any model is built."""
    try:
        stream = Stream(
            source,
            dict(fields),
            batch_size=config.data.batch_size,
            shuffle=shuffle,
            seed=config.seeds()[0],
            buffer_size=config.data.buffer_size,
            remote=config.data.remote,
            optional=[n for n, spec in config.data.fields.items() if spec.optional and n in fields],
            meta=config.data.meta,
            clips_per_sample=clips_per_sample,
            transforms=config.data.transforms,
            packed=[n for n in fields if n != TARGET] if config.data.packing else (),
            cache_dir=config.data.cache_dir or None,
            cache_limit=config.data.cache_limit or None,
            buckets=buckets or None,
            lookahead=config.data.lookahead,
            max_tokens=(config.data.max_tokens or None) if buckets else None,
            **mixture,
        )
    except MissingMember as exc:
        label = "data.label" if exc.field == TARGET else f"data.fields.{exc.field}"
        raise ConfigError(f"{label}: {exc.detail}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    named = ", ".join(stream.sources)
    if stream.total == 0:  # a run over it would wait forever for its first batch
        left_out = [skip for skips in stream.excluded for skip in skips.values()]
        why = f"; left out: {left_out[0].key}: {left_out[0].reason}" if left_out else ""
        raise ConfigError(f"{where}: the dataset {named} has no sample to read{why}")
    return stream

"""Training configuration: one TOML file, typed sections, `--set key=value` overrides.

Invalid configurations fail before any work, with a message naming the field
(`model.num_latents: expected int, got 'many'`, `optim.grad_clip: must be at least 0, got -1`,
`data.fields.video.options.num_frame: unknown option (known: ...)`): every value is
range-checked, and each field's adapter is built once from its options at load, so a typo or a
bad size fails here and not inside the trainer. The resolved configuration is saved with every
run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from polymodal.datasets.files import Remote
from polymodal.errors import ConfigError
from polymodal.literals import did_you_mean, parse_pairs, set_path
from polymodal.perceiver.encoder import EncoderConfig
from polymodal.pipelines.stream.fields import FieldSpec, build_adapter
from polymodal.pipelines.stream.loader import MAX_NICE, WORKER_NICE
from polymodal.pipelines.stream.stages.transform import parse_transform

PAIRED_TASKS = ("contrastive", "correspondence")  # tasks that learn from a pair of fields


@dataclass
class SourceConfig:
    """One source of a training mixture (`[[data.train]]`) and its one rule: `weight` (a
    share of what the other rules leave of the epoch), `repeat` (passes per epoch) or
    `samples` (per epoch); none is one pass (`pipelines.mixtures`)."""

    path: str
    weight: float | None = None
    repeat: float | None = None
    samples: int | None = None


@dataclass
class SchedulePointConfig:
    """`[[data.schedule]]`: the sources' weights (in `data.train`'s order) from optimiser
    step `step` on (`ramp = "step"`), or reached at `step` linearly from the point before
    (`ramp = "linear"`)."""

    step: int
    weights: list[float]
    ramp: str = "step"


@dataclass
class DataConfig:
    train: str | list[SourceConfig] = ""  # a dataset, or a mixture: `[[data.train]]` tables
    val: str = ""
    epoch_size: int = 0  # samples in a training epoch (0: the mixture's natural size)
    batching: str = "mixed"  # mixed | stratified: every batch holds each source's share
    schedule: list[SchedulePointConfig] = field(default_factory=list)  # weights by step
    fields: dict[str, FieldSpec] = field(default_factory=dict)
    label: str = "cls"  # the extension holding the target
    meta: list[str] = field(default_factory=list)  # members that ride along (json, txt)
    # the user's functions on decoded samples, in order: "map:module:fn", "filter:module:fn"
    transforms: list[str] = field(default_factory=list)
    num_classes: int = 0  # 0: from the training data's index (its classes)
    check_classes: bool = True  # the config, train and val must agree on the classes
    batch_size: int = 32
    # input fields packed at their natural lengths (no padding; the encoder attends per sample)
    packing: bool = False
    # training batches of similar lengths: "auto" (by length) or ascending length boundaries,
    # regrouped within `lookahead` planned batches ("": off); see `stages.buckets`
    buckets: str | list[int] = ""
    lookahead: int = 8
    # with buckets: batches cut by the elements they ship (≤ this where the group allows),
    # batch_size samples on average (0: by count)
    max_tokens: int = 0
    workers: int = 0
    threads: int = 0  # FFmpeg threads per DataLoader worker (0: cores // workers)
    # torch threads of the training step (0: torch's own count, one per core); see README's
    # "Decode once" section for when fewer pay (workers decoding media on a few cores)
    step_threads: int = 0
    # how far below the trainer's CPU priority DataLoader workers run (Unix nice, 0-19; 0:
    # the same); see `stream.loader.WORKER_NICE`
    worker_nice: int = WORKER_NICE
    clips_per_sample: int = 1  # training items cut from one decode of a sample (divides batch_size)
    buffer_size: int = 500
    seed: int | None = None  # orders the data; None: the run's `seed`
    remote: Remote = field(default_factory=Remote)  # timeouts and tries of HTTP / S3 reads
    cache_dir: str = ""  # this machine's cache: shard-list indexes, local copies of shards
    cache_limit: int = 0  # bytes of local copies of remote shards (0: read the network)


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0
    accumulate: int = 1
    head_lr: float = 0.0  # new heads' learning rate (0: lr): not loaded by init, or contrastive's
    # kinds of parameters left out of weight decay (see `pipelines.optim.decay_kind`); [] decays all
    no_decay: list[str] = field(default_factory=lambda: ["norm", "bias", "latent", "embedding"])
    ema: float = 0.0  # decay of an exponential moving average of the weights, used to
    # evaluate and saved with them (0: off; 0.999 is usual)


@dataclass
class AugmentConfig:
    """Per-batch augmentation of classification runs (`pipelines.augment`); all off by default.
    Decode-time augmentation (crops, flips, audio shift / gain / noise) is set per field in its
    adapter's options, SpecAugment in the audio field's log-mel encoder."""

    mixup: float = 0.0  # α of Beta(α, α) for mixup (0: off; 0.2 to 0.8 is usual)
    cutmix: float = 0.0  # α for cutmix (0: off; 1.0 is usual); with mixup, one or the other
    probability: float = 1.0  # share of batches mixed
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    """The whole run: data, model, task, optimiser, schedule, precision, checkpoints."""

    data: DataConfig = field(default_factory=DataConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)  # the Perceiver's sizes
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # classification | multilabel | autoencode | mlm | contrastive | correspondence
    task: str = "classification"
    loss_weights: dict[str, float] = field(default_factory=dict)  # autoencode: per field
    subsample: int = 2048  # autoencode: output queries per field per training step
    mask_probability: float = 0.15  # mlm: share of bytes masked
    embed_dim: int = 32  # contrastive: width of each field's embedding, whitened: < batch
    # classification, multilabel, correspondence: how the fields meet. early: the latents read
    # every field's tokens at once; late: each field is read apart into a distribution over
    # `fusion_concepts` concepts, and the classifier also sees whether they agree (for labels
    # that compare the fields: `FusionPerceiver`)
    fusion: str = "early"
    fusion_concepts: int = 16
    epochs: int = 1
    max_steps: int = 0  # 0: epochs decide
    precision: str = "fp32"  # fp32 | bf16
    compile: bool = False  # train the model under torch.compile
    seed: int = 0  # orders the data and initialises the model, unless one of these says otherwise:
    model_seed: int | None = None  # None: `seed`
    init: str = ""  # initial weights: hf:NAME, a folder, a .safetensors, a .pt or a run
    init_mismatch: str = "error"  # error | reinit: tensors whose shape differs from init's
    freeze: list[str] = field(default_factory=list)  # parameter name prefixes left untrained
    run_dir: str = "runs/run"
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_every_epoch: bool = True
    memory_budget_gb: float = 0.0  # a model that needs more is refused (0: this machine's)

    def train_paths(self) -> list[str]:
        """The training datasets' paths, one for a single dataset."""
        train = self.data.train
        return [train] if isinstance(train, str) else [s.path for s in train]

    def mixture(self, per_step: int | None = None) -> dict[str, Any]:
        """The training Stream's mixture arguments: the sources with their rules, and the
        epoch size, batching and schedule. Schedule steps are optimiser steps, the stream's
        are its batches: `per_step` (`optim.accumulate`) of them to a step. A rule that is
        wrong whatever the data is a `ConfigError` naming its table."""
        from polymodal.pipelines.stream.mixtures import SchedulePoint

        d = self.data
        per_step = self.optim.accumulate if per_step is None else per_step
        sources = d.train if isinstance(d.train, str) else list(map(_mix_source, d.train))
        schedule = [SchedulePoint(p.step * per_step, tuple(p.weights), p.ramp) for p in d.schedule]
        return {
            "source": sources,
            "epoch_size": d.epoch_size or None,
            "batching": d.batching,
            "schedule": schedule or None,
        }

    def seeds(self) -> tuple[int, int]:
        """`(data seed, model seed)`: the run's `seed` unless `data.seed` / `model_seed` set
        their own (the one rule every reader of a seed goes through)."""
        data = self.seed if self.data.seed is None else self.data.seed
        return data, self.seed if self.model_seed is None else self.model_seed

    def resolve_seeds(self) -> TrainConfig:
        """Write `seeds()` into the config, so the saved config.json says which seeds the run
        used."""
        self.data.seed, self.model_seed = self.seeds()
        return self

    def validate(self) -> TrainConfig:
        tasks = ("classification", "multilabel", "autoencode", "mlm", *PAIRED_TASKS)
        if self.task not in tasks:
            raise ConfigError(f"task: expected one of {', '.join(tasks)}, got {self.task!r}")
        if self.task in PAIRED_TASKS and len(self.data.fields) != 2:
            raise ConfigError(
                f"data.fields: task {self.task} pairs exactly two fields (a clip's sound and "
                f"picture, say), got {len(self.data.fields)}: {', '.join(self.data.fields)}"
            )
        self._check_fusion()
        self._check_whitening()
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision: expected fp32 or bf16, got {self.precision!r}")
        if self.init_mismatch not in ("error", "reinit"):
            raise ConfigError(
                f"init_mismatch: expected error or reinit, got {self.init_mismatch!r}"
            )
        if self.optim.name not in ("adamw", "lamb"):
            raise ConfigError(f"optim.name: expected adamw or lamb, got {self.optim.name!r}")
        if not self.data.train:
            raise ConfigError("data.train: a training dataset is required")
        self._check_mixture()
        if not self.data.fields:
            raise ConfigError("data.fields: at least one input field is required")
        for where, value, ok, need in self._ranges():
            if not ok:
                raise ConfigError(f"{where}: must be {need}, got {value!r}")
        if (self.model.self_qk_channels or self.model.latent_dim) % self.model.self_heads:
            raise ConfigError(
                f"model.self_heads: {self.model.self_heads} heads do not divide the "
                f"{self.model.self_qk_channels or self.model.latent_dim} query/key channels"
            )
        for name, spec in self.data.fields.items():
            build_adapter(spec, f"data.fields.{name}")
        for n, text in enumerate(self.data.transforms):
            try:  # imports the function: a typo fails here, not in every worker
                parse_transform(text)
            except ValueError as exc:
                raise ConfigError(f"data.transforms[{n}]: {exc}") from None
        self._check_decay_and_augment()
        self._check_packing()
        if self.data.max_tokens and not self.data.buckets:
            raise ConfigError("data.max_tokens: cuts batches of length buckets; set data.buckets")
        return self.resolve_seeds()

    def _check_packing(self) -> None:
        """Packing feeds the encoder and every decoder (the autoencoder's targets are padded
        again to their grid); mixing pairs samples element by element, which needs padding."""
        if not self.data.packing:
            return
        mixing = [name for name in ("mixup", "cutmix") if getattr(self.augment, name)]
        if mixing:
            raise ConfigError(
                f"augment.{mixing[0]}: mixes samples element by element, which packed samples "
                "of their own lengths cannot; turn data.packing off to mix"
            )

    def _check_mixture(self) -> None:
        """Rules and schedule that are wrong whatever the data (the rest, which needs the
        datasets' sizes, is checked when their streams are built, before the model)."""
        from polymodal.pipelines.stream.mixtures import MixtureError, WeightSchedule

        if self.data.batching not in ("mixed", "stratified"):
            raise ConfigError(
                f"data.batching: expected mixed or stratified, got {self.data.batching!r}"
            )
        schedule = self.mixture(per_step=1)["schedule"]  # steps as the config gives them
        if schedule:
            try:
                WeightSchedule(schedule, len(self.train_paths()))
            except MixtureError as exc:
                raise ConfigError(f"data.schedule: {exc}") from None
            if self.data.batching != "stratified":
                raise ConfigError(
                    "data.schedule: a weight schedule fixes each batch's composition; set "
                    'data.batching = "stratified"'
                )

    def _check_decay_and_augment(self) -> None:
        from polymodal.adapters import get
        from polymodal.pipelines.train.optim import DECAY_KINDS

        unknown = [kind for kind in self.optim.no_decay if kind not in DECAY_KINDS]
        if unknown:
            raise ConfigError(
                f"optim.no_decay: unknown kinds {unknown} (known: {', '.join(DECAY_KINDS)})"
            )
        a = self.augment
        mixing = [name for name in ("mixup", "cutmix") if getattr(a, name)]
        if (mixing or a.label_smoothing) and self.task not in ("classification", "multilabel"):
            which = mixing[0] if mixing else "label_smoothing"
            raise ConfigError(f"augment.{which}: only classification tasks mix targets")
        for name, spec in self.data.fields.items():
            if mixing and not get(spec.adapter).mixable:
                raise ConfigError(
                    f"augment.{mixing[0]}: data.fields.{name} ({spec.adapter}) cannot be mixed"
                )

    def _check_whitening(self) -> None:
        """Contrastive embeddings and late fusion's concept readings are whitened across each
        rank's batch (`BatchWhitening`), which needs more clips than channels. A batch of at
        most that many falls back to running statistics that then never move: nothing is
        whitened, silently, and unwhitened contrastive pretraining stayed at chance. Batches
        cut by `max_tokens` vary in size and are not checked."""
        if self.task == "contrastive":
            name, width = "embed_dim", self.embed_dim
        elif self.fusion == "late":
            name, width = "fusion_concepts", self.fusion_concepts
        else:
            return
        if not self.data.max_tokens and width >= self.data.batch_size:
            raise ConfigError(
                f"{name}: {width} channels are whitened across each batch, which needs more "
                f"clips than channels; data.batch_size is {self.data.batch_size} (per rank): "
                f"make {name} smaller or the batch larger"
            )

    def _check_fusion(self) -> None:
        """Late fusion reads every field of every sample apart, into a classifier."""
        if self.fusion not in ("early", "late"):
            raise ConfigError(f"fusion: expected early or late, got {self.fusion!r}")
        if self.fusion == "early":
            return
        if self.task not in ("classification", "multilabel", "correspondence"):
            raise ConfigError(
                f"fusion: late serves classification, multilabel and correspondence, "
                f"not {self.task}"
            )
        optional = [name for name, spec in self.data.fields.items() if spec.optional]
        if optional:
            raise ConfigError(
                f"fusion: late compares every field of every sample; data.fields."
                f"{optional[0]} is optional (a sample without it has nothing to compare)"
            )

    def _ranges(self) -> list[tuple[str, Any, bool, str]]:
        """(field, value, whether it is in range, the range in words) for every number."""
        return [*_data_ranges(self.data), *_optim_ranges(self.optim), *self._run_ranges()]

    def _run_ranges(self) -> list[tuple[str, Any, bool, str]]:
        m, a = self.model, self.augment
        checks = [
            ("epochs", self.epochs, self.epochs >= 1, "positive"),
            ("max_steps", self.max_steps, self.max_steps >= 0, "at least 0 (0: epochs decide)"),
            ("subsample", self.subsample, self.subsample >= 1, "positive"),
            ("mask_probability", self.mask_probability, 0 < self.mask_probability < 1, "in (0, 1)"),
            ("embed_dim", self.embed_dim, self.embed_dim >= 1, "positive"),
            ("fusion_concepts", self.fusion_concepts, self.fusion_concepts >= 2, "at least 2"),
            ("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 1, "positive"),
            ("keep_checkpoints", self.keep_checkpoints, self.keep_checkpoints >= 1, "positive"),
            (
                "memory_budget_gb",
                self.memory_budget_gb,
                _non_negative(self.memory_budget_gb),
                "at least 0 (0: this machine's memory)",
            ),
            ("run_dir", self.run_dir, bool(self.run_dir.strip()), "a folder"),
            ("model.dropout", m.dropout, 0 <= m.dropout < 1, "in [0, 1)"),
            ("augment.mixup", a.mixup, _non_negative(a.mixup), "at least 0 (0: off)"),
            ("augment.cutmix", a.cutmix, _non_negative(a.cutmix), "at least 0 (0: off)"),
            ("augment.probability", a.probability, 0 < a.probability <= 1, "in (0, 1]"),
            ("augment.label_smoothing", a.label_smoothing, 0 <= a.label_smoothing < 1, "in [0, 1)"),
        ]
        for name, weight in self.loss_weights.items():
            checks.append((f"loss_weights.{name}", weight, _non_negative(weight), "at least 0"))
        for f in dataclasses.fields(m):
            value = getattr(m, f.name)
            if isinstance(value, int) and not isinstance(value, bool):
                checks.append((f"model.{f.name}", value, value >= 1, "positive"))
        return checks

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def _mix_source(source: SourceConfig) -> Any:
    """A `[[data.train]]` table as the stream's `MixSource`, or the `ConfigError` that names
    its table (two rules, a negative weight)."""
    from polymodal.pipelines.stream.mixtures import MixSource, MixtureError

    if not source.path:
        raise ConfigError("data.train: every [[data.train]] table needs a path")
    try:
        return MixSource(source.path, source.weight, source.repeat, source.samples)
    except MixtureError as exc:
        raise ConfigError(f"data.train: {exc}") from None


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _non_negative(x: float) -> bool:
    return math.isfinite(x) and x >= 0


def _data_ranges(d: DataConfig) -> list[tuple[str, Any, bool, str]]:
    return [
        ("data.batch_size", d.batch_size, d.batch_size >= 1, "positive"),
        ("data.workers", d.workers, d.workers >= 0, "at least 0"),
        ("data.threads", d.threads, d.threads >= 0, "at least 0 (0: cores // workers)"),
        ("data.step_threads", d.step_threads, d.step_threads >= 0, "at least 0 (0: torch's)"),
        ("data.worker_nice", d.worker_nice, 0 <= d.worker_nice <= MAX_NICE, f"0 to {MAX_NICE}"),
        (
            "data.clips_per_sample",
            d.clips_per_sample,
            d.clips_per_sample >= 1 and d.batch_size % d.clips_per_sample == 0,
            f"a positive divisor of data.batch_size={d.batch_size}",
        ),
        ("data.buffer_size", d.buffer_size, d.buffer_size >= 1, "positive"),
        ("data.epoch_size", d.epoch_size, d.epoch_size >= 0, "at least 0 (0: natural)"),
        ("data.cache_limit", d.cache_limit, d.cache_limit >= 0, "at least 0 (0: no copies)"),
        ("data.num_classes", d.num_classes, d.num_classes >= 0, "at least 0 (0: the data's)"),
        ("data.label", d.label, _extension_ok(d.label), "a member extension like 'cls'"),
    ]


def _optim_ranges(o: OptimConfig) -> list[tuple[str, Any, bool, str]]:
    return [
        ("optim.lr", o.lr, _positive(o.lr), "a positive number"),
        ("optim.weight_decay", o.weight_decay, _non_negative(o.weight_decay), "at least 0"),
        ("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, "at least 0"),
        ("optim.grad_clip", o.grad_clip, _non_negative(o.grad_clip), "at least 0 (0: off)"),
        ("optim.accumulate", o.accumulate, o.accumulate >= 1, "positive"),
        ("optim.head_lr", o.head_lr, _non_negative(o.head_lr), "at least 0 (0: lr)"),
        ("optim.ema", o.ema, 0 <= o.ema < 1, "in [0, 1) (0: off)"),
    ]


def _extension_ok(ext: str) -> bool:
    return bool(ext) and ext == ext.strip() and "/" not in ext and not ext.startswith(".")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against (and, for dataclasses, built from) the type `hint`."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(cast(type, hint), value, where)
    if origin in (dict,):
        _, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {k: _coerce(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if origin in (list,):
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(hint), where)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _coerce_union(value: Any, options: tuple[Any, ...], where: str) -> Any:
    """`value` as the first of a union's types it fits (`None` fits `NoneType`)."""
    for option in options:
        if option is type(None):
            if value is None:
                return None
            continue
        try:
            return _coerce(value, option, where)
        except ConfigError:
            continue
    names = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return f"a list of {_type_name(item)}"
    if dataclasses.is_dataclass(hint):
        return "tables"
    return getattr(hint, "__name__", str(hint))


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"{where + '.' if where else ''}{key}: unknown field (known: {sorted(known)})"
                f"{did_you_mean(key, known)}"
            )
    kwargs = {
        k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in values.items()
    }
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a table that checks itself (e.g. data.remote)
        raise ConfigError(f"{where}: {exc}") from None


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a TOML file or a run's config.json (or start from defaults), apply `key=value`
    overrides, validate."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
            # a run's own config.json reloads as it was saved
            doc = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    for item in overrides:
        try:
            ((key, value),) = parse_pairs([item], "--set").items()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        set_path(doc, key, value)
    return _build(TrainConfig, doc).validate()

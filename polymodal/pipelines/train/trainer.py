"""The trainer: stream → adapters' encoders → Perceiver → optimiser, one code path for one
process and `torchrun` (DDP; gloo on CPU, nccl on GPU).

A run directory holds the resolved `config.json`, `metrics.jsonl`, checkpoints (written
atomically every `checkpoint_every` steps and on SIGTERM/SIGINT; the last K are kept),
`summary.json` and `metrics.png` (loss and validation curves); each epoch ends with one line of
train loss, validation metrics and samples/s. A checkpoint holds the model (and its moving
average, with `optim.ema`), optimiser, scheduler, step, RNG states and the stream's state, so
`resume=True` continues exactly: on CPU a run killed and resumed ends with the weights of an
uninterrupted one, augmentation included (every step's randomness is seeded from the run's
seed, the step and the rank). A checkpoint that does not load (cut short by a full disk,
damaged) is passed over for the newest one that does, saying so; the temporaries of killed
checkpoint writes are removed when a run starts.

Before the model is built, the datasets are checked against the config: each must exist and
hold the members its fields and the label read, and the run directory must lie outside them
(`ConfigError` naming the field otherwise).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from polymodal.adapters import Batch
from polymodal.datasets.files import (
    OverlapError,
    OwnerLock,
    atomic_open,
    check_separate,
    remove_temporaries,
    write_atomic,
)
from polymodal.errors import ConfigError
from polymodal.pipelines.stream.loader import StreamLoader
from polymodal.pipelines.stream.place import Place
from polymodal.pipelines.train.config import TrainConfig
from polymodal.pipelines.train.evaluate import evaluation_pass, metrics_of
from polymodal.pipelines.train.optim import Lamb, decay_groups
from polymodal.pipelines.train.tasks import dataset_stream, make_task
from polymodal.pipelines.train.weights import (
    CHECKPOINTS,
    CONFIG_NAME,
    CheckpointError,
    InitReport,
    apply_init,
    load_checkpoint,
    load_model,
)
from polymodal.seeds import stable_seed

log = logging.getLogger("polymodal.train")


def build_model(config: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The task's model for the configured fields, and the fields' adapters."""
    task = make_task(config)
    return task.model(), task.adapters


def machine_memory() -> int:
    """Bytes a model can train in here: the GPU's memory, else this machine's."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(task: Any, config: TrainConfig) -> int:
    """Refuse a model that cannot train within `memory_budget_gb` (0: `machine_memory`),
    from an estimate made before any weight exists: the model built on the meta device gives
    its exact parameter count, at 16 bytes each (weights, gradients, AdamW's two moments), plus
    the latent activations a step keeps for the backward pass (about eight latent-sized
    tensors a layer). A lower bound: inputs and attention add to it. Returns the estimate."""
    with torch.device("meta"):
        params = sum(p.numel() for p in task.model().parameters())
    e = config.model
    layers = e.num_blocks * e.num_self_attends_per_block + e.num_blocks * e.num_cross_attends
    latents = config.data.batch_size * e.num_latents * e.latent_dim * layers * 8 * 4
    need = 16 * params + latents
    budget = int(config.memory_budget_gb * 2**30) or machine_memory()
    if need > budget:
        raise ConfigError(
            f"model: training it needs at least {need / 2**30:,.1f} GiB ({params:,} parameters "
            f"at 16 bytes with gradients and AdamW's moments, and {latents / 2**30:,.1f} GiB of "
            f"latent activations for batches of {config.data.batch_size}), over the "
            f"{budget / 2**30:,.1f} GiB budget (memory_budget_gb; 0: this machine's)"
        )
    return need


def check_run_dir(config: TrainConfig) -> None:
    """The run directory is not inside, around or one of the datasets it reads."""
    sources = [source for source in (*config.train_paths(), config.data.val) if source]
    try:
        check_separate(sources, config.run_dir, folders=True)
    except OverlapError as exc:
        raise ConfigError(f"run_dir: {exc}") from None


def freeze(model: nn.Module, prefixes: list[str]) -> list[tuple[str, nn.Parameter]]:
    """Stop training the parameters whose names start with one of `prefixes` (each must name
    some); the (name, parameter) pairs still trained."""
    for prefix in prefixes:
        named = [p for name, p in model.named_parameters() if name.startswith(prefix)]
        if not named:
            parts = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
            raise ConfigError(
                f"freeze: no parameter starts with {prefix!r} (the model has {parts})"
            )
        for parameter in named:
            parameter.requires_grad_(False)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"freeze: {prefixes} freezes every parameter: nothing would train")
    return trainable


def parameter_groups(
    trainable: list[tuple[str, nn.Parameter]],
    init: InitReport | None,
    lr: float,
    head_lr: float,
) -> list[dict[str, Any]]:
    """One group at `lr`; with an init and a `head_lr`, the tensors it did not load (new
    heads) in a group of their own at `head_lr`."""
    if init is None or not head_lr:
        return [{"params": [p for _, p in trainable]}]
    loaded = set(init.loaded)
    trunk = [p for name, p in trainable if name in loaded]
    heads = [p for name, p in trainable if name not in loaded]
    return [g for g in ({"params": trunk}, {"params": heads, "lr": head_lr}) if g["params"]]


def _schedule(config: TrainConfig, total_steps: int) -> Any:
    warmup = max(1, config.optim.warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _rng_state() -> dict[str, Any]:
    kind, keys, *rest = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), *rest],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))


class Trainer:
    """Runs a `TrainConfig`; `run()` returns the summary it also writes to `summary.json`."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        self.config, self.resume, self.progress = config.resolve_seeds(), resume, progress
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank, self.world = (place := Place.detect()).rank, place.world
        self.device = torch.device(
            f"cuda:{self.rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
        )
        self.run_dir = Path(config.run_dir)
        torch.manual_seed(config.model_seed)
        random.seed(config.model_seed)
        np.random.seed(config.model_seed)
        self.task = make_task(config)
        check_run_dir(config)
        # the datasets are checked against the fields (in the indexes the streams load) before
        # any model is built
        fields = self.task.fields()
        train = dataset_stream(
            config,
            "data.train",
            fields=fields,
            shuffle=True,
            clips_per_sample=config.data.clips_per_sample,
            **config.mixture(),
        )
        self.val_stream = (
            dataset_stream(config, "data.val", config.data.val, fields) if config.data.val else None
        )
        check_memory(self.task, config)  # before anything of that size is allocated
        self.model = self.task.model()
        self.init_report = (
            apply_init(self.model, config.init, config.init_mismatch) if config.init else None
        )
        trainable = freeze(self.model, config.freeze)
        self.model.to(self.device)
        self.net: nn.Module = self.model
        if self.distributed:
            self.net = nn.parallel.DistributedDataParallel(self.model)
        if config.compile:
            self.net = cast(nn.Module, torch.compile(self.net))
        # the weights' moving average, evaluated and exported in place of the weights
        self.ema = (
            AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(config.optim.ema), use_buffers=True
            )
            if config.optim.ema
            else None
        )
        self.train_loader: StreamLoader = train.loader(
            config.data.workers,
            pin_memory=torch.cuda.is_available(),
            threads=config.data.threads or None,
        )
        if self.rank == 0:
            log.info("data: %s", self.train_loader.split())
        self.steps_per_epoch = math.ceil(len(self.train_loader) / config.optim.accumulate)
        self.total_steps = config.max_steps or self.steps_per_epoch * config.epochs
        optimizer = {"adamw": torch.optim.AdamW, "lamb": Lamb}[config.optim.name]
        groups = parameter_groups(
            trainable, self.init_report, config.optim.lr, config.optim.head_lr
        )
        self.optimizer = optimizer(
            decay_groups(self.model, groups, config.optim.weight_decay, config.optim.no_decay),
            lr=config.optim.lr,
            weight_decay=config.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _schedule(config, self.total_steps)
        )
        self.step, self.best = 0, None
        self.stop_requested = False
        self.tensorboard = _tensorboard(self.run_dir) if self.rank == 0 else None

    # --- checkpoints ---

    def _checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS

    def save(self, name: str | None = None) -> Path:
        """Write a checkpoint atomically (rank 0), then drop all but the last K (`best.pt`,
        written when validation improves, is kept apart)."""
        path = self._checkpoint_dir() / (name or f"step-{self.step:08d}.pt")
        streams: list[Any] = [self.train_loader.state_dict()]  # every rank's, rank by rank
        if self.distributed:
            streams = [None] * self.world
            dist.all_gather_object(streams, self.train_loader.state_dict())
        if self.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "best": self.best,
                "rng": _rng_state(),
                "stream": streams[0],
                "streams": streams,
            }
            if self.ema is not None:
                state["ema"] = {
                    "weights": self.ema.module.state_dict(),
                    "updates": int(self.ema.n_averaged),
                }
            with atomic_open(path) as f:
                torch.save(state, f)
            for old in sorted(path.parent.glob("step-*.pt"))[: -self.config.keep_checkpoints]:
                old.unlink()
        if self.distributed:
            dist.barrier()
        return path

    def load_latest(self) -> bool:
        """Restore the newest checkpoint that loads; those that do not are named and passed
        over. False when there is none to resume from."""
        state = None
        for path in sorted(self._checkpoint_dir().glob("step-*.pt"), reverse=True):
            try:
                state = load_checkpoint(path)
                missing = {"model", "optimizer", "scheduler", "step", "best", "rng", "stream"}
                missing -= set(state)
                if missing:
                    raise CheckpointError(
                        f"not a checkpoint of this trainer (no {sorted(missing)})"
                    )
                break
            except CheckpointError as exc:  # cut short, damaged, a pickle with code in it
                log.warning("skipping checkpoint %s: it does not load (%s)", path, exc)
                state = None
        if state is None:
            return False
        load_model(self.model, state["model"], "resume")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best = state["step"], state["best"]
        _set_rng_state(state["rng"])
        try:
            self.train_loader.load_state_dict(self._own_stream_state(state))
        except ValueError as exc:  # another configuration, or a damaged state: one line
            raise ConfigError(f"--resume from {path}: {exc}") from None
        if self.ema is not None and "ema" in state:
            load_model(self.ema.module, state["ema"]["weights"], "resume (ema)")
            self.ema.n_averaged.fill_(state["ema"]["updates"])
        return True

    def _own_stream_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """This rank's loader state of a checkpoint (which holds every rank's); after a change
        of world size, rank 0's says how far every rank was (they deliver alike)."""
        streams = state.get("streams")
        if streams is None:  # saved before checkpoints held every rank's: rank 0's for all
            return {**state["stream"], "rank": self.rank}
        return streams[self.rank] if len(streams) == self.world else streams[0]

    def _replan(self) -> None:
        """After an elastic resume, the steps of an epochs-long run: the rest of this epoch,
        then whole epochs at this world size; the learning-rate schedule follows."""
        per_step = self.config.optim.accumulate
        left = self.config.epochs - self.train_loader.epoch - 1
        self.total_steps = (
            self.step + math.ceil(len(self.train_loader) / per_step) + self.steps_per_epoch * left
        )
        self.scheduler.lr_lambdas = [_schedule(self.config, self.total_steps)]
        log.info("elastic resume: %d steps in all, %d done", self.total_steps, self.step)

    # --- the loop ---

    def _batches(self) -> Iterator[tuple[Batch, float]]:
        """Training batches forever (epoch after epoch), with the seconds spent waiting."""
        while True:
            waited = time.perf_counter()
            for batch in self.train_loader:
                yield batch, time.perf_counter() - waited
                waited = time.perf_counter()

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tensorboard is not None:
                for key, value in record.items():
                    if key != "step":
                        self.tensorboard.add_scalar(key, value, record["step"])

    def run(self) -> dict[str, Any]:
        """Train to the end (or to a stop signal); the run directory is this process's while
        it runs (a second trainer on it is refused, naming this one)."""
        lock = OwnerLock(self.run_dir, "train").acquire() if self.rank == 0 else None
        try:
            return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> dict[str, Any]:
        config = self.config
        if self.rank == 0:
            remove_temporaries(self._checkpoint_dir())  # from killed checkpoint writes
            write_atomic(self.run_dir / CONFIG_NAME, config.to_json().encode())
            if self.init_report is not None:
                log.warning("%s", self.init_report.summary())
                write_atomic(self.run_dir / "init.json", self.init_report.to_json())
        if not (self.resume and self.load_latest()) and self.rank == 0:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        if self.train_loader.rest is not None and not config.max_steps:
            self._replan()
        previous = {
            s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            summary = self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return summary

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _stopping(self) -> bool:
        """Whether any rank was asked to stop: ranks must stop after the same step, or one
        would wait in the next gradient all-reduce for a rank that is saving."""
        if not self.distributed:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stop_requested = bool(flag.item())
        return self.stop_requested

    def _loop(self) -> dict[str, Any]:
        config = self.config
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"
        )
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.progress or self.rank,
            unit="step",
            dynamic_ncols=True,
        )
        batches = self._batches()
        started, wait_total, samples, losses = time.perf_counter(), 0.0, 0, []
        self.model.train()
        while self.step < self.total_steps and not self._stopping():
            self.optimizer.zero_grad(set_to_none=True)
            step_loss, epoch_ended = 0.0, None
            for micro in range(config.optim.accumulate):
                batch, waited = next(batches)
                wait_total += waited
                if self.train_loader.batches == len(self.train_loader):  # its epoch's last
                    epoch_ended = self.train_loader.epoch
                batch = batch.to(self.device, non_blocking=True)
                seed = self._micro_seed(micro)
                torch.manual_seed(seed)  # dropout, SpecAugment, masks: a function of the step
                with autocast:
                    loss = self.task.loss(self.net, batch, np.random.default_rng(seed))
                (loss / config.optim.accumulate).backward()
                step_loss += loss.item() / config.optim.accumulate
                samples += batch.size * self.world
            if config.optim.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), config.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            losses.append(step_loss)
            elapsed = time.perf_counter() - started
            rate = samples / elapsed
            bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{rate:.1f}")
            bar.update(1)
            self._log(
                {
                    "step": self.step,
                    "loss": step_loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "samples_per_s": rate,
                    "data_wait": wait_total / elapsed,
                }
            )
            if epoch_ended is not None:
                metrics = {}
                if config.eval_every_epoch and self.val_stream:
                    best = self.best
                    metrics = self.evaluate()
                    self._log({"step": self.step, **metrics})
                    if self.best != best:
                        self.save("best.pt")
                    self.model.train()
                epoch_losses = losses[-self.steps_per_epoch :]
                sources = self._source_counts()
                if len(sources) > 1:
                    self._log({"step": self.step, **_source_metrics(sources)})
                line = epoch_line(epoch_ended + 1, self.step, epoch_losses, metrics, rate, sources)
                self._say(bar, line)
            if self.step % config.checkpoint_every == 0:
                self.save()
        bar.close()
        if self.stop_requested:
            self.save()
            return {"stopped_at": self.step}
        metrics = self.evaluate() if self.val_stream else {}
        elapsed = time.perf_counter() - started
        summary = {
            "steps": self.step,
            "seconds": elapsed,
            "samples_per_s": samples / elapsed,
            "data_wait": wait_total / elapsed,
            "final_loss": losses[-1] if losses else None,
            **metrics,
            "run_dir": str(self.run_dir),
        }
        self.save()
        if self.rank == 0:
            write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=1).encode())
            plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "metrics.png")
        return summary

    def _source_counts(self) -> list[dict[str, Any]]:
        """The epoch's per-source report (`StreamLoader.report`), delivered and skipped
        counted over all ranks."""
        sources = self.train_loader.report()["sources"]
        if self.distributed:
            counts = torch.tensor(
                [[s["delivered"], s["skipped"]] for s in sources], device=self.device
            )
            dist.all_reduce(counts)
            for source, (delivered, skipped) in zip(sources, counts.tolist(), strict=True):
                source["delivered"], source["skipped"] = delivered, skipped
        return sources

    def _micro_seed(self, micro: int) -> int:
        """The seed of one micro-batch's randomness: per-batch augmentation (a numpy generator)
        and torch's global generator (dropout, SpecAugment, token masking). A pure function of
        the run's seed, the step, the micro-batch and the rank, so a resumed run draws the same
        whatever else drew in between (a DataLoader draws a seed each time it starts)."""
        key = f"step:{self.step}:{micro}:{self.rank}"
        return stable_seed(key, self.config.model_seed) % 2**63

    def _say(self, bar: tqdm, line: str) -> None:
        """One line for a person: above the progress bar, or in the log without one."""
        if self.rank:
            return
        if self.progress:
            bar.write(line, file=sys.stderr)  # stdout is for results (`--json`)
        else:
            log.info("%s", line)

    def _report_skips(self, skipped: list[Any]) -> int:
        """Log this rank's skipped validation samples (each reason once, with a key); their
        count over all ranks."""
        count = sum(s.samples for s in skipped)
        if skipped:
            reasons = {s.reason: s.key for s in skipped}
            log.warning(
                "validation skipped %d samples on rank %d: %s",
                count,
                self.rank,
                "; ".join(f"{key}: {reason}" for reason, key in list(reasons.items())[:5]),
            )
        if self.distributed:
            total = torch.tensor([count], device=self.device)
            dist.all_reduce(total)
            count = int(total.item())
        return count

    def _gather(
        self, scores: list[torch.Tensor], truths: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's validation scores and targets, on every rank."""
        mine = (torch.cat(scores), torch.cat(truths))
        if not self.distributed:
            return mine
        everything: list[Any] = [None] * self.world
        dist.all_gather_object(everything, mine)
        return torch.cat([s for s, _ in everything]), torch.cat([t for _, t in everything])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics over every validation sample exactly once across ranks (repeats dropped)."""
        multi_label = self.config.task == "multilabel"
        if self.val_stream is None:
            raise ValueError("evaluate needs data.val")
        model = self.ema.module if self.ema is not None else self.model
        result = evaluation_pass(
            self.task,
            model,
            self.val_stream,
            self.rank,
            self.world,
            self.device,
            "scores" if multi_label else None,
            progress=self.progress and not self.rank,
        )
        sums = result.sums
        if self.distributed:
            everything: list[Any] = [None] * self.world
            dist.all_gather_object(everything, sums)
            sums = {
                k: sum(part.get(k, 0.0) for part in everything)
                for k in sorted({k for part in everything for k in part})
            }
        skipped = self._report_skips(result.skipped)  # collectives: every rank, in this order
        scored = self._gather(result.scores, result.truths) if multi_label else ()
        out = metrics_of(self.task, sums, skipped, *scored)
        score = out.get("val_accuracy", out.get("val_masked_accuracy"))
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        return out


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


def _source_metrics(sources: list[dict[str, Any]]) -> dict[str, int]:
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
    rate: float,
    sources: Sequence[dict[str, Any]] = (),
) -> str:
    """`epoch 3 (step 150): train loss 0.4120 · val_accuracy 0.9530 · 212.5 samples/s`, and
    for a mixture `· web 700 (pass 2, 45%) · studio 300`: each source's samples this epoch,
    its skips, and where a source taken in part stands in its cycle."""
    parts = [f"train loss {sum(losses) / max(len(losses), 1):.4f}"]
    parts += [
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in metrics.items()
        if k not in ("val_samples",) and not (k == "val_skipped" and not v)
    ]
    parts.append(f"{rate:.1f} samples/s")
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

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    check_separate,
    remove_temporaries,
    write_atomic,
)
from polymodal.errors import ConfigError
from polymodal.pipelines.stream.loader import StreamLoader
from polymodal.pipelines.stream.place import Place, gathered
from polymodal.pipelines.stream.stream import Stream
from polymodal.pipelines.train.checkpoints import (
    latest_checkpoint,
    own_stream_state,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from polymodal.pipelines.train.config import TrainConfig
from polymodal.pipelines.train.evaluate import evaluate_ranks
from polymodal.pipelines.train.memory import check_memory
from polymodal.pipelines.train.optim import (
    Lamb,
    decay_groups,
    freeze,
    lr_schedule,
    parameter_groups,
)
from polymodal.pipelines.train.report import RunLog, epoch_line, plot_metrics, source_metrics
from polymodal.pipelines.train.tasks import dataset_stream, make_task
from polymodal.pipelines.train.weights import CHECKPOINTS, CONFIG_NAME, apply_init, load_model
from polymodal.seeds import stable_seed

log = logging.getLogger("polymodal.train")


def build_model(config: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The task's model for the configured fields, and the fields' adapters."""
    task = make_task(config)
    return task.model(), task.adapters


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` while the block runs, as before after it
    (the trainer's `data.step_threads`). Why a step may want fewer than the cores: GNU
    OpenMP's threads spin for a while after each parallel region before they sleep, so a step
    on every core also holds them between its ops, where DataLoader workers would decode
    (`benchmarks/bench_train.py` measures both ways)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_run_dir(config: TrainConfig) -> None:
    """The run directory is not inside, around or one of the datasets it reads."""
    sources = [source for source in (*config.train_paths(), config.data.val) if source]
    try:
        check_separate(sources, config.run_dir, folders=True)
    except OverlapError as exc:
        raise ConfigError(f"run_dir: {exc}") from None


class Trainer:
    """Runs a `TrainConfig`; `run()` returns the summary it also writes to `summary.json`."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        self.config, self.resume, self.progress = config.resolve_seeds(), resume, progress
        self.place, self.owns_world = join_world()
        self.rank, self.world = self.place.rank, self.place.world
        self.distributed = self.world > 1
        self.device = torch.device(
            f"cuda:{self.rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
        )
        self.run_dir = Path(config.run_dir)
        seed_everything(self.config.seeds()[1])
        self.task = make_task(config)
        check_run_dir(config)
        train = self._streams()  # the datasets checked against the fields before any model
        check_memory(self.task, config)  # before anything of that size is allocated
        trainable = self._model()
        self.train_loader: StreamLoader = train.loader(
            config.data.workers,
            pin_memory=torch.cuda.is_available(),
            threads=config.data.threads or None,
            nice=config.data.worker_nice,
        )
        self.step_threads = config.data.step_threads or torch.get_num_threads()
        if self.rank == 0:
            log.info(
                "data: %s; the step on %d torch thread(s)",
                self.train_loader.split(),
                self.step_threads,
            )
        self.steps_per_epoch = math.ceil(len(self.train_loader) / config.optim.accumulate)
        self.total_steps = config.max_steps or self.steps_per_epoch * config.epochs
        self._optimiser(trainable)
        self.step, self.best = 0, None
        self.stop_requested = False
        self.log = RunLog(self.run_dir, self.rank == 0)

    # --- set-up, in named steps ---

    def _streams(self) -> Stream:
        """The training stream (a dataset or a mixture) and the validation one, each checked
        against the fields and the label (`ConfigError` naming the dataset)."""
        config, fields = self.config, self.task.fields()
        self.val_stream = (
            dataset_stream(config, "data.val", config.data.val, fields) if config.data.val else None
        )
        return dataset_stream(
            config,
            "data.train",
            fields=fields,
            shuffle=True,
            clips_per_sample=config.data.clips_per_sample,
            buckets=config.data.buckets,
            **config.mixture(),
        )

    def _model(self) -> list[tuple[str, nn.Parameter]]:
        """The model (initialised from `init`, frozen where asked, on the device, in DDP and
        under torch.compile when asked) and its moving average; the parameters it trains."""
        config = self.config
        self.model = self.task.model()
        self.init_report = (
            apply_init(self.model, config.init, config.init_mismatch) if config.init else None
        )
        report = self.init_report
        fresh = set(report.reinitialised + report.new) if report else set()
        trainable = freeze(self.model, config.freeze, fresh)
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
        return trainable

    def _optimiser(self, trainable: list[tuple[str, nn.Parameter]]) -> None:
        o = self.config.optim
        optimizer = {"adamw": torch.optim.AdamW, "lamb": Lamb}[o.name]
        prefixes = getattr(self.model, "head_prefixes", ())
        groups = parameter_groups(trainable, self.init_report, o.lr, o.head_lr, prefixes)
        # torch's fused AdamW: one kernel a parameter, where the default on a CPU is a Python
        # loop of a dozen ops each (~75 parameters here): the demo's CPU step +9.7% (846.6 vs
        # 771.9 samples/s, medians of 5 alternated runs of bench_train's ceiling)
        fused = {"fused": True} if o.name == "adamw" else {}
        self.optimizer = optimizer(
            decay_groups(self.model, groups, o.weight_decay, o.no_decay),
            lr=o.lr,
            weight_decay=o.weight_decay,
            **fused,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(self.config.optim.warmup_steps, self.total_steps)
        )

    # --- checkpoints ---

    def _checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS

    def save(self, name: str | None = None) -> Path:
        """Write a checkpoint (rank 0, atomically; the last K `step-*.pt` kept, `best.pt`
        apart) holding every rank's loader state."""
        path = self._checkpoint_dir() / (name or f"step-{self.step:08d}.pt")
        streams = gathered(self.train_loader.state_dict(), self.place)  # rank by rank
        if self.rank == 0:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "best": self.best,
                "rng": rng_state(),
                "stream": streams[0],
                "streams": streams,
            }
            if self.ema is not None:
                state["ema"] = {
                    "weights": self.ema.module.state_dict(),
                    "updates": int(self.ema.n_averaged),
                }
            write_checkpoint(path, state, self.config.keep_checkpoints)
        if self.distributed:
            dist.barrier()
        return path

    def load_latest(self) -> bool:
        """Restore the newest checkpoint that loads (`checkpoints.latest_checkpoint`); False
        when there is none to resume from."""
        found = latest_checkpoint(self._checkpoint_dir())
        if found is None:
            return False
        path, state = found
        load_model(self.model, state["model"], "resume")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best = state["step"], state["best"]
        set_rng_state(state["rng"])
        try:
            self.train_loader.load_state_dict(own_stream_state(state, self.place))
        except ValueError as exc:  # another configuration, or a damaged state: one line
            raise ConfigError(f"--resume from {path}: {exc}") from None
        if self.ema is not None and "ema" in state:
            load_model(self.ema.module, state["ema"]["weights"], "resume (ema)")
            self.ema.n_averaged.fill_(state["ema"]["updates"])
        return True

    def _replan(self) -> None:
        """After an elastic resume, the steps of an epochs-long run: the rest of this epoch,
        then whole epochs at this world size; the learning-rate schedule follows."""
        per_step = self.config.optim.accumulate
        left = self.config.epochs - self.train_loader.epoch - 1
        self.total_steps = (
            self.step + math.ceil(len(self.train_loader) / per_step) + self.steps_per_epoch * left
        )
        self.scheduler.lr_lambdas = [lr_schedule(self.config.optim.warmup_steps, self.total_steps)]
        log.info("elastic resume: %d steps in all, %d done", self.total_steps, self.step)

    # --- the run ---

    def run(self) -> dict[str, Any]:
        """Train to the end (or to a stop signal); the run directory is this process's while
        it runs (a second trainer on it is refused, naming this one)."""
        lock = OwnerLock(self.run_dir, "train").acquire() if self.rank == 0 else None
        try:
            summary = self._run()
        finally:
            if lock is not None:
                lock.release()
        if self.owns_world:  # every rank got here after the same step
            # leave together: a rank whose process ends with the gloo group still up can
            # abort in its teardown ("terminate called without an active exception")
            dist.barrier()
            dist.destroy_process_group()
        return summary

    def _run(self) -> dict[str, Any]:
        config = self.config
        if self.rank == 0:
            remove_temporaries(self._checkpoint_dir())  # from killed checkpoint writes
            write_atomic(self.run_dir / CONFIG_NAME, config.to_json().encode())
            if self.init_report is not None:
                log.warning("%s", self.init_report.summary())
                write_atomic(self.run_dir / "init.json", self.init_report.to_json())
        self.log.start(resumed=self.resume and self.load_latest())
        if self.train_loader.rest is not None and not config.max_steps:
            self._replan()
        previous = {
            s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            return self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

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
        """Steps until the planned last (or a stop): each a step of the optimiser, its record,
        at an epoch's end the evaluation and the epoch's line, every so often a checkpoint;
        on `step_threads` torch threads."""
        with torch_threads(self.step_threads):
            return self._steps()

    def _steps(self) -> dict[str, Any]:
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.progress or self.rank,
            unit="step",
            dynamic_ncols=True,
        )
        clock, batches = Clock(), self._batches()
        self.model.train()
        while self.step < self.total_steps and not self._stopping():
            loss, epoch_ended = self._train_step(batches, clock)
            self._record_step(bar, loss, clock)
            if epoch_ended is not None:
                self._end_epoch(bar, epoch_ended, clock)
            if self.step % self.config.checkpoint_every == 0:
                self.save()
        bar.close()
        if self.stop_requested:
            self.save()
            return {"stopped_at": self.step}
        return self._finish(clock)

    def _batches(self) -> Iterator[tuple[Batch, float]]:
        """Training batches forever (epoch after epoch), with the seconds spent waiting."""
        while True:
            waited = time.perf_counter()
            for batch in self.train_loader:
                yield batch, time.perf_counter() - waited
                waited = time.perf_counter()

    def _train_step(
        self, batches: Iterator[tuple[Batch, float]], clock: Clock
    ) -> tuple[float, int | None]:
        """One optimiser step over `optim.accumulate` micro-batches: its loss, and the epoch
        that its last batch ended (None when it ended none)."""
        config = self.config
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"
        )
        self.optimizer.zero_grad(set_to_none=True)
        step_loss, epoch_ended = 0.0, None
        for micro in range(config.optim.accumulate):
            batch, waited = next(batches)
            clock.waited += waited
            if self.train_loader.batches == len(self.train_loader):  # its epoch's last
                epoch_ended = self.train_loader.epoch
            batch = batch.to(self.device, non_blocking=True)
            seed = self._micro_seed(micro)
            seed_step(seed, self.device)  # dropout, SpecAugment, masks: a function of the step
            with autocast:
                loss = self.task.loss(self.net, batch, np.random.default_rng(seed))
            (loss / config.optim.accumulate).backward()
            step_loss += loss.item() / config.optim.accumulate
            clock.samples += batch.size * self.world
            real, shipped = batch.elements(self.task.inputs)
            clock.tokens += real * self.world
            clock.shipped += shipped * self.world
        if config.optim.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        clock.losses.append(step_loss)
        return step_loss, epoch_ended

    def _record_step(self, bar: tqdm, loss: float, clock: Clock) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{clock.rate:.1f}")
        bar.update(1)
        record = {"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0]}
        rates = {"samples_per_s": clock.rate, "tokens_per_s": clock.token_rate}
        self.log.write(
            {**record, **rates, "padding": clock.padding_share, "data_wait": clock.wait_share}
        )

    def _end_epoch(self, bar: tqdm, epoch: int, clock: Clock) -> None:
        """Evaluate (a new best is saved as `best.pt`), record each source's counts, and say
        the epoch's line."""
        metrics: dict[str, Any] = {}
        if self.config.eval_every_epoch and self.val_stream:
            best = self.best
            metrics = self.evaluate()
            self.log.write({"step": self.step, **metrics})
            if self.best != best:
                self.save("best.pt")
            self.model.train()
        sources = self._source_counts()
        if len(sources) > 1:
            self.log.write({"step": self.step, **source_metrics(sources)})
        losses = clock.losses[-self.steps_per_epoch :]
        rates = (clock.rate, clock.token_rate, clock.padding_share)
        self._say(bar, epoch_line(epoch + 1, self.step, losses, metrics, rates, sources))

    def _finish(self, clock: Clock) -> dict[str, Any]:
        """The final evaluation, checkpoint, `summary.json` and `metrics.png`."""
        metrics = self.evaluate() if self.val_stream else {}
        summary = {
            "steps": self.step,
            "seconds": clock.elapsed,
            "samples_per_s": clock.rate,
            "tokens_per_s": clock.token_rate,
            "padding": clock.padding_share,
            "data_wait": clock.wait_share,
            "final_loss": clock.losses[-1] if clock.losses else None,
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
        return stable_seed(key, self.config.seeds()[1]) % 2**63

    def _say(self, bar: tqdm, line: str) -> None:
        """One line for a person: above the progress bar, or in the log without one."""
        if self.rank:
            return
        if self.progress:
            bar.write(line, file=sys.stderr)  # stdout is for results (`--json`)
        else:
            log.info("%s", line)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics over every validation sample exactly once across ranks (repeats dropped);
        a rise of the task's `score_name` makes a new best."""
        if self.val_stream is None:
            raise ValueError("evaluate needs data.val")
        model = self.ema.module if self.ema is not None else self.model
        progress = self.progress and not self.rank
        out = evaluate_ranks(self.task, model, self.val_stream, self.place, self.device, progress)
        score = out.get(self.task.score_name) if self.task.score_name else None
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        return out


@dataclass
class Clock:
    """What a run counts as it goes: when it started, the seconds it waited for data, the
    samples it trained on (over all ranks), and each step's loss."""

    started: float = field(default_factory=time.perf_counter)
    waited: float = 0.0
    samples: int = 0
    tokens: int = 0  # real input elements (over all ranks, as samples)
    shipped: int = 0  # input elements with their padding
    losses: list[float] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.samples / self.elapsed

    @property
    def wait_share(self) -> float:
        return self.waited / self.elapsed

    @property
    def token_rate(self) -> float:
        """Real input elements per second (the `M` of each input field's `[M, C]`)."""
        return self.tokens / self.elapsed

    @property
    def padding_share(self) -> float:
        return 1 - self.tokens / self.shipped if self.shipped else 0.0


def join_world() -> tuple[Place, bool]:
    """This process's place, detected once, and whether it joined the process group now:
    under torchrun (`WORLD_SIZE` > 1) the group is joined first (nccl on GPU, gloo on CPU)
    unless the caller joined it already (the group is then the caller's to leave)."""
    joins = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if joins:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Place.detect(), joins


def seed_step(seed: int, device: torch.device) -> None:
    """torch's generators a step draws from, the CPU's and the run's device's, seeded with
    `seed`: what `torch.manual_seed` does for the devices a run uses, without calling on every
    backend torch knows (0.4 ms a step; the demo's whole step is 30 ms on this CPU)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def seed_everything(seed: int) -> None:
    """The model's initialisation: torch's, Python's and numpy's generators from `seed`."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)

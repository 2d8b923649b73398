"""Whether a model can train here at all, told from its config before any weight exists."""

from __future__ import annotations

import os
from typing import Any

import torch

from polymodal.errors import ConfigError
from polymodal.pipelines.train.config import TrainConfig


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

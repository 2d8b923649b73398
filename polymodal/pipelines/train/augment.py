"""Per-batch augmentation on the device: mixup and cutmix with soft targets.

Both pair each sample with another of the same batch (a permutation) and mix their targets in
the proportion their inputs were mixed: mixup blends every input field (`λ·x + (1 − λ)·x'`,
Zhang et al. 2018); cutmix pastes a region of the partner into each field (a box over the last
two grid axes of images and video, a span of time in audio; Yun et al. 2019), `λ` then being
the share of elements kept, averaged over the fields. `λ` comes from Beta(α, α).

Every draw comes from a numpy generator the trainer seeds from the run's seed, the step and the
rank, never from a global state, so a resumed run mixes the same pairs in the same proportions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from polymodal.adapters import Batch, Field
from polymodal.pipelines.train.config import AugmentConfig


def mix_batch(
    batch: Batch,
    inputs: Sequence[str],
    targets: torch.Tensor,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[Batch, torch.Tensor]:
    """The batch with its `inputs` mixed, and the targets `[B, K]` (float) mixed alike; the
    batch unchanged when this one is not drawn for mixing (`config.probability`)."""
    if not (config.mixup or config.cutmix) or rng.random() >= config.probability:
        return batch, targets
    cutmix = bool(config.cutmix) and (not config.mixup or rng.random() < 0.5)
    alpha = config.cutmix if cutmix else config.mixup
    lam = float(rng.beta(alpha, alpha))
    order = torch.from_numpy(rng.permutation(batch.size)).to(targets.device)
    fields = dict(batch.fields)
    if cutmix:
        kept = []
        for name in inputs:
            if name in fields and isinstance(fields[name].grid, tuple):
                fields[name], share = _cut(fields[name], order, lam, rng)
                kept.append(share)
        lam = float(np.mean(kept)) if kept else 1.0
    else:
        for name in inputs:
            if name in fields:
                fields[name] = _blend(fields[name], order, lam)
    return batch._like(fields), lam * targets + (1 - lam) * targets[order]


def _blend(field: Field, order: torch.Tensor, lam: float) -> Field:
    values = field.values.float()
    mask = field.mask if field.mask is None else field.mask | field.mask[order]
    return Field(lam * values + (1 - lam) * values[order], field.grid, field.coords, mask)


def _cut(
    field: Field, order: torch.Tensor, lam: float, rng: np.random.Generator
) -> tuple[Field, float]:
    """The field with one region taken from the partner; the share of elements kept."""
    grid = field.grid
    assert isinstance(grid, tuple)
    region = torch.zeros(grid, dtype=torch.bool)
    if len(grid) == 1:
        span = round((1 - lam) * grid[0])
        start = int(rng.integers(0, grid[0] - span + 1))
        region[start : start + span] = True
    else:
        height, width = grid[-2:]
        cut_h, cut_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
        top = int(rng.integers(0, height - cut_h + 1))
        left = int(rng.integers(0, width - cut_w + 1))
        region[..., top : top + cut_h, left : left + cut_w] = True
    where = region.flatten().to(field.values.device)
    values = torch.where(where[None, :, None], field.values[order], field.values)
    mask = field.mask
    if mask is not None:
        mask = torch.where(where[None], mask[order], mask)
    return Field(values, field.grid, field.coords, mask), 1 - float(region.float().mean())

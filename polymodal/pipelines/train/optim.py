"""What the optimiser sees: LAMB (You et al. 2019, the large-batch optimiser the Perceiver
papers trained with) beside torch's AdamW, which parameters weight decay leaves alone, which
are frozen, the learning-rate groups of a fine-tune, and the schedule (warm-up, then cosine)."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from polymodal.errors import ConfigError
from polymodal.perceiver.position import LearnedPositions

if TYPE_CHECKING:
    from polymodal.pipelines.train.weights import InitReport

# What weight decay should not pull towards zero: scales and shifts of normalisation layers,
# biases, the latent array, and learned position / query / modality embeddings (a lookup table
# decayed towards zero forgets rarely seen rows). The usual exemptions (timm's, the Perceiver
# papers'); a `Linear` or convolution weight is always decayed.
DECAY_KINDS = ("norm", "bias", "latent", "embedding")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
_EMBEDDING_NAMES = ("padding", "mask_tokens", "table")  # per-modality padding, learned queries


def decay_kind(model: nn.Module, name: str) -> str | None:
    """The kind (one of `DECAY_KINDS`) of parameter `name` of `model`, None for a weight that
    decays."""
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if isinstance(owner, _NORMS):
        return "norm"
    if leaf == "bias":
        return "bias"
    if leaf == "latents":
        return "latent"
    parent_leaf = owner_name.rpartition(".")[2]
    if (
        isinstance(owner, (nn.Embedding, LearnedPositions))
        or leaf in _EMBEDDING_NAMES
        or (isinstance(owner, nn.ParameterDict) and parent_leaf in _EMBEDDING_NAMES)
    ):
        return "embedding"
    return None


def decay_groups(
    model: nn.Module,
    groups: list[dict],
    weight_decay: float,
    no_decay: Iterable[str],
) -> list[dict]:
    """Each parameter group split in two: the tensors that decay at `weight_decay`, and those
    of the `no_decay` kinds at 0 (empty halves dropped)."""
    exempt = set(no_decay)
    kinds = {id(p): decay_kind(model, name) for name, p in model.named_parameters()}
    out = []
    for group in groups:
        params = group["params"]
        decayed = [p for p in params if kinds[id(p)] not in exempt]
        kept = [p for p in params if kinds[id(p)] in exempt]
        out += [
            {**group, "params": half, "weight_decay": decay}
            for half, decay in ((decayed, weight_decay), (kept, 0.0))
            if half
        ]
    return out


class Lamb(torch.optim.Optimizer):
    """Adam's update, rescaled per parameter tensor by the trust ratio ‖w‖ / ‖update‖."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(())
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                step = state["step"].item()
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m = state["exp_avg"] / (1 - beta1**step)
                v = state["exp_avg_sq"] / (1 - beta2**step)
                update = m / (v.sqrt() + group["eps"]) + group["weight_decay"] * p
                w_norm, u_norm = p.norm(), update.norm()
                trust = (w_norm / u_norm) if w_norm > 0 and u_norm > 0 else torch.ones(())
                p.add_(update, alpha=-group["lr"] * float(trust))
        return loss


def freeze(
    model: nn.Module, prefixes: list[str], fresh: Collection[str] = ()
) -> list[tuple[str, nn.Parameter]]:
    """Stop training the parameters whose names start with one of `prefixes` (each must name
    some); the (name, parameter) pairs still trained. `fresh` names the parameters `init` did
    not load: freezing one would keep random weights for good (a probe of a pretraining of
    other sizes, its tensors re-initialised under `init_mismatch = "reinit"`), so it is refused."""
    for prefix in prefixes:
        named = [(name, p) for name, p in model.named_parameters() if name.startswith(prefix)]
        if not named:
            parts = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
            raise ConfigError(
                f"freeze: no parameter starts with {prefix!r} (the model has {parts})"
            )
        random = [name for name, _ in named if name in fresh]
        if random:
            raise ConfigError(
                f"freeze: {prefix!r} would keep {len(random)} parameters at their random start "
                f"({', '.join(random[:3])}): init did not load them (another model's sizes?)"
            )
        for _, parameter in named:
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
    head_prefixes: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """One group at `lr`; with a `head_lr`, the heads in a group of their own at `head_lr`:
    with an init, the tensors it did not load (new heads); without, the tensors whose names
    start with one of the model's `head_prefixes` (a contrastive head learns the batch's
    geometry faster than the shared encoder may move without collapsing)."""
    if not head_lr or (init is None and not head_prefixes):
        return [{"params": [p for _, p in trainable]}]
    loaded = set(init.loaded) if init is not None else None

    def is_head(name: str) -> bool:
        return name not in loaded if loaded is not None else name.startswith(head_prefixes)

    trunk = [p for name, p in trainable if not is_head(name)]
    heads = [p for name, p in trainable if is_head(name)]
    return [g for g in ({"params": trunk}, {"params": heads, "lr": head_lr}) if g["params"]]


def lr_schedule(warmup_steps: int, total_steps: int) -> Any:
    """The learning rate's factor at each step: linear warm-up over `warmup_steps`, then a
    cosine to zero at `total_steps`."""
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor

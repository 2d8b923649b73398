"""The device half's wrapper: a batched `Field` through a `polymodal.perceiver.io` module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from polymodal.adapters.field import Field
from polymodal.perceiver.io import Tokens, token_width


class FieldInput(nn.Module):
    """A batched `Field` → input tokens `[B, M, C]` and mask `[B, M]`, through a
    `polymodal.perceiver.io` module that takes some of the field's parts (`arguments`).
    `channels` is the token width."""

    def __init__(self, module: nn.Module, arguments: Sequence[str] = ("values", "grid", "mask")):
        super().__init__()
        self.module, self.arguments = module, tuple(arguments)
        self.channels: int = token_width(module)

    def forward(self, field: Field) -> tuple[Tokens, torch.Tensor | None]:
        if "grid" in self.arguments and isinstance(field.grid, list):
            raise ValueError("the batch mixes grid shapes: give the adapter a fixed size")
        return self.module(*(getattr(field, name) for name in self.arguments))

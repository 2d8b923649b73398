"""The device half's wrapper: a batched `Field` through a `polymodal.perceiver.io` module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from polymodal.adapters.field import Field
from polymodal.perceiver.io import FactoredInputs, PackedTokens, Tokens, token_width


class FieldInput(nn.Module):
    """A batched `Field` → input tokens `[B, M, C]` and mask `[B, M]`, through a
    `polymodal.perceiver.io` module that takes some of the field's parts (`arguments`).
    `channels` is the token width. A packed field gives `PackedTokens`: each sample's tokens
    as it has them alone (its own grid's positions, its own spectrogram statistics)."""

    def __init__(self, module: nn.Module, arguments: Sequence[str] = ("values", "grid", "mask")):
        super().__init__()
        self.module, self.arguments = module, tuple(arguments)
        self.channels: int = token_width(module)

    def forward(self, field: Field) -> tuple[Tokens, torch.Tensor | None]:
        if field.offsets is not None:
            return self._packed(field), None
        if "grid" in self.arguments and isinstance(field.grid, list):
            raise ValueError("the batch mixes grid shapes: give the adapter a fixed size")
        return self.module(*(getattr(field, name) for name in self.arguments))

    def _packed(self, field: Field) -> PackedTokens:
        """The pack in one pass where the module can (its own `pack`: bytes, 1-d grids,
        log-mel; or `per_element`: points); else samples of one shape go through the module
        together (images of one size, clips of one length) and each sample's tokens take its
        place in the pack. One pass matters on a GPU, which launches each call's kernels."""
        assert field.offsets is not None
        pack = getattr(self.module, "pack", None)
        made = pack(field.values, field.offsets.diff()) if pack is not None else None
        if made is not None:
            return made
        if getattr(self.module, "per_element", False):
            return self._packed_as_one(field)
        bounds = field.offsets.tolist()
        grids = field.grid if isinstance(field.grid, list) else [field.grid] * (len(bounds) - 1)
        groups: dict[tuple, list[int]] = {}
        for i, grid in enumerate(grids):
            if bounds[i + 1] > bounds[i]:  # an empty span (a missing optional field) adds none
                groups.setdefault((grid, bounds[i + 1] - bounds[i]), []).append(i)
        pieces: dict[int, torch.Tensor] = {}
        for (grid, _), members in groups.items():
            parts = {
                "values": torch.stack([field.values[bounds[i] : bounds[i + 1]] for i in members]),
                "grid": grid,
                "mask": None,
            }
            if field.coords is not None:
                parts["coords"] = torch.stack(
                    [field.coords[bounds[i] : bounds[i + 1]] for i in members]
                )
            tokens, _ = self.module(*(parts[name] for name in self.arguments))
            if isinstance(tokens, FactoredInputs):
                tokens = tokens.materialize()
            pieces.update(zip(members, tokens.unbind(0), strict=True))  # not slices: see attend
        if not pieces:
            raise ValueError("a packed field with no elements in any sample")
        lengths = [len(pieces[i]) if i in pieces else 0 for i in range(len(grids))]
        return PackedTokens(
            torch.cat([pieces[i] for i in sorted(pieces)]),
            torch.tensor([0, *lengths]).cumsum(0),
        )

    def _packed_as_one(self, field: Field) -> PackedTokens:
        """The whole pack through the module as one sample, for a module whose token of an
        element depends on that element alone (`per_element`: points), which neither its
        neighbours nor its index in the pack change: no padding, one call a batch."""
        assert field.offsets is not None
        if not int(field.offsets[-1]):
            raise ValueError("a packed field with no elements in any sample")
        parts = {
            "values": field.values[None],
            "grid": None,
            "mask": None,
            "coords": None if field.coords is None else field.coords[None],
        }
        tokens, _ = self.module(*(parts[name] for name in self.arguments))
        return PackedTokens(tokens[0], field.offsets)

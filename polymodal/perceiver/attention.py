"""Attention blocks of the Perceiver (Jaegle et al. 2021) and Perceiver IO (2107.14795).

Pre-LayerNorm throughout: a cross-attention normalises its queries and its keys/values
separately, a self-attention its one input; each block is attention (+ query residual), then
an MLP on a LayerNorm of the result (+ residual). Attention itself is
`torch.nn.functional.scaled_dot_product_attention` with a boolean key mask, so the fused
kernels (flash / memory-efficient) run on GPUs. A query whose keys are all masked gets zeros,
never NaNs.

Packed inputs (`PackedTokens`: the samples' tokens one after another, no padding) are attended
per sample: sample `i`'s queries see only its own keys, which is exact for the encoder's
cross-attention, since a Perceiver's latents are per sample. On a GPU in half precision that is
one variable-length flash kernel over the pack (`varlen_attn` with `cu_seqlens`), elsewhere one
SDPA per sample.

Where it costs less, a cross-attention attends its normed inputs themselves, the key and value
projections moved onto the queries and the output (`Attention.attend_inputs`): the encoder's
few latents reading many narrow input tokens never build keys and values as wide as the
latents. The choice is a function of the shapes alone (`Attention.folding_pays`). The keys
are then the inputs normalised without the norm's gain and shift (folded into the weights
too), so inputs that need no gradient cost the backward one copy of their size, and no
gradient of it (`_AttendFixedKeys`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:  # PyTorch ≥ 2.9: flash attention over `cu_seqlens`, CUDA only
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older PyTorch: packs go one SDPA per sample
    varlen_attn = None  # type: ignore[assignment]


@dataclass
class FactoredInputs:
    """Input tokens `[features, positions]` kept in two parts: per-sample `features`
    `[B, M, F]` and `positions` `[M, P]` shared by the batch (Fourier features of a grid).

    A cross-attention normalises and projects them without building the `[B, M, F + P]`
    concatenation: LayerNorm's statistics add up over the two parts, and the projection of
    the positions is computed once for the batch instead of B times. On a 224² image batch
    that is most of the key/value cost and two of the largest activations.
    """

    features: torch.Tensor
    positions: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        batch, length, channels = self.features.shape
        return torch.Size((batch, length, channels + self.positions.shape[-1]))

    @property
    def projected_width(self) -> float:
        """What `norm_project` costs per token and output channel: the features and the mean,
        and the positions once a batch."""
        batch, _, features = self.features.shape
        return features + 1 + self.positions.shape[-1] / batch

    def materialize(self) -> torch.Tensor:
        pos = self.positions.to(self.features.dtype).expand(self.features.shape[0], -1, -1)
        return torch.cat([self.features, pos], dim=-1)

    def moments(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's mean μ and 1 / sqrt(var + eps) over its features and positions,
        `[B, M, 1]` each, from sums over the two parts."""
        x, p = self.features, self.positions.to(self.features.dtype)
        channels = x.shape[-1] + p.shape[-1]
        mean = (x.sum(-1, keepdim=True) + p.sum(-1, keepdim=True)) / channels
        square = (x.square().sum(-1, keepdim=True) + p.square().sum(-1, keepdim=True)) / channels
        return mean, torch.rsqrt(square - mean.square() + eps)

    def normalized(self, eps: float) -> torch.Tensor:
        """LayerNorm of the concatenation without gain or shift, `(z − μ) / σ`, written
        part by part into one tensor: the concatenation itself (as large as the result) is
        never made. Where the features need a gradient, through the concatenation instead
        (`out=` writes are not differentiable)."""
        x = self.features
        if torch.is_grad_enabled() and x.requires_grad:
            z = self.materialize()
            return F.layer_norm(z, z.shape[-1:], eps=eps)
        mean, scale = self.moments(eps)
        out = x.new_empty(self.shape)
        torch.sub(x, mean, out=out[..., : x.shape[-1]])
        torch.sub(self.positions.to(x.dtype), mean, out=out[..., x.shape[-1] :])
        return out.mul_(scale)

    def norm_project(self, norm: nn.LayerNorm, *projections: nn.Linear) -> list[torch.Tensor]:
        """`[p(norm(concat)) for p in projections]`, computed part by part.

        With γ folded into W and s = 1 / sqrt(var + eps), μ per token:
        norm(z)·Wᵀ + b = [x·s, −μ·s]·[W_featuresᵀ; Σ_c W] + s·(p·W_positionsᵀ) + (β·Wᵀ + b)
        — one small matmul and one multiply-add over the output, the positions' product once.
        """
        x, p = self.features, self.positions.to(self.features.dtype)
        f = x.shape[-1]
        mean, scale = self.moments(norm.eps)
        lhs = torch.cat([x * scale, -mean * scale], dim=-1).flatten(0, 1)  # [B·M, F + 1]
        outputs = []
        for linear in projections:
            w, bias = folded(linear, norm)  # [out, F + P], [out]
            rhs = torch.cat([w[:, :f].T, w.sum(-1)[None]], dim=0)  # [F + 1, out]
            per_token = torch.addmm(bias, lhs, rhs).view(*x.shape[:2], -1)
            outputs.append(torch.addcmul(per_token, scale, p @ w[:, f:].T))
        return outputs


@dataclass
class PackedTokens:
    """Input tokens of a batch without padding: `tokens` `[T, C]`, sample `i`'s at
    `offsets[i]:offsets[i + 1]` (int64 `[B + 1]` on the CPU, the `cu_seqlens` of
    variable-length kernels). The encoder's cross-attention lets each sample's latents attend
    to its span only, so a packed sample's latents are those it has alone."""

    tokens: torch.Tensor
    offsets: torch.Tensor

    @property
    def batch_size(self) -> int:
        return len(self.offsets) - 1

    @property
    def shape(self) -> torch.Size:
        return self.tokens.shape


class Attention(nn.Module):
    """Multi-head attention from `q_dim` queries to `kv_dim` keys/values.

    `qk_channels` (default `q_dim`) and `v_channels` (default `qk_channels`) are the widths of
    the projected queries/keys and values, split over `num_heads`; the output is projected to
    `out_dim` (default `q_dim`), as in the reference implementation.
    """

    def __init__(
        self,
        *,
        q_dim: int,
        kv_dim: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        out_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        qk_channels = qk_channels or q_dim
        v_channels = v_channels or qk_channels
        if qk_channels % num_heads or v_channels % num_heads:
            raise ValueError(f"{qk_channels=} and {v_channels=} must divide by {num_heads=}")
        self.num_heads, self.dropout = num_heads, dropout
        self.query = nn.Linear(q_dim, qk_channels)
        self.key = nn.Linear(kv_dim, qk_channels)
        self.value = nn.Linear(kv_dim, v_channels)
        self.output = nn.Linear(v_channels, out_dim or q_dim)

    def forward(
        self, x_q: torch.Tensor, x_kv: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`x_q` [B, N, q_dim], `x_kv` [B, M, kv_dim], `mask` [B, M] (True = attend)."""
        q, k, v = self.query(x_q), self.key(x_kv), self.value(x_kv)
        return self.output(self.attend(q, k, v, mask))

    def folding_pays(self, queries: int, projected_width: float) -> bool:
        """Whether `attend_inputs` costs fewer multiply-adds per input token than projecting
        the keys and values: `2·heads·N·kv_dim` against `(qk + v)·(N + projected_width)`,
        where `projected_width` is what projecting one token costs per output channel
        (`kv_dim`, or less for `FactoredInputs`, whose positions are projected once a batch).
        A function of shapes only, so a model takes the same path at every step."""
        kv_dim = self.key.in_features
        widths = self.key.out_features + self.value.out_features
        return 2 * self.num_heads * queries * kv_dim < widths * (queries + projected_width)

    def attend_inputs(
        self,
        q: torch.Tensor,
        inputs: torch.Tensor | FactoredInputs,
        norm: nn.LayerNorm,
        mask: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`attend(q, key(kv), value(kv), ...)` with `kv = norm(inputs)`, without projecting
        the keys and values, and without `norm`'s gain and shift on the inputs.

        `q·(x·Wkᵀ + bk) = (q·Wk)·x + q·bk`, and `q·bk` is the same for every key of a query,
        which softmax ignores; `Σ p·(x·Wvᵀ + bv) = (Σ p·x)·Wvᵀ + bv`, since a query's
        probabilities sum to 1. So each head's queries are taken into the input space
        (`q_h·W_k,h`, `kv_dim` wide) and all heads attend to the normed inputs themselves at
        once, as `heads·N` queries; the value projection follows per head. The `[B, M, qk]` and
        `[B, M, v]` keys and values (at 224² with one head 512 wide, two tensors of 0.8 GB and
        most of the cross-attention's work, at batch 8) are never made. Exact up to rounding.

        The norm's gain γ and shift β go into the weights the same way: `key(x̂·γ + β)` is
        `x̂·(W_k·γ)ᵀ` plus a per-query constant, `value(x̂·γ + β)` is `x̂·(W_v·γ)ᵀ + W_v·β + b_v`.
        So the keys are the normalised inputs `x̂` alone, which depend on no parameter: where
        the inputs need no gradient (pixels, samples, positions), nothing of the inputs' size
        is kept for the backward beyond `x̂` itself, and on a CPU no gradient of their size is
        made (`_AttendFixedKeys`).
        """
        heads, (batch, queries, width) = self.num_heads, q.shape
        head = width // heads
        keys = folded(self.key, norm)[0].view(heads, head, -1)  # [h, d, kv_dim]
        q = torch.einsum("bnhd,hdc->bhnc", q.view(batch, queries, heads, head), keys)
        # in the queries' dtype, as a projection would give it under autocast
        kv = normalized(inputs, norm.eps).to(q.dtype)
        attended = self.attend(
            q.reshape(batch, heads * queries, -1), kv, kv, mask, offsets, heads=1, scale=head**-0.5
        )
        values, value_bias = folded(self.value, norm)
        values = values.view(heads, -1, kv.shape[-1])  # [h, dv, kv_dim]
        out = attended.view(batch, heads, queries, -1)
        out = torch.einsum("bhnc,hdc->bnhd", out, values).flatten(2) + value_bias
        empty = None if offsets is None else offsets.diff() == 0
        if mask is not None:
            empty = ~mask.any(dim=-1)
        if empty is not None:  # a query with no keys gets zeros, as `attend` gives it
            out = out.masked_fill(empty.to(out.device)[:, None, None], 0.0)
        # The key bias cannot change any output (its true gradient is zero); it stays in the
        # graph, times zero, so that DistributedDataParallel finds every parameter used.
        return out + 0.0 * self.key.bias.sum()

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
        *,
        heads: int | None = None,
        scale: float | None = None,
    ) -> torch.Tensor:
        """Attention of projected queries, keys and values over `heads` heads (default
        `num_heads`), before the output projection; `scale` defaults to SDPA's
        `1 / sqrt(head width)`. With `offsets`, `k` and `v` are packed `[T, C]` and query row
        `i` attends to `offsets[i]:offsets[i + 1]` only."""
        heads = heads or self.num_heads
        dropout = self.dropout if self.training else 0.0
        if offsets is not None:
            if varlen_usable(q, k, v, heads, dropout):
                return self._attend_varlen(q, k, v, offsets, heads, scale)
            return self._attend_packed(q, k, v, offsets, heads, scale)
        # Keys that are the values (`attend_inputs`) are split once: autograd then adds their
        # two gradients into one buffer in place, where two views of one tensor would get a
        # new one (at 224², a fresh 0.4 GB tensor every backward).
        same = v is k
        q, k = _split_heads(q, heads), _split_heads(k, heads)
        v = k if same else _split_heads(v, heads)
        attn_mask, empty = None, None
        if mask is not None:
            empty = ~mask.any(dim=-1)  # queries with nothing to attend to
            attn_mask = (mask | empty[:, None])[:, None, None, :]  # keep softmax finite
        out = _sdpa(q, k, v, attn_mask, dropout, scale)
        out = out.transpose(1, 2).flatten(2)
        if empty is not None:
            out = out.masked_fill(empty[:, None, None], 0.0)
        return out

    def _attend_packed(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        offsets: torch.Tensor,
        heads: int,
        scale: float | None,
    ) -> torch.Tensor:
        """One SDPA per sample over its own span: the work is Σ N·M_i, not B·N·max M (a
        block mask over the whole pack would cost B·N·T). An empty span gives zeros. The
        spans are taken with `split` / `unbind`, whose backward joins the gradients once;
        slicing each would allocate a gradient of the whole pack per sample."""
        lengths = offsets.diff().tolist()
        keys = k.view(k.shape[0], heads, -1).transpose(0, 1).split(lengths, dim=1)  # [H, M_i, d]
        values = (
            keys if v is k else v.view(v.shape[0], heads, -1).transpose(0, 1).split(lengths, dim=1)
        )
        dropout = self.dropout if self.training else 0.0
        out = []
        for query, key, value in zip(_split_heads(q, heads).unbind(0), keys, values, strict=True):
            if key.shape[1] == 0:
                out.append(query.new_zeros(heads, query.shape[1], value.shape[-1]))
                continue
            out.append(_sdpa(query, key, value, None, dropout, scale))
        return torch.stack(out).transpose(1, 2).flatten(2)

    def _attend_varlen(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        offsets: torch.Tensor,
        heads: int,
        scale: float | None,
    ) -> torch.Tensor:
        """The whole pack in one variable-length flash kernel (`cu_seqlens`): every sample's
        `N` queries against its own span, no per-sample launches. An empty span gives zeros."""
        assert varlen_attn is not None  # varlen_usable checked
        batch, queries, _ = q.shape
        lengths = offsets.diff()
        longest = int(lengths.max()) if batch else 0
        if longest == 0:
            return q.new_zeros(batch, queries, v.shape[-1])
        cu_q = torch.arange(0, (batch + 1) * queries, queries, dtype=torch.int32)
        keys = k.view(k.shape[0], heads, -1)
        out = varlen_attn(
            q.reshape(batch * queries, heads, -1),
            keys,
            keys if v is k else v.view(v.shape[0], heads, -1),
            cu_q.to(q.device),
            offsets.to(q.device, torch.int32),
            queries,
            longest,
            scale=scale,
        )
        assert isinstance(out, torch.Tensor)  # no auxiliary outputs asked for
        out = out.view(batch, queries, -1)
        empty = lengths == 0
        if bool(empty.any()):
            out = out.masked_fill(empty.to(q.device)[:, None, None], 0.0)
        return out


def folded(linear: nn.Linear, norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias that give `linear(norm(x))` from the normalised `x̂` alone:
    `(x̂·γ + β)·Wᵀ + b = x̂·(W·γ)ᵀ + (W·β + b)`."""
    return linear.weight * norm.weight, linear.weight @ norm.bias + linear.bias


def normalized(inputs: torch.Tensor | FactoredInputs, eps: float) -> torch.Tensor:
    """LayerNorm over the last dimension without gain or shift: `x̂ = (x − μ) / σ`."""
    if isinstance(inputs, FactoredInputs):
        return inputs.normalized(eps)
    return F.layer_norm(inputs, inputs.shape[-1:], eps=eps)


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout: float,
    scale: float | None,
) -> torch.Tensor:
    """SDPA over `[B, heads, L, d]`; on a CPU in full precision, where the keys and values
    need no gradient (`attend_inputs` over inputs without one), with a backward that makes
    the queries' gradient alone (`_AttendFixedKeys`). Not under `torch.compile` nor on a
    GPU, whose own kernels were not measured against it."""
    if (
        q.requires_grad
        and not (k.requires_grad or v.requires_grad)
        and dropout == 0.0
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
    ):
        out = _AttendFixedKeys.apply(q, k, v, attn_mask, scale)
        assert isinstance(out, torch.Tensor)
        return out
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout, scale=scale
    )


class _AttendFixedKeys(torch.autograd.Function):
    """SDPA whose backward gives the queries' gradient only.

    SDPA's own backward (the CPU's flash kernel) recomputes the scores and makes the keys'
    and values' gradients whether or not anything needs them: five matmuls as large as the
    scores, and at 224² two gradients of 0.4 GB each, dropped at once. Where the keys and
    values are the normalised inputs, nothing needs them; the queries' gradient is
    `dS·K` with `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))`: three matmuls, one sample at a time so
    that the scores `P` of a sample (at 224², 51 MB) are all it holds at once."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
        scale: float | None,
    ) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        ctx.save_for_backward(q, k, v, out, attn_mask)
        ctx.scale = q.shape[-1] ** -0.5 if scale is None else scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, attn_mask = ctx.saved_tensors
        scale: float = ctx.scale
        grad_q = torch.empty_like(q)
        rowsums = (grad * out).sum(-1, keepdim=True)  # [B, h, N, 1]
        for i in range(len(q)):
            scores = torch.matmul(q[i], k[i].transpose(-1, -2)).mul_(scale)  # [h, N, M]
            if attn_mask is not None:
                scores.masked_fill_(~attn_mask[i], float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            del scores
            d_scores = torch.matmul(grad[i], v[i].transpose(-1, -2))
            d_scores.sub_(rowsums[i]).mul_(probs).mul_(scale)
            torch.matmul(d_scores, k[i], out=grad_q[i])
        return grad_q, None, None, None, None


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """`[B, L, C]` → `[B, heads, L, C / heads]` (a view)."""
    batch, length, channels = x.shape
    return x.view(batch, length, heads, channels // heads).transpose(1, 2)


def varlen_usable(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, dropout: float
) -> bool:
    """Whether PyTorch's variable-length flash kernel can attend a pack: CUDA, half precision
    (autocast gives it), equal head widths up to 256 in multiples of 8, no dropout, and a
    PyTorch that has `torch.nn.attention.varlen`. Elsewhere packs go one SDPA per sample."""
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0):
        return False
    if not (q.dtype == k.dtype == v.dtype):
        return False
    width = q.shape[-1] // heads
    flash_width = v.shape[-1] // heads == width and width % 8 == 0 and width <= 256
    return varlen_attn is not None and flash_width


class MLP(nn.Module):
    """Two layers with a GELU between, `widening_factor` times wider inside."""

    def __init__(self, *, dim: int, widening_factor: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.dense1 = nn.Linear(dim, dim * widening_factor)
        self.dense2 = nn.Linear(dim * widening_factor, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense2(F.gelu(self.dense1(x))))


class PreNormBlock(nn.Module):
    """Attention, then an MLP, each pre-normed and with a residual: the block a cross- and a
    self-attention layer share. Subclasses norm their inputs, attend, and `finish`."""

    def __init__(
        self,
        *,
        attention: Attention,
        out_dim: int,
        widening_factor: int,
        dropout: float,
        query_residual: bool = True,
    ) -> None:
        super().__init__()
        self.attention = attention
        self.dropout = nn.Dropout(dropout)
        self.mlp_norm = nn.LayerNorm(out_dim)
        self.mlp = MLP(dim=out_dim, widening_factor=widening_factor, dropout=dropout)
        self.query_residual = query_residual

    def finish(self, x_q: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The attention's output (dropped out) plus the query's residual, then the MLP's."""
        x = self.dropout(attended)
        if self.query_residual:
            x = x + x_q
        return x + self.mlp(self.mlp_norm(x))


class CrossAttention(PreNormBlock):
    """Queries attend to a different input: latents to the inputs (encoder), output queries to
    the latents (decoder). `query_residual=False` drops the residual, as the reference decoder
    does for some outputs."""

    def __init__(
        self,
        *,
        q_dim: int,
        kv_dim: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        out_dim: int | None = None,
        widening_factor: int = 1,
        dropout: float = 0.0,
        query_residual: bool = True,
    ) -> None:
        out_dim = out_dim or q_dim
        if query_residual and out_dim != q_dim:
            raise ValueError("a query residual needs out_dim == q_dim")
        attention = Attention(
            q_dim=q_dim,
            kv_dim=kv_dim,
            num_heads=num_heads,
            qk_channels=qk_channels,
            v_channels=v_channels,
            out_dim=out_dim,
        )
        super().__init__(
            attention=attention,
            out_dim=out_dim,
            widening_factor=widening_factor,
            dropout=dropout,
            query_residual=query_residual,
        )
        self.q_norm = nn.LayerNorm(q_dim)
        self.kv_norm = nn.LayerNorm(kv_dim)

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor | FactoredInputs | PackedTokens,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attention = self.attention
        q = attention.query(self.q_norm(x_q))
        if isinstance(x_kv, FactoredInputs):  # set against the factored projection's cost
            fold = attention.folding_pays(q.shape[1], x_kv.projected_width)
            if not fold:
                k, v = x_kv.norm_project(self.kv_norm, attention.key, attention.value)
                return self.finish(x_q, attention.output(attention.attend(q, k, v, mask)))
        else:
            fold = attention.folding_pays(q.shape[1], x_kv.shape[-1])
        offsets = x_kv.offsets if isinstance(x_kv, PackedTokens) else None
        tokens = x_kv.tokens if isinstance(x_kv, PackedTokens) else x_kv
        if fold:
            attended = attention.attend_inputs(q, tokens, self.kv_norm, mask, offsets)
        else:
            assert not isinstance(tokens, FactoredInputs)  # projected above
            kv = self.kv_norm(tokens)
            attended = attention.attend(q, attention.key(kv), attention.value(kv), mask, offsets)
        return self.finish(x_q, attention.output(attended))


class SelfAttention(PreNormBlock):
    """Latents attend to themselves (the latent transformer)."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int = 8,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        dropout: float = 0.0,
    ) -> None:
        attention = Attention(
            q_dim=dim,
            kv_dim=dim,
            num_heads=num_heads,
            qk_channels=qk_channels,
            v_channels=v_channels,
        )
        super().__init__(
            attention=attention, out_dim=dim, widening_factor=widening_factor, dropout=dropout
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(x)
        return self.finish(x, self.attention(normed, normed))

"""Model-side input adapters: compact fields on the device → input tokens `[B, M, C]` + mask.

Each casts and normalises its modality's values, groups them into patches where the modality
is large (audio sample patches, video space-time patches, image patches), and adds positions
built from the grid shape (Fourier features, cached per shape) or from coordinates (point
clouds). `MultimodalInput` pads every modality to one width with learned per-modality padding
(which doubles as a modality embedding), optionally replaces tokens with a learned mask token
with a per-modality probability during training, and concatenates the modalities in sorted
name order, masks included. Inputs take `(values, grid, mask)` — what a collated field holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from .attention import FactoredInputs, PackedTokens
from .position import FourierPositions, LearnedPositions, check_sizes, fourier_features

# Input tokens `[B, M, C]`, or their content and positions kept apart (`FactoredInputs`) until
# the encoder's first projection, which then never materialises the concatenation, or a
# batch's tokens without padding (`PackedTokens`).
Tokens = torch.Tensor | FactoredInputs | PackedTokens


def token_width(module: nn.Module) -> int:
    """The `channels` of an input module (every input adapter states its token width)."""
    return cast(InputAdapter, module).channels


class InputAdapter(Protocol):
    """What the encoder reads one modality through: the parts of a batched field (values and
    grid, coordinates or mask) → tokens of width `channels` and a mask `[B, M]` (or None)."""

    channels: int

    def __call__(self, *parts: Any) -> tuple[Tokens, torch.Tensor | None]: ...


def patch_mask(
    mask: torch.Tensor | None, grid: Sequence[int], patch: Sequence[int]
) -> torch.Tensor | None:
    """Element mask `[B, prod(grid)]` → patch mask: a patch is real if any element in it is."""
    if mask is None:
        return None
    batch = mask.shape[0]
    view = mask.view(batch, *_split_shape(grid, patch))
    dims = tuple(range(2, 2 * len(grid) + 1, 2))
    return view.any(dim=dims).flatten(1)


def _split_shape(grid: Sequence[int], patch: Sequence[int]) -> list[int]:
    shape = []
    for n, p in zip(grid, patch, strict=True):
        if n % p:
            raise ValueError(f"grid {tuple(grid)} does not divide into patches {tuple(patch)}")
        shape += [n // p, p]
    return shape


def patchify(values: torch.Tensor, grid: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
    """`[B, prod(grid), C]` → `[B, prod(grid // patch), prod(patch) · C]` (patch-major)."""
    batch, channels = values.shape[0], values.shape[-1]
    d = len(grid)
    view = values.reshape(batch, *_split_shape(grid, patch), channels)
    order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]
    patches = view.permute(*order)
    return patches.reshape(batch, math.prod(n // p for n, p in zip(grid, patch, strict=True)), -1)


def pad_to_patches(
    values: torch.Tensor, grid: Sequence[int], patch: Sequence[int], mask: torch.Tensor | None
) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
    """Values `[B, prod(grid), C]` zero-padded along every axis to whole patches, with the
    grid and the element mask that come out. A sample of its own length (a clip of its
    natural length, a picture at its own size) ends in a part-patch: padded, it is one token,
    as it is inside a batch padded to a longer sample, so the sample alone, packed or padded
    gives the same tokens."""
    whole = [-(-n // p) * p for n, p in zip(grid, patch, strict=True)]
    if whole == list(grid):
        return values, whole, mask
    batch, channels = values.shape[0], values.shape[-1]
    inside = (slice(None), *(slice(0, n) for n in grid))
    out = values.new_zeros((batch, *whole, channels))
    out[inside] = values.view(batch, *grid, channels)
    if mask is not None:
        real = mask.new_zeros((batch, *whole))
        real[inside] = mask.view(batch, *grid)
        mask = real.flatten(1)
    return out.flatten(1, -2), whole, mask


class GridInput(nn.Module):
    """Values on a grid (image `(H, W)`, video `(T, H, W)`, audio `(L,)`) → patch tokens with
    Fourier (or learned) positions concatenated, kept factored (`FactoredInputs`) so that the
    positions, shared by the batch, are projected once.

    `scale` and `offset` normalise: `x · scale + offset` (uint8 pixels to [-1, 1] by default).
    """

    def __init__(
        self,
        *,
        channels: int,
        patch: Sequence[int],
        num_bands: int = 64,
        max_resolution: Sequence[int] | None = None,
        scale: float = 2 / 255,
        offset: float = -1.0,
        learned_positions: int | None = None,
        position_channels: int = 0,
    ) -> None:
        super().__init__()
        if not patch or any(int(p) < 1 for p in patch):
            raise ValueError(f"patch sizes must be positive, got {tuple(patch)}")
        if num_bands < 0:
            raise ValueError(f"num_bands must be at least 0, got {num_bands}")
        self.patch, self.scale, self.offset = tuple(patch), scale, offset
        d = len(self.patch)
        if learned_positions:
            self.positions: nn.Module = LearnedPositions(
                length=learned_positions, channels=position_channels
            )
            pos_channels = position_channels
        else:
            self.positions = FourierPositions(num_bands=num_bands, max_resolution=max_resolution)
            pos_channels = self.positions.channels(d)
        self.channels = channels * math.prod(self.patch) + pos_channels

    def forward(
        self, values: torch.Tensor, grid: Sequence[int], mask: torch.Tensor | None = None
    ) -> tuple[Tokens, torch.Tensor | None]:
        values, grid, mask = pad_to_patches(values, grid, self.patch, mask)
        x = values.float() * self.scale + self.offset
        tokens = patchify(x, grid, self.patch)
        token_grid = [n // p for n, p in zip(grid, self.patch, strict=True)]
        if isinstance(self.positions, LearnedPositions):
            pos = self.positions(tokens.shape[1])
        else:
            pos = self.positions(token_grid, tokens.device)
        return FactoredInputs(tokens, pos), patch_mask(mask, grid, self.patch)

    def pack(self, values: torch.Tensor, lengths: torch.Tensor) -> PackedTokens | None:
        """A pack of 1-d samples (`values` `[T, C]`, sample lengths `[B]` on the CPU) in one
        pass: whole patches never straddle two samples, so the pack cuts into patches as it
        lies (a sample's last part-patch zero-padded, see `pad_to_patches`); each sample gets
        its own grid's positions. None for other grids or learned positions (`FieldInput`
        then goes sample by sample)."""
        (size,) = self.patch if len(self.patch) == 1 else (0,)
        if not isinstance(self.positions, FourierPositions) or not size or not lengths.any():
            return None
        whole = -(-lengths // size) * size  # each sample's last part-patch zero-padded
        if (whole != lengths).any():
            shift = (whole.cumsum(0) - whole) - (lengths.cumsum(0) - lengths)
            at = torch.arange(len(values)) + shift.repeat_interleave(lengths)
            padded = values.new_zeros((int(whole.sum()), *values.shape[1:]))
            padded[at.to(values.device)] = values
            values = padded
        x = values.float() * self.scale + self.offset
        grids = [(n,) for n in (whole // size).tolist()]
        return packed_on_grids(x.reshape(-1, size * x.shape[-1]), grids, self.positions)


def packed_on_grids(
    features: torch.Tensor, grids: Sequence[Sequence[int]], positions: FourierPositions
) -> PackedTokens:
    """A pack made in one pass (`pack` of an input module): features `[T, F]` of samples
    whose tokens lie on `grids` (one a sample, in order), with the positions of each sample's
    grid appended."""
    counts = [math.prod(grid) for grid in grids]
    pos = [positions(grid, features.device) for grid, n in zip(grids, counts, strict=True) if n]
    tokens = torch.cat([features, torch.cat(pos).to(features.dtype)], dim=-1)
    return PackedTokens(tokens, torch.tensor([0, *counts]).cumsum(0))


def masked_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`x[mask]` (the rows of `x` where the boolean `mask` over its leading dimensions is
    True) by `index_select`: a boolean index's backward is an accumulating `index_put_` over
    the whole of `x` (32,000 × 262 logits, 15 % taken: 8.1 against 4.8 ms fwd+bwd on a CPU)."""
    return x.flatten(0, mask.dim() - 1).index_select(0, mask.flatten().nonzero()[:, 0])


def reflected_rows(values: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """A pack of waveforms (`values` `[T, C]`, sample lengths `[B]` on the CPU) as rows
    `[B, max L + 2·pad, C]`, sample `i` at `pad .. pad + L_i` and reflected `pad` samples past
    each of its own ends, as `torch.stft(center=True)` pads a clip alone; zeros after."""
    batch, width, device = len(lengths), int(lengths.max()) + 2 * pad, values.device
    at = torch.arange(width)
    body = (at >= pad) & (at < (lengths + pad)[:, None])
    rows = values.new_zeros((batch, width, values.shape[-1]))
    rows[body.to(device)] = values  # row by row, in the pack's order
    rows[:, :pad] = rows[:, pad + 1 : 2 * pad + 1].flip(1)  # x[pad] .. x[1]
    # past each end, reflected: x[L - 2] .. x[L - 1 - pad]
    ends = (lengths + pad)[:, None] + at[None, :pad]
    which = torch.arange(batch)[:, None]
    rows[which, ends] = rows[which, ends - 2 - 2 * at[None, :pad]]
    return rows


def spec_augment(
    x: torch.Tensor,
    *,
    time_masks: int,
    time_width: int,
    freq_masks: int,
    freq_width: int,
    generator: torch.Generator | None = None,
    frames: torch.Tensor | None = None,
) -> torch.Tensor:
    """SpecAugment's masking (Park et al. 2019) of spectrograms `[B, T, F, C]`: per sample,
    `time_masks` bands of 1 to `time_width` frames and `freq_masks` bands of 1 to
    `freq_width` mel bins set to zero (the mean of a standardised log-mel). Draws on the CPU
    from `generator`, else torch's global generator, which the trainer seeds per step, so a
    resumed run masks the same bands; the bands are laid on `x`'s device. `frames` (`[B]`):
    each sample's real frames, where its time bands fall (a short clip padded or packed with
    longer ones: bands past its end would mask nothing); None: all `T`."""
    batch, length, bins = x.shape[:3]
    device = x.device
    keep = torch.ones(batch, length, bins, dtype=torch.bool, device=device)
    for count, width, size, axis in (
        (time_masks, time_width, length, 1),
        (freq_masks, freq_width, bins, 2),
    ):
        real = frames if axis == 1 and frames is not None else torch.tensor(size)
        room = real.to(device).clamp(min=1)
        at = torch.arange(size, device=device)
        for _ in range(count):
            widths = torch.randint(1, min(width, size) + 1, (batch,), generator=generator)
            draws = torch.rand(batch, generator=generator)
            widths = widths.to(device).minimum(room)
            starts = (draws.to(device) * (room - widths + 1)).long()
            band = (at >= starts[:, None]) & (at < (starts + widths)[:, None])  # [B, size]
            keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
    return x * keep[..., None]


def standardise(logmel: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Log-mel `[B, T, n_mels, C]` standardised per sample over its real frames (`real`
    `[B, T]`; None: all): a short clip padded to the longest of its batch would otherwise be
    standardised against its padding's silence, which squashes the speech into one value."""
    if real is None:
        mean = logmel.mean(dim=(1, 2, 3), keepdim=True)
        std = logmel.std(dim=(1, 2, 3), keepdim=True)
        return (logmel - mean) / (std + 1e-5)
    # Sums per frame first (`[B, T]`), then over the real frames: the spectrogram is read
    # three times and written twice, where weighting it element by element took eight passes.
    weight = real.to(logmel.dtype)
    count = (weight.sum(1) * logmel[0, 0].numel())[:, None, None, None]
    mean = (logmel.sum(dim=(2, 3)) * weight).sum(1)[:, None, None, None] / count.clamp(min=1)
    centred = logmel - mean
    squares = torch.linalg.vector_norm(centred, dim=(2, 3)).square()
    spread = (squares * weight).sum(1)[:, None, None, None]
    std = (spread / (count - 1).clamp(min=1)).sqrt()  # unbiased, as `Tensor.std`
    return centred / (std + 1e-5)


class LogMelInput(nn.Module):
    """Waveform samples `[B, L, C]` → log-mel spectrogram on the device (torchaudio's
    `MelSpectrogram`), standardised per sample, masked by SpecAugment while training, and cut
    into `(time, mel)` patches with Fourier positions of the patch grid.

    The loader still ships the compact int16 waveform; the spectrogram is computed here, in
    float32 even under bf16 autocast. Frames past the last whole time patch are dropped; a
    frame is real (mask) where its first sample is.
    """

    def __init__(
        self,
        *,
        sample_rate: int,
        channels: int = 1,
        n_mels: int = 64,
        hop: int = 160,
        n_fft: int = 400,
        patch: Sequence[int] = (4, 16),
        num_bands: int = 32,
        scale: float = 1 / 32768,
        time_masks: int = 0,
        time_width: int = 10,
        freq_masks: int = 0,
        freq_width: int = 8,
    ) -> None:
        super().__init__()
        import torchaudio  # only runs that ask for spectrograms pay for the import

        if min(n_mels, hop, n_fft, time_width, freq_width, *patch) < 1:
            raise ValueError("n_mels, hop, n_fft, the patch and the mask widths must be positive")
        if len(patch) != 2 or n_mels % patch[1]:
            raise ValueError(f"patch must be (frames, mel bins) dividing n_mels={n_mels}: {patch}")
        if min(time_masks, freq_masks) < 0:
            raise ValueError("time_masks and freq_masks must be at least 0")
        with torch.device("cpu"):  # its filter bank checks itself, which a meta tensor cannot
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels
            )
        self.hop, self.patch, self.scale = hop, tuple(patch), scale
        self.masks: dict[str, Any] = {
            "time_masks": time_masks,
            "time_width": time_width,
            "freq_masks": freq_masks,
            "freq_width": min(freq_width, n_mels),
        }
        self.positions = FourierPositions(num_bands=num_bands)
        self.channels = channels * math.prod(self.patch) + self.positions.channels(2)
        self.rows_on_cpu = False  # see `pack`

    def log_mel(self, waveforms: torch.Tensor, *, center: bool) -> torch.Tensor:
        """`log(mel + 1e-6)` `[..., n_mels, frames]` of waveforms `[..., L]` (int16 scale):
        torchaudio's `MelSpectrogram` with the power taken as re² + im² rather than its
        `abs().pow(2)`: a complex `abs` is a `hypot` per bin whose square root is squared
        back, about 5× the two squares' time on a CPU (the log-mel of padded speech batches
        took 2.6× as long with it). The waveform's scale is applied to the mel bins, squared
        (`mel` is linear in the power), which are fewer than the samples."""
        transform = self.mel.spectrogram
        shape = waveforms.shape
        spec = torch.stft(
            waveforms.reshape(-1, shape[-1]).float(),
            n_fft=transform.n_fft,
            hop_length=transform.hop_length,
            win_length=transform.win_length,
            window=transform.window,
            center=center,
            pad_mode="reflect",
            onesided=True,
            return_complex=True,
        )
        power = torch.addcmul(spec.real.square(), spec.imag, spec.imag)
        mel = self.mel.mel_scale(power.reshape(shape[:-1] + power.shape[-2:]))
        return mel.mul_(self.scale**2).add_(1e-6).log_()

    def spectrogram(self, values: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised log-mel `[B, T, n_mels, C]` of samples `[B, L, C]`, the statistics
        over each sample's real frames (`real` `[B, T]`, None: all; see `standardise`)."""
        with torch.autocast(values.device.type, enabled=False):
            mel = self.log_mel(values.transpose(1, 2), center=True)  # [B, C, n_mels, T]
            logmel = mel.permute(0, 3, 2, 1)
            frames = logmel.shape[1] // self.patch[0] * self.patch[0]
            return standardise(logmel[:, :frames], None if real is None else real[:, :frames])

    def pack(self, values: torch.Tensor, lengths: torch.Tensor) -> PackedTokens | None:
        """A pack of waveforms (`values` `[T, C]`, sample lengths `[B]` on the CPU), each
        sample's tokens those it has alone: its own frames (the STFT's `center=True` reflect
        padding at its own ends), statistics and positions; SpecAugment, patches and
        positions go over the whole pack at once.

        On a CPU each clip's log-mel and statistics are taken alone: Σ L of work on pieces
        that stay in cache (the input pass over speech of 1 to 10 s took half the time of
        the rows below). On a GPU, which pays for each clip's launches, every clip is
        reflect-padded at its own ends into a row of one batch and framed without centring:
        B × max L of work, but one pass (1.2–2.3× faster on an H200); `rows_on_cpu` takes
        that path on a CPU too. None when a sample is too short to reflect-pad (`FieldInput`
        then goes sample by sample, where the STFT says why)."""
        pad = self.mel.spectrogram.n_fft // 2
        if not len(lengths) or int(lengths.min()) <= pad:
            return None
        frames = (lengths // self.hop + 1) // self.patch[0] * self.patch[0]  # as alone
        longest = int(frames.max())
        real = torch.arange(longest)[None, :] < frames[:, None]
        if values.is_cuda or self.rows_on_cpu:
            rows = reflected_rows(values, lengths, pad)
            with torch.autocast(values.device.type, enabled=False):
                # each row is reflect-padded at its own sample's ends: no centring
                logmel = self.log_mel(rows.transpose(1, 2), center=False).permute(0, 3, 2, 1)
                x = standardise(logmel[:, :longest], real.to(values.device))
        else:  # each clip standardised alone too, while it is in cache
            clips = values.split(lengths.tolist())
            x = nn.utils.rnn.pad_sequence([self.spectrogram(c[None])[0] for c in clips], True)
        if self.training and (self.masks["time_masks"] or self.masks["freq_masks"]):
            x = spec_augment(x, **self.masks, frames=frames)
        batch, _, bins, channels = x.shape
        tokens = patchify(x.reshape(batch, -1, channels), (longest, bins), self.patch)
        mel_cells = bins // self.patch[1]
        kept = real[:, :: self.patch[0]].repeat_interleave(mel_cells, dim=1)  # per token
        grids = [(n, mel_cells) for n in (frames // self.patch[0]).tolist()]
        return packed_on_grids(tokens[kept.to(values.device)], grids, self.positions)

    def forward(
        self, values: torch.Tensor, grid: Sequence[int], mask: torch.Tensor | None = None
    ) -> tuple[Tokens, torch.Tensor | None]:
        real = None
        if mask is not None:
            count = values.shape[1] // self.hop + 1  # the frames torch.stft gives
            starts = (torch.arange(count, device=mask.device) * self.hop).clamp(max=grid[0] - 1)
            real = mask[:, starts]  # a frame is real where its first sample is
        x = self.spectrogram(values, real)
        if self.training and (self.masks["time_masks"] or self.masks["freq_masks"]):
            own = None if real is None else real[:, : x.shape[1]].sum(1)
            x = spec_augment(x, **self.masks, frames=own)
        batch, frames, bins, channels = x.shape
        tokens = patchify(x.reshape(batch, frames * bins, channels), (frames, bins), self.patch)
        cells = (frames // self.patch[0], bins // self.patch[1])
        pos = self.positions(cells, tokens.device)
        if real is not None:
            elements = real[:, :frames, None].expand(-1, -1, bins).reshape(batch, -1)
            mask = patch_mask(elements, (frames, bins), self.patch)
        return FactoredInputs(tokens, pos), mask


class FramePairInput(nn.Module):
    """Two frames of per-pixel features (optical flow: each pixel's 3×3 neighbourhood, 27
    channels) → one token per pixel: both frames' features, a linear map to `out_channels`,
    and 2-d Fourier positions (the reference's flow preprocessing)."""

    def __init__(
        self,
        *,
        in_channels: int = 27,
        out_channels: int = 64,
        num_bands: int = 64,
        max_resolution: Sequence[int] = (368, 496),
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * in_channels, out_channels)
        self.positions = FourierPositions(num_bands=num_bands, max_resolution=max_resolution)
        self.channels = out_channels + self.positions.channels(2)

    def forward(
        self, values: torch.Tensor, grid: Sequence[int], mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        frames, height, width = grid
        if frames != 2:
            raise ValueError(f"optical flow takes two frames, got {frames}")
        pairs = patchify(values.float(), grid, (2, 1, 1))
        pos = self.positions((height, width), pairs.device).expand(pairs.shape[0], -1, -1)
        return torch.cat([self.linear(pairs), pos.to(pairs.dtype)], dim=-1), patch_mask(
            mask, grid, (2, 1, 1)
        )


class ImageStemInput(nn.Module):
    """Images through a convolutional stem, then positions concatenated: the reference's
    `"conv"` preprocessing (7×7 stride-2 convolution, batch norm, ReLU, 3×3 stride-2 max
    pool: 4× smaller, Fourier positions) and `"conv1x1"` (a 1×1 convolution to `out_channels`,
    learned positions of `position_channels`, linearly projected). With `dims=3` the grid is
    video `(T, H, W)`: every frame goes through the stem, and positions are those of
    `(T, h, w)`. A stem is the local inductive bias (edges, strokes) that pixel patches lack,
    which small datasets cannot teach."""

    def __init__(
        self,
        *,
        kind: str = "conv",
        in_channels: int = 3,
        out_channels: int = 64,
        num_bands: int = 64,
        max_resolution: Sequence[int] | None = (56, 56),
        learned_positions: int | None = None,
        position_channels: int = 256,
        scale: float = 2 / 255,
        offset: float = -1.0,
        dims: int = 2,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (images) or 3 (video frames), got {dims}")
        check_sizes(stem_channels=(out_channels, 1), position_channels=(position_channels, 1))
        self.kind, self.scale, self.offset, self.dims = kind, scale, offset, dims
        if kind == "conv":
            self.conv = nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False)
            self.batchnorm = nn.BatchNorm2d(out_channels)
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2)
        elif kind == "conv1x1":
            self.conv = nn.Conv2d(in_channels, out_channels, 1)
        else:
            raise ValueError(f"kind must be 'conv' or 'conv1x1', got {kind!r}")
        if learned_positions:
            self.positions: nn.Module = LearnedPositions(
                length=learned_positions, channels=position_channels
            )
            self.projection = nn.Linear(position_channels, position_channels)
            pos_channels = position_channels
        else:
            self.positions = FourierPositions(num_bands=num_bands, max_resolution=max_resolution)
            pos_channels = self.positions.channels(dims)
        self.channels = out_channels + pos_channels

    def forward(
        self, values: torch.Tensor, grid: Sequence[int], mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, frames = values.shape[0], grid[0] if self.dims == 3 else 1
        pixels = (values.float() * self.scale + self.offset).view(batch * frames, *grid[-2:], -1)
        x = self.conv(pixels.permute(0, 3, 1, 2))
        if self.kind == "conv":
            x = self.pool(F.relu(self.batchnorm(x)))
        height, width = x.shape[-2:]
        tokens = x.permute(0, 2, 3, 1).reshape(batch, frames * height * width, -1)
        if isinstance(self.positions, LearnedPositions):
            pos = self.projection(self.positions(tokens.shape[1]))
        else:
            cells = (frames, height, width) if self.dims == 3 else (height, width)
            pos = self.positions(cells, tokens.device)
        tokens = torch.cat([tokens, pos.to(tokens.dtype).expand(batch, -1, -1)], dim=-1)
        if mask is not None:  # a stem output is real where the nearest input pixel is
            small = F.interpolate(
                mask.view(batch * frames, 1, *grid[-2:]).float(), size=(height, width)
            )
            mask = small.view(batch, -1) > 0
        return tokens, mask


class PointCloudInput(nn.Module):
    """Points `[B, N, 3 + F]` with coordinates in [-1, 1] → points + Fourier of coordinates."""

    per_element = True  # a point's token is its own: a pack runs as one sample (FieldInput)

    def __init__(self, *, features: int = 0, num_bands: int = 64, max_resolution: int = 64) -> None:
        super().__init__()
        check_sizes(
            features=(features, 0), num_bands=(num_bands, 0), max_resolution=(max_resolution, 1)
        )
        self.num_bands, self.max_resolution = num_bands, max_resolution
        self.channels = 3 + features + 3 * 2 * num_bands + 3

    def forward(
        self, values: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pos = fourier_features(coords.float(), self.num_bands, [self.max_resolution] * 3)
        return torch.cat([values.float(), pos], dim=-1), mask


class TextInput(nn.Module):
    """Byte ids `[B, L, 1]` → embeddings + learned positions (Perceiver IO's language input)."""

    def __init__(self, *, vocab_size: int = 262, dim: int = 768, max_length: int = 2048) -> None:
        super().__init__()
        check_sizes(vocab_size=(vocab_size, 1), dim=(dim, 1), max_length=(max_length, 1))
        self.embeddings = nn.Embedding(vocab_size, dim)
        self.positions = LearnedPositions(length=max_length, channels=dim)
        self.channels = dim

    def forward(
        self, values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = values[..., 0].long()
        return self.embeddings(ids) + self.positions(ids.shape[1]), mask

    def pack(self, values: torch.Tensor, lengths: torch.Tensor) -> PackedTokens | None:
        """A pack of byte strings (`values` `[T, 1]`, sample lengths `[B]` on the CPU) in one
        pass without padding: each byte's embedding plus the position of its index within its
        own string. Padding the pack to its longest string first made the embeddings, their
        sum and its backward as large as the padded batch that packing saves. None for an
        empty pack."""
        if not lengths.any():
            return None
        table = self.positions(int(lengths.max()))
        starts = (lengths.cumsum(0) - lengths).repeat_interleave(lengths)
        index = (torch.arange(len(values)) - starts).to(values.device)
        # as an embedding lookup, not `table[index]`: the backward of an index is an
        # accumulating `index_put_`, 2.4× slower on a CPU than the embedding's
        tokens = self.embeddings(values[:, 0].long()) + F.embedding(index, table)
        return PackedTokens(tokens, torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]))


class LabelInput(nn.Module):
    """Class ids `[B, 1, 1]`, or multi-hot / scores `[B, 1, K]` → one `K`-wide float token."""

    def __init__(self, *, num_classes: int) -> None:
        super().__init__()
        self.channels = num_classes

    def forward(
        self, values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if values.shape[-1] == self.channels and self.channels > 1:  # multi-hot or scores
            return values.float(), mask
        return F.one_hot(values[..., 0].long(), self.channels).float(), mask


class MultimodalInput(nn.Module):
    """Several inputs → one token sequence of a common width, in sorted modality order.

    Each modality's tokens are padded with its own learned padding vector up to the widest
    modality plus `min_padding` (so every modality carries a learned signature); during
    training, tokens of modality `m` are replaced by a learned mask token with probability
    `mask_probs[m]` (the masked autoencoding of Perceiver IO's multimodal model); a modality
    with probability 1 is always masked, in evaluation too (the label the autoencoder must
    infer from sound and picture).
    """

    def __init__(
        self,
        *,
        inputs: Mapping[str, nn.Module],
        min_padding: int = 2,
        mask_probs: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.names = sorted(inputs)
        self.inputs = nn.ModuleDict({n: inputs[n] for n in self.names})
        self.channels: int = max(token_width(m) for m in self.inputs.values()) + min_padding
        self.padding = nn.ParameterDict(
            {
                n: nn.Parameter(torch.randn(self.channels - token_width(self.inputs[n])) * 0.02)
                for n in self.names
            }
        )
        self.mask_probs = dict(mask_probs or {})
        self.mask_tokens = nn.ParameterDict(
            {n: nn.Parameter(torch.randn(self.channels) * 0.02) for n in self.mask_probs}
        )

    def forward(
        self, fields: Mapping[str, tuple]
    ) -> tuple[torch.Tensor | PackedTokens, torch.Tensor | None, dict[str, int]]:
        """`fields[name]` are the arguments of that modality's input; returns tokens, mask,
        and the number of tokens each modality contributed (in order): packed tokens
        (`PackedTokens`, no mask) when the modalities' inputs are packed. A modality missing
        from `fields` (an optional one no sample of the batch has) contributes none."""
        tokens, masks, lengths = [], [], {}
        spans: list[torch.Tensor] = []  # packed: each modality's offsets
        if not set(self.names) & set(fields):
            raise ValueError(f"none of the inputs {self.names} is in the batch")
        for name in self.names:
            if name not in fields:
                continue
            x, mask = self.inputs[name](*fields[name])
            packed = False
            if isinstance(x, PackedTokens):  # no padding, so no mask: the offsets say it all
                spans.append(x.offsets)
                x, packed = x.tokens, True
            elif isinstance(x, FactoredInputs):
                x = x.materialize()
            pad = self.padding[name].expand(*x.shape[:-1], -1).to(x.dtype)
            x = torch.cat([x, pad], dim=-1)
            p = self.mask_probs.get(name, 0.0)
            if p >= 1 or (self.training and p > 0):  # p = 1: never seen, in eval too
                drop = torch.rand(x.shape[:-1], device=x.device) < p
                x = torch.where(drop[..., None], self.mask_tokens[name].to(x.dtype), x)
            tokens.append(x)
            if not packed:
                masks.append(
                    mask
                    if mask is not None
                    else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                )
            lengths[name] = x.shape[-2]
        if spans:
            if len(spans) < len(tokens):
                raise ValueError("a batch packs some input fields and pads others: pack all")
            return pack_modalities(tokens, spans), None, lengths
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1), lengths


def pack_modalities(tokens: list[torch.Tensor], spans: list[torch.Tensor]) -> PackedTokens:
    """Packed tokens of several modalities (`[T_m, C]` with offsets each) → one pack whose
    sample `i` holds its tokens of every modality, in modality order (the order of a padded
    batch, so that the sums in attention add up alike)."""
    if len(tokens) == 1:
        return PackedTokens(tokens[0], spans[0])
    lengths = torch.stack([s.diff() for s in spans])  # [modalities, B]
    batch = lengths.shape[1]
    sample = torch.cat([torch.arange(batch).repeat_interleave(n) for n in lengths])
    order = torch.sort(sample, stable=True).indices.to(tokens[0].device)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.sum(0).cumsum(0)])
    # `index_select`, not `[order]`: the backward of an index is an accumulating `index_put_`,
    # 4× slower on a CPU (8,000 tokens × 340: 10.3 against 2.4 ms fwd+bwd)
    return PackedTokens(torch.cat(tokens).index_select(0, order), offsets)

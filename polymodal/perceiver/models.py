"""Perceiver IO and Perceiver: an input adapter, the encoder, a decoder.

`PerceiverIO(encoder_config, decoder, input=adapter)` maps what the adapter takes to what the
decoder gives; `Perceiver` is the classifier (one learned query decoded to logits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .attention import CrossAttention, PackedTokens
from .decoder import (
    BasicDecoder,
    ClassificationDecoder,
    FourierQueries,
    LearnedQueries,
    MultimodalDecoder,
    QueryProvider,
)
from .encoder import EncoderConfig, PerceiverEncoder
from .io import (
    FramePairInput,
    GridInput,
    ImageStemInput,
    LabelInput,
    MultimodalInput,
    TextInput,
    masked_rows,
)


class PerceiverIO(nn.Module):
    """Encoder + decoder, with an optional input adapter in front.

    With an adapter, `forward(*adapter_inputs, **decoder_options)`; without, `forward(tokens,
    mask=None, **decoder_options)`. Decoder options are those of the decoder (`indices` for
    query subsampling, `chunk_size` for chunked decoding).
    """

    def __init__(
        self,
        *,
        input_channels: int,
        encoder: EncoderConfig,
        decoder: nn.Module,
        input: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.input = input
        self.encoder = PerceiverEncoder(input_dim=input_channels, config=encoder)
        self.decoder = decoder

    def encode(self, *inputs: Any) -> torch.Tensor:
        if self.input is not None:
            tokens, mask = self.input(*inputs)[:2]
        else:
            tokens, mask = inputs[0], inputs[1] if len(inputs) > 1 else None
        return self.encoder(tokens, mask)

    def forward(self, *inputs: Any, **decoder_options: Any) -> torch.Tensor:
        return self.decoder(self.encode(*inputs), **decoder_options)


class Perceiver(PerceiverIO):
    """The Perceiver classifier: `forward(...)` → logits `[B, num_classes]`."""

    def __init__(
        self,
        *,
        input_channels: int,
        num_classes: int,
        encoder: EncoderConfig,
        input: nn.Module | None = None,
        **decoder_options: Any,
    ) -> None:
        decoder = ClassificationDecoder(
            latent_dim=encoder.latent_dim, num_classes=num_classes, **decoder_options
        )
        super().__init__(
            input_channels=input_channels, encoder=encoder, decoder=decoder, input=input
        )


class MultimodalAutoencoder(nn.Module):
    """Perceiver IO's multimodal autoencoder: several inputs in, several outputs decoded
    together (`MultimodalDecoder`), each mapped by its own head (e.g. audio samples per patch,
    RGB per pixel, class logits). `forward(fields, indices=None, chunk_size=None)` → outputs
    per modality `[B, n, head channels]`."""

    def __init__(
        self,
        *,
        inputs: MultimodalInput,
        encoder: EncoderConfig,
        decoder: MultimodalDecoder,
        heads: Mapping[str, nn.Module],
    ) -> None:
        super().__init__()
        self.input = inputs
        self.encoder = PerceiverEncoder(input_dim=inputs.channels, config=encoder)
        self.decoder = decoder
        self.heads = nn.ModuleDict(heads)

    def forward(
        self,
        fields: dict[str, tuple],
        indices: dict[str, torch.Tensor | None] | None = None,
        chunk_size: int | None = None,
    ) -> dict[str, torch.Tensor]:
        tokens, mask, _ = self.input(fields)  # packed or padded: the latents are per sample
        outputs = self.decoder(self.encoder(tokens, mask), indices, chunk_size)
        return {name: self.heads[name](out) for name, out in outputs.items()}


class ProjectionHead(nn.Module):
    """A clip's embedding from every one of its latents `[B, N, D]` → `[B, embed_dim]`: each
    latent narrowed to `channels`, all of them side by side, layer-normed, projected and
    batch-normed (SimCLR's projection head, read from the whole latent array).

    Why not one learned query (`ClassificationDecoder`), as classification pools: at
    initialisation its attention averages every clip's latents to nearly the same vector
    (cosine 0.95 between clips of the spoken digits), so InfoNCE's gradient is mostly noise
    and the embeddings collapse to one point (cosine 0.999, the loss stuck at log B). Reading
    every latent keeps what tells the clips apart, and the batch norm keeps the embeddings
    spread over the batch; narrowing first keeps the projection small for large latent arrays.
    A batch of one in training is normalised by the running statistics (it has no spread)."""

    def __init__(
        self, *, num_latents: int, latent_dim: int, embed_dim: int, channels: int = 32
    ) -> None:
        super().__init__()
        self.narrow = nn.Linear(latent_dim, channels)
        self.norm = nn.LayerNorm(num_latents * channels)
        self.project = nn.Linear(num_latents * channels, embed_dim)
        self.spread = nn.BatchNorm1d(embed_dim)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        flat = self.project(self.norm(self.narrow(latents).flatten(1))).float()
        if not (self.training and len(flat) == 1):
            return self.spread(flat)
        spread = self.spread  # one clip has no spread to measure: its running statistics
        return nn.functional.batch_norm(
            flat,
            spread.running_mean,
            spread.running_var,
            spread.weight,
            spread.bias,
            eps=spread.eps,
        )


class BatchWhitening(nn.Module):
    """Features `[B, C]` decorrelated across the batch to zero mean and identity covariance
    (ZCA whitening, as W-MSE whitens its embeddings), with running statistics for evaluation
    and for a batch too small to measure (`B <= C`), as batch norm keeps them.

    Why: late fusion's concept readings collapsed to one direction of variation (the largest
    singular value 0.8–0.96 of their spread) in the first epochs of `task = "correspondence"`
    on the spoken digits: that makes the agreement of every pair the same, which takes the loss
    to log 2 faster than learning which sound goes with which picture, and two model seeds in
    three stayed there. Whitened readings cannot collapse, so agreeing is the only way down:
    with it both of those seeds learn. A direction the model stops using keeps a trace of
    variance, which the batch's `eps` (in the units of readings that batch norm brings to
    variance 1) stretches up to 1/√eps; running statistics lag the batches, and stretched as
    far that lag swamped the reading: a pretraining's val accuracy fell from 0.891 (batch
    statistics) to 0.804. So running statistics use `running_eps`, a stretch of at most ~3×
    (the same weights: 0.886); training at that eps instead learnt slower (val 0.56 against
    0.82 after 25 epochs). The eigendecomposition is in float64: its gradient divides by the
    gaps between eigenvalues. A batch is whitened by its biased covariance, as batch norm
    normalises by the biased variance: so a batch in which every clip appears twice (the pairs
    `task = "correspondence"` makes) is whitened as the clips once, which lets late fusion
    read each clip once."""

    running_mean: torch.Tensor
    running_cov: torch.Tensor

    def __init__(
        self, channels: int, *, momentum: float = 0.1, eps: float = 1e-3, running_eps: float = 0.1
    ) -> None:
        super().__init__()
        self.momentum, self.eps, self.running_eps = momentum, eps, running_eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_cov", torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.training and len(x) > x.shape[1]:
            mean = x.mean(0)
            centred = x - mean
            cov = centred.T @ centred / len(x)  # biased, as batch norm normalises a batch
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_cov.lerp_(cov * len(x) / (len(x) - 1), self.momentum)
            eps = self.eps
        else:
            mean, cov, eps = self.running_mean, self.running_cov, self.running_eps
        eye = torch.eye(len(cov), dtype=torch.float64, device=cov.device)
        values, vectors = torch.linalg.eigh(cov.double() + eps * eye)
        return (x - mean) @ ((vectors * values.rsqrt()) @ vectors.T).float()


class FieldsApart(nn.Module):
    """The shared encoder reading each field of a sample alone, then each field's own
    `ProjectionHead` reading its latents to `width` channels: what contrastive learning and
    late fusion both start from. Apart, not fused, so that no field's reading can see another
    field. Each reading is whitened across the batch (`BatchWhitening`, over each rank's share;
    a share of at most `width` samples falls back to the running statistics): unwhitened,
    both uses collapsed (see `BatchWhitening` and `ContrastivePerceiver`). `read(fields)` →
    `{name: [B, width]}` in float32; every field must be in the batch."""

    def __init__(self, *, inputs: MultimodalInput, encoder: EncoderConfig, width: int) -> None:
        super().__init__()
        self.input = inputs
        self.encoder = PerceiverEncoder(input_dim=inputs.channels, config=encoder)
        self.heads = nn.ModuleDict(
            {
                name: ProjectionHead(
                    num_latents=encoder.num_latents,
                    latent_dim=encoder.latent_dim,
                    embed_dim=width,
                )
                for name in inputs.names
            }
        )
        self.whiten = nn.ModuleDict({name: BatchWhitening(width) for name in inputs.names})

    def read(self, fields: Mapping[str, tuple]) -> dict[str, torch.Tensor]:
        missing = [name for name in self.heads if name not in fields]
        if missing:
            raise ValueError(f"each field is read apart: {', '.join(missing)} missing")
        out = {}
        for name, head in self.heads.items():
            tokens, mask, _ = self.input({name: fields[name]})
            out[name] = self.whiten[name](head(self.encoder(tokens, mask)))
        return out


class ContrastivePerceiver(FieldsApart):
    """Two (or more) fields of a clip embedded apart (`FieldsApart`), for contrastive
    learning of their correspondence (AVID, CAV-MAE's contrastive half), so that matching a
    clip's sound to its picture cannot read one from the other. `heads` and the temperature
    are what `optim.head_lr` trains faster than the shared encoder (see `head_prefixes`).
    The embeddings are whitened (`FieldsApart`) before they are made unit length: with batch
    norm alone, a rerun of `av_contrastive.toml` on the spoken digits stayed at train loss
    4.05 (log 64 = 4.16) and val recall@1 0.004 (chance 0.003) after 100 epochs; whitened
    (`embed_dim = 32` < the batch of 64), 2.07 and 0.013.
    `forward(fields)` → (unit-length embeddings per field `[B, embed_dim]` in float32, the
    learned inverse temperature): returned by the forward, so DDP sees it used there."""

    head_prefixes = ("heads.", "log_scale")

    def __init__(
        self,
        *,
        inputs: MultimodalInput,
        encoder: EncoderConfig,
        embed_dim: int = 32,
        temperature: float = 0.07,
    ) -> None:
        super().__init__(inputs=inputs, encoder=encoder, width=embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def forward(self, fields: Mapping[str, tuple]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out = {name: nn.functional.normalize(e, dim=-1) for name, e in self.read(fields).items()}
        return out, self.log_scale.clamp(max=math.log(100.0)).exp()  # CLIP's cap: 1/100


class FusionPerceiver(FieldsApart):
    """Late fusion, for labels that compare the fields (is the spoken digit the drawn one?):
    each field is read apart (`FieldsApart`) into a distribution over `concepts` (its head,
    whitened across the batch, and a softmax), and the logits are a linear map of every
    field's log distribution and of the log chance that all fields name the same concept
    (Σₖ Πf pf(k), scaled so that uniform distributions give 0).

    Why: early fusion (`Perceiver` over every field's tokens at once) stays at chance on such
    labels, even after 60 epochs of the spoken digits' match task, because a label independent
    of each field alone gives no gradient towards reading either one; the agreement term is
    what lets a comparison be learnt (Hsu et al.'s meta classification likelihood learns
    classes from same / different pairs that way), and `task = "correspondence"` teaches it
    from unlabelled clips. `forward(fields)` → logits `[B, num_classes]`."""

    def __init__(
        self,
        *,
        inputs: MultimodalInput,
        encoder: EncoderConfig,
        num_classes: int,
        concepts: int = 16,
    ) -> None:
        super().__init__(inputs=inputs, encoder=encoder, width=concepts)
        self.classifier = nn.Linear(len(inputs.names) * concepts + 1, num_classes)
        # Only the agreement speaks at first (weight 1 in every logit: a softmax over classes
        # sees no change, a single logit, correspondence's, starts as the log chance that the
        # fields agree). Each field alone says nothing of a comparison, so its weights start
        # at 0 rather than as noise the loss must first unlearn.
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.weight[:, -1] = 1.0

    def forward(
        self, fields: Mapping[str, tuple], rows: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits of the batch's samples; with `rows`, of the pairs they name: row `i` combines
        field f's reading of sample `rows[f][i]` (correspondence's pairs of one clip's sound
        with another's picture), each field read once, not once per pair it is in."""
        read = [logits.log_softmax(-1) for logits in self.read(fields).values()]
        if rows is not None:
            read = [r[rows[name]] for r, name in zip(read, self.heads, strict=True)]
        concepts = read[0].shape[-1]
        together = torch.stack(read).sum(0).logsumexp(-1, keepdim=True)
        agreement = together + (len(read) - 1) * math.log(concepts)
        return self.classifier(torch.cat([*read, agreement], -1))


class OpticalFlow(nn.Module):
    """Perceiver IO optical flow: the input tokens themselves are the decoder's queries, one per
    pixel, decoded to `(dx, dy)` and divided by `rescale`; `forward(values, (2, H, W))` →
    flow `[B, H, W, 2]`."""

    def __init__(
        self,
        *,
        inputs: FramePairInput,
        encoder: EncoderConfig,
        rescale: float = 100.0,
    ) -> None:
        super().__init__()
        self.input = inputs
        self.encoder = PerceiverEncoder(input_dim=inputs.channels, config=encoder)
        self.cross_attention = CrossAttention(
            q_dim=inputs.channels,
            kv_dim=encoder.latent_dim,
            num_heads=1,
            qk_channels=encoder.latent_dim,
            v_channels=encoder.latent_dim,
            query_residual=False,
        )
        self.final = nn.Linear(inputs.channels, 2)
        self.rescale = rescale

    def forward(self, values: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        tokens, mask = self.input(values, grid)
        flow = self.final(self.cross_attention(tokens, self.encoder(tokens, mask)))
        return (flow / self.rescale).reshape(values.shape[0], grid[1], grid[2], 2)


class MaskedLanguageModel(nn.Module):
    """Perceiver IO masked-byte language model: byte ids `[B, L]` → logits `[B, L, vocab]`.

    The decoder's queries are the first `L` rows of a learned table, so any length up to the
    table decodes (the reference implementation always decodes all 2048 positions), and the
    logits reuse the input embeddings (`output · Eᵀ + bias`).
    """

    def __init__(
        self,
        *,
        encoder: EncoderConfig,
        vocab_size: int = 262,
        dim: int = 768,
        max_length: int = 2048,
        decoder_heads: int = 8,
        decoder_qk_channels: int | None = 256,
    ) -> None:
        super().__init__()
        self.input = TextInput(vocab_size=vocab_size, dim=dim, max_length=max_length)
        self.encoder = PerceiverEncoder(input_dim=dim, config=encoder)
        queries = LearnedQueries(length=max_length, channels=dim)
        self.decoder = BasicDecoder(
            queries=queries,
            latent_dim=encoder.latent_dim,
            out_channels=None,
            num_heads=decoder_heads,
            qk_channels=decoder_qk_channels,
            v_channels=dim,
            query_residual=False,
        )
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits `[B, L, vocab]` of ids `[B, L]` (`mask`: real bytes); or, packed, ids `[T]`
        (the samples' bytes one after another, sample `i` at `offsets[i]:offsets[i + 1]`) →
        logits `[T, vocab]`, the encoder reading no padding (`PackedTokens`) and each sample's
        queries decoding its own positions: each sample's logits alone."""
        if offsets is None:
            tokens, mask = self.input(ids[..., None], mask)
            latents = self.encoder(tokens, mask)
            out = self.decoder(latents, indices=torch.arange(ids.shape[1], device=ids.device))
            return out @ self.input.embeddings.weight.T + self.bias
        lengths = offsets.diff()
        longest = int(lengths.max()) if len(lengths) else 0
        tokens = self.input.pack(ids[:, None], lengths)  # a byte's token: its id and index only
        if tokens is None:  # not one byte in the batch
            tokens = PackedTokens(self.input.embeddings.weight[:0], offsets)
        latents = self.encoder(tokens)
        out = self.decoder(latents, indices=torch.arange(longest, device=ids.device))
        real = torch.arange(longest, device=ids.device) < lengths[:, None].to(ids.device)
        out = masked_rows(out, real)  # each sample's own positions
        return out @ self.input.embeddings.weight.T + self.bias


# ---------------------------------------------------------------------------------------------
# Presets: the paper configurations, parameter for parameter as Hugging Face builds them


def language_perceiver() -> MaskedLanguageModel:
    """`deepmind/language-perceiver`: 201,108,230 parameters."""
    config = EncoderConfig(
        num_latents=256,
        latent_dim=1280,
        num_blocks=1,
        num_self_attends_per_block=26,
        cross_heads=8,
        self_heads=8,
        cross_qk_channels=256,
        cross_v_channels=1280,
        self_qk_channels=256,
        self_v_channels=1280,
    )
    return MaskedLanguageModel(encoder=config)


def vision_perceiver_fourier(num_classes: int = 1000, image_size: int = 224) -> Perceiver:
    """`deepmind/vision-perceiver-fourier`: 48,440,627 parameters (pixels + 2-d Fourier
    features with 64 bands; cross-attention keys as wide as the inputs, as the reference)."""
    pixels = GridInput(
        channels=3,
        patch=(1, 1),
        num_bands=64,
        max_resolution=(image_size, image_size),
        scale=1.0,
        offset=0.0,
    )
    return Perceiver(
        input_channels=pixels.channels,
        num_classes=num_classes,
        encoder=_vision_encoder(pixels.channels),
        input=pixels,
    )


def _vision_encoder(input_channels: int) -> EncoderConfig:
    return EncoderConfig(
        num_latents=512,
        latent_dim=1024,
        num_blocks=8,
        num_self_attends_per_block=6,
        cross_heads=1,
        self_heads=8,
        cross_qk_channels=input_channels,
        cross_v_channels=input_channels,
    )


def vision_perceiver_learned(num_classes: int = 1000, image_size: int = 224) -> Perceiver:
    """`deepmind/vision-perceiver-learned`: 1×1 convolution to 256 channels, learned
    positions of every pixel (256 channels, projected)."""
    stem = ImageStemInput(
        kind="conv1x1", out_channels=256, learned_positions=image_size**2, scale=1.0, offset=0.0
    )
    return Perceiver(
        input_channels=stem.channels,
        num_classes=num_classes,
        encoder=_vision_encoder(stem.channels),
        input=stem,
    )


def vision_perceiver_conv(num_classes: int = 1000) -> Perceiver:
    """`deepmind/vision-perceiver-conv`: a convolutional stem (4× smaller, 64 channels) and
    64-band Fourier positions of the 56² feature grid."""
    stem = ImageStemInput(
        kind="conv", out_channels=64, max_resolution=(56, 56), scale=1.0, offset=0.0
    )
    return Perceiver(
        input_channels=stem.channels,
        num_classes=num_classes,
        encoder=_vision_encoder(stem.channels),
        input=stem,
    )


def multimodal_perceiver(
    num_classes: int = 700,
    num_frames: int = 16,
    image_size: int = 224,
    audio_samples_per_frame: int = 1920,
    samples_per_patch: int = 16,
    num_latents: int = 784,
    latent_dim: int = 512,
    num_self_attends_per_block: int = 8,
    self_heads: int = 8,
    output_channels: int = 512,
    label_query_channels: int = 1024,
) -> MultimodalAutoencoder:
    """`deepmind/multimodal-perceiver` (Kinetics-700 autoencoding), 19,858,855 parameters:
    4×4 video patches with 32-band Fourier positions, 16-sample audio patches with 192 bands,
    the label always masked (the model infers it)."""
    samples = num_frames * audio_samples_per_frame
    inputs = _kinetics_inputs(num_classes, num_frames, image_size, samples, samples_per_patch)
    encoder = EncoderConfig(
        num_latents=num_latents,
        latent_dim=latent_dim,
        num_blocks=1,
        num_self_attends_per_block=num_self_attends_per_block,
        cross_heads=1,
        self_heads=self_heads,
        cross_qk_channels=inputs.channels,
        cross_v_channels=inputs.channels,
    )
    queries: dict[str, QueryProvider] = {
        "audio": FourierQueries(
            shape=(samples // samples_per_patch,), num_bands=192, max_resolution=(samples,)
        ),
        "image": FourierQueries(shape=(num_frames, image_size, image_size), num_bands=32),
        "label": LearnedQueries(length=1, channels=label_query_channels),
    }
    decoder = MultimodalDecoder(
        queries=queries,
        latent_dim=latent_dim,
        out_channels=output_channels,
        qk_channels=latent_dim,
        v_channels=latent_dim,
    )
    heads = {
        "audio": nn.Linear(output_channels, samples_per_patch),
        "image": nn.Linear(output_channels, 3),
        "label": nn.Linear(output_channels, num_classes),
    }
    return MultimodalAutoencoder(inputs=inputs, encoder=encoder, decoder=decoder, heads=heads)


def _kinetics_inputs(
    num_classes: int, num_frames: int, image_size: int, samples: int, samples_per_patch: int
) -> MultimodalInput:
    """The multimodal model's inputs: 4×4 video patches with 32 bands, audio patches with
    192, the label (always masked)."""
    video = GridInput(
        channels=3,
        patch=(1, 4, 4),
        num_bands=32,
        max_resolution=(num_frames, image_size, image_size),
        scale=1.0,
        offset=0.0,
    )
    audio = GridInput(
        channels=1,
        patch=(samples_per_patch,),
        num_bands=192,
        max_resolution=(samples,),
        scale=1.0,
        offset=0.0,
    )
    return MultimodalInput(
        inputs={"audio": audio, "image": video, "label": LabelInput(num_classes=num_classes)},
        min_padding=4,
        mask_probs={"audio": 0.0, "image": 0.0, "label": 1.0},
    )


def optical_flow_perceiver(train_size: tuple[int, int] = (368, 496)) -> OpticalFlow:
    """`deepmind/optical-flow-perceiver`: 41,057,134 parameters; 2048 latents × 512, 24
    self-attention layers with 16 heads."""
    inputs = FramePairInput(
        in_channels=27, out_channels=64, num_bands=64, max_resolution=train_size
    )
    encoder = EncoderConfig(
        num_latents=2048,
        latent_dim=512,
        num_blocks=1,
        num_self_attends_per_block=24,
        cross_heads=1,
        self_heads=16,
        cross_qk_channels=inputs.channels,
        cross_v_channels=inputs.channels,
    )
    return OpticalFlow(inputs=inputs, encoder=encoder)

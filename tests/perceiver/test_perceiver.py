import math

import pytest
import torch
import torch.nn.functional as F

from polymodal.perceiver import (
    Attention,
    BasicDecoder,
    CrossAttention,
    EncoderConfig,
    FourierQueries,
    GridInput,
    MultimodalInput,
    Perceiver,
    PerceiverEncoder,
    PerceiverIO,
    PointCloudInput,
    SelfAttention,
    TextInput,
    fourier_features,
    grid_positions,
)
from polymodal.perceiver.io import patchify
from polymodal.perceiver.position import subsampled_positions

SMALL = EncoderConfig(
    num_latents=16,
    latent_dim=32,
    num_blocks=2,
    num_self_attends_per_block=2,
    self_heads=4,
    cross_heads=1,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_fourier_features_follow_the_reference_formula():
    shape, bands = (3, 5), 4
    features = fourier_features(grid_positions(shape), bands, shape)
    assert features.shape == (15, 2 + 2 * 2 * bands)
    for row, (i, j) in enumerate((i, j) for i in range(3) for j in range(5)):
        pos = [-1 + 2 * i / 2, -1 + 2 * j / 4]  # linspace(-1, 1) per axis
        freqs = [[1 + k * (r / 2 - 1) / (bands - 1) for k in range(bands)] for r in shape]
        scaled = [p * f for p, fs in zip(pos, freqs, strict=True) for f in fs]
        expected = (
            pos + [math.sin(math.pi * s) for s in scaled] + [math.cos(math.pi * s) for s in scaled]
        )
        assert torch.allclose(features[row], torch.tensor(expected), atol=1e-6)
    sine = fourier_features(grid_positions(shape), bands, shape, concat_pos=False, sine_only=True)
    assert torch.equal(sine, features[:, 2 : 2 + 2 * bands])


def test_subsampled_query_positions_use_the_reference_map():
    pos = subsampled_positions(torch.tensor([0, 7, 11]), (3, 4))
    expected = [[-1.0, -1.0], [-1 + 2 * 1 / 3, -1 + 2 * 3 / 4], [-1 + 2 * 2 / 3, 0.5]]
    assert torch.allclose(pos, torch.tensor(expected))


def test_fully_masked_queries_get_zeros_not_nans():
    attention = Attention(q_dim=8, kv_dim=6, num_heads=2)
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 6)
    mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    out = attention(q, kv, mask)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[1], attention.output(torch.zeros(3, 8)))


def test_padded_inputs_give_the_same_latents_as_unpadded():
    encoder = PerceiverEncoder(input_dim=12, config=SMALL).eval()
    tokens = torch.randn(1, 20, 12)
    padded = torch.cat([tokens, torch.randn(1, 7, 12)], dim=1)
    mask = torch.arange(27)[None] < 20
    assert torch.allclose(encoder(tokens), encoder(padded, mask), atol=1e-5)


def test_cross_attend_weights_are_shared_after_the_first():
    def params(n):
        config = EncoderConfig(**{**SMALL.__dict__, "num_blocks": 4, "num_cross_attends": n})
        return sum(p.numel() for p in PerceiverEncoder(input_dim=12, config=config).parameters())

    one, two, four = params(1), params(2), params(4)
    assert one < two == four  # the first cross-attend has its own weights, later ones share
    assert (
        len(PerceiverEncoder(input_dim=12, config=SMALL).block) == SMALL.num_self_attends_per_block
    )


def test_patchify_and_patch_masks():
    values = torch.arange(2 * 4 * 6 * 1).reshape(2, 24, 1)
    patches = patchify(values, (4, 6), (2, 3))
    assert patches.shape == (2, 4, 6)
    assert patches[0, 0].tolist() == [0, 1, 2, 6, 7, 8]  # a 2×3 window of the 4×6 grid
    image = GridInput(channels=1, patch=(2, 3), num_bands=2, scale=1.0, offset=0.0)
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[0, :9] = True
    tokens, token_mask = image(values, (4, 6), mask)
    assert tokens.shape == (2, 4, 6 + 2 + 2 * 2 * 2)
    assert token_mask.tolist() == [[True, True, False, False], [False] * 4]


def test_classifier_shapes_and_gradients_reach_every_parameter():
    image = GridInput(channels=3, patch=(4, 4), num_bands=8)
    model = Perceiver(input_channels=image.channels, num_classes=5, encoder=SMALL, input=image)
    pixels = torch.randint(0, 256, (3, 16 * 16, 3), dtype=torch.uint8)
    logits = model(pixels, (16, 16))
    assert logits.shape == (3, 5)
    logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    # A key bias shifts all of a query's logits alike, which softmax ignores: its gradient is
    # zero, exactly so where the cross-attention attends the inputs without projecting them.
    assert missing == [
        "encoder.cross_attends.0.attention.key.bias",
        "decoder.cross_attention.attention.key.bias",
    ]


def test_query_subsampling_and_chunked_decoding_agree_with_the_full_output():
    queries = FourierQueries(shape=(6, 8), num_bands=4)
    decoder = BasicDecoder(queries=queries, latent_dim=32, out_channels=3).eval()
    latents = torch.randn(2, 16, 32)
    full = decoder(latents)
    assert full.shape == (2, 48, 3)
    indices = torch.tensor([0, 5, 17, 47])
    sub = decoder(latents, indices=indices)
    # subsampled queries use the reference's -1 + 2i/N positions, so compare chunked to full
    assert sub.shape == (2, 4, 3)
    assert torch.allclose(
        decoder(latents, chunk_size=7), decoder(latents, indices=torch.arange(48)), atol=1e-6
    )


def test_multimodal_input_pads_masks_and_orders_modalities():
    audio = GridInput(channels=1, patch=(16,), num_bands=4, scale=1 / 32768, offset=0.0)
    video = GridInput(channels=3, patch=(1, 4, 4), num_bands=4)
    cloud = PointCloudInput(num_bands=2)
    text = TextInput(dim=20, max_length=12)
    inputs = MultimodalInput(
        inputs={"video": video, "audio": audio, "cloud": cloud, "text": text},
        mask_probs={"video": 0.5},
    )
    assert inputs.names == ["audio", "cloud", "text", "video"]
    batch = 2
    audio_mask = torch.ones(batch, 64, dtype=torch.bool)
    audio_mask[1, 40:] = False
    fields = {
        "audio": (torch.randint(-3000, 3000, (batch, 64, 1), dtype=torch.int16), (64,), audio_mask),
        "video": (torch.randint(0, 256, (batch, 2 * 8 * 8, 3), dtype=torch.uint8), (2, 8, 8), None),
        "cloud": (torch.rand(batch, 10, 3) * 2 - 1, torch.rand(batch, 10, 3) * 2 - 1, None),
        "text": (torch.randint(0, 262, (batch, 12, 1), dtype=torch.int16), None),
    }
    tokens, mask, lengths = inputs(fields)
    assert lengths == {"audio": 4, "cloud": 10, "text": 12, "video": 8}
    assert tokens.shape == (batch, 34, inputs.channels) and mask.shape == (batch, 34)
    assert mask[1, :4].tolist() == [True, True, True, False]  # audio samples 48+ are padding
    inputs.eval()
    again, _, _ = inputs(fields)
    video_tokens = again[:, -8:]
    assert torch.allclose(
        video_tokens[..., -inputs.padding["video"].numel() :],
        inputs.padding["video"].expand(batch, 8, -1),
    )


def test_overfits_a_tiny_classification_batch():
    image = GridInput(channels=3, patch=(4, 4), num_bands=6)
    model = Perceiver(input_channels=image.channels, num_classes=4, encoder=SMALL, input=image)
    pixels = torch.randint(0, 256, (8, 16 * 16, 3), dtype=torch.uint8)
    labels = torch.arange(8) % 4
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(pixels, (16, 16)), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.05


@pytest.mark.slow
def test_overfits_a_tiny_multimodal_reconstruction():
    audio = GridInput(channels=1, patch=(8,), num_bands=4, scale=1.0, offset=0.0)
    video = GridInput(channels=3, patch=(1, 2, 2), num_bands=4, scale=1.0, offset=0.0)
    inputs = MultimodalInput(inputs={"audio": audio, "video": video})
    decoders = torch.nn.ModuleDict(
        {
            "audio": BasicDecoder(
                queries=FourierQueries(shape=(64,), num_bands=4), latent_dim=32, out_channels=1
            ),
            "video": BasicDecoder(
                queries=FourierQueries(shape=(2, 4, 4), num_bands=4), latent_dim=32, out_channels=3
            ),
        }
    )
    encoder = PerceiverEncoder(input_dim=inputs.channels, config=SMALL)
    wave = torch.sin(torch.linspace(0, 12, 64))[None, :, None].repeat(2, 1, 1)
    frames = torch.rand(2, 32, 3)
    params = [*inputs.parameters(), *decoders.parameters(), *encoder.parameters()]
    optimiser = torch.optim.AdamW(params, lr=3e-3)
    first = None
    for _ in range(400):
        tokens, mask, _ = inputs({"audio": (wave, (64,), None), "video": (frames, (2, 4, 4), None)})
        latents = encoder(tokens, mask)
        loss = F.mse_loss(decoders["audio"](latents), wave) + F.mse_loss(
            decoders["video"](latents), frames
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first or loss.item()
    assert loss.item() < first / 50


def test_gradient_checkpointing_gives_the_same_gradients():
    tokens = torch.randn(2, 10, 12)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        config = EncoderConfig(**{**SMALL.__dict__, "gradient_checkpointing": checkpointing})
        encoder = PerceiverEncoder(input_dim=12, config=config)
        encoder(tokens).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bf16_autocast_runs_on_cpu():
    model = PerceiverIO(
        input_channels=12,
        encoder=SMALL,
        decoder=BasicDecoder(
            queries=FourierQueries(shape=(5,), num_bands=4), latent_dim=32, out_channels=2
        ),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 10, 12))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.slow
def test_compiles_without_graph_breaks_in_the_attention_path():
    block = torch.nn.Sequential(SelfAttention(dim=16, num_heads=2))
    cross = CrossAttention(q_dim=16, kv_dim=8, num_heads=2)
    compiled_self = torch.compile(block, fullgraph=True)
    compiled_cross = torch.compile(cross, fullgraph=True)
    x, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 8)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    assert torch.allclose(compiled_self(x), block(x), atol=1e-5)
    assert torch.allclose(compiled_cross(x, kv, mask), cross(x, kv, mask), atol=1e-5)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("inputs_need_grad", [True, False])
def test_attending_the_inputs_equals_projecting_the_keys_and_values(
    heads, inputs_need_grad, monkeypatch
):
    """Also where the inputs need no gradient (pixels, samples): then the attention's
    backward makes the queries' gradient alone, and factored inputs are normalised in place."""
    from polymodal.perceiver.attention import FactoredInputs, PackedTokens

    cross = CrossAttention(q_dim=8, kv_dim=6, num_heads=heads, qk_channels=8, v_channels=4)
    cross.double()  # exact up to rounding: compared in double precision
    for parameter in cross.parameters():  # biases and norms away from their zero / one init
        torch.nn.init.normal_(parameter)
    x_q = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(3, 7, 6, dtype=torch.float64, requires_grad=inputs_need_grad)
    wrt = [x_q, kv] if inputs_need_grad else [x_q]
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [False] * 7])  # row 2: no keys
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)])
    positions = torch.randn(7, 4, dtype=torch.float64)
    inputs = {  # made anew for each pass: a pass's backward frees its graph
        "tensor": lambda: (kv, None),
        "masked": lambda: (kv, mask),
        "packed": lambda: (PackedTokens(kv[mask], offsets), None),
        "factored": lambda: (FactoredInputs(kv[..., :2], positions), None),
    }
    params = dict(cross.named_parameters())
    for make in inputs.values():
        results = []
        for fold in (True, False):
            monkeypatch.setattr(Attention, "folding_pays", lambda *_, fold=fold: fold)
            x_kv, m = make()
            out = cross(x_q, x_kv, m)
            grads = torch.autograd.grad(out.square().sum(), [*wrt, *params.values()])
            names = ["x_q", "kv"][: len(wrt)] + list(params)
            results.append((out, dict(zip(names, grads, strict=True))))
        (folded, folded_grads), (projected, projected_grads) = results
        assert torch.allclose(folded, projected, rtol=1e-10, atol=1e-10)
        if m is not None:  # no keys: the output projection's bias, then the MLP
            assert torch.allclose(folded[2], cross.finish(x_q[2], cross.attention.output.bias))
        for name, grad in folded_grads.items():
            if name == "attention.key.bias":  # softmax ignores it: zero, not left out
                assert not grad.any() and projected_grads[name].abs().max() < 1e-9
            else:
                assert torch.allclose(grad, projected_grads[name], rtol=1e-10, atol=1e-9), name


@pytest.mark.parametrize("form", ["tensor", "factored"])
def test_inputs_without_gradient_cost_the_backward_one_tensor_of_their_size(form, monkeypatch):
    """Attending the inputs themselves keeps only their normalised copy for the backward
    (not also the copy a LayerNorm would keep, nor the concatenation of factored inputs),
    and the backward makes no tensor as large as the inputs (SDPA's would make the keys' and
    values' gradients, which nothing needs). At 224², each is 0.4 GB."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from polymodal.perceiver.attention import FactoredInputs

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    monkeypatch.setattr(Attention, "folding_pays", lambda *_: True)
    cross = CrossAttention(q_dim=8, kv_dim=6)
    x_q = torch.randn(4, 5, 8, requires_grad=True)
    features, positions = torch.randn(4, 500, 2), torch.randn(500, 4)
    x_kv = {
        "tensor": torch.cat([features, positions.expand(4, -1, -1)], dim=-1),
        "factored": FactoredInputs(features, positions),
    }[form]
    size = 4 * 500 * 6
    kept = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().nbytes() >= size * t.element_size():
            kept.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = cross(x_q, x_kv)
    with LargestOutput() as backward:
        out.square().sum().backward()
    assert len(kept) == 1
    assert backward.largest < size, backward.largest
    assert x_q.grad is not None and cross.kv_norm.weight.grad is not None


@pytest.mark.parametrize("form", ["tensor", "masked", "packed"])
def test_attending_the_inputs_adds_their_key_and_value_gradients_in_place(form, monkeypatch):
    """The normed inputs are both keys and values: their two gradients go into one buffer,
    not a third as large as the inputs (at 224², a fresh 0.4 GB every step)."""
    from torch.profiler import profile

    from polymodal.perceiver.attention import PackedTokens

    monkeypatch.setattr(Attention, "folding_pays", lambda *_: True)
    cross = CrossAttention(q_dim=8, kv_dim=6)
    x_q = torch.randn(3, 5, 8)
    kv = torch.randn(3, 40, 6, requires_grad=True)
    mask = torch.arange(40) < torch.tensor([[40], [25], [10]])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)])
    x_kv, m = {
        "tensor": (kv, None),
        "masked": (kv, mask),
        "packed": (PackedTokens(kv[mask], offsets), None),
    }[form]
    out = cross(x_q, x_kv, m)
    with profile(record_shapes=True) as prof:
        out.square().sum().backward()
    tokens = int(mask.sum()) if form == "packed" else kv.shape[0] * kv.shape[1]
    adds = [
        shapes
        for event in prof.events()
        if event.name == "aten::add"
        for shapes in [event.input_shapes]
        if any(math.prod(s) == tokens * 6 for s in shapes if s)
    ]
    assert kv.grad is not None and not adds, adds


def test_folding_is_chosen_where_it_saves_work():
    """One head, few latents and narrow inputs (the image encoder) attend the inputs; eight
    heads of latents as wide as the queries (a decoder reading latents) project them."""
    encoder = Attention(q_dim=512, kv_dim=261, num_heads=1)
    assert encoder.folding_pays(queries=256, projected_width=261)
    decoder = Attention(q_dim=512, kv_dim=512, num_heads=8)
    assert not decoder.folding_pays(queries=2048, projected_width=512)


def test_factored_inputs_normalise_and_project_like_the_concatenation():
    from polymodal.perceiver.attention import FactoredInputs

    features = torch.randn(3, 10, 4, requires_grad=True)
    positions = torch.randn(10, 6)
    norm, linear = torch.nn.LayerNorm(10), torch.nn.Linear(10, 5)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    factored = FactoredInputs(features, positions)
    (ours,) = factored.norm_project(norm, linear)
    reference = linear(norm(factored.materialize()))
    assert factored.shape == (*reference.shape[:2], 10)
    assert torch.allclose(ours, reference, atol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), [features, norm.weight, linear.weight])
    expected = torch.autograd.grad(reference.square().sum(), [features, norm.weight, linear.weight])
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, expected, strict=True))


def test_batch_whitening_decorrelates_even_a_collapsed_batch_and_evaluates_per_sample():
    from polymodal.perceiver.models import BatchWhitening

    torch.manual_seed(0)
    whiten = BatchWhitening(8)

    def collapsed(n: int) -> torch.Tensor:
        """What a collapsed reading looks like: one direction of variation with 100× the
        variance of any other (still 10× `eps`, which bounds how far a direction stretches)."""
        return torch.randn(n, 1) * direction * 10 / direction.norm() + torch.randn(n, 8) + 3.0

    direction = torch.randn(8)
    batch = collapsed(256).requires_grad_(True)
    assert torch.linalg.eigvalsh(batch.T.cov()).min() < 0.015 * batch.T.cov().trace()
    out = whiten(batch)
    spread = torch.linalg.eigvalsh(out.T.cov())
    assert out.mean(0).abs().max() < 1e-4
    assert spread.min() > 0.85 and spread.max() < 1.01  # every direction spread, not one
    (grad,) = torch.autograd.grad(out[:, 0].sum(), batch)
    assert torch.isfinite(grad).all()
    for _ in range(60):  # the running statistics follow the batches
        whiten(collapsed(256))
    whiten.eval()
    fresh = collapsed(512)
    evaluated = whiten(fresh)
    # running_eps shrinks each direction to about 1 / 1.1; 512 samples add about ±0.06
    assert torch.allclose(evaluated.T.cov(), out.T.cov().detach(), atol=0.2)
    assert torch.allclose(whiten(fresh[:1]), evaluated[:1], atol=1e-5)  # a sample alone
    whiten.train()
    assert torch.allclose(whiten(fresh[:1]), evaluated[:1], atol=1e-5)  # too few to measure

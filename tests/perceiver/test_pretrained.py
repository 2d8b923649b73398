"""Pretrained weights in and out: small random transformers models of every supported kind are
saved with `save_pretrained` (no download is possible here), loaded by our `from_pretrained`,
changed, and converted back with `to_hf`; outputs agree both ways."""

import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is needed")
from polymodal.perceiver.pretrained import (  # noqa: E402
    PretrainedError,
    from_pretrained,
    load_weights,
    save_pretrained,
    to_hf,
)

SMALL = {
    "num_latents": 8,
    "d_latents": 32,
    "num_blocks": 1,
    "num_self_attends_per_block": 2,
    "num_self_attention_heads": 2,
    "num_cross_attention_heads": 1,
}


def _text():
    ids = torch.randint(0, 262, (2, 11))
    return {"inputs": ids}, (ids,)


def _image(size):
    def make():
        pixels = torch.randn(2, 3, size, size)
        return {"inputs": pixels}, (pixels,)

    return make


def _flow():
    frames = torch.randn(2, 2, 27, 8, 12)
    return {"inputs": frames}, (frames,)


def _multimodal():
    inputs = {
        "image": torch.randn(2, 2, 3, 16, 16),
        "audio": torch.randn(2, 128, 1),
        "label": torch.zeros(2, 5),
    }
    # transformers decodes this small model only with subsampled queries (as its own tests do)
    points = {"image": torch.arange(10, 60), "audio": torch.arange(0, 6), "label": None}
    return {"inputs": inputs, "subsampled_output_points": points}, (inputs, points)


KINDS = {
    "PerceiverForMaskedLM": ({"d_model": 16, "max_position_embeddings": 32}, _text),
    "PerceiverForImageClassificationFourier": (
        {"d_model": 261, "num_labels": 7, "image_size": 12},
        _image(12),
    ),
    "PerceiverForImageClassificationLearned": (
        {"d_model": 512, "num_labels": 7, "image_size": 8},
        _image(8),
    ),
    "PerceiverForImageClassificationConvProcessing": (
        {"d_model": 322, "num_labels": 7, "image_size": 32},
        _image(32),
    ),
    "PerceiverForOpticalFlow": ({"train_size": [8, 12]}, _flow),
    "PerceiverForMultimodalAutoencoding": (
        {
            "num_labels": 5,
            "image_size": 16,
            "num_frames": 2,
            "audio_samples_per_frame": 64,
            "samples_per_patch": 16,
            "output_shape": [1, 2, 16, 16],
            "output_num_channels": 24,
            "_label_trainable_num_channels": 40,
        },
        _multimodal,
    ),
}


def _outputs(out):
    """Comparable tensors of either side's output (logits, or a dict of them)."""
    out = getattr(out, "logits", out)
    if isinstance(out, dict):
        return [out[k] for k in sorted(out)]
    return [out]


def _close(a, b, atol=1e-4):
    a, b = _outputs(a), _outputs(b)
    return len(a) == len(b) and all(
        x.shape[0] == y.shape[0] and torch.allclose(x, y[:, : x.shape[1]], atol=atol)
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("serialization", ["safetensors", "bin"])
def test_from_pretrained_then_to_hf_keep_the_outputs(tmp_path, kind, serialization):
    torch.manual_seed(0)
    extra, make_inputs = KINDS[kind]
    theirs = getattr(transformers, kind)(transformers.PerceiverConfig(**SMALL, **extra)).eval()
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=serialization == "safetensors")
    ours = from_pretrained(tmp_path / "hf")
    hf_inputs, our_inputs = make_inputs()
    with torch.no_grad():
        assert _close(ours(*our_inputs), theirs(**hf_inputs))
        for p in ours.parameters():  # our weights move on (fine-tuning): they must go back
            p.add_(0.01 * torch.randn_like(p))
        back = to_hf(ours)
        assert _close(ours(*our_inputs), back(**hf_inputs))
    save_pretrained(ours, tmp_path / "ours")
    again = from_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours/model.safetensors").exists()
    with torch.no_grad():
        assert _close(again(*our_inputs), ours(*our_inputs), atol=1e-6)


def test_to_hf_refuses_modules_it_cannot_map():
    with pytest.raises(PretrainedError, match="not made by from_hf or from_pretrained"):
        to_hf(torch.nn.Linear(2, 2))


def test_a_folder_without_weights_or_of_another_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match=r"no config\.json"):
        from_pretrained(tmp_path / "empty")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"architectures": ["BertModel"]}')
    with pytest.raises(PretrainedError, match="a BertModel, not one of"):
        from_pretrained(bert)
    with pytest.raises(PretrainedError, match=r"no model\.safetensors or pytorch_model\.bin"):
        load_weights(bert)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE=1"),
        ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}, "did not answer"),
    ],
)
def test_an_unreachable_hub_is_one_line_within_5_seconds(tmp_path, env, message):
    """Run in a child so the Hub settings (read at import) take effect."""
    script = (
        "import time\n"
        "from polymodal.perceiver.pretrained import from_pretrained, PretrainedError\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    from_pretrained('deepmind/vision-perceiver-fourier')\n"
        "except PretrainedError as exc:\n"
        "    print('ERROR', exc)\n"
        "print('SECONDS', time.perf_counter() - start)\n"
    )
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), **env}
    out = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=60
    ).stdout
    assert float(out.split("SECONDS")[1]) < 5, out
    out = out.split("SECONDS")[0]
    line = out.strip()
    assert line.startswith(
        "ERROR deepmind/vision-perceiver-fourier is not in the Hugging Face cache"
    )
    assert str(tmp_path / "hf-home") in line and message in line


def test_the_package_front_takes_state_dicts_too():
    import polymodal.perceiver as perceiver

    torch.manual_seed(0)
    extra, make_inputs = KINDS["PerceiverForOpticalFlow"]
    theirs = transformers.PerceiverForOpticalFlow(transformers.PerceiverConfig(**SMALL, **extra))
    ours = perceiver.from_hf(theirs.state_dict(), theirs.config, "PerceiverForOpticalFlow")
    hf_inputs, our_inputs = make_inputs()
    with torch.no_grad():
        assert _close(ours(*our_inputs), theirs.eval()(**hf_inputs))

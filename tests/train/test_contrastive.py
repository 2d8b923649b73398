"""Learning from the pairing, without labels: `task = "contrastive"` (the loss over ranks,
repeats, retrieval recall, a run that learns which sound goes with which picture from real mp4
clips, and a probe of it) and `task = "correspondence"` (its pairs, and a run)."""

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from testdata import torchrun
from testmedia import av_train_toml, decoded_clips

from polymodal.adapters import Batch, Field, collate
from polymodal.cli import main
from polymodal.datasets.build import build
from polymodal.datasets.index import ShardIndex
from polymodal.errors import ConfigError
from polymodal.pipelines.train.config import load_config
from polymodal.pipelines.train.demo import make_clips
from polymodal.pipelines.train.tasks import info_nce, make_task, retrieval_recall
from polymodal.pipelines.train.trainer import Trainer


def _pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, 16, generator=generator), dim=-1)
    b = F.normalize(a + 0.5 * torch.randn(n, 16, generator=generator), dim=-1)
    return a, b


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    a, b = _pairs(8)
    mine = slice(4 * rank, 4 * rank + 4)
    a, b = a[mine].clone().requires_grad_(), b[mine].clone().requires_grad_()
    valid = torch.ones(4, dtype=torch.bool)
    loss = info_nce(a, b, torch.tensor(10.0), valid, across_ranks=True)
    loss.backward()
    torch.save({"loss": loss.detach(), "a": a.grad, "b": b.grad}, f"{out}/rank{rank}.pt")
    dist.barrier()  # both ranks done with gloo before either tears it down (else: SIGABRT)
    dist.destroy_process_group()


def test_over_two_ranks_the_negatives_are_the_whole_global_batch(tmp_path):
    """Two gloo processes with half the batch each: the mean of their losses is the loss of
    the whole batch in one process, and each rank's gradients (summed over the ranks whose
    losses used its embeddings, as the gather's backward does) are twice the whole batch's
    (DDP's average over the two ranks makes them equal)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    a, b = (t.clone().requires_grad_() for t in _pairs(8))
    whole = info_nce(a, b, torch.tensor(10.0), torch.ones(8, dtype=torch.bool), across_ranks=True)
    whole.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(whole.item(), abs=1e-6)
    for part in ("a", "b"):
        gathered = torch.cat([ranks[0][part], ranks[1][part]])
        full = (a if part == "a" else b).grad
        torch.testing.assert_close(gathered, 2 * full, atol=1e-6, rtol=1e-5)


def test_a_padding_repeat_is_neither_an_anchor_nor_a_negative():
    a, b = _pairs(6)
    alone = info_nce(a[:5], b[:5], torch.tensor(10.0), torch.ones(5, dtype=torch.bool), False)
    padded_a, padded_b = torch.cat([a[:5], a[2:3]]), torch.cat([b[:5], b[2:3]])  # a repeat of 2
    valid = torch.tensor([True] * 5 + [False])
    with_repeat = info_nce(padded_a, padded_b, torch.tensor(10.0), valid, False)
    assert with_repeat.item() == pytest.approx(alone.item(), abs=1e-6)
    everyone = torch.ones(6, dtype=torch.bool)
    counted = info_nce(padded_a, padded_b, torch.tensor(10.0), everyone, False)
    assert counted.item() > alone.item()  # as a negative, the copy of a positive costs
    nothing = info_nce(a, b, torch.tensor(10.0), torch.zeros(6, dtype=torch.bool), False)
    assert nothing.item() == 0.0  # a batch of repeats only: no loss, and no NaN


def test_retrieval_recall_ranks_each_partner_among_all():
    a = torch.eye(4)
    b = torch.eye(4)[[0, 1, 3, 2]]  # clips 2 and 3 swapped on b's side
    recall = retrieval_recall(a, b, ["audio", "video"], ks=(1, 2))
    assert recall["val_audio_to_video_recall_at_1"] == 0.5
    assert recall["val_video_to_audio_recall_at_1"] == 0.5
    assert recall["val_recall_at_1"] == 0.5
    b2 = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    recall = retrieval_recall(a, F.normalize(b2, dim=-1), ["audio", "video"], ks=(1, 2))
    assert recall["val_video_to_audio_recall_at_1"] == 0.75  # clip 1's video is nearer audio 0
    assert recall["val_video_to_audio_recall_at_2"] == 1.0


@pytest.mark.parametrize("clips", [64, 1500])  # 1500: a second chunk of 1,024 queries
def test_a_partner_equal_to_its_clip_is_always_found_first(clips):
    """Embeddings of both senses the same: every clip's partner is its nearest, recall 1.
    A clip's own similarity taken apart from the product it is ranked in differed from its
    entry there by rounding, and about half the clips outranked themselves."""
    a = F.normalize(torch.randn(clips, 100, generator=torch.Generator().manual_seed(0)), dim=-1)
    recall = retrieval_recall(a, a.clone(), ["audio", "video"])
    assert recall["val_audio_to_video_recall_at_1"] == 1.0
    assert recall["val_video_to_audio_recall_at_1"] == 1.0


def test_a_contrastive_config_needs_two_fields_and_more_clips_than_channels(tmp_path):
    """Two fields; and a batch larger than the embedding, or its whitening falls back to
    running statistics that never move (nothing whitened, silently)."""
    path = tmp_path / "c.toml"
    text = av_train_toml(tmp_path, tmp_path / "run", task="contrastive")
    path.write_text(text)
    assert load_config(path).task == "contrastive"
    with pytest.raises(ConfigError, match=r"embed_dim: 8 channels .* data\.batch_size is 8"):
        load_config(path, ["embed_dim=8"])
    assert load_config(path, ["embed_dim=8", "data.batch_size=9"]).embed_dim == 8
    assert load_config(path, ["embed_dim=8", "task=classification"]).embed_dim == 8  # unread
    path.write_text(text + '[data.fields.sound]\nadapter = "audio"\nextensions = ["mp4"]\n')
    with pytest.raises(ConfigError, match=r"data\.fields: task contrastive pairs exactly two"):
        load_config(path)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """64 real mp4 clips of 4 classes (the task reads no label): a class ties each clip's
    colour to its pitch, nothing else does."""
    root = tmp_path_factory.mktemp("contrastive")
    make_clips(root / "clips", samples=64, classes=4)
    quiet = {"progress": False, "print_": lambda _: None}
    build(root / "clips", root / "data", split="val=0.25", shuffle=True, shard_samples=16, **quiet)
    return root / "data"


@pytest.mark.slow
def test_contrastive_training_learns_which_sound_goes_with_which_picture(tmp_path, clips, capsys):
    path = tmp_path / "c.toml"
    text = av_train_toml(clips, tmp_path / "run", task="contrastive", epochs=12)
    # 8 clips whiten 4 channels noisily; in the file, so that `evaluate` batches as the run did
    path.write_text(text.replace("batch_size = 8", "batch_size = 16"))
    config = load_config(path)
    assert config.data.batch_size == 16
    summary = Trainer(config, progress=False).run()
    run = tmp_path / "run"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-4:]) < sum(losses[:4]) * 0.8
    chance = 5 / summary["val_samples"]  # a quarter of the clips, of 4 classes
    for way in ("audio_to_video", "video_to_audio"):
        assert summary[f"val_{way}_recall_at_5"] >= 2 * chance, summary
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["best"] == max(r["val_recall_at_1"] for r in records if "val_recall_at_1" in r)
    best_pt = str(run / "checkpoints" / "best.pt")
    assert main(["evaluate", str(path), "--checkpoint", best_pt, "--out", str(tmp_path / "e")]) == 0
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert evaluated["recall_at_1"] == best["best"]
    assert main(["predict", best_pt, str(clips / "val")]) == 2  # no classes to predict
    assert "predict serves classification and autoencoding, not contrastive" in (
        capsys.readouterr().err
    )
    # a linear probe: the pretrained encoder, frozen, under a classification decoder
    probe = tmp_path / "probe.toml"
    probe.write_text(av_train_toml(clips, tmp_path / "probe", init=str(run), epochs=6))
    config = load_config(probe, ["data.num_classes=0", "freeze=['input', 'encoder']"])
    probed = Trainer(config, progress=False).run()
    report = json.loads((tmp_path / "probe" / "init.json").read_text())
    assert {n.split(".")[0] for n in report["loaded"]} == {"input", "encoder"}
    assert {n.split(".")[0] for n in report["new"]} == {"decoder"}
    assert {n.split(".")[0] for n in report["unused"]} == {"heads", "whiten", "log_scale"}
    pretrained = torch.load(best_pt, weights_only=True)["model"]
    after = torch.load(tmp_path / "probe/checkpoints/best.pt", weights_only=True)["model"]
    assert all(torch.equal(after[n], pretrained[n]) for n in report["loaded"])
    assert probed["val_accuracy"] >= 0.8, probed
    # late-fused, as the pretraining read each field: its heads' projections and whitening
    # (embed_dim 4 wide) give way to concept heads of 6, the input adapters and encoder load
    late = ["fusion=late", "fusion_concepts=6", "init_mismatch=reinit", "data.num_classes=0"]
    report = Trainer(load_config(probe, late), progress=False).init_report
    assert {"input", "encoder"} <= {n.split(".")[0] for n in report.loaded}
    assert {n.split(".")[0] for n in report.reinitialised} == {"heads", "whiten"}


def test_contrastive_heads_and_temperature_learn_at_head_lr(tmp_path, clips):
    """`optim.head_lr` without an init: the projection heads and the temperature in a group
    of their own, the shared input adapters and encoder at `lr`; each head embeds a training
    batch of one by its running statistics (a batch norm over one clip would zero it)."""
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(clips, tmp_path / "run", task="contrastive"))
    trainer = Trainer(load_config(path, ["optim.head_lr=0.03"]), progress=False)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    by_lr: dict[float, set[str]] = {}
    for group in trainer.optimizer.param_groups:
        by_lr.setdefault(group["lr"], set()).update(names[id(p)] for p in group["params"])
    assert len(by_lr) == 2, by_lr.keys()
    heads = by_lr[max(by_lr)]
    assert heads and all(n.startswith(("heads.", "log_scale")) for n in heads)
    assert {n.split(".")[0] for n in by_lr[min(by_lr)]} == {"input", "encoder"}
    head = trainer.model.heads["audio"].train()
    model = trainer.config.model
    one = head(torch.randn(1, model.num_latents, model.latent_dim))
    assert one.abs().sum() > 0 and torch.isfinite(one).all()


@pytest.mark.slow
def test_two_process_contrastive_training_gathers_negatives_and_scores(tmp_path, clips):
    """Under torchrun with gloo: each rank's loss sees the other's clips as negatives (the
    gather's backward is a collective: a rank that skipped it would hang the other), and
    validation ranks every clip of both ranks against all of them."""
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(clips, tmp_path / "run", task="contrastive", max_steps=3))
    summary = json.loads(torchrun(["-m", "polymodal", "train", str(path)]).stdout)
    assert summary["steps"] == 3
    assert summary["val_samples"] == ShardIndex.load(clips / "val").samples
    assert 0 <= summary["val_audio_to_video_recall_at_5"] <= 1


def test_correspondence_pairs_every_clip_with_another_clip_never_itself(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(tmp_path, tmp_path / "run", task="correspondence"))
    task = make_task(load_config(path))
    values = torch.arange(6, dtype=torch.float32)[:, None, None]  # each clip: its own number
    keys = ["a", "b", "c", "d", "e", "c"]  # the last is a padding repeat of "c"
    batch = Batch({n: Field(values, (1,)) for n in ("audio", "video")}, keys)
    rows, targets, weights = task.pairs(batch, np.random.default_rng(3))
    audio, video = rows["audio"].tolist(), rows["video"].tolist()
    assert audio == [0, 1, 2, 3, 4, 5] * 2 and video[:6] == [0, 1, 2, 3, 4, 5]
    apart = video[6:]
    assert all(apart[i] != i for i in range(6)) and sorted(apart) == [0, 1, 2, 3, 4, 5]
    assert targets.tolist() == [1] * 6 + [0] * 6
    left_out = [keys[i] == keys[int(apart[i])] for i in range(6)]  # "c" with its own repeat
    assert weights.tolist() == [1] * 6 + [0.0 if same else 1.0 for same in left_out]
    again = task.pairs(batch, np.random.default_rng(3))[0]["video"]
    assert again.tolist() == video  # a seeded draw: a resumed run draws the same


def test_late_fusion_reads_each_field_once_and_pairs_the_readings(tmp_path):
    """Correspondence's pairs, late fused, from each clip's fields read once: the logits of
    every pair equal those of the pairs' own fields read as a batch (in training, with the
    batch's whitening and batch norm, and in evaluation)."""
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(tmp_path, tmp_path / "run", task="correspondence"))
    task = make_task(load_config(path, ["fusion=late"]))
    batch = collate(decoded_clips(tmp_path / "clips", task.fields()))
    torch.manual_seed(0)
    model = task.model()
    rows, _, _ = task.pairs(batch, np.random.default_rng(3))
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            once, _, _ = task.pair_logits(model, batch, np.random.default_rng(3))
            each = model({n: (batch[n].rows(at),) for n, at in rows.items()})[:, 0]
        torch.testing.assert_close(once, each, atol=1e-4, rtol=1e-4)  # float32 rounding
    assert once.std() > 0.01  # pairs told apart, not one logit for all


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["early", "late"])
def test_correspondence_training_tells_matched_from_mismatched_clips(tmp_path, clips, fusion):
    """Whether the sound is this picture's: on the demo clips a class ties colour to pitch, so
    3 of 4 apart pairs differ in class (the 4th cannot be told: its ceiling is 0.875). Late
    fusion reads each sense apart into concepts and compares them."""
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(clips, tmp_path / "run", task="correspondence", epochs=12))
    summary = Trainer(load_config(path, [f"fusion={fusion}"]), progress=False).run()
    assert summary["val_accuracy"] >= 0.65, summary  # chance: 0.5


def test_late_fusion_is_checked_and_compares_every_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(av_train_toml(tmp_path, tmp_path / "run", task="correspondence"))
    with pytest.raises(ConfigError, match="fusion: expected early or late, got 'middle'"):
        load_config(path, ["fusion=middle"])
    with pytest.raises(ConfigError, match="fusion_concepts: must be at least 2"):
        load_config(path, ["fusion=late", "fusion_concepts=1"])
    with pytest.raises(ConfigError, match="fusion_concepts: 16 channels are whitened across"):
        load_config(path, ["fusion=late", "fusion_concepts=16"])
    with pytest.raises(ConfigError, match="fusion: late serves classification, multilabel and"):
        load_config(path, ["fusion=late", "task=contrastive"])
    with pytest.raises(ConfigError, match=r"data\.fields\.audio is optional"):
        load_config(path, ["fusion=late", "data.fields.audio.optional=true"])
    model = make_task(load_config(path, ["fusion=late"])).model()
    audio = Field(torch.zeros(2, 1600, 1, dtype=torch.int16), (1600,))
    with pytest.raises(ValueError, match="each field is read apart: video missing"):
        model({"audio": (audio,)})

"""Our Perceiver against Hugging Face's `PerceiverForImageClassificationFourier`, same weights.

    .venv/bin/python benchmarks/bench_perceiver.py [--repeats 3]

Config: 256 latents × 512, one cross-attention, 6 self-attention layers (8 heads), batch 8, 2
torch threads, fp32, CPU. Each measurement runs in its own process so that peak memory (the
process's maximum RSS) belongs to one model and one input size; "net" is that peak less the RSS
just before the first step (the interpreter, both libraries and the shared weights); the last
columns are ours with its cross-attention projecting keys and values (`projected`, as before it
attended the inputs themselves), and how much faster ours is than that. Also: our
forward time against the input size M (it must grow linearly), and the share of this machine's
fp32 GEMM rate it achieves (FLOPs counted with `torch.utils.flop_counter`, the CPU's fused
attention included), with torch's default allocation (as every row above) and with large
tensors on transparent huge pages (`THP_MEM_ALLOC_ENABLE=1`). Why the second: torch takes each
tensor over 32 MB from fresh pages and hands them back when freed, so every step faults its
large activations in again, 4 KB at a time; at 224² that is about a third of fwd+bwd here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch


def build(which: str, tiny: bool = False) -> torch.nn.Module:
    """The benchmark's model, HF's or ours with the same weights (`tiny`: 32 latents × 64 and
    two self-attention layers, for `bench_gpu.py --tiny`). `ours-projected` is ours with every
    cross-attention projecting its keys and values, as before it learned to attend the inputs
    themselves (`Attention.folding_pays`): what that saves, in the same run."""
    from transformers import PerceiverConfig, PerceiverForImageClassificationFourier

    from polymodal.perceiver import Attention
    from polymodal.perceiver.hf import from_hf

    if which == "ours-projected":
        Attention.folding_pays = lambda *_: False  # type: ignore[method-assign]

    torch.manual_seed(0)
    config = PerceiverConfig(
        num_latents=32 if tiny else 256,
        d_latents=64 if tiny else 512,
        d_model=261,
        num_blocks=1,
        num_self_attends_per_block=2 if tiny else 6,
        num_self_attention_heads=8,
        num_cross_attention_heads=1,
        num_labels=1000,
    )
    theirs = PerceiverForImageClassificationFourier(config)
    return theirs if which == "hf" else from_hf(theirs)


def measure(which: str, side: int, backward: bool, repeats: int) -> dict[str, float]:
    """Median seconds per step, peak RSS (MB) and the peak beyond the RSS just before the first
    step (`net_mb`: what the pass itself takes, without the interpreter, the imported libraries
    and the weights, which both models share) for one model, input size and mode."""
    torch.set_num_threads(2)
    model = build(which)
    model.train(backward)
    pixels = torch.randn(8, 3, side, side)

    def step() -> None:
        out = model(inputs=pixels).logits if which == "hf" else model(pixels)
        if backward:
            out.sum().backward()

    before_mb = _rss_mb()
    with torch.set_grad_enabled(backward):
        step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": statistics.median(times), "peak_mb": peak_mb, "net_mb": peak_mb - before_mb}


def _rss_mb() -> float:
    """This process's resident memory now, in MB (Linux: `/proc/self/statm`)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: list[str], huge_pages: bool = False) -> dict[str, float]:
    """One measurement in a fresh process; `huge_pages`: its large tensors on transparent huge
    pages (torch's `THP_MEM_ALLOC_ENABLE=1`, not its default)."""
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": str(int(huge_pages))}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return json.loads(out.splitlines()[-1])


def gemm_gflops() -> float:
    torch.set_num_threads(2)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def flop_counter() -> Any:
    """torch's `FlopCounterMode`, also counting the CPU's fused attention: torch counts the
    GPU kernels (flash, memory-efficient, cuDNN) but not `_scaled_dot_product_flash_attention_
    for_cpu` or its backward, so on a CPU the attention's matmuls were missing from the count
    (at 224² fwd+bwd, 398 of 561 GFLOP)."""
    from torch.utils import flop_counter as fc

    def forward(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:  # given shapes
        return fc.sdpa_flop_count(q, k, v)

    def backward(grad: Any, q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
        return fc.sdpa_backward_flop_count(grad, q, k, v)

    aten = torch.ops.aten
    cpu = {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }
    return fc.FlopCounterMode(display=False, custom_mapping=cpu)


def counted_gflops(side: int, backward: bool) -> float:
    model = build("ours").train(backward)
    pixels = torch.randn(8, 3, side, side)
    with flop_counter() as counter:
        out = model(pixels)
        if backward:
            out.sum().backward()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        which, side, backward, repeats = args.child
        print(json.dumps(measure(which, int(side), backward == "1", int(repeats))))
        return
    print(
        "batch 8, 256 latents × 512, 6 self-attention layers, 2 threads, fp32, CPU; "
        f"median of {args.repeats}"
    )
    print(
        f"  {'inputs':>8s} {'pass':>9s} {'HF s':>7s} {'ours s':>7s} {'speed-up':>9s} "
        f"{'HF MB':>7s} {'ours MB':>8s} {'mem ratio':>9s} {'HF net':>7s} {'ours net':>8s} "
        f"{'net ratio':>9s}   {'projected s':>11s} {'net MB':>7s} {'ours ×':>7s}"
    )
    for side in (64, 224):
        for backward in (False, True):
            mode = ["0", "1"][backward]
            theirs = child(["hf", str(side), mode, str(args.repeats)])
            projected = child(["ours-projected", str(side), mode, str(args.repeats)])
            ours = child(["ours", str(side), mode, str(args.repeats)])
            print(
                f"  {side * side:8d} {'fwd+bwd' if backward else 'fwd':>9s} "
                f"{theirs['seconds']:7.3f} {ours['seconds']:7.3f} "
                f"{theirs['seconds'] / ours['seconds']:8.2f}× {theirs['peak_mb']:7.0f} "
                f"{ours['peak_mb']:8.0f} {ours['peak_mb'] / theirs['peak_mb']:8.2f}× "
                f"{theirs['net_mb']:7.0f} {ours['net_mb']:8.0f} "
                f"{ours['net_mb'] / theirs['net_mb']:8.2f}×   "
                f"{projected['seconds']:11.3f} {projected['net_mb']:7.0f} "
                f"{projected['seconds'] / ours['seconds']:6.2f}×"
            )
    print("\nours, forward time against input size M: linear means a constant cost per extra 1k")
    previous = None
    for side in (64, 91, 128, 181, 256):
        seconds = child(["ours", str(side), "0", str(args.repeats)])["seconds"]
        step = ""
        if previous is not None:
            step = f", +{1000 * (seconds - previous[1]) / (side * side - previous[0]):.4f} s per 1k"
        print(f"  M = {side * side:6d}: {seconds:.3f} s{step}")
        previous = (side * side, seconds)
    peak = gemm_gflops()
    print(f"\nfp32 GEMM (2048², 2 threads): {peak:.0f} GFLOP/s")
    print(f"  {'ours':>12s} {'GFLOP':>6s} {'4 KB pages':>16s} {'huge pages':>16s}")
    for side, backward in ((64, False), (64, True), (224, True)):
        flops = counted_gflops(side, backward)
        mode = ["ours", str(side), ["0", "1"][backward], str(args.repeats)]
        cells = []
        for huge in (False, True):
            seconds = child(mode, huge)["seconds"]
            cells.append(f"{seconds:6.3f} s {100 * flops / seconds / peak:4.0f}%")
        name = f"{'fwd+bwd' if backward else 'fwd'} {side}²"
        print(f"  {name:>12s} {flops:6.0f} {cells[0]:>16s} {cells[1]:>16s}")


if __name__ == "__main__":
    main()

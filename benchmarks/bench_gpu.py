"""The hardware this project is for, in one command: the model and the trainer on a GPU, each
figure beside its baseline from the same run.

    .venv/bin/python benchmarks/bench_gpu.py [--repeats 5] [--workers 4 8 14] [--batch 64]
    .venv/bin/python benchmarks/bench_gpu.py --tiny   # the same code on a CPU in a minute

Four tables, on the first CUDA device (on the CPU where there is none):

1. **The model**: `bench_perceiver`'s Perceiver (256 latents × 512, 6 self-attention layers,
   Fourier positions) fwd+bwd at 4k (64²) and 50k (224²) inputs, in fp32 and under bf16
   autocast: step time, bf16's speed-up over fp32, TFLOP/s (counted by
   `torch.utils.flop_counter`), MFU against the device's dense bf16 peak (from a table of
   data-sheet figures; `--peak-tflops` overrides; on a CPU the measured bf16 GEMM rate), the
   SDPA kernel the bf16 step ran (read from the profiler: a fused kernel or the math fallback),
   and bf16's logits against fp32's (largest difference over fp32's largest magnitude).
2. **`torch.compile`**: the bf16 step at 4k compiled against eager, and the compile time.
3. **The trainer** (`bench_train`'s Kinetics-sized clips, materialised) fed by N DataLoader
   workers, against the same model and optimiser on batches already on the device (its
   ceiling), bf16 on a GPU.
4. **Host to device**: a Kinetics batch copied from pageable memory against pinned memory
   (what `pin_memory` buys the loader); only with a CUDA device.
5. **Packing**: `bench_packing`'s steps table (speech of 1 to 10 s, byte strings, pictures of
   mixed shapes) padded against packed, with the peak memory of each.

The whole run takes about 6 minutes on one H100/H200 (most of it building the clips and the
trainer's workers); `--tiny` shrinks every size so that `tests/test_bench_gpu.py` runs it on a
CPU and the script cannot rot.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_packing import steps_table  # sibling scripts
from bench_perceiver import build, flop_counter
from bench_train import ceiling, kinetics_clips, task_config, trainer_rate

from polymodal.datasets.build import build as build_dataset
from polymodal.pipelines import preprocess
from polymodal.pipelines.train.config import TrainConfig
from polymodal.pipelines.train.tasks import dataset_stream, make_task

# Dense bf16 tensor-core peaks from the vendors' data sheets (without sparsity), TFLOP/s.
PEAKS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the full one for a GPU, or `--tiny` for the test suite."""

    sides: tuple[int, ...]
    batch: int
    samples: int
    steps: int
    repeats: int
    workers: tuple[int, ...]

    @classmethod
    def of(cls, args: argparse.Namespace, device: torch.device) -> Sizes:
        if args.tiny:
            return cls((16, 32), 2, 16, 3, 1, (0, 1))
        batch = args.batch or (64 if device.type == "cuda" else 8)
        return cls((64, 224), batch, args.samples, args.steps, args.repeats, tuple(args.workers))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `step` after one warm-up call, the device drained around each."""
    step()
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def peak_tflops(device: torch.device, given: float | None) -> tuple[float, str]:
    """The device's dense bf16 peak and where the figure comes from."""
    if given:
        return given, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for part, peak in PEAKS.items():
            if part in name:
                return peak, f"{name} data sheet"
        raise SystemExit(f"no bf16 peak known for {name}: pass --peak-tflops")
    a = torch.randn(1024, 1024, dtype=torch.bfloat16)
    seconds = timed(lambda: a @ a, device, 5)
    return 2 * 1024**3 / seconds / 1e12, "measured bf16 GEMM"


def fwd_bwd(model: torch.nn.Module, pixels: torch.Tensor, bf16: bool) -> Callable[[], None]:
    def step() -> None:
        with autocast(pixels.device, bf16):
            out = model(pixels)
        out.float().sum().backward()

    return step


def sdpa_kernel(step: Callable[[], None]) -> str:
    """The scaled-dot-product kernels one step ran, by the profiler's op names."""
    with torch.profiler.profile() as prof:
        step()
    names = {e.name for e in prof.events()}
    kernels = sorted(
        n.removeprefix("aten::_scaled_dot_product_")
        for n in names
        if n.startswith("aten::_scaled_dot_product_") and "backward" not in n
    )
    return "+".join(kernels) or "none"


def counted_flops(model: torch.nn.Module, pixels: torch.Tensor) -> float:
    with flop_counter() as counter:
        fwd_bwd(model, pixels, False)()
    return float(counter.get_total_flops())


def model_table(device: torch.device, sizes: Sizes, peak: float, tiny: bool) -> None:
    print(
        f"\n1. the model, fwd+bwd, batch {sizes.batch}, medians of {sizes.repeats}; MFU against "
        f"{peak:.3g} TFLOP/s"
    )
    print(
        f"  {'inputs':>7s} {'fp32 s':>8s} {'bf16 s':>8s} {'× fp32':>7s} {'TFLOP/s':>8s} "
        f"{'MFU':>6s} {'SDPA kernel':>24s} {'bf16 vs fp32':>12s}"
    )
    for side in sizes.sides:
        torch.manual_seed(0)
        model = build("ours", tiny=tiny).to(device).train()
        pixels = torch.randn(sizes.batch, 3, side, side, device=device)
        fp32 = timed(fwd_bwd(model, pixels, False), device, sizes.repeats)
        bf16 = timed(fwd_bwd(model, pixels, True), device, sizes.repeats)
        flops = counted_flops(model, pixels)
        kernel = sdpa_kernel(fwd_bwd(model, pixels, True))
        with torch.no_grad():
            exact = model(pixels).float()
            with autocast(device, True):
                approx = model(pixels).float()
        drift = float((approx - exact).abs().max() / exact.abs().max())
        tflops = flops / bf16 / 1e12
        print(
            f"  {side * side:7d} {fp32:8.4f} {bf16:8.4f} {fp32 / bf16:6.2f}× {tflops:8.3g} "
            f"{tflops / peak:6.1%} {kernel:>24s} {drift:12.2e}",
            flush=True,
        )


def compile_table(device: torch.device, sizes: Sizes, tiny: bool) -> None:
    side = sizes.sides[0]
    torch.manual_seed(0)
    model = build("ours", tiny=tiny).to(device).train()
    pixels = torch.randn(sizes.batch, 3, side, side, device=device)
    eager = timed(fwd_bwd(model, pixels, True), device, sizes.repeats)
    compiled = torch.compile(model)
    started = time.perf_counter()
    fwd_bwd(compiled, pixels, True)()  # the first call compiles
    sync(device)
    compile_s = time.perf_counter() - started
    fast = timed(fwd_bwd(compiled, pixels, True), device, sizes.repeats)
    print(f"\n2. torch.compile, bf16 fwd+bwd at {side * side} inputs")
    print(f"  {'eager s':>8s} {'compiled s':>10s} {'speed-up':>8s} {'compile s':>9s}")
    print(f"  {eager:8.4f} {fast:10.4f} {eager / fast:7.2f}× {compile_s:9.1f}", flush=True)


def kinetics_config(root: Path, data: str, run: str, workers: int, precision: str) -> TrainConfig:
    config = task_config("kinetics", root / data, root / run, workers)
    config.precision = precision
    return config


def trainer_table(root: Path, device: torch.device, sizes: Sizes) -> torch.Tensor:
    """Trainer samples/s per worker count against the in-memory ceiling; returns one
    materialised batch's video, for the transfer table."""
    quiet = {"progress": False, "print_": lambda _: None}
    kinetics_clips(root / "clips", sizes.samples, 4)
    build_dataset(root / "clips", root / "mp4", shuffle=True, shard_samples=64, **quiet)  # type: ignore[arg-type]
    base = task_config("kinetics", root / "mp4", root / "run", 0)
    (root / "config.json").write_text(base.to_json())
    spec = f"materialize:config={root / 'config.json'}"
    preprocess.run(root / "mp4", root / "materialised", [spec], progress=False)
    precision = "bf16" if device.type == "cuda" else "fp32"
    print(
        f"\n3. the trainer on materialised Kinetics-sized clips ({precision}, batch "
        f"{base.data.batch_size}, {sizes.steps} steps), medians of {sizes.repeats}"
    )
    print(f"  {'workers':>7s} {'samples/s':>10s} {'wait':>5s} {'ceiling':>8s} {'× ceiling':>9s}")
    for workers in sizes.workers:
        runs = []
        for repeat in range(sizes.repeats):
            run = f"{workers}-{repeat}"
            top, _ = ceiling(kinetics_config(root, "mp4", f"c{run}", 0, precision), sizes.steps)
            config = kinetics_config(root, "materialised", f"t{run}", workers, precision)
            speed, wait = trainer_rate(config, sizes.steps, 1)
            runs.append((speed, wait, top))
        speed, wait, top = (statistics.median(r[i] for r in runs) for i in range(3))
        cells = f"{speed:10.1f} {wait:5.0%} {top:8.1f} {speed / top:8.2f}×"
        print(f"  {workers:7d} {cells}", flush=True)
    config = kinetics_config(root, "materialised", "batch", 0, precision)
    stream = dataset_stream(config, "data", config.data.train, make_task(config).fields())
    return next(iter(stream)).fields["video"].values


def transfer_table(device: torch.device, video: torch.Tensor, repeats: int) -> None:
    print(f"\n4. host to device, one Kinetics batch's video {tuple(video.shape)} {video.dtype}")
    if device.type != "cuda":
        print("  no CUDA device: not measured")
        return
    pinned = video.pin_memory()
    size = video.numel() * video.element_size()
    pageable_s = timed(lambda: video.to(device), device, repeats)
    pinned_s = timed(lambda: pinned.to(device, non_blocking=True), device, repeats)
    print(f"  {'memory':>8s} {'GB/s':>6s}")
    print(f"  {'pageable':>8s} {size / pageable_s / 1e9:6.1f}")
    print(f"  {'pinned':>8s} {size / pinned_s / 1e9:6.1f}   ({pageable_s / pinned_s:.2f}×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="every size shrunk, for the tests")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=0, help="0: 64 on a GPU, 8 on a CPU")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8, 14])
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["model", "compile", "trainer", "packing"]
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = Sizes.of(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak, source = peak_tflops(device, args.peak_tflops)
    print(f"device: {name}; torch {torch.__version__}; bf16 peak {peak:.1f} TFLOP/s ({source})")
    if "model" not in args.skip:
        model_table(device, sizes, peak, args.tiny)
    if "compile" not in args.skip:
        compile_table(device, sizes, args.tiny)
    if "trainer" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            video = trainer_table(Path(tmp), device, sizes)
        transfer_table(device, video, sizes.repeats)
    if "packing" not in args.skip:
        count, batch = (16, 8) if args.tiny else (96, 16)
        steps_table(count, batch, sizes.repeats, device, title="5. packing")


if __name__ == "__main__":
    main()

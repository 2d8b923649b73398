"""`benchmarks/bench_gpu.py` is run by hand on a GPU a few times a year; here its `--tiny` run
goes through every table on whatever device this machine has, so the script cannot rot."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"


def run_tiny(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(out: str, title: str) -> list[list[str]]:
    """The rows of the table under the line starting with `title` (after its header)."""
    lines = out.split(f"\n{title}", 1)[1].split("\n\n", 1)[0].splitlines()
    return [line.split() for line in lines[2:]]


@pytest.mark.slow
def test_every_table_runs_and_measures_something():
    out = run_tiny()
    model = table_rows(out, "1. the model")
    assert [int(row[0]) for row in model] == [16 * 16, 32 * 32]
    for row in model:
        fp32_s, bf16_s, tflops = float(row[1]), float(row[2]), float(row[4])
        assert fp32_s > 0 and bf16_s > 0 and tflops > 0
        assert "attention" in row[6]  # the SDPA kernel the step ran, by name
        assert float(row[7]) < 0.05  # bf16 logits stay near fp32's
    (eager, compiled, speedup, compile_s) = table_rows(out, "2. torch.compile")[0]
    assert float(compiled) > 0 and float(compile_s) > 0
    assert float(speedup.rstrip("×")) == pytest.approx(float(eager) / float(compiled), rel=0.02)
    trainer = table_rows(out, "3. the trainer")
    assert [int(row[0]) for row in trainer] == [0, 1]
    assert all(float(row[1]) > 0 and 0 < float(row[4].rstrip("×")) < 3 for row in trainer)
    transfer = out.split("\n4. host to device", 1)[1]
    if torch.cuda.is_available():
        assert re.search(r"pinned\s+\d+\.\d", transfer)
    else:
        assert "no CUDA device: not measured" in transfer
    rows = table_rows(out, "5. packing")
    floors = [row for row in rows if row[1] == "floor"]  # each dataset's pass over slivers
    packing = [row for row in rows if row[1] != "floor"]
    assert [row[0] for row in floors] == ["speech", "bytes", "images"]
    assert all(float(row[6].rstrip("%")) > 0 for row in floors)
    forms = [row[1] for row in packing[:5]]
    assert all(row[0] == "speech" for row in packing[:5])
    assert forms == ["padded", "buckets", "budget", "packed", "packed-tokens"]
    assert len(packing) == 13 and all(float(row[4]) > 0 for row in packing)
    assert all(float(row[7]) > 0 for row in packing)  # the bound the floor sets
    padding = [float(row[2].rstrip("%")) for row in packing[:5]]  # padding shares
    assert padding[0] > 10 and padding[1] < padding[0] and padding[3] == padding[4] == 0
    largest = [int(row[3]) for row in packing[:5]]  # a batch's most elements
    assert largest[2] <= largest[1] <= largest[0] and largest[3] < largest[0]
    assert largest[4] > largest[3]  # at padded's elements per step: more samples a batch


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernels need a CUDA device")
def test_on_a_gpu_bf16_runs_a_fused_attention_kernel():
    out = run_tiny("--skip", "compile", "trainer")
    for row in table_rows(out, "1. the model"):
        assert re.search(r"flash|efficient|cudnn", row[6]), row

"""The CUDA kernels (csrc/cuda/kernels.cuh) run on the CPU under a small emulator of the
CUDA execution model (tests/test_ops_cuda_emu: threads, warps, shuffles, barriers, and an
abort on a misaligned 16-byte access), against the pure-PyTorch reference.

This is how CI, which has no GPU, checks the kernels' logic: row walks with unaligned
starts, the online softmax merges, the block reductions, masked and NaN rows, each dtype
pair and launch shape. It cannot see GPU-only behaviour (fast-math exp, memory model,
speed); bench/gpu_check.sh runs the real kernels on a GPU. Needs only g++ and the torch
headers, not the built extension.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.cpp_extension
from test_ops import assert_within_twice_ref, logits

from kga_fast import reference

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "test_ops_cuda_emu"
CODES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}
REFERENCE = {"kl": reference.kl_rows, "jsd": reference.jsd_rows}
FLOOR = 1e-6  # relative to the truth's scale, as for the CPU kernels (the emulator's exp is libm's)
GRAD_FLOOR = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 2e-4, torch.float16: 3e-5}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is needed to build the CUDA emulator")
    binary = tmp_path_factory.mktemp("emu") / "emu"
    include = torch.utils.cpp_extension.include_paths()[0]
    cmd = [
        cxx,
        "-O2",
        "-std=c++20",
        "-pthread",
        f"-I{EMU}",
        f"-I{ROOT / 'csrc' / 'cuda'}",
        f"-I{include}",
    ]
    subprocess.run([*cmd, str(EMU / "main.cpp"), "-o", str(binary)], check=True)
    return binary


def save(path: Path, x: torch.Tensor) -> None:
    x.contiguous().view(torch.uint8).numpy().tofile(path)


def load(path: Path, dtype: torch.dtype, shape) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8).copy()).view(dtype).reshape(shape)


def lay_out(x: torch.Tensor, offset: int, row_stride: int) -> torch.Tensor:
    """A flat buffer holding x's rows at `offset` + i * `row_stride`, NaN everywhere else
    (a kernel reading outside its rows would turn its results into NaN)."""
    n, c = x.shape
    flat = torch.full((offset + n * row_stride,), math.nan, dtype=x.dtype)
    flat[offset:].view(n, row_stride)[:, :c] = x
    return flat


def emulate(binary, tmp: Path, op: str, p, q, grad, *, offsets=(0, 0), pad=(0, 0), want=(True, True)):
    """Runs the forward and then the backward kernel; returns out, dp, dq (None if not wanted)."""
    n, c = p.shape
    strides = (c + pad[0], c + pad[1])
    save(tmp / "p.bin", lay_out(p, offsets[0], strides[0]))
    save(tmp / "q.bin", lay_out(q, offsets[1], strides[1]))
    acc = torch.float64 if p.dtype == torch.float64 else torch.float32
    save(tmp / "grad.bin", grad.to(acc))
    args = [CODES[p.dtype], CODES[q.dtype], n, c, *strides, *offsets, int(want[0]), int(want[1])]
    for mode in ("fwd", "bwd"):
        subprocess.run([str(binary), str(tmp), op, mode, *map(str, args)], check=True, timeout=120)
    out = load(tmp / "out.bin", acc, (n,))
    dp = load(tmp / "dp.bin", p.dtype, (n, c)) if want[0] else None
    dq = load(tmp / "dq.bin", q.dtype, (n, c)) if want[1] else None
    return out, dp, dq


def reference_run(op: str, p, q, grad):
    p = p.detach().clone().requires_grad_(True)
    q = q.detach().clone().requires_grad_(True)
    out = REFERENCE[op](p, q)
    (out * grad.to(out)).sum().backward()
    return out.detach(), p.grad, q.grad


def check(binary, tmp, op, p, q, **kw):
    grad = torch.randn(p.shape[0], generator=torch.Generator().manual_seed(7))
    got = emulate(binary, tmp, op, p, q, grad, **kw)
    want = reference_run(op, p, q, grad)
    truth = reference_run(op, p.double(), q.double(), grad)
    # A NaN row: NaN value and NaN in its gradients (where exactly is not a contract).
    nan_rows = truth[0].isnan()
    assert torch.equal(got[0].isnan(), nan_rows)
    keep = ~nan_rows
    assert_within_twice_ref(
        got[0][keep], want[0][keep], truth[0][keep], FLOOR if p.dtype != torch.float64 else 1e-12
    )
    for g, w, t, x in zip(got[1:], want[1:], truth[1:], (p, q), strict=True):
        if g is not None:
            assert g[nan_rows].isnan().any(dim=1).all()
            assert_within_twice_ref(g[keep], w[keep], t[keep], GRAD_FLOOR[x.dtype])


# (n, c): a warp per row (8 rows per block, the last block part-empty), 256-thread blocks,
# 1024-thread blocks; odd C so that rows start off 16-byte boundaries.
SHAPES = [(11, 3), (19, 203), (2, 4099), (1, 65537)]
DTYPE_PAIRS = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float64, torch.float64),
]


@pytest.mark.parametrize("op", ["kl", "jsd"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_emulated_kernels_match_reference(emulator, tmp_path, op, shape):
    for i, (tp, tq) in enumerate(DTYPE_PAIRS):
        if shape[1] > 10000 and i != 0:
            continue  # 1024 emulated threads per row: once per op, to keep CI quick
        p, q = logits(*shape, dtype=tp, seed=1), logits(*shape, dtype=tq, seed=2)
        check(emulator, tmp_path, op, p, q)


@pytest.mark.parametrize("op", ["kl", "jsd"])
def test_emulated_unaligned_strided_and_partial_gradients(emulator, tmp_path, op):
    p, q = (
        logits(9, 301, dtype=torch.bfloat16, seed=3),
        logits(9, 301, dtype=torch.bfloat16, seed=4),
    )
    check(emulator, tmp_path, op, p, q, offsets=(3, 5), pad=(7, 0))  # no common 16-byte shift for q
    check(emulator, tmp_path, op, p, q, offsets=(1, 1), pad=(15, 15), want=(True, False))
    check(emulator, tmp_path, op, p.float(), q.float(), offsets=(2, 6), pad=(2, 2), want=(False, True))


@pytest.mark.parametrize("op", ["kl", "jsd"])
@pytest.mark.parametrize("c", [50, 5000])
def test_emulated_masked_nan_and_large_rows(emulator, tmp_path, op, c):
    g = torch.Generator().manual_seed(5)
    p, q = logits(10, c, seed=6), logits(10, c, seed=8)
    shared = torch.rand(10, c, generator=g) < 0.3
    p = p.masked_fill(shared | (torch.rand(10, c, generator=g) < 0.2), -math.inf)
    q = q.masked_fill(shared, -math.inf)
    p[0, :] = p[0, :] * 1e3 + 1e4  # large logits and a large offset
    p[3, : c // 2] = -math.inf  # half a row masked, first in the walk
    p[7, 11] = math.nan
    check(emulator, tmp_path, op, p, q)

"""The fused kernels (kga_fast._C via kga_fast.ops) against the pure-PyTorch reference.

Tolerance rule (flash-attention's): against a float64 truth computed on the same input
values, the fused error may be at most twice the reference's own error plus a small floor.
CUDA cases skip without a GPU; bench/gpu_check.sh runs them (`pytest -m cuda`).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from kga_fast import native, reference

pytestmark = pytest.mark.skipif(not native.available(), reason="kga_fast._C is not built")
if native.available():
    from kga_fast import ops

HAS_CUDA = torch.cuda.is_available() and native.has_device("cuda")
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA kernels")],
    ),
]
OPS = (
    {"kl": (ops.kl_rows, reference.kl_rows), "jsd": (ops.jsd_rows, reference.jsd_rows)}
    if native.available()
    else {}
)
SHAPES = [(1, 2), (37, 13), (256, 10), (256, 100), (64, 50257), (4, 262144)]
# Floors for the "at most twice the reference's error" rule, relative to the truth's scale
# (low-precision gradients: both paths round the same float32 value once). CUDA gets 4x
# the floor: its expf/logf differ from the CPU's by a few ulp and it sums in another order.
FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-6, torch.float16: 1e-6, torch.float64: 1e-12}
GRAD_FLOOR = {torch.float32: 1e-6, torch.bfloat16: 2e-4, torch.float16: 3e-5, torch.float64: 1e-12}


def logits(n: int, c: int, *, dtype=torch.float32, device="cpu", scale=3.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * scale).to(device=device, dtype=dtype)


def assert_within_twice_ref(got, ref, truth, floor: float) -> None:
    """|got - truth| <= 2 |ref - truth| + floor * scale, elementwise maxima; NaN where truth is."""
    truth = truth.double()
    assert torch.equal(got.isnan().cpu(), truth.isnan().cpu()), "NaN positions differ"
    ok = ~truth.isnan() & truth.isfinite()
    assert torch.equal(got.double()[~ok & ~truth.isnan()], truth[~ok & ~truth.isnan()]), "infs differ"
    scale = max(1.0, truth[ok].abs().max().item()) if ok.any() else 1.0
    err_got = (got.double() - truth)[ok].abs().max().item() if ok.any() else 0.0
    err_ref = (ref.double() - truth)[ok].abs().max().item() if ok.any() else 0.0
    assert err_got <= 2 * err_ref + floor * scale, f"fused err {err_got:.3g}, reference err {err_ref:.3g}"


def run(fn, p, q, grad_out=None):
    """Value and gradients of sum(grad_out * fn(p, q)) for fresh leaves p, q."""
    p = p.detach().clone().requires_grad_(True)
    q = q.detach().clone().requires_grad_(True)
    out = fn(p, q)
    weight = torch.ones_like(out) if grad_out is None else grad_out.to(out)
    (out * weight).sum().backward()
    return out.detach(), p.grad, q.grad


def check_parity(op: str, p, q, grad_out=None) -> None:
    fused, ref = OPS[op]
    got = run(fused, p, q, grad_out)
    want = run(ref, p, q, grad_out)
    truth = run(ref, p.double(), q.double(), grad_out)
    slack = 4.0 if p.is_cuda else 1.0
    assert got[0].dtype == (torch.float64 if torch.float64 in (p.dtype, q.dtype) else torch.float32)
    assert got[1].dtype == p.dtype and got[2].dtype == q.dtype
    assert_within_twice_ref(got[0], want[0], truth[0], slack * FLOOR[p.dtype])
    for g, w, t, x in zip(got[1:], want[1:], truth[1:], (p, q), strict=True):
        assert_within_twice_ref(g, w, t, slack * GRAD_FLOOR[x.dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["kl", "jsd"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_parity(device, op, shape, dtype):
    if shape[0] * shape[1] > 1 << 20 and dtype != torch.float32 and device == "cpu":
        pytest.skip("big rows are covered in float32 on CPU (time)")
    p = logits(*shape, dtype=dtype, device=device, seed=1)
    q = logits(*shape, dtype=dtype, device=device, seed=2)
    check_parity(op, p, q)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["kl", "jsd"])
@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float16),
        (torch.float64, torch.float64),
        (torch.float64, torch.bfloat16),
    ],
    ids=str,
)
def test_mixed_and_double_dtypes(device, op, dtypes):
    p = logits(33, 130, dtype=dtypes[0], device=device, seed=3)
    q = logits(33, 130, dtype=dtypes[1], device=device, seed=4)
    check_parity(op, p, q, grad_out=torch.randn(33, generator=torch.Generator().manual_seed(5)).to(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["kl", "jsd"])
def test_non_contiguous_inputs(device, op):
    base = logits(40, 301, device=device, seed=6)
    p = base[:, 1:300:2]  # column stride 2
    q = logits(150, 40, device=device, seed=7).t()  # transposed
    check_parity(op, p, q)
    check_parity(op, base[3:, 1:151], base[:-3, 150:300])  # rows start off 16-byte boundaries


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["kl", "jsd"])
def test_masked_classes(device, op):
    """-inf logits: shared masked classes, and classes masked in p only, give finite results."""
    p, q = logits(64, 1000, device=device, seed=8), logits(64, 1000, device=device, seed=9)
    g = torch.Generator().manual_seed(10)
    shared = (torch.rand(64, 1000, generator=g) < 0.3).to(device)
    p_only = (torch.rand(64, 1000, generator=g) < 0.2).to(device)
    p = p.masked_fill(shared | p_only, -math.inf)
    q = q.masked_fill(shared, -math.inf)
    check_parity(op, p, q)
    assert ops.kl_rows(p, q).isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
def test_support_mismatch_gives_inf_kl_and_ln2_jsd(device):
    p = torch.tensor([[0.0, -math.inf], [1.0, 2.0]], device=device)
    q = torch.tensor([[-math.inf, 0.0], [1.0, -math.inf]], device=device)
    assert ops.kl_rows(p, q).tolist() == [math.inf, math.inf]
    assert ops.jsd_rows(p, q)[0].item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["kl", "jsd"])
def test_nan_row_gives_nan_for_that_row_only(device, op):
    p, q = logits(8, 50, device=device, seed=11), logits(8, 50, device=device, seed=12)
    p[2, 7] = math.nan
    q[5, 0] = math.nan
    out, dp, dq = run(OPS[op][0], p, q)
    assert out.isnan().tolist() == [i in (2, 5) for i in range(8)]
    assert dp[2].isnan().any() and dq[5].isnan().any()
    keep = [0, 1, 3, 4, 6, 7]
    assert out[keep].isfinite().all() and dp[keep].isfinite().all() and dq[keep].isfinite().all()
    check_parity(op, p[keep], q[keep])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["kl", "jsd"])
def test_large_logits(device, op):
    """Magnitude 1e4: no overflow, and a large shared offset (softmax-invariant) costs no accuracy."""
    p = logits(16, 2000, device=device, scale=1e4, seed=13)
    q = logits(16, 2000, device=device, scale=1e4, seed=14)
    check_parity(op, p, q)
    near = logits(16, 2000, device=device, seed=15)
    check_parity(op, near + 1e4, near + 0.1 * logits(16, 2000, device=device, seed=16) - 1e4)


@pytest.mark.parametrize("device", DEVICES)
def test_one_class_and_identical_rows(device):
    one = logits(5, 1, device=device)
    assert ops.kl_rows(one, one * 2).abs().max() == 0 and ops.jsd_rows(one, -one).abs().max() == 0
    p = logits(20, 77, device=device)
    assert ops.kl_rows(p, p).abs().max() == 0


@pytest.mark.parametrize("op", ["kl", "jsd"])
def test_gradcheck_float64(op):
    p = logits(3, 5, dtype=torch.float64, seed=17).requires_grad_(True)
    q = logits(3, 5, dtype=torch.float64, seed=18).requires_grad_(True)
    fused = OPS[op][0]
    assert torch.autograd.gradcheck(fused, (p, q))
    assert torch.autograd.gradcheck(fused, (p, q.detach()))  # frozen teacher: grad for p only
    assert torch.autograd.gradcheck(fused, (p.detach(), q))


def test_frozen_teacher_gets_no_gradient_work():
    p, q = logits(4, 9).requires_grad_(True), logits(4, 9)
    out, stats = torch.ops.kga_fast.kl_rows.default(p, q)
    dp, dq = torch.ops.kga_fast.kl_rows_backward.default(torch.ones(4), p, q, out, stats, True, False)
    assert dp.shape == p.shape and dq.numel() == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_cpu_kernels_run_on_all_threads():
    """The CPU kernels split rows with at::parallel_for, whose OpenMP pragma is compiled into
    the extension: a build without -fopenmp runs them on one thread (half speed here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.ops.kga_fast.parallel_threads(64) == 2
    finally:
        torch.set_num_threads(threads)


def test_results_do_not_depend_on_the_thread_count():
    p, q = logits(64, 5000), logits(64, 5000, seed=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [ops.kl_rows(p, q), ops.jsd_rows(p, q)]
        torch.set_num_threads(max(2, threads))
        many = [ops.kl_rows(p, q), ops.jsd_rows(p, q)]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)  # rows are independent: bitwise the same


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["kl_rows", "jsd_rows"])
def test_opcheck(device, name):
    fwd = getattr(torch.ops.kga_fast, name).default
    bwd = getattr(torch.ops.kga_fast, name + "_backward").default
    for grads in [(False, False), (True, False), (True, True)]:
        p = logits(6, 11, device=device, seed=19).requires_grad_(grads[0])
        q = logits(6, 11, device=device, dtype=torch.bfloat16, seed=20).requires_grad_(grads[1])
        torch.library.opcheck(fwd, (p, q))
    p, q = p.detach(), q.detach()
    out, stats = fwd(p, q)
    extra = (out,) if name == "kl_rows" else ()
    for want in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(bwd, (torch.randn(6, device=device), p, q, *extra, stats, *want))


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_is_a_clear_error(device):
    p = logits(4, 6, device=device)
    with pytest.raises(RuntimeError, match="different shapes"):
        ops.kl_rows(p, logits(4, 7, device=device))
    with pytest.raises(RuntimeError, match="empty logits"):
        ops.jsd_rows(p[:0], p[:0])
    with pytest.raises(RuntimeError, match=r"\(N, C\)"):
        ops.kl_rows(p[0], p[0])
    with pytest.raises(RuntimeError, match="float32, float16, bfloat16 or float64"):
        ops.kl_rows(p.long(), p.long())
    with pytest.raises(RuntimeError, match="different devices"):
        ops.kl_rows(p, p.to("meta"))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA kernels")
def test_cuda_one_kernel_launch_per_call():
    from torch.profiler import ProfilerActivity, profile

    p = logits(256, 10, device="cuda").requires_grad_(True)
    q = logits(256, 10, device="cuda")
    ops.kl_rows(p, q).sum().backward()  # warm-up
    for fn in (ops.kl_rows, ops.jsd_rows):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(p.detach(), q)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        assert len(kernels) == 1, [e.name for e in kernels]

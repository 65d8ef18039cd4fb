"""The public loss API (kga_fast.losses) and its pure-PyTorch reference.

Runs with or without the native extension: the reference is checked against float64 closed
forms and invariants; the API's semantics (directions, reductions, impl choice) and, when
the extension is built, the fused path against the reference, loss and gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

from kga_fast import losses, native, reference
from kga_fast.errors import UserError

FUSED_CPU = native.has_device("cpu")
FUSED_DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not FUSED_CPU, reason="kga_fast._C is not built")),
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(
                not (torch.cuda.is_available() and native.has_device("cuda")),
                reason="needs CUDA kernels",
            ),
        ],
    ),
]


def logits(n: int, c: int, *, dtype=torch.float32, scale=3.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * scale).to(dtype)


def closed_form_kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    return [v / sum(e) for v in e]


def test_reference_matches_closed_forms_in_float64():
    a, b = [0.3, -1.2, 2.0], [1.0, 0.5, -0.7]
    pa, pb = softmax(a), softmax(b)
    mid = [(x + y) / 2 for x, y in zip(pa, pb, strict=True)]
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    assert reference.kl_rows(ta, tb).item() == pytest.approx(closed_form_kl(pa, pb), rel=1e-12)
    jsd = (closed_form_kl(pa, mid) + closed_form_kl(pb, mid)) / 2
    assert reference.jsd_rows(ta, tb).item() == pytest.approx(jsd, rel=1e-12)
    # Two classes: KL between Bernoullis with p = sigmoid(logit difference).
    s, t = 1.0 / (1 + math.exp(-0.8)), 1.0 / (1 + math.exp(1.1))
    bern = s * math.log(s / t) + (1 - s) * math.log((1 - s) / (1 - t))
    two = reference.kl_rows(
        torch.tensor([[0.8, 0.0]], dtype=torch.float64),
        torch.tensor([[-1.1, 0.0]], dtype=torch.float64),
    )
    assert two.item() == pytest.approx(bern, rel=1e-12)


@pytest.mark.parametrize(
    "impl",
    ["reference", pytest.param("fused", marks=pytest.mark.skipif(not FUSED_CPU, reason="no _C"))],
)
def test_invariants(impl):
    p, q = logits(50, 30, seed=1), logits(50, 30, seed=2)
    assert losses.kl_rows(p, p, impl=impl).abs().max() < 1e-6
    j_pq, j_qp = losses.jsd_rows(p, q, impl=impl), losses.jsd_rows(q, p, impl=impl)
    assert torch.allclose(j_pq, j_qp, atol=1e-6)
    assert j_pq.min() >= -1e-6 and j_pq.max() <= math.log(2) + 1e-6
    assert losses.kl_rows(p, q, impl=impl).min() >= -1e-6
    disjoint_p = torch.tensor([[0.0, -math.inf]])
    disjoint_q = torch.tensor([[-math.inf, 0.0]])
    assert losses.jsd_rows(disjoint_p, disjoint_q, impl=impl).item() == pytest.approx(math.log(2))


def test_reference_gradcheck_float64():
    p = logits(3, 5, dtype=torch.float64, seed=3).requires_grad_(True)
    q = logits(3, 5, dtype=torch.float64, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(reference.kl_rows, (p, q))
    assert torch.autograd.gradcheck(reference.jsd_rows, (p, q))


def test_reference_masked_classes_have_finite_gradients():
    p, q = logits(4, 6, seed=5).requires_grad_(True), logits(4, 6, seed=6).requires_grad_(True)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 2] = True
    (
        reference.kl_rows(p.masked_fill(mask, -math.inf), q.masked_fill(mask, -math.inf)).sum()
        + reference.jsd_rows(p.masked_fill(mask, -math.inf), q.masked_fill(mask, -math.inf)).sum()
    ).backward()
    assert p.grad.isfinite().all() and q.grad.isfinite().all()
    assert (p.grad[:, 2] == 0).all()


def test_directions_and_reductions_follow_the_definitions():
    s, t = logits(8, 10, seed=7), logits(8, 10, seed=8)
    gap = torch.rand(8, generator=torch.Generator().manual_seed(9))
    kl_st, kl_ts = reference.kl_rows(s, t), reference.kl_rows(t, s)
    pair = losses.alignment_loss(s, t, gap, impl="reference")
    assert pair.item() == pytest.approx((kl_st - gap).abs().mean().item(), rel=1e-6)
    batch = losses.alignment_loss(
        s, t, gap[:5], reduction="batch", direction="teacher_first", impl="reference"
    )
    assert batch.item() == pytest.approx(abs(kl_ts.mean().item() - gap[:5].mean().item()), rel=1e-6)
    assert losses.retain_loss(s, t, impl="reference").item() == pytest.approx(kl_st.mean().item(), rel=1e-6)
    assert losses.retain_loss(s, t, direction="teacher_first", impl="reference").item() == pytest.approx(
        kl_ts.mean().item(), rel=1e-6
    )


def test_sorted_reduction_pairs_the_kth_smallest_kl_with_the_kth_smallest_gap(monkeypatch):
    """Hand-computed: KL (0.5, 0.1, 0.3) against gaps (0.2, 0.6, 0.0). Sorted, (0.1, 0.3, 0.5)
    meets (0.0, 0.2, 0.6): |0.1| + |0.1| + |-0.1| over 3 = 0.1, and the gradient reaches each KL
    through its rank: 0.5 (rank 3, below its gap 0.6) gets -1/3, the others +1/3. Pair gives
    (0.3 + 0.5 + 0.3) / 3, batch |0.3 - 0.8 / 3|."""
    kl = torch.tensor([0.5, 0.1, 0.3], dtype=torch.float64, requires_grad=True)
    monkeypatch.setattr(losses, "directed_kl", lambda *a, **k: kl)
    gap = torch.tensor([0.2, 0.6, 0.0], dtype=torch.float64)
    s = t = torch.zeros(3, 2, dtype=torch.float64)
    loss = losses.alignment_loss(s, t, gap, reduction="sorted")
    assert loss.item() == pytest.approx(0.1, abs=1e-12)
    loss.backward()
    assert kl.grad.tolist() == pytest.approx([-1 / 3, 1 / 3, 1 / 3], abs=1e-12)
    pair = losses.alignment_loss(s, t, gap, reduction="pair")
    assert pair.item() == pytest.approx(1.1 / 3, abs=1e-12)
    batch = losses.alignment_loss(s, t, gap, reduction="batch")
    assert batch.item() == pytest.approx(abs(0.3 - 0.8 / 3), abs=1e-12)


def test_bad_arguments_are_clear_errors():
    s, t = logits(4, 3), logits(4, 3)
    with pytest.raises(UserError, match="unknown loss impl"):
        losses.kl_rows(s, t, impl="triton")
    with pytest.raises(UserError, match="unknown direction"):
        losses.retain_loss(s, t, direction="sideways")
    with pytest.raises(UserError, match="unknown reduction"):
        losses.alignment_loss(s, t, torch.zeros(4), reduction="sum")
    with pytest.raises(ValueError, match="one gap per row"):
        losses.alignment_loss(s, t, torch.zeros(3))
    with pytest.raises(ValueError, match="one shape"):
        losses.kl_rows(s, logits(4, 5))
    with pytest.raises(ValueError, match="empty"):
        losses.jsd_rows(s[:0], t[:0])
    with pytest.raises(ValueError, match="different devices"):
        losses.kl_rows(s, t.to("meta"))


def test_explicit_fused_never_falls_back(monkeypatch):
    s, t = logits(4, 3), logits(4, 3)
    with pytest.raises(UserError, match="impl='fused'"):
        losses.kl_rows(s.to("meta"), t.to("meta"), impl="fused")  # no kernels for this device
    monkeypatch.setattr(losses, "_has_fused_kernels", lambda device_type: False)
    with pytest.raises(UserError, match="impl='fused'"):
        losses.kl_rows(s, t, impl="fused")
    monkeypatch.setenv("KGA_FAST_IMPL", "fused")
    with pytest.raises(UserError, match="impl='fused'"):
        losses.retain_loss(s, t)
    monkeypatch.setenv("KGA_FAST_IMPL", "auto")
    assert losses.resolve_impl(None, s.device) == "reference"


@pytest.mark.parametrize("device", FUSED_DEVICES)
@pytest.mark.parametrize("direction", losses.DIRECTIONS)
@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fused_losses_match_reference(device, direction, reduction, dtype):
    n = 64
    gap = torch.rand(n if reduction != "batch" else 7, generator=torch.Generator().manual_seed(10))
    gap = gap.to(device)
    results = {}
    for impl in ("fused", "reference"):
        s = logits(n, 100, dtype=dtype, seed=11).to(device).requires_grad_(True)
        t = logits(n, 100, dtype=dtype, seed=12).to(device).requires_grad_(True)
        loss = losses.alignment_loss(s, t, gap, reduction=reduction, direction=direction, impl=impl)
        loss = 2.0 * (
            loss + 0.5 * losses.retain_loss(s, t, direction=direction, impl=impl)
        )  # not the last layer
        loss.backward()
        results[impl] = (loss.detach().double(), s.grad.double(), t.grad.double())
    tol = {
        torch.float32: 1e-5 if device == "cpu" else 4e-5,
        torch.float64: 1e-10,
        torch.bfloat16: 1e-2,
    }[dtype]
    for got, want in zip(results["fused"], results["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.skipif(not FUSED_CPU, reason="kga_fast._C is not built")
def test_gradcheck_losses_float64_fused():
    s = logits(4, 6, dtype=torch.float64, seed=13).requires_grad_(True)
    t = logits(4, 6, dtype=torch.float64, seed=14)
    gap = torch.tensor([0.1, 5.0, 0.2, 7.0], dtype=torch.float64)  # away from |KL - gap| = 0
    assert torch.autograd.gradcheck(lambda x: losses.alignment_loss(x, t, gap, impl="fused"), (s,))
    assert torch.autograd.gradcheck(lambda x: losses.retain_loss(x, t, impl="fused"), (s,))


@pytest.mark.skipif(not FUSED_CPU, reason="kga_fast._C is not built")
def test_autocast_mixed_dtype_logits():
    """Under autocast one model gives bfloat16 logits, a float32 one float32: both paths agree."""
    torch.manual_seed(15)
    student, teacher = torch.nn.Linear(16, 10), torch.nn.Linear(16, 10)
    x, gap = torch.randn(32, 16), torch.rand(32)
    grads = {}
    for impl in ("fused", "reference"):
        student.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s = student(x)
            with torch.autocast("cpu", enabled=False):
                t = teacher(x)
            loss = losses.alignment_loss(s, t, gap, impl=impl) + losses.retain_loss(s, t, impl=impl)
        assert s.dtype == torch.bfloat16 and t.dtype == torch.float32 and loss.dtype == torch.float32
        loss.backward()
        grads[impl] = (loss.item(), student.weight.grad.clone())
    assert grads["fused"][0] == pytest.approx(grads["reference"][0], rel=1e-5)
    torch.testing.assert_close(grads["fused"][1], grads["reference"][1], rtol=2e-2, atol=1e-3)


@pytest.mark.skipif(not FUSED_CPU, reason="kga_fast._C is not built")
def test_torch_compile_fullgraph():
    """One compile (slow on 2 cores) covering both losses on both backends, no graph break."""

    def step(s_fused, s_ref, t, gap):
        fused = losses.alignment_loss(s_fused, t, gap, impl="fused") + losses.retain_loss(
            s_fused, t, impl="fused"
        )
        ref = losses.alignment_loss(s_ref, t, gap, impl="reference") + losses.retain_loss(
            s_ref, t, impl="reference"
        )
        return fused, ref

    s, t, gap = logits(8, 10, seed=16), logits(8, 10, seed=17), torch.rand(8)
    s_fused, s_ref = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    fused, ref = torch.compile(step, fullgraph=True)(s_fused, s_ref, t, gap)
    (fused + ref).backward()  # one compiled backward gives each student its own gradient
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(s_fused.grad, s_ref.grad, rtol=1e-5, atol=1e-6)

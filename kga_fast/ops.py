"""Python side of the fused KGA ops in kga_fast._C (csrc/): typed wrappers, fake kernels
for torch.compile, and the autograd formulas, as pytorch/extension-cpp does.

Schemas (csrc/ops.cpp); `stats` are per-row softmax statistics that the backward reuses:
  kga_fast::kl_rows(p, q) -> (out (N,), stats (N, 4))
  kga_fast::kl_rows_backward(grad_out, p, q, out, stats, grad_p, grad_q) -> (dp, dq)
  kga_fast::jsd_rows(p, q) -> (out (N,), stats (N, 6))
  kga_fast::jsd_rows_backward(grad_out, p, q, stats, grad_p, grad_q) -> (dp, dq)
`out` and `stats` are float32 (float64 when an input is float64); each gradient has its
input's dtype and is an empty tensor when not asked for. The forward reads the logits and
keeps no (N, C) tensor; the backward recomputes softmax in one pass and writes the
gradient already multiplied by grad_out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kga_fast import native

if not native.available():
    raise ImportError(f"kga_fast._C is not built: {native.import_error()}")

KL_STATS = 4  # max_p, log Z_p, max_q, log Z_q
JSD_STATS = 6  # the same, then KL(P||M), KL(Q||M)


def kl_rows(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(softmax(p) || softmax(q)) per row: (N, C), (N, C) -> (N,), fused kernels."""
    return torch.ops.kga_fast.kl_rows.default(p_logits, q_logits)[0]


def jsd_rows(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Jensen-Shannon divergence per row, in [0, ln 2]: (N, C), (N, C) -> (N,), fused kernels."""
    return torch.ops.kga_fast.jsd_rows.default(p_logits, q_logits)[0]


def _acc_dtype(p: Tensor, q: Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (p.dtype, q.dtype) else torch.float32


def _fake_forward(p: Tensor, q: Tensor, width: int) -> tuple[Tensor, Tensor]:
    torch._check(p.dim() == 2 and p.shape == q.shape, lambda: "logits of different shapes")
    torch._check(p.device == q.device, lambda: "logits on different devices")
    acc = _acc_dtype(p, q)
    return p.new_empty((p.shape[0],), dtype=acc), p.new_empty((p.shape[0], width), dtype=acc)


def _fake_grads(p: Tensor, q: Tensor, grad_p: bool, grad_q: bool) -> tuple[Tensor, Tensor]:
    dp = p.new_empty(p.shape) if grad_p else p.new_empty((0,))
    dq = q.new_empty(q.shape) if grad_q else q.new_empty((0,))
    return dp, dq


@torch.library.register_fake("kga_fast::kl_rows")
def _kl_rows_fake(p, q):
    return _fake_forward(p, q, KL_STATS)


@torch.library.register_fake("kga_fast::jsd_rows")
def _jsd_rows_fake(p, q):
    return _fake_forward(p, q, JSD_STATS)


@torch.library.register_fake("kga_fast::kl_rows_backward")
def _kl_rows_backward_fake(grad_out, p, q, out, stats, grad_p, grad_q):
    return _fake_grads(p, q, grad_p, grad_q)


@torch.library.register_fake("kga_fast::jsd_rows_backward")
def _jsd_rows_backward_fake(grad_out, p, q, stats, grad_p, grad_q):
    return _fake_grads(p, q, grad_p, grad_q)


def _setup_context(ctx, inputs, output) -> None:
    p, q = inputs
    out, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(p, q, out, stats)


def _kl_backward(ctx, grad_out: Tensor, _grad_stats: Tensor | None):
    p, q, out, stats = ctx.saved_tensors
    want_p, want_q = ctx.needs_input_grad
    dp, dq = torch.ops.kga_fast.kl_rows_backward.default(grad_out, p, q, out, stats, want_p, want_q)
    return (dp if want_p else None), (dq if want_q else None)


def _jsd_backward(ctx, grad_out: Tensor, _grad_stats: Tensor | None):
    p, q, _out, stats = ctx.saved_tensors
    want_p, want_q = ctx.needs_input_grad
    dp, dq = torch.ops.kga_fast.jsd_rows_backward.default(grad_out, p, q, stats, want_p, want_q)
    return (dp if want_p else None), (dq if want_q else None)


torch.library.register_autograd("kga_fast::kl_rows", _kl_backward, setup_context=_setup_context)
torch.library.register_autograd("kga_fast::jsd_rows", _jsd_backward, setup_context=_setup_context)

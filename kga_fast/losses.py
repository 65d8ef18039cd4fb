"""The KGA losses (public API). All take logits (N, C) and return float32 (float64 when an
input is float64, so that gradcheck works).

- kl_rows(p, q)   -> (N,)  KL(softmax(p) || softmax(q))
- jsd_rows(p, q)  -> (N,)  true Jensen-Shannon divergence, in [0, ln 2]
- alignment_loss(student, teacher, gap) -> scalar   L_a, paper eq. (2)
- retain_loss(student, teacher)         -> scalar   L_r, paper eq. (3)

`impl` chooses the backend: "fused" (kga_fast._C kernels), "reference" (kga_fast.reference),
or None, which reads KGA_FAST_IMPL (default "auto": fused when the extension has kernels
for the tensors' device, else reference). An explicit "fused" never falls back silently.
"""

from __future__ import annotations

import os

import torch

from kga_fast import native, reference
from kga_fast.errors import UserError

IMPLS = ("auto", "fused", "reference")
DIRECTIONS = ("student_first", "teacher_first")
REDUCTIONS = ("pair", "batch", "sorted")


@torch.compiler.assume_constant_result
def _has_fused_kernels(device_type: str) -> bool:
    # A dispatcher query torch.compile cannot trace; its answer is fixed once _C is loaded.
    return native.has_device(device_type)


def resolve_impl(impl: str | None, device: torch.device) -> str:
    """'fused' or 'reference' for tensors on `device`."""
    choice = impl if impl is not None else os.environ.get("KGA_FAST_IMPL", "auto")
    if choice not in IMPLS:
        raise UserError(f"unknown loss impl {choice!r}; choose one of {', '.join(IMPLS)}")
    if choice == "reference":
        return "reference"
    if _has_fused_kernels(device.type):
        return "fused"
    if choice == "auto":
        return "reference"
    why = native.import_error() or f"it has no kernels for device {device.type!r}"
    raise UserError(f"impl='fused' asked for, but the native extension is unavailable: {why}")


def _check_pair(p: torch.Tensor, q: torch.Tensor) -> None:
    if p.dim() != 2 or p.shape != q.shape:
        raise ValueError(
            f"expected two (N, C) logit tensors of one shape, got {tuple(p.shape)} and {tuple(q.shape)}"
        )
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"empty logits of shape {tuple(p.shape)}")
    if p.device != q.device:
        raise ValueError(f"logits on different devices: {p.device} and {q.device}")


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor, *, impl: str | None = None) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per row, natural log: (N, C), (N, C) -> (N,) float32."""
    _check_pair(p_logits, q_logits)
    if resolve_impl(impl, p_logits.device) == "fused":
        from kga_fast import ops

        return ops.kl_rows(p_logits, q_logits)
    return reference.kl_rows(p_logits, q_logits)


def jsd_rows(p_logits: torch.Tensor, q_logits: torch.Tensor, *, impl: str | None = None) -> torch.Tensor:
    """Jensen-Shannon divergence per row (nats): (N, C), (N, C) -> (N,) float32."""
    _check_pair(p_logits, q_logits)
    if resolve_impl(impl, p_logits.device) == "fused":
        from kga_fast import ops

        return ops.jsd_rows(p_logits, q_logits)
    return reference.jsd_rows(p_logits, q_logits)


def directed_kl(student, teacher, direction: str, impl: str | None = None) -> torch.Tensor:
    """(N,) KL(student || teacher) (student_first, the paper) or KL(teacher || student)."""
    if direction == "student_first":
        return kl_rows(student, teacher, impl=impl)
    if direction == "teacher_first":
        return kl_rows(teacher, student, impl=impl)
    raise UserError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")


def alignment_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    gap: torch.Tensor,
    *,
    reduction: str = "pair",
    direction: str = "student_first",
    impl: str | None = None,
) -> torch.Tensor:
    """L_a: |KL(A*(y) || A_f(y)) - gap| with gap = KL(A_d(z) || A_n(z)) on the paired D_n batch.

    reduction="pair": mean_i |KL_i - gap_i| (paper eq. 2, gap of shape (N,));
    reduction="batch": |mean_i KL_i - mean_j gap_j| (the original KGA code);
    reduction="sorted": mean_k |KL_(k) - gap_(k)| over the sorted values (the k-th smallest KL
    against the k-th smallest gap): the 1-D Wasserstein distance between the two batches' gaps,
    so that the distribution of KL(A* || A_f) on D_f is matched to that of the gaps on D_n, not
    one statistic of it (pair is minimized near the gaps' median, batch at their mean).
    """
    kl = directed_kl(student_logits, teacher_logits, direction, impl)
    gap = gap.detach().to(kl.dtype)
    if reduction in ("pair", "sorted"):
        if gap.shape != kl.shape:
            raise ValueError(
                f"reduction={reduction!r} needs one gap per row: gap {tuple(gap.shape)} vs {tuple(kl.shape)}"
            )
        if reduction == "sorted":  # the gradient reaches each KL through its rank's position
            kl, gap = kl.sort().values, gap.sort().values
        return (kl - gap).abs().mean()
    if reduction == "batch":
        if gap.dim() != 1 or gap.numel() == 0:
            raise ValueError(f"reduction='batch' needs a non-empty 1-D gap, got shape {tuple(gap.shape)}")
        return (kl.mean() - gap.mean()).abs()
    raise UserError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")


def retain_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    direction: str = "student_first",
    impl: str | None = None,
) -> torch.Tensor:
    """L_r: mean_i KL(A*(x) || A_d(x)) (paper eq. 3), or teacher-first (the original code)."""
    return directed_kl(student_logits, teacher_logits, direction, impl).mean()

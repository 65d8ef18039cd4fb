"""Pure-PyTorch reference of the KGA divergences: short and obviously right.

The fused kernels (csrc/) are checked against these functions. All take logits of
shape (N, C), compute in float32 (float64 stays float64) and return per-row values.
"""

from __future__ import annotations

import torch


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _plogr(p: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """p * log_ratio with 0 * anything = 0 (masked classes), NaN kept as NaN.

    The log ratio is masked before the product, not the product after it, so that the
    gradient at p == 0 is 0 too (0 * -inf in a backward would make the whole row NaN).
    """
    return p * torch.where(p == 0, torch.zeros_like(log_ratio), log_ratio)


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per row, natural log: (N, C) x (N, C) -> (N,)."""
    log_p = torch.log_softmax(_upcast(p_logits), dim=-1)
    log_q = torch.log_softmax(_upcast(q_logits), dim=-1)
    return _plogr(log_p.exp(), log_p - log_q).sum(-1)


def jsd_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(KL(P||M) + KL(Q||M)) / 2 with M = (P + Q) / 2, per row, in [0, ln 2]."""
    log_p = torch.log_softmax(_upcast(p_logits), dim=-1)
    log_q = torch.log_softmax(_upcast(q_logits), dim=-1)
    p, q = log_p.exp(), log_q.exp()
    m = 0.5 * (p + q)
    # m == 0 only where p == q == 0, whose terms are 0: log(1) there keeps the gradient finite.
    log_m = torch.log(torch.where(m == 0, torch.ones_like(m), m))
    return 0.5 * (_plogr(p, log_p - log_m) + _plogr(q, log_q - log_m)).sum(-1)

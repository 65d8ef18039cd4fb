"""Pure-PyTorch reference of the KGA divergences: short and obviously right.

The fused kernels (csrc/) are checked against these functions. All take logits of
shape (N, C), compute in float32 (float64 stays float64) and return per-row values.
"""

from __future__ import annotations

import math

import torch


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _plogr(p: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """p * log_ratio with 0 * anything = 0 (masked classes), NaN kept as NaN."""
    return torch.where(p == 0, torch.zeros_like(p), p * log_ratio)


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per row, natural log: (N, C) x (N, C) -> (N,)."""
    log_p = torch.log_softmax(_upcast(p_logits), dim=-1)
    log_q = torch.log_softmax(_upcast(q_logits), dim=-1)
    return _plogr(log_p.exp(), log_p - log_q).sum(-1)


def jsd_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(KL(P||M) + KL(Q||M)) / 2 with M = (P + Q) / 2, per row, in [0, ln 2]."""
    log_p = torch.log_softmax(_upcast(p_logits), dim=-1)
    log_q = torch.log_softmax(_upcast(q_logits), dim=-1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    return 0.5 * (_plogr(log_p.exp(), log_p - log_m) + _plogr(log_q.exp(), log_q - log_m)).sum(-1)

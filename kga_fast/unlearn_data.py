"""What an unlearning method reads: the images of D_r, D_f, D_n (uint8, as kga_fast.data keeps
them), the dataset's normalization, and for the baselines the labels. One home for the type, so
that kga_fast.unlearn and kga_fast.cache, which both read it, need not import each other."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class UnlearnData:
    """What unlearning reads: uint8 (N, C, 32, 32) images of D_r, D_f, D_n (no labels: every
    KGA loss compares model outputs) and the dataset's normalization. For KGA, `forget` holds
    the D_f images that L_a aligns on: those A_f was trained on (all of D_f, or the matched
    helper recipe's part of it)."""

    retain: torch.Tensor
    forget: torch.Tensor
    new: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class MethodData(UnlearnData):
    """UnlearnData plus the labels the baselines train on (KGA's unlearn accepts it as is)."""

    retain_labels: torch.Tensor  # (N_r,) int64
    forget_labels: torch.Tensor  # (N_f,) int64

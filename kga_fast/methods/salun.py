"""SalUn: Fan, Liu, Zhang, Wong, Wei, Liu, "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency", ICLR 2024.

A saliency mask from the forget loss's gradient at A_d, g = sum over D_f of grad CE(A_d(x), y):
m = 1(|g| >= gamma), gamma chosen so that the share `saliency` (0.5, the paper's median) of the
trainable weights with the largest |g| is updated; then random labels' training
(kga_fast.methods.random_label) with every gradient multiplied by m, and the masked-out weights
restored after each step (so weight decay and momentum leave them exactly at A_d's values, as the
reference code's RL does).
"""

from __future__ import annotations

import torch

from kga_fast.methods.common import Method
from kga_fast.methods.random_label import union_loader
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training, cross_entropy, loss_gradient


def saliency_mask(
    grads: list[torch.Tensor], params: list[torch.nn.Parameter], share: float
) -> dict[torch.nn.Parameter, torch.Tensor]:
    """{param: bool tensor}, True for the `share` of all weights with the largest |grad|.

    Exactly `keep` weights by rank, as the reference's argsort does: a threshold would let ties
    in. Most |g| can tie at exactly 0 (ReLU channels dead on all of D_f: 64% of A_d's weights on
    the quick Fashion-MNIST run), and ">= the median" then kept every weight. Stable order: ties
    go to the earlier weight, the same on every process."""
    flat = torch.cat([g.flatten() for g in grads]).abs()
    keep = max(1, round(share * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.argsort(flat, descending=True, stable=True)[:keep]] = True
    mask, offset = {}, 0
    for p in params:
        mask[p] = chosen[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return mask


def setup(ctx: Setup) -> Training:
    grads = loss_gradient(ctx, [(ctx.data.forget, ctx.data.forget_labels, 1.0)])
    mask = saliency_mask(grads, ctx.params, ctx.cfg.saliency)
    start = {p: p.detach().clone() for p in ctx.params}  # A_d's weights, kept where m is 0
    return Training(
        [Pass("loss", (union_loader(ctx),), cross_entropy)],
        grad_scale=mask,
        pinned={p: (m, start[p]) for p, m in mask.items()},
    )


METHOD = Method(
    "salun",
    "random labels through a saliency mask (SalUn)",
    BaselineConfig("salun", lr=0.01, epochs=2, saliency=0.5),
    fields=("saliency",),
    setup=setup,
)

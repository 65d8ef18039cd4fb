"""FCS, the first place of the NeurIPS 2023 unlearning challenge (Deep Unlearn's "kgltop1"):
forget, contrast, then repair on D_r.

1. One pass over D_f pulling A*'s outputs to uniform: KL(U || softmax(A*(x))), batch mean (SGD
   at `uniform_lr`, no weight decay).
2. Each epoch, a contrast pass: per step a D_f batch and a D_r batch; the logits of each forget
   image against the detached logits of every retain image, s = A*(x_f) A*(x_r)^T / T, and the
   loss -mean(log_softmax(s, over the retain images)): a forget image's output is pushed to
   resemble no retain image in particular (SGD at `forget_lr`, cosine over the contrast steps,
   no weight decay). Then a pass of CE on D_r (SGD at `lr`, constant, `weight_decay`).

Three SGDs, as the original has them (each its own momentum). Its hyperparameters: batch 256, 8
epochs, T 1.15, momentum 0.9; the uniform pass at 0.005, the contrast at 3e-4 (cosine to 1e-6;
here to 0), the repair at 0.001 x batch / 64 = 0.004 with weight decay 0.01. The original
zips D_f with D_r (the shorter sets the steps); here the D_f stream sets them and D_r's is
cycled beside it, the same while D_f is the smaller set. The retain logits are computed without
a graph (the original's forward-then-detach, BatchNorm statistics updated alike) and, under
DDP, gathered from every process: each forget image is contrasted with the global batch's retain
images, as in one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kga_fast.methods.common import Method
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training, cross_entropy


def uniform_kl(logits: torch.Tensor) -> torch.Tensor:
    """KL(U || softmax(logits)) per row, batch mean: 0 exactly when every row is uniform."""
    uniform = torch.full_like(logits, 1.0 / logits.shape[1])
    return F.kl_div(F.log_softmax(logits, dim=1), uniform, reduction="batchmean")


def contrast(forget_logits: torch.Tensor, retain_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """-mean log_softmax over the retain images of (forget @ retain^T / T); (Bf, K), (Br, K)."""
    return -F.log_softmax(forget_logits @ retain_logits.T / temperature, dim=1).mean()


def setup(ctx: Setup) -> Training:
    cfg = ctx.cfg

    def to_uniform(forward, forget):
        return uniform_kl(forward(forget[0]))

    def forget_contrast(forward, forget, retain):
        with torch.no_grad():
            r = forward(retain[0])
            if ctx.accelerator.num_processes > 1:  # against the global batch's retain images
                r = ctx.accelerator.gather(r)
        return contrast(forward(forget[0]), r, cfg.temperature)

    forget = ctx.forget_loader(1)
    return Training(
        [
            Pass("uniform", (forget,), to_uniform, epochs=1, optimizer="uniform"),
            Pass("contrast", (forget, ctx.retain_loader(2)), forget_contrast, optimizer="contrast"),
            Pass("retain", (ctx.retain_loader(0),), cross_entropy),
        ],
        optimizers={
            "uniform": dict(lr=cfg.uniform_lr, weight_decay=0.0, schedule="constant"),
            "contrast": dict(lr=cfg.forget_lr, weight_decay=0.0, schedule="cosine"),
        },
    )


METHOD = Method(
    "fcs",
    "D_f's outputs to uniform, then a forget-versus-retain contrast and CE on D_r (FCS, the challenge's 1st)",
    BaselineConfig("fcs", lr=0.004, weight_decay=0.01, batch_size=256, epochs=8, temperature=1.15),
    fields=("temperature", "uniform_lr", "forget_lr"),
    setup=setup,
)

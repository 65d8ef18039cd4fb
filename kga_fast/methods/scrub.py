"""SCRUB: Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023.

Teacher A_d, student a copy of A_d. Each epoch, while epoch < max_epochs, one max-pass over D_f
maximizing KL(teacher || student) at temperature T; then one min-pass over D_r minimizing
gamma * CE + alpha * KL(teacher || student). The KL is the reference DistillKL:
KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean. Hyperparameters are the paper's CIFAR ones
(SGD lr 5e-4, momentum 0.9, wd 5e-4, T 4, alpha 0.001, gamma 0.99, forget batch 32) with fewer
epochs; the learning-rate decay steps are left out. The teacher runs once: its logits on D_r
and D_f are cached and indexed per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kga_fast.losses import kl_rows
from kga_fast.methods.common import Method
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    return kl_rows(teacher / t, student / t).mean() * t * t  # KL(teacher || student) * T^2


def setup(ctx: Setup) -> Training:
    cfg, data = ctx.cfg, ctx.data
    teacher = {"retain": ctx.teacher_logits(data.retain), "forget": ctx.teacher_logits(data.forget)}

    def max_step(forward, batch):
        x, _, idx = batch
        return -distill_kl(forward(x), teacher["forget"][idx], cfg.temperature)

    def min_step(forward, batch):
        x, y, idx = batch
        out = forward(x)
        kd = distill_kl(out, teacher["retain"][idx], cfg.temperature)
        return cfg.gamma * F.cross_entropy(out, y) + cfg.alpha * kd

    return Training(
        [
            Pass("max_step", (ctx.forget_loader(1, cfg.forget_batch_size),), max_step, cfg.max_epochs),
            Pass("min_step", (ctx.retain_loader(0),), min_step),
        ]
    )


METHOD = Method(
    "scrub",
    "max-steps away from A_d on D_f, min-steps towards it on D_r (SCRUB)",
    BaselineConfig("scrub", lr=5e-4, epochs=3, max_epochs=2),
    fields=("forget_batch_size", "max_epochs", "temperature", "alpha", "gamma"),
    setup=setup,
)

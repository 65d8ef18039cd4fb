"""Random labels ("RL", as SalUn trains it): cross-entropy on one shuffled union of D_r with its
true labels and D_f with random wrong labels (each D_f image keeps its wrong label for the run)."""

from __future__ import annotations

import torch

from kga_fast.data import DeviceLoader
from kga_fast.methods.common import Method
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training, cross_entropy


def union_loader(ctx: Setup) -> DeviceLoader:
    """D_f with a wrong label per image, (y + U{1..K-1}) mod K, seeded by the run's seed, and D_r."""
    data, k = ctx.data, ctx.num_classes
    shift = torch.randint(1, k, (len(data.forget),), generator=torch.Generator().manual_seed(ctx.seed))
    wrong = (data.forget_labels + shift) % k  # (N_f,)
    images = torch.cat([data.forget, data.retain])
    return ctx.loader(0, images, torch.cat([wrong, data.retain_labels]), ctx.cfg.batch_size)


def setup(ctx: Setup) -> Training:
    return Training([Pass("loss", (union_loader(ctx),), cross_entropy)])


METHOD = Method(
    "random_label",
    "random wrong labels on D_f, true ones on D_r",
    BaselineConfig("random_label", lr=0.01, epochs=2),
    setup=setup,
)

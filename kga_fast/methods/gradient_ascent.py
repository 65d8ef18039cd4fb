"""Gradient ascent ("GA"): minus the cross-entropy on D_f, nothing on D_r."""

from __future__ import annotations

from kga_fast.methods.common import Method
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training, cross_entropy


def ascent(forward, batch):
    return -cross_entropy(forward, batch)


def setup(ctx: Setup) -> Training:
    return Training([Pass("loss", (ctx.forget_loader(0),), ascent)])


METHOD = Method(
    "gradient_ascent",
    "gradient ascent on D_f",
    BaselineConfig("gradient_ascent", lr=1e-4, epochs=2),
    setup=setup,
)

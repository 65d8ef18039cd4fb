"""Fine-tuning ("FT" of Unlearn-Sparse and SalUn): cross-entropy on D_r, nothing on D_f."""

from __future__ import annotations

from kga_fast.methods.common import Method
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training, cross_entropy


def setup(ctx: Setup) -> Training:
    return Training([Pass("loss", (ctx.retain_loader(0),), cross_entropy)])


METHOD = Method("finetune", "fine-tune on D_r", BaselineConfig("finetune", lr=0.01, epochs=3), setup=setup)

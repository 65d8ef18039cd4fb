"""CT, the fifth place of the NeurIPS 2023 unlearning challenge (Deep Unlearn's "kgltop5"):
transpose every trainable conv kernel of A_d (swap its two spatial axes), then fine-tune on D_r.

The transposed kernels keep A_d's weights but no longer its function: what the network had
memorized of D_f is damaged, and fine-tuning on D_r rebuilds what D_r supports. The original
hyperparameters: SGD lr 0.001, momentum 0.9, weight decay 5e-4, batch 64, 3 epochs, cosine.
Frozen blocks are not touched (they stay A_d's, as freezing promises).
"""

from __future__ import annotations

import torch

from kga_fast.errors import UserError
from kga_fast.methods.common import Method
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training, cross_entropy


@torch.no_grad()
def transpose_kernels(model: torch.nn.Module, who: str = "ct") -> int:
    """Swap the spatial axes of every trainable Conv2d kernel in place; returns how many.
    UserError, naming `who` wants the damage, when there is none (every block frozen)."""
    count = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:
            kh, kw = m.weight.shape[2:]
            if kh != kw:
                raise UserError(f"ct transposes square kernels only, found {kh}x{kw}")
            m.weight.copy_(m.weight.transpose(2, 3).clone())
            count += 1
    if count == 0:
        raise UserError(f"{who}: no trainable conv layer to transpose (every block frozen?)")
    return count


def setup(ctx: Setup) -> Training:
    transpose_kernels(ctx.model)
    return Training([Pass("loss", (ctx.retain_loader(0),), cross_entropy)])


METHOD = Method(
    "ct",
    "transpose every conv kernel, fine-tune on D_r (CT, the challenge's 5th)",
    BaselineConfig("ct", lr=0.001, batch_size=64, epochs=3, schedule="cosine"),
    setup=setup,
)

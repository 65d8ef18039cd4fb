"""NegGrad+: Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine
Unlearning", NeurIPS 2023 (the baseline of its small-scale notebook), which Deep Unlearn
(arXiv 2410.01276) recommends as the simple baseline to beat once tuned.

Each step takes a D_r batch and a D_f batch (the D_f stream cycled) and descends
alpha * CE(D_r) - (1 - alpha) * CE(D_f); an epoch is a pass over D_r. The reference notebook's
hyperparameters: SGD lr 0.01, momentum 0.9, alpha 0.95, batch 256, 10 epochs, its L2 pull
towards A_d at weight 0. Here weight decay is SGD's (towards 0), as in every baseline, and
BatchNorm trains (the notebook keeps it in eval mode).
"""

from __future__ import annotations

import torch.nn.functional as F

from kga_fast.methods.common import Method
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training


def setup(ctx: Setup) -> Training:
    alpha = ctx.cfg.retain_weight

    def loss(forward, retain, forget):
        (xr, yr, _), (xf, yf, _) = retain, forget
        return alpha * F.cross_entropy(forward(xr), yr) - (1 - alpha) * F.cross_entropy(forward(xf), yf)

    return Training([Pass("loss", (ctx.retain_loader(0), ctx.forget_loader(1)), loss)])


METHOD = Method(
    "neggrad_plus",
    "descend on D_r, ascend on D_f, weighted alpha and 1 - alpha (NegGrad+)",
    BaselineConfig("neggrad_plus", lr=0.01, weight_decay=0.0, batch_size=256, epochs=10, retain_weight=0.95),
    fields=("retain_weight",),
    setup=setup,
)

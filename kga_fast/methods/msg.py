"""MSG, the second place of the NeurIPS 2023 unlearning challenge (Deep Unlearn's "kgltop2").

At A_d, g = grad [CE on a random D_r sample the size of D_f - CE on D_f] (summed over images).
In each trainable conv layer the share `reset_share` (0.3) of weights with the smallest |g| is
re-initialized (Kaiming normal, fan-out, as a fresh ResNet's convs), and the gradients of that
layer's other weights are scaled by `kept_grad_scale` (0.1) for the whole run; then fine-tuning
on D_r (a SNIP-style saliency, as the reference computes it: the weights that matter to the
retain-minus-forget loss are kept, the rest start afresh). `reset_saliency` "high" (ours, not
the challenge's) re-initializes the share with the largest |g| instead: the weights that matter
most to that loss. Measured, it does not take out more of A_d's per-image memory of D_f
(bench/RESULTS.md, "Issue 17, ninth session"). The original hyperparameters: SGD lr 0.001,
momentum 0.9, weight decay 5e-4, batch 64, 5 epochs, a learning rate that rises linearly to its
peak at mid-run and falls back ("triangle"; the original steps it per epoch, here per step). The
gradient is taken in eval mode (BatchNorm statistics untouched), seeded, and the same on every
process.
"""

from __future__ import annotations

import torch

from kga_fast.errors import UserError
from kga_fast.methods.common import Method, stream_seed
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training, cross_entropy, loss_gradient


def setup(ctx: Setup) -> Training:
    data, cfg = ctx.data, ctx.cfg
    g = torch.Generator().manual_seed(stream_seed(ctx.seed, 5))
    sample = torch.randperm(len(data.retain), generator=g)[: len(data.forget)]
    terms = [(data.retain[sample], data.retain_labels[sample], 1.0), (data.forget, data.forget_labels, -1.0)]
    grads = dict(zip(ctx.params, loss_gradient(ctx, terms), strict=True))
    scale = {}
    with torch.no_grad():
        for m in ctx.model.modules():
            w = m.weight if isinstance(m, torch.nn.Conv2d) else None
            if w is None or not w.requires_grad:
                continue
            flat = grads[w].abs().flatten()
            reset = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
            order = torch.argsort(flat, stable=True, descending=cfg.reset_saliency == "high")
            reset[order[: round(cfg.reset_share * flat.numel())]] = True
            reset = reset.view_as(w)
            fresh = torch.nn.init.kaiming_normal_(
                torch.empty(w.shape), mode="fan_out", nonlinearity="relu", generator=g
            ).to(w.device)
            w.copy_(torch.where(reset, fresh, w))
            scale[w] = torch.where(reset, 1.0, cfg.kept_grad_scale).to(w.dtype)
    if not scale:
        raise UserError("msg: no trainable conv layer to re-initialize (every block frozen?)")
    return Training([Pass("loss", (ctx.retain_loader(0),), cross_entropy)], grad_scale=scale)


METHOD = Method(
    "msg",
    "re-initialize the low-saliency conv weights, fine-tune on D_r (MSG, the challenge's 2nd)",
    BaselineConfig("msg", lr=0.001, batch_size=64, epochs=5, schedule="triangle"),
    fields=("reset_share", "kept_grad_scale", "reset_saliency"),
    setup=setup,
)

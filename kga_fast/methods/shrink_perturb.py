"""Shrink and perturb (Ash and Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020) as
an unlearning method: every trainable parameter of A_d becomes `shrink` x its value + `perturb` x
that of a freshly initialized network of its architecture (a draw of its own per unlearning seed),
then fine-tuning on D_r.

Ours, not a challenge entry. MSG re-draws a share of each conv layer and keeps the rest, and its
models keep much of A_d's per-image memory of D_f (bench/RESULTS.md, "Issue 17, ninth session");
this moves every weight part of the way to a fresh start, the whole network at once, and two seeds
differ in every weight, as two retrains do. shrink 1 and perturb 0 is fine-tuning; shrink 0 and
perturb 1 is retraining on the fine-tune's budget. Where BatchNorm follows a conv, the shrink alone
leaves that conv's function as it was (BatchNorm divides it out) and raises its effective step: the
perturbation is what changes it. BatchNorm's running statistics stay A_d's until the repair's
training-mode batches replace them; frozen blocks are not touched. Measured, it does not take
out more of A_d's per-image memory than MSG, and on the quick subsets it comes nearest the
retrains only at a retrain's cost (bench/RESULTS.md, "Issue 17, tenth session").
"""

from __future__ import annotations

import torch

from kga_fast.checkpoint import model_shape
from kga_fast.methods.common import Method, stream_seed
from kga_fast.methods.trained import BaselineConfig, Pass, Setup, Training, cross_entropy
from kga_fast.models import StagedNet, build_model


def fresh_like(model: StagedNet, seed: int) -> StagedNet:
    """A freshly initialized network of `model`'s architecture and shape, on the CPU, drawn from
    `seed` (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model.arch, *model_shape(model))


def mix_with_fresh(ctx: Setup, shrink: float, perturb: float) -> None:
    """Every trainable parameter of ctx.model becomes shrink x its value + perturb x that of a fresh
    initialization drawn from the unlearning seed's stream 6 (frozen blocks untouched)."""
    fresh = dict(fresh_like(ctx.model, stream_seed(ctx.seed, 6)).named_parameters())
    with torch.no_grad():
        for name, p in ctx.model.named_parameters():
            if p.requires_grad:
                p.mul_(shrink).add_(fresh[name].to(p.device, p.dtype), alpha=perturb)


def setup(ctx: Setup) -> Training:
    mix_with_fresh(ctx, ctx.cfg.shrink, ctx.cfg.perturb)
    return Training([Pass("loss", (ctx.retain_loader(0),), cross_entropy)])


METHOD = Method(
    "shrink_perturb",
    "move every weight part of the way to a fresh init, fine-tune on D_r (shrink and perturb)",
    BaselineConfig("shrink_perturb", lr=0.01, batch_size=64, epochs=4, schedule="triangle"),
    fields=("shrink", "perturb"),
    setup=setup,
)

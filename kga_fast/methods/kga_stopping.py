"""When to stop KGA unlearning without ever looking at A_r: the "gap" rule.

KGA wants A* to be as far from A_f on D_f as A_d is from A_n on D_n. The target is the mean
gap KL(A_d(z) || A_n(z)) over all of D_n (a constant: no model that is trained changes it, so
nothing is gained by holding D_n out, and the gap's heavy tail needs every image it has). Every
`check_every` optimizer steps the rule measures A*'s mean KL(A*(y) || A_f(y)) over a seeded
share `holdout` of the D_f images that L_a aligns on, kept out of L_a (in eval mode, as A* will
be used; the KL in the run's direction). Unlearning stops at the first check where that mean
reaches the target, or after the configured epochs, whichever comes first. The held-out D_f
images keep the rule honest: L_a could push the KL of the very images it sees past the target
while the rest lag behind. From a damaged start (`from_above`: A* begins far from A_f) the mean
comes down instead, and the rule stops at the first check where it is at most the target.
"""

from __future__ import annotations

import torch

from kga_fast.evaluation.evaluate import predict
from kga_fast.losses import directed_kl, kl_rows


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) sorted positions of 0..n-1: round(fraction * n) held out, at least one
    of each."""
    held = min(max(1, round(fraction * n)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


class GapStop:
    """The gap rule (see the module doc): A*'s distance to A_f on `held_forget` against the mean
    gap on `new` (D_n). `checks` lists [step, mean KL]."""

    def __init__(
        self,
        teachers: dict,
        held_forget: torch.Tensor,
        new: torch.Tensor,
        *,
        mean,
        std,
        accelerator,
        direction: str,
        impl=None,
        checks=None,
        from_above: bool = False,
    ):
        self.norm = {"mean": mean, "std": std, "accelerator": accelerator}
        self.images, self.direction, self.impl = held_forget, direction, impl
        self.forget_logits = predict(teachers["Af"], held_forget, **self.norm)  # (H_f, K)
        gap = kl_rows(
            predict(teachers["Ad"], new, **self.norm),
            predict(teachers["An"], new, **self.norm),
            impl=impl,
        )
        self.target = float(gap.double().mean())
        self.checks: list[list[float]] = list(checks or [])
        self.from_above = from_above

    def distance(self, student: torch.nn.Module) -> float:
        """Mean directed KL between A* and A_f over the held-out D_f images."""
        out = predict(student, self.images, **self.norm)  # (H_f, K)
        kl = directed_kl(out, self.forget_logits, self.direction, self.impl)  # (H_f,)
        return float(kl.double().mean())

    def reached(self, student: torch.nn.Module, step: int) -> bool:
        kl = self.distance(student)
        self.checks.append([step, kl])
        return kl <= self.target if self.from_above else kl >= self.target

    def record(self, stopped_at: int | None) -> dict:
        """What results.json keeps as "stopping"."""
        return {
            "rule": "gap",
            "target": self.target,
            "from_above": self.from_above,
            "held_out_forget": len(self.images),
            "stopped_at_step": stopped_at,
            "checks": self.checks,
        }

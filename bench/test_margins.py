"""The margins of the baseline tests: what tests/test_baselines.py thresholds, per unlearning
seed, on its tiny quadrant task, so that a threshold can be checked against other CPU kernels.

    python bench/test_margins.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/test_margins.py
    ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 python bench/test_margins.py

Prints one row per method (the tests' settings) with D_f / D_r accuracy and the quantity each
test compares, for seeds 0-4 (the tests use seed 0).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import test_baselines as T  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from kga_fast.methods import BASELINE_PRESETS, shrink_perturb, unlearn_baseline  # noqa: E402
from kga_fast.methods.fcs import uniform_kl  # noqa: E402

SETTINGS = [  # (method, the test's overrides, what else the test compares)
    ("gradient_ascent", dict(lr=0.05, epochs=3), "forget CE - A_d's (> 1)"),
    ("random_label", dict(lr=0.02, epochs=4), ""),
    ("salun", dict(lr=0.05, epochs=4, saliency=0.3), "share of weights moved (0.05-0.3)"),
    ("finetune", dict(lr=0.05, epochs=4), "forget CE - A_d's (> 0)"),
    ("scrub", dict(lr=0.002, epochs=4, max_epochs=2, forget_batch_size=8), "forget KL / retain KL (> 5)"),
    ("neggrad_plus", dict(lr=0.02, epochs=4, retain_weight=0.8), ""),
    ("ct", dict(lr=0.05, epochs=8), ""),
    ("msg", dict(lr=0.05, epochs=8), "forget CE - A_d's (> 0)"),
    ("shrink_perturb", dict(lr=0.05, epochs=8), "forget CE - A_d's (> 0)"),
    ("fresh_distill", dict(lr=0.1, epochs=8), "forget CE - A_d's (> 0)"),
    (
        "fcs",
        dict(lr=0.05, forget_lr=0.01, epochs=4),
        "KL(U || A*) on D_f over A_d's and over D_r's: the larger (< 0.75)",
    ),
]


def main() -> None:
    torch.set_num_threads(1)  # as the tests' fixture
    shrink_perturb.build_model = T.build_tiny  # as the tests' tiny_draws
    acc = Accelerator(cpu=True)
    data = T.make_data()
    ad = T.train_ad(data)
    models = {"Ad": ad, "Ar": T.tiny_net().eval()}
    f, fl, r, rl = data.forget, data.forget_labels, data.retain, data.retain_labels

    def extra(method: str, out) -> float | None:
        if method in ("gradient_ascent", "finetune", "msg", "shrink_perturb", "fresh_distill"):
            return T.ce(out, f, fl) - T.ce(ad, f, fl)
        if method == "salun":
            before = torch.cat([p.flatten() for p in ad.parameters()])
            return (before != torch.cat([p.flatten() for p in out.parameters()])).float().mean().item()
        if method == "scrub":

            def kl(x):
                t, s = T.logits(ad, x), T.logits(out, x)
                return F.kl_div(
                    s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean"
                ).item()

            return kl(f) / kl(r)
        if method == "fcs":
            to_uniform = uniform_kl(T.logits(out, f)).item()
            return max(
                to_uniform / uniform_kl(T.logits(ad, f)).item(),
                to_uniform / uniform_kl(T.logits(out, r)).item(),
            )
        return None

    print(
        f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '')} "
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '')}\n"
    )
    print("| method | seed: acc D_f / acc D_r / other | test's other quantity |\n|---|---|---|")
    for method, overrides, what in SETTINGS:
        cells = []
        for seed in range(5):
            cfg = dataclasses.replace(BASELINE_PRESETS[method], batch_size=32, **overrides)
            out = unlearn_baseline(models, data, cfg, freeze=(), seed=seed, accelerator=acc).model
            e = extra(method, out)
            cells.append(
                f"{seed}: {T.accuracy(out, f, fl):.2f} / {T.accuracy(out, r, rl):.2f}"
                + (f" / {e:.3g}" if e is not None else "")
            )
        print(f"| {method} | " + "; ".join(cells) + f" | {what} |")


if __name__ == "__main__":
    main()

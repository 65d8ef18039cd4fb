"""Are KGA's two knowledge gaps comparable? The per-image KL statistics of bench/RESULTS.md.

    python bench/gap_stats.py --run-dir runs/quick-s0 --seed 0 [the run's other options]

Opens a run folder (with the options it was made with, as every script does) and prints, for
its saved A_d, A_f, A_n and A_r, the mean, median and 90th percentile over images of

- the gap KL(A_d || A_n) on D_n: what L_a aligns to;
- KL(A_r || A_f) on the images A_f trained on (D_f, or F of --helpers matched): the value L_a
  would see if A* were the ideal A_r;
- KL(A_d || A_f) on the same images: the value at the start, A* = A_d.

It reads A_r, so run it on a tuning split only.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kga_fast.errors import cli_main  # noqa: E402
from kga_fast.evaluation.evaluate import predict  # noqa: E402
from kga_fast.losses import kl_rows  # noqa: E402
from kga_fast.pretrain import ensure_pretrained  # noqa: E402
from kga_fast.run import open_run_from_cli  # noqa: E402

ROWS = (  # (label, p, q, subset): KL(p || q) per image of the subset
    ("the gap KL(A_d ‖ A_n) on D_n", "Ad", "An", "new"),
    ("KL(A_r ‖ A_f) on A_f's images of D_f (the ideal A* = A_r)", "Ar", "Af", "helper_forget"),
    ("KL(A_d ‖ A_f) on A_f's images of D_f (A* at the start)", "Ad", "Af", "helper_forget"),
)


def gap_table(run, models, accelerator) -> str:
    lines = ["| quantity | mean | median | 90th percentile |", "|---|---|---|---|"]
    for label, p, q, subset in ROWS:
        images = run.subset(subset)[0]
        logits = {
            m: predict(models[m], images, mean=run.train.mean, std=run.train.std, accelerator=accelerator)
            for m in (p, q)
        }
        kl = kl_rows(logits[p], logits[q], impl="reference").double()
        stats = (kl.mean(), kl.median(), torch.quantile(kl, 0.9))
        lines.append(f"| {label} | " + " | ".join(f"{v.item():.3f}" for v in stats) + " |")
    return "\n".join(lines)


@cli_main
def main(argv=None) -> None:
    run, accelerator = open_run_from_cli(__doc__, argv)
    models = ensure_pretrained(run, accelerator, allow_train=False)
    accelerator.print(f"{run.describe(accelerator)}\n\n{gap_table(run, models, accelerator)}")


if __name__ == "__main__":
    main()

"""How forgetting quality F (kga_fast.evaluation.forgetting) moves with the number of models N.

    python bench/forgetting_scale.py [--examples 500] [--seed 0]

Per forget example, N "unlearned" and N "retrained" confidences are drawn from unit Gaussians,
the unlearned ones shifted by 0, 0.5 or 1 standard deviation; F is printed per N and shift,
with the seconds it took. Two samples of one distribution (shift 0) are the best an unlearning
can score at that N: the ceiling that report.md prints beside F.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kga_fast.evaluation.forgetting import forgetting_quality  # noqa: E402

MODELS = (8, 16, 32)
SHIFTS = (0.0, 0.5, 1.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=500, help="forget examples M")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"M = {args.examples} examples; F per N (rows) and shift in sd (columns)\n")
    print("| N | " + " | ".join(f"shift {s}" for s in SHIFTS) + " | ms per example |")
    print("|---" * (len(SHIFTS) + 2) + "|")
    for n in MODELS:
        cells, start = [], time.perf_counter()
        for shift in SHIFTS:
            retrained = rng.normal(size=(n, args.examples))
            unlearned = rng.normal(size=(n, args.examples)) + shift
            cells.append(f"{forgetting_quality(unlearned, retrained):.3f}")
        ms = (time.perf_counter() - start) / (len(SHIFTS) * args.examples) * 1000
        print(f"| {n} | " + " | ".join(cells) + f" | {ms:.1f} |")


if __name__ == "__main__":
    main()

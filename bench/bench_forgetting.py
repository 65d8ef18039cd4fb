"""Forgetting quality's cost (kga_fast.evaluation.forgetting): the two-threshold rules counted where
a count changes, against every rule of the grid, on the same random confidences in the same run.

    python bench/bench_forgetting.py [--models 16] [--examples 2000] [--rounds 3]

Prints seconds per call (best of the rounds) and per forget example for both, their ratio, and
checks that both give the same epsilon for every example.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kga_fast.evaluation import forgetting  # noqa: E402


def best_seconds(rounds: int, fn) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=16, help="N: unlearned and retrained models each")
    p.add_argument(
        "--examples", type=int, default=2000, help="M: forget examples (the small setting's 200 x 10)"
    )
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.models, args.examples)
    retrained = rng.normal(size=shape) * rng.uniform(0.5, 1.5, size=args.examples) + 3  # like D_f's
    unlearned = rng.normal(size=shape) * rng.uniform(0.5, 1.5, size=args.examples) + 2.7

    def run() -> np.ndarray:
        return forgetting.example_epsilons(unlearned, retrained)

    fast, eps = best_seconds(args.rounds, run)
    changed = forgetting._double_threshold
    forgetting._double_threshold = functools.partial(changed, every_rule=True)
    try:
        every, eps_every = best_seconds(args.rounds, run)
    finally:
        forgetting._double_threshold = changed
    assert np.array_equal(eps, eps_every), "the two countings disagree"
    m = args.examples
    print(f"N = {args.models}, M = {m}, best of {args.rounds}; the same epsilon for every example")
    print("| rules counted | s per call | ms per example | ratio |\n|---|---|---|---|")
    print(f"| every rule of the grid | {every:.2f} | {1e3 * every / m:.2f} | 1.00x |")
    print(f"| where a count changes | {fast:.2f} | {1e3 * fast / m:.2f} | {every / fast:.2f}x |")


if __name__ == "__main__":
    main()

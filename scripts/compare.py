"""Every method on one run folder, compared honestly: tune each on a tuning split with the same
budget, then report the chosen settings over seeds on another split (kga_fast.compare).

    python scripts/compare.py --run-dir runs/s0 --seed 0 --tune              # writes runs/s0/tuned.json
    python scripts/compare.py --run-dir runs/s1 --seed 1 --tuned runs/s0/tuned.json --seeds 0,1,2

The report mode runs retrain, KGA's default preset and each tuned method (KGA with its tuned
gap-matching setting and every baseline of kga_fast.methods) and writes the
comparison table into the run folder's report.md ("Methods and membership inference"). Both
modes train missing models first and skip finished runs, so an interrupted comparison resumes.
"""

# ruff: noqa: E402  (imports follow the sys.path line that finds kga_fast from a checkout)
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kga_fast import accel
from kga_fast.compare import BUDGET, GRID, compare, read_tuned, tune
from kga_fast.config import add_run_args, run_config_from_args, seed_list, use_quick_subsets
from kga_fast.errors import UserError, cli_main
from kga_fast.freeze import parse_freeze
from kga_fast.pipeline import report
from kga_fast.pretrain import ensure_pretrained, needed_models
from kga_fast.run import open_run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(parser)
    parser.add_argument("--full", action="store_true", help="the whole train and test sets")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tune", action="store_true", help="tune every method on this split (seed 0)")
    mode.add_argument("--tuned", metavar="FILE", help="tuned.json of a tuning split: report with it")
    parser.add_argument("--methods", default=",".join(GRID), help="methods to tune (default: all)")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="unlearning seeds of the report")
    parser.add_argument("--freeze", default="0", help="freeze configuration (default 0: none)")
    parser.add_argument(
        "--budget", type=int, default=BUDGET, help=f"settings tried per method (default {BUDGET})"
    )
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    use_quick_subsets(args)
    cfg = run_config_from_args(args)
    freeze = parse_freeze(args.freeze, cfg.arch)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in GRID]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}; choose from {', '.join(GRID)}")
    tuned = None if args.tune else read_tuned(args.tuned)
    accelerator = accel.make_accelerator(cfg.mixed_precision)
    run = open_run(cfg, accelerator)
    accelerator.print(run.describe(accelerator))
    models = ensure_pretrained(run, accelerator, names=needed_models(cfg))
    if args.tune:
        tune(run, models, accelerator, freeze=freeze, methods=methods, budget=args.budget)
    else:
        compare(run, models, accelerator, tuned, args.seeds, freeze=freeze)
    report(run, accelerator)


if __name__ == "__main__":
    main()

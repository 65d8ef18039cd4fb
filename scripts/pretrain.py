"""Pretrain A_d, A_f, A_n, A_r of a run folder (only those still missing).

    accelerate launch scripts/pretrain.py --dataset cifar10 --arch resnet18-cifar --data-dir ~/data
    torchrun --nproc_per_node 2 scripts/pretrain.py ...   # DDP on CPU (gloo)

Rerunning the same command after an interruption resumes from the last finished epoch.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kga_fast import accel  # noqa: E402
from kga_fast.config import add_run_args, run_config_from_args  # noqa: E402
from kga_fast.errors import cli_main  # noqa: E402
from kga_fast.pretrain import ensure_pretrained, needed_models  # noqa: E402
from kga_fast.run import open_run  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(parser)
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated models to train (default: Ad,Af,An,Ar and the pool's Ar-1 ... of --retrains)",
    )
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = run_config_from_args(args)
    names = (
        needed_models(cfg)
        if args.only is None
        else tuple(n.strip() for n in args.only.split(",") if n.strip())
    )
    accelerator = accel.make_accelerator(cfg.mixed_precision)
    run = open_run(cfg, accelerator)
    accelerator.print(run.describe(accelerator))
    ensure_pretrained(run, accelerator, names=names)
    accelerator.print(f"models in {cfg.run_dir / 'models'}")


if __name__ == "__main__":
    main()

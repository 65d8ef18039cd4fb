"""The main command: unlearn D_f from A_d with KGA for each freeze configuration and seed, evaluate
as the paper does (accuracy, macro-F1, JSD on D_t and D_f), record results.json, write the report.

    accelerate launch scripts/unlearn.py            # quick run: Fashion-MNIST, resnet18, freeze
                                                    # (0), (1), (1,2), (1,2,3), one seed
    accelerate launch scripts/unlearn.py --preset paper --seeds 0,1
    torchrun --nproc_per_node 2 scripts/unlearn.py  # DDP on CPU (gloo)

The quick defaults (a seeded subset of 8,000 train and 4,000 test images, 4 pretraining epochs,
2 unlearning epochs) took 3 min on a 2-core Xeon, 24 min on a 2-core AMD EPYC (bench/RESULTS.md);
--full uses the whole dataset. A --dataset folder run uses all of the user's images.
Missing pretrained models (A_d, A_f, A_n, A_r) are trained first. Rerunning the same command
skips finished (configuration, seed) pairs and resumes an interrupted one from its last epoch.
"""

# ruff: noqa: E402  (imports follow the sys.path line that finds kga_fast from a checkout)
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kga_fast import accel
from kga_fast.config import QUICK_SUBSETS, add_run_args, run_config_from_args, seed_list, use_quick_subsets
from kga_fast.errors import UserError, cli_main
from kga_fast.freeze import parse_freeze
from kga_fast.losses import DIRECTIONS, IMPLS, REDUCTIONS
from kga_fast.methods import METHODS, RECOMMENDED, TRAINED, check_baseline_config, resolve
from kga_fast.methods.kga import (
    OPTIMIZERS,
    RETAIN_LOSSES,
    STARTS,
    STOPS,
    UNLEARN_PRESETS,
    UnlearnConfig,
    check_config,
)
from kga_fast.methods.trained import CHOICES, BaselineConfig
from kga_fast.pipeline import Job, report, run_job
from kga_fast.pretrain import ensure_pretrained, needed_models
from kga_fast.run import open_run

QUICK_EPOCHS = 2  # unlearning epochs of the quick run (the presets' own count with --full)
PAPER_FREEZES = ["0", "1", "1,2", "1,2,3"]
# --option -> UnlearnConfig field, for the overrides of a preset.
OVERRIDES = {
    "optimizer": str,
    "lr": float,
    "eps": float,
    "momentum": float,
    "weight_decay": float,
    "ratio": float,
    "inner_steps": int,
    "batch_size": int,
    "epochs": int,
    "direction": str,
    "reduction": str,
    "stop": str,
    "holdout": float,
    "check_every": int,
    "start": str,
    "retain_loss": str,
}
# --option -> the trained methods that read that BaselineConfig field (schedule: all of them;
# the others: the methods that name it in their registry entry's `fields`); its choices, if a few
# words: kga_fast.methods.trained.CHOICES.
METHOD_SETTINGS = {"schedule": TRAINED} | {
    name: tuple(m for m in TRAINED if name in METHODS[m].fields)
    for name in dict.fromkeys(f for m in TRAINED for f in METHODS[m].fields)
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(parser)  # --train-subset / --test-subset default to QUICK's unless --full
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"the whole train and test sets (else subsets of {QUICK_SUBSETS[0]} and "
        f"{QUICK_SUBSETS[1]}) and the preset's epochs (else {QUICK_EPOCHS})",
    )
    g = parser.add_argument_group("unlearning")
    g.add_argument(
        "--method",
        choices=["recommended", *METHODS],
        default="kga",
        help="; ".join(
            [f"recommended: {RECOMMENDED.describe()}", *(f"{name}: {m.help}" for name, m in METHODS.items())]
        ).replace("%", "%%"),  # argparse formats help with %
    )
    g.add_argument(
        "--preset",
        choices=sorted(UNLEARN_PRESETS),
        default="default",
        help="default: ours (no catastrophic forgetting); paper: section 4.1",
    )
    g.add_argument(
        "--freeze",
        nargs="+",
        default=PAPER_FREEZES,
        metavar="BLOCKS",
        help="freeze configurations, e.g. 0 1 1,2 1,2,3 (1-based blocks; 0: none)",
    )
    g.add_argument("--seeds", type=seed_list, default=[0], help="unlearning seeds, e.g. 0,1")
    choices = {
        "optimizer": OPTIMIZERS,
        "direction": DIRECTIONS,
        "reduction": REDUCTIONS,
        "stop": STOPS,
        "start": STARTS,
        "retain_loss": RETAIN_LOSSES,
    }
    for name, kind in OVERRIDES.items():
        flag = "--retain-ratio" if name == "ratio" else "--" + name.replace("_", "-")
        g.add_argument(
            flag,
            dest=name,
            type=kind,
            choices=choices.get(name),
            default=None,
            help=f"override the preset's {name}",
        )
    m = parser.add_argument_group(
        "settings of the trained methods (kga_fast.methods.trained.BaselineConfig; default: the preset's)"
    )
    for name, readers in METHOD_SETTINGS.items():
        m.add_argument(
            "--" + name.replace("_", "-"),
            type=type(getattr(BaselineConfig, name)),
            choices=CHOICES.get(name),
            default=None,
            help=f"{'every trained method' if readers == TRAINED else ', '.join(readers)}: "
            f"override the preset's {name}",
        )
    g.add_argument("--no-cache-teachers", action="store_true", help="run the teachers every step")
    g.add_argument(
        "--prefix-cache-gb",
        type=float,
        default=UnlearnConfig.prefix_cache_gb,
        metavar="G",
        help="keep the frozen prefix's features of D_r and D_f when they fit in G GiB "
        "(0: run the prefix every batch)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the unlearned model")
    g.add_argument(
        "--impl", choices=IMPLS, default=None, help="loss backend (default: KGA_FAST_IMPL or auto)"
    )
    g.add_argument("--no-pretrain", action="store_true", help="fail instead of training missing models")
    g.add_argument(
        "--no-retrain",
        action="store_true",
        help="train no A_r (a deletion request): evaluate A* against A_d, D_f against D_t",
    )
    args = parser.parse_args(argv)
    refuse_unused_options(parser, args)
    return args


# Options that a --method other than kga does not use (retrain uses none of the training ones).
KGA_ONLY = (
    "preset",
    "optimizer",
    "eps",
    "ratio",
    "inner_steps",
    "direction",
    "reduction",
    "stop",
    "holdout",
    "check_every",
    "start",
    "retain_loss",
    "no_cache_teachers",
    "prefix_cache_gb",
    "compile",
    "impl",
)
TRAINING = ("lr", "momentum", "weight_decay", "batch_size", "epochs", "freeze")


def refuse_unused_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """UserError for an option the chosen method would ignore: asking for something and
    silently not getting it is worse than an error."""
    if args.no_retrain and args.method == "retrain":
        raise UserError("--method retrain is A_r itself: it cannot run with --no-retrain")
    if args.no_retrain and args.retrains != parser.get_default("retrains"):
        raise UserError("--retrains trains a pool of A_r: it cannot run with --no-retrain")
    method = resolve(args.method)[0]
    unused = () if method == "kga" else KGA_ONLY + (TRAINING if method == "retrain" else ())
    unused += tuple(name for name, readers in METHOD_SETTINGS.items() if method not in readers)
    given = [d for d in unused if getattr(args, d) != parser.get_default(d)]
    if given:
        flags = ", ".join("--retain-ratio" if d == "ratio" else "--" + d.replace("_", "-") for d in given)
        raise UserError(
            f"--method {args.method} does not use {flags}: drop {'it' if len(given) == 1 else 'them'}"
        )


def unlearn_config(args: argparse.Namespace):
    """The preset with the command line's overrides; "epochs" shrinks for the quick run."""
    cfg = dataclasses.replace(UNLEARN_PRESETS[args.preset])
    if not args.full:
        cfg.epochs = QUICK_EPOCHS
    for name in OVERRIDES:
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.cache_teachers, cfg.compile, cfg.impl = not args.no_cache_teachers, args.compile, args.impl
    cfg.prefix_cache_gb = args.prefix_cache_gb
    return check_config(cfg)


def baseline_config(args: argparse.Namespace):
    """A trained method's preset with the command line's overrides (the options it shares with
    KGA and its own settings); the quick run caps a preset's epochs, not the recommended
    setting's (it was measured)."""
    cfg = dataclasses.replace(resolve(args.method)[1])
    if not args.full and args.method != "recommended":
        cfg.epochs = min(cfg.epochs, QUICK_EPOCHS)
    for name in ("lr", "momentum", "weight_decay", "batch_size", "epochs", *METHOD_SETTINGS):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    return check_baseline_config(cfg)


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    use_quick_subsets(args)
    run_cfg = run_config_from_args(args)
    freezes = list(dict.fromkeys(parse_freeze(f, run_cfg.arch) for f in args.freeze))
    if args.method == "kga":
        cfg = unlearn_config(args)
    else:  # retrain: A_r as it is, nothing to configure
        cfg = None if args.method == "retrain" else baseline_config(args)
    job = Job(resolve(args.method)[0], cfg, freezes, args.seeds, retrain=not args.no_retrain)
    accelerator = accel.make_accelerator(run_cfg.mixed_precision)
    run = open_run(run_cfg, accelerator)
    if args.method == "recommended":
        accelerator.print(f"--method recommended: {RECOMMENDED.describe()}")
    accelerator.print(f"{run.describe(accelerator)}; method {job.method}, preset {job.preset}")
    names = needed_models(run_cfg, retrain=job.retrain, helpers=job.method == "kga")
    models = ensure_pretrained(run, accelerator, allow_train=not args.no_pretrain, names=names)
    run_job(run, models, job, accelerator)
    report(run, accelerator)


if __name__ == "__main__":
    main()

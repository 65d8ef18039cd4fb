"""The main command: unlearn D_f from A_d with KGA for each freeze configuration and seed, evaluate
as the paper does (accuracy, macro-F1, JSD on D_t and D_f), record results.json, write the report.

    accelerate launch scripts/unlearn.py            # quick run: Fashion-MNIST, resnet18, freeze
                                                    # (0), (1), (1,2), (1,2,3), one seed
    accelerate launch scripts/unlearn.py --preset paper --seeds 0,1
    torchrun --nproc_per_node 2 scripts/unlearn.py  # DDP on CPU (gloo)

The quick defaults (a seeded subset of 8,000 train and 4,000 test images, 4 pretraining epochs,
2 unlearning epochs) finish in under 10 minutes on 2 CPU cores; --full uses the whole dataset.
Missing pretrained models (A_d, A_f, A_n, A_r) are trained first. Rerunning the same command
skips finished (configuration, seed) pairs and resumes an interrupted one from its last epoch.
"""

# ruff: noqa: E402  (imports follow the sys.path line that finds kga_fast from a checkout)
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kga_fast import accel
from kga_fast.audit import audit_models
from kga_fast.baselines import (
    BASELINE_PRESETS,
    METHODS,
    MethodData,
    baseline_config_key,
    check_baseline_config,
    retrain,
    retrain_seconds,
    unlearn_baseline,
)
from kga_fast.checkpoint import save_model
from kga_fast.config import RunConfig, add_run_args, run_config_from_args
from kga_fast.errors import UserError, cli_main
from kga_fast.evaluate import evaluate_unlearning, predict
from kga_fast.freeze import freeze_label, parse_freeze
from kga_fast.losses import DIRECTIONS, IMPLS, REDUCTIONS
from kga_fast.pretrain import ensure_pretrained
from kga_fast.report import format_table, write_report
from kga_fast.results import append_result, find_result, load_results
from kga_fast.run import open_run
from kga_fast.unlearn import (
    OPTIMIZERS,
    UNLEARN_PRESETS,
    UnlearnConfig,
    check_config,
    config_key,
    unlearn,
)

QUICK = RunConfig(train_subset=8000, test_subset=4000)  # the no-argument run (see the docstring)
QUICK_EPOCHS = 2  # unlearning epochs of the quick run (the presets' own count with --full)
PAPER_FREEZES = ["0", "1", "1,2", "1,2,3"]
# --option -> UnlearnConfig field, for the overrides of a preset.
OVERRIDES = {"optimizer": str, "lr": float, "eps": float, "momentum": float, "weight_decay": float,
             "ratio": float, "inner_steps": int, "batch_size": int, "epochs": int,
             "direction": str, "reduction": str}  # fmt: skip


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_run_args(parser)  # --train-subset / --test-subset default to QUICK's unless --full
    parser.add_argument("--full", action="store_true",
                        help=f"the whole train and test sets (else subsets of {QUICK.train_subset} and "
                             f"{QUICK.test_subset}) and the preset's epochs (else {QUICK_EPOCHS})")  # fmt: skip
    g = parser.add_argument_group("unlearning")
    g.add_argument("--method", choices=METHODS, default="kga",
                   help="kga (ours) or a baseline: retrain (A_r as is), finetune (on D_r), "
                   "gradient_ascent (on D_f), random_label, scrub")  # fmt: skip
    g.add_argument("--preset", choices=sorted(UNLEARN_PRESETS), default="default",
                   help="default: ours (no catastrophic forgetting); paper: section 4.1")  # fmt: skip
    g.add_argument("--freeze", nargs="+", default=PAPER_FREEZES, metavar="BLOCKS",
                   help="freeze configurations, e.g. 0 1 1,2 1,2,3 (1-based blocks; 0: none)")  # fmt: skip
    g.add_argument("--seeds", type=seed_list, default=[0], help="unlearning seeds, e.g. 0,1")
    choices = {"optimizer": OPTIMIZERS, "direction": DIRECTIONS, "reduction": REDUCTIONS}
    for name, kind in OVERRIDES.items():
        flag = "--retain-ratio" if name == "ratio" else "--" + name.replace("_", "-")
        g.add_argument(flag, dest=name, type=kind, choices=choices.get(name), default=None,
                       help=f"override the preset's {name}")  # fmt: skip
    g.add_argument("--no-cache-teachers", action="store_true", help="run the teachers every step")
    g.add_argument("--prefix-cache-gb", type=float, default=UnlearnConfig.prefix_cache_gb, metavar="G",
                   help="keep the frozen prefix's features of D_r and D_f when they fit in G GiB "
                        "(0: run the prefix every batch)")  # fmt: skip
    g.add_argument("--compile", action="store_true", help="torch.compile the unlearned model")
    g.add_argument("--impl", choices=IMPLS, default=None, help="loss backend (default: KGA_FAST_IMPL or auto)")  # fmt: skip
    g.add_argument(
        "--no-pretrain", action="store_true", help="fail instead of training missing models"
    )
    args = parser.parse_args(argv)
    refuse_unused_options(parser, args)
    return args


# Options that a --method other than kga does not use (retrain uses none of the training ones).
KGA_ONLY = ("preset", "optimizer", "eps", "ratio", "inner_steps", "direction", "reduction",
            "no_cache_teachers", "prefix_cache_gb", "compile", "impl")  # fmt: skip
TRAINING = ("lr", "momentum", "weight_decay", "batch_size", "epochs", "freeze")


def refuse_unused_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """UserError for an option the chosen method would ignore: asking for something and
    silently not getting it is worse than an error."""
    unused = (
        () if args.method == "kga" else KGA_ONLY + (TRAINING if args.method == "retrain" else ())
    )
    given = [d for d in unused if getattr(args, d) != parser.get_default(d)]
    if given:
        flags = ", ".join(
            "--retain-ratio" if d == "ratio" else "--" + d.replace("_", "-") for d in given
        )
        raise UserError(f"--method {args.method} does not use {flags}: drop {'it' if len(given) == 1 else 'them'}")  # fmt: skip


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
    """A baseline's preset with the command line's overrides (the options it shares with KGA)."""
    cfg = dataclasses.replace(BASELINE_PRESETS[args.method])
    if not args.full:
        cfg.epochs = min(cfg.epochs, QUICK_EPOCHS)
    for name in ("lr", "momentum", "weight_decay", "batch_size", "epochs"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    return check_baseline_config(cfg)


def model_name(
    method: str, arch: str, freeze: tuple[int, ...], seed: int, preset: str, config: dict
) -> str:
    """Astar-resnet18-f12-s0-default-<hash> (baselines: <method>-resnet18-...): the hash of the
    config keeps the models of two configurations apart, so a finished model is never
    overwritten by another one."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    prefix = "Astar" if method == "kga" else method
    return f"{prefix}-{arch}-f{''.join(map(str, freeze)) or 0}-s{seed}-{preset}-{digest}"


def summary_line(label: str, seed: int, record: dict) -> str:
    ev = record["eval"]
    acc = "/".join(f"{ev[s]['accuracy']['A*']:.3f}" for s in ("test", "forget"))
    ref = "/".join(f"{ev[s]['accuracy'][m]:.3f}" for s in ("test", "forget") for m in ("Ad", "Ar"))
    jsd = ev["test"]["jsd"]
    return (f"{label} seed {seed}: A* acc test/forget {acc} (Ad, Ar: {ref}); JSD(Ad,A*) {jsd['Ad,A*']:.4f} "
            f"JSD(A*,Ar) {jsd['A*,Ar']:.4f}; {record['unlearn_seconds']:.1f} s -> {record['checkpoint']}")  # fmt: skip


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.full:
        args.train_subset = args.train_subset or QUICK.train_subset
        args.test_subset = args.test_subset or QUICK.test_subset
    run_cfg = run_config_from_args(args)
    freezes = list(dict.fromkeys(parse_freeze(f, run_cfg.arch) for f in args.freeze))
    cfg = unlearn_config(args)
    accelerator = accel.make_accelerator(run_cfg.mixed_precision)
    method = args.method
    if method == "kga":
        config, preset = config_key(cfg), cfg.preset
    elif method == "retrain":  # A_r as it is: nothing to configure, nothing to freeze
        bcfg, config, preset, freezes = None, {}, "default", [()]
    else:
        bcfg = baseline_config(args)
        config, preset = baseline_config_key(bcfg), "default"
    config = config | {"mixed_precision": str(accelerator.mixed_precision)}
    run = open_run(run_cfg, accelerator)
    accelerator.print(f"{run.describe(accelerator)}; method {method}, preset {preset}")
    models = ensure_pretrained(run, accelerator, allow_train=not args.no_pretrain)
    splits = {
        "test": run.subset("test"),
        "forget": run.subset("forget"),
        "retain": run.subset("retain"),
    }
    data = MethodData(splits["retain"][0], splits["forget"][0], run.subset("new")[0], run.train.mean,
                      run.train.std, retain_labels=splits["retain"][1], forget_labels=splits["forget"][1])  # fmt: skip
    labels = {split: y for split, (_, y) in splits.items()}
    try:  # A_r's training time: the methods table reports each method's time relative to it
        ar_seconds = retrain_seconds(run_cfg.run_dir)
    except UserError:  # models trained elsewhere may not record it
        ar_seconds = None
    fixed: dict[str, dict] = {}  # logits of A_d and A_r per split, and their audit, computed once

    def logits_of(model, split: str):
        images = splits[split][0]
        return predict(
            model, images, mean=run.train.mean, std=run.train.std, accelerator=accelerator
        )

    for freeze in freezes:
        for seed in args.seeds:
            label = f"{run_cfg.arch}^{freeze_label(freeze)}"
            key = {"dataset": run_cfg.dataset, "arch": run_cfg.arch, "freeze": list(freeze),
                   "seed": seed, "preset": preset, "method": method, "config": config}  # fmt: skip
            if find_result(run_cfg.run_dir, key) is not None:
                accelerator.print(f"{label} seed {seed}: finished earlier, skipped")
                continue
            name = model_name(method, run_cfg.arch, freeze, seed, preset, config)
            state_dir = run_cfg.run_dir / "state" / name
            desc = f"{method} {label} seed {seed}"
            if method == "kga":
                result = unlearn(models, data, cfg, freeze=freeze, seed=seed, accelerator=accelerator,
                                 state_dir=state_dir, desc=desc)  # fmt: skip
            elif method == "retrain":
                result = retrain(models, run_cfg.run_dir)
            else:
                result = unlearn_baseline(models, data, bcfg, freeze=freeze, seed=seed,
                                          accelerator=accelerator, state_dir=state_dir, desc=desc)  # fmt: skip
            if result.epochs_resumed:
                accelerator.print(
                    f"{label} seed {seed}: resumed after epoch {result.epochs_resumed}"
                )
            evaluation, star = {}, {}
            for split in splits:
                if split not in fixed:
                    fixed[split] = {m: logits_of(models[m], split) for m in ("Ad", "Ar")}
                star[split] = logits_of(result.model, split)
                evaluation[split] = evaluate_unlearning(fixed[split] | {"A*": star[split]}, labels[split], run.num_classes)  # fmt: skip
            checkpoint = (
                "models/Ar.safetensors" if method == "retrain" else f"models/{name}.safetensors"
            )
            record = key | {"unlearn_seconds": result.seconds, "checkpoint": checkpoint,
                            "retrain_seconds": ar_seconds,
                            "losses": result.losses, "world_size": accelerator.num_processes,
                            "eval": evaluation}  # fmt: skip
            if accelerator.is_main_process:
                # Membership inference on the gathered logits, once (not per rank); A_d and A_r
                # are audited once per invocation with a fixed seed, so their values are shared.
                if "mia" not in fixed:
                    fixed["mia"] = audit_models({m: {s: fixed[s][m] for s in splits} for m in ("Ad", "Ar")}, labels)  # fmt: skip
                record["mia"] = fixed["mia"] | audit_models({"A*": star}, labels)
                if method != "retrain":
                    meta = {
                        k: v for k, v in record.items() if k not in ("checkpoint", "eval", "mia")
                    }
                    save_model(run_cfg.run_dir, name, result.model, meta)
                append_result(run_cfg.run_dir, record)  # after the model: a record never lacks it
            accel.clear_state(accelerator, state_dir)  # barriers inside: all ranks see the record
            accelerator.print(summary_line(label, seed, record))

    if accelerator.is_main_process:
        results = load_results(run_cfg.run_dir)
        for split in ("test", "forget"):
            print(
                f"\n{run_cfg.dataset}, {split} split (mean ± std over seeds):\n{format_table(results, split)}"
            )
        md, png = write_report(run_cfg.run_dir)
        print(f"\nresults: {run_cfg.run_dir / 'results.json'}\nreport:  {md}\nfigure:  {png}\n"
              f"models:  {run_cfg.run_dir / 'models'}")  # fmt: skip
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()

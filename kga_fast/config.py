"""Run configuration: what data, which split, which architecture, how to pretrain.

One dataclass per concern, each field with a one-line comment, and the command-line
options that fill them (shared by scripts/pretrain.py and scripts/unlearn.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from kga_fast.data import DATASETS
from kga_fast.errors import UserError
from kga_fast.models import ARCHS
from kga_fast.splits import HELPER_RECIPES


@dataclass
class PretrainConfig:
    """Supervised training of A_d, A_f, A_n, A_r (all four use the same recipe)."""

    preset: str = "default"  # "default" (ours) or "paper" (section 5.1)
    epochs: int = 4  # passes over each model's own training split
    batch_size: int = 128  # global batch (split across DDP processes)
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum (the paper used none)
    nesterov: bool = True  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 on all parameters
    schedule: str = "onecycle"  # "onecycle" (linear warm-up, linear decay) or "constant"
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    min_steps: int = 100  # small splits (A_n on D_n) get at least this many steps
    save_every_seconds: float = 30.0  # resume state at most this often (and after the last epoch)


PRETRAIN_PRESETS = {
    # Our default: SGD + Nesterov momentum, one-cycle schedule; reaches about 90% test accuracy
    # on Fashion-MNIST with resnet18 in a few epochs (see README, bench/RESULTS.md).
    "default": PretrainConfig(),
    # The paper's recipe (section 5.1): plain SGD lr 0.001, batch 128, 20 epochs, no augmentation.
    "paper": PretrainConfig(
        preset="paper",
        epochs=20,
        batch_size=128,
        lr=0.001,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        schedule="constant",
        min_steps=0,
    ),
}


@dataclass
class RunConfig:
    """A run folder: one dataset, one split, one architecture, its four pretrained models."""

    run_dir: Path = Path("runs/fashion-mnist-resnet18")  # where everything of this run is kept
    dataset: str = "fashion-mnist"  # fashion-mnist | cifar10 | cifar100
    data_dir: str | None = None  # dataset folder (None: the dataset's default place)
    download: bool = False  # download with torchvision when missing (needs internet)
    arch: str = "resnet18"  # resnet18 | vgg11 | resnet18-cifar | vgg11-bn-cifar
    seed: int = 0  # seed of the split and of pretraining
    forget_fraction: float = 0.5  # share of the train set forgotten (paper: 0.5)
    forget_classes: list[int] | None = None  # forget these whole classes instead
    forget_index_file: str | None = None  # forget these train indices instead (a deletion request)
    new_fraction: float = 0.1  # share of the test set that is D_n (paper: 10%)
    train_subset: int | None = None  # use a seeded random subset of the train set of this size
    test_subset: int | None = None  # likewise for the test set
    helpers: str = "disjoint"  # what A_f / A_n train on: disjoint | shared | matched | common (splits.py)
    shared_fraction: float = 0.05  # helpers "shared" / "common": |S| / |B| as a share of the train set
    mixed_precision: str | None = None  # no | fp16 | bf16 (None: accelerate's config / env)
    model: str | None = None  # your trained model's weights file, used as A_d (kga_fast.user_model)
    image_size: int = 32  # folder datasets: images are resized to this once
    forget_list: str | None = None  # folder datasets: forget these files (paths under DIR/train)
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std) per channel
    retrains: int = 1  # the retrain pool: A_r, Ar-1 ... Ar-<K-1> (evaluation/pool.py), seeds seed + k
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def split_options(self) -> dict:
        return dict(
            forget_fraction=self.forget_fraction,
            forget_classes=self.forget_classes,
            forget_index_file=self.forget_index_file,
            new_fraction=self.new_fraction,
            train_subset=self.train_subset,
            test_subset=self.test_subset,
            helpers=self.helpers,
            shared_fraction=self.shared_fraction,
            forget_list=self.forget_list,
            normalize=self.normalize,
        )


def seed_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: the unlearning seeds of a command line (non-empty, distinct)."""
    seeds = _int_list(text)
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "unit": ((0.0,), (1.0,)),  # plain [0, 1] pixels, any channel count
}


def _normalization(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if text in NORMALIZATIONS:
        return NORMALIZATIONS[text]
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or len(values) % 2 or any(v <= 0 for v in values[len(values) // 2 :]):
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(NORMALIZATIONS)} or C means then C positive stds, got {text!r}"
        )
    half = len(values) // 2
    return tuple(values[:half]), tuple(values[half:])


def add_run_args(parser: argparse.ArgumentParser, defaults: RunConfig | None = None) -> None:
    d = defaults or RunConfig()
    g = parser.add_argument_group("run folder, data and split")
    g.add_argument("--run-dir", type=Path, default=None, help="run folder (default: runs/<dataset>-<arch>)")
    g.add_argument("--dataset", default=d.dataset, help=f"one of {', '.join(DATASETS)}")
    g.add_argument(
        "--data-dir", default=d.data_dir, help="dataset folder (default: the dataset's usual place)"
    )
    g.add_argument("--download", action="store_true", help="download the dataset with torchvision (online)")
    g.add_argument("--arch", default=d.arch, help=f"one of {', '.join(ARCHS)}")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the split and of pretraining")
    g.add_argument(
        "--forget-fraction",
        type=float,
        default=d.forget_fraction,
        help="share of the train set to forget",
    )
    g.add_argument(
        "--forget-classes",
        type=_int_list,
        default=d.forget_classes,
        help="forget whole classes, e.g. 3,5",
    )
    g.add_argument(
        "--forget-index-file",
        default=d.forget_index_file,
        help="forget these train indices (.json/.npy/.txt)",
    )
    g.add_argument(
        "--forget-list",
        default=d.forget_list,
        metavar="FILE",
        help="--dataset folder: forget these images, one path per line relative to DIR/train",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="--dataset folder: resize every image to this size once (default 32)",
    )
    g.add_argument(
        "--normalize",
        type=_normalization,
        default=d.normalize,
        metavar="MEAN,STD",
        help="the normalization your model was trained with: imagenet, cifar10, unit "
        "([0, 1] pixels), or C means then C stds, e.g. 0.5,0.5 (default: the dataset's "
        "train statistics)",
    )
    g.add_argument(
        "--new-fraction",
        type=float,
        default=d.new_fraction,
        help="share of the test set used as D_n",
    )
    g.add_argument(
        "--train-subset",
        type=int,
        default=d.train_subset,
        help="use a random train subset of this size",
    )
    g.add_argument(
        "--test-subset",
        type=int,
        default=d.test_subset,
        help="use a random test subset of this size",
    )
    g.add_argument(
        "--helpers",
        choices=HELPER_RECIPES,
        default=d.helpers,
        help="what A_f and A_n train on: disjoint (D_f, D_n: the CNN paper), shared (D_f + S, "
        "D_n + S: the original KGA code), matched (|D_n| images of D_f, and D_n: one size, one "
        "schedule), common (as matched, both fine-tuned from one base A_b trained on a slice B of D_r)",
    )
    g.add_argument(
        "--shared-fraction",
        type=float,
        default=d.shared_fraction,
        help="--helpers shared / common: size of the slice S (B) of D_r, as a share of the train set",
    )
    g.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16"],
        default=d.mixed_precision,
        help="autocast precision (default: accelerate's config)",
    )
    p = parser.add_argument_group("pretraining of A_d, A_f, A_n, A_r")
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="your trained model as A_d (safetensors or torch.save(state_dict) of a "
        "torchvision resnet18 / vgg11, or of our -cifar variants): not trained",
    )
    p.add_argument("--pretrain-preset", choices=sorted(PRETRAIN_PRESETS), default=d.pretrain.preset)
    p.add_argument("--pretrain-epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--pretrain-batch-size", type=int, default=None, help="override the preset's global batch")
    p.add_argument("--pretrain-lr", type=float, default=None, help="override the preset's learning rate")
    p.add_argument(
        "--retrains",
        type=int,
        default=d.retrains,
        metavar="K",
        help="train K models on D_r (A_r and Ar-1 ... with pretraining seeds seed+1 ...) and judge "
        "every method against the pool: its floor (JSD between two retrains) and band (default 1: A_r alone)",
    )
    p.add_argument(
        "--pretrain-save-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="save resume state at most this often (0: every epoch; default 30)",
    )


QUICK_SUBSETS = (8000, 4000)  # train / test images of the quick run (no --full)


def use_quick_subsets(args: argparse.Namespace) -> None:
    """The quick run's seeded subsets of a built-in dataset, unless sizes or --full were given
    (a folder dataset, the user's own images, is used whole)."""
    if not args.full and args.dataset != "folder":
        if args.train_subset is None:
            args.train_subset = QUICK_SUBSETS[0]
        if args.test_subset is None:
            args.test_subset = QUICK_SUBSETS[1]


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.dataset not in DATASETS:
        raise UserError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    if args.arch not in ARCHS:
        raise UserError(f"unknown arch {args.arch!r}; choose one of {', '.join(ARCHS)}")
    pre = dataclasses.replace(PRETRAIN_PRESETS[args.pretrain_preset])
    if args.pretrain_save_every is not None:
        pre.save_every_seconds = max(0.0, args.pretrain_save_every)
    for name in ("epochs", "batch_size", "lr"):
        value = getattr(args, f"pretrain_{name}")
        if value is not None:
            if value <= 0:
                raise UserError(f"--pretrain-{name.replace('_', '-')} must be positive, got {value}")
            setattr(pre, name, value)
    if args.retrains < 1:
        raise UserError(f"--retrains must be at least 1, got {args.retrains}")
    for name in ("train_subset", "test_subset"):
        value = getattr(args, name)
        if value is not None and value < 2:
            raise UserError(f"--{name.replace('_', '-')} must be at least 2, got {value}")
    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / f"{args.dataset}-{args.arch}"
    return RunConfig(
        run_dir=Path(run_dir),
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        arch=args.arch,
        seed=args.seed,
        forget_fraction=args.forget_fraction,
        forget_classes=args.forget_classes,
        forget_index_file=args.forget_index_file,
        new_fraction=args.new_fraction,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        helpers=args.helpers,
        shared_fraction=args.shared_fraction,
        mixed_precision=args.mixed_precision,
        model=args.model,
        image_size=args.image_size,
        forget_list=args.forget_list,
        normalize=args.normalize,
        retrains=args.retrains,
        pretrain=pre,
    )

"""A run folder opened for work: its config, its split, and the images of each split.

run = open_run(cfg, accelerator)
images, labels = run.subset("retain")   # uint8 (N, C, 32, 32), int64 (N,)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kga_fast import accel
from kga_fast.config import RunConfig, add_run_args, run_config_from_args, use_quick_subsets
from kga_fast.data import ImageSet, load_images
from kga_fast.errors import UserError
from kga_fast.evaluation.pool import check_pool_size
from kga_fast.results import load_results
from kga_fast.splits import Splits, load_or_create_splits
from kga_fast.user_model import load_user_model

SUBSETS = ("forget", "retain", "new", "test", "helper_forget", "shared", "base")
IN_TEST_SET = ("new", "test")  # the others index the train set
# Which model is trained on which subsets of the train (D) and test sets: helper_forget is
# D_f or the part of it A_f trains on, shared the slice S of D_r, base the slice B of D_r that
# the helpers' common base A_b trains on (all per --helpers).
TRAINED_ON = {
    "Ad": ("forget", "retain"),
    "Af": ("helper_forget", "shared"),
    "An": ("new", "shared"),
    "Ar": ("retain",),
    "Ab": ("base",),
}


@dataclass
class Run:
    cfg: RunConfig
    splits: Splits
    train: ImageSet
    test: ImageSet

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_channels(self) -> int:
        return self.train.in_channels

    def describe(self, accelerator) -> str:
        """One line for the start of a script: data, split sizes, processes, precision."""
        s, cfg = self.splits, self.cfg
        return (
            f"run {cfg.run_dir}: {cfg.dataset}, {cfg.arch}, |D_f|={len(s.forget)} |D_r|={len(s.retain)} "
            f"|D_n|={len(s.new)} |D_t|={len(s.test)}; {accelerator.num_processes} process(es), "
            f"mixed precision {accelerator.mixed_precision}"
        )

    def indices(self, name: str) -> list[int]:
        """Sorted indices of one subset, into the train set or (IN_TEST_SET) the test set."""
        if name not in SUBSETS:
            raise ValueError(f"unknown subset {name!r}")
        if name == "helper_forget" and self.splits.helper_forget is None:
            return self.splits.forget  # A_f trains on all of D_f
        return getattr(self.splits, name)

    def subset(self, *names: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 (N, C, H, W), labels int64 (N,)) of the named subsets: the train set's
        images first, in index order, then the test set's (A_n's D_n + S mixes the two)."""
        parts = []
        for source, in_test in ((self.train, False), (self.test, True)):
            idx = sorted({i for n in names if (n in IN_TEST_SET) == in_test for i in self.indices(n)})
            idx = torch.tensor(idx, dtype=torch.long)
            parts.append((source.images[idx], source.labels[idx]))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def check_run_dir(run_dir: Path) -> None:
    """UserError, before anything is read or written, for a run folder that cannot be made:
    its nearest existing ancestor must be a folder we may write in."""
    parent = Path(os.path.abspath(run_dir))
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create the run folder {run_dir}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) and parent != Path(os.path.abspath(run_dir)):
        raise UserError(f"cannot create the run folder {run_dir}: {parent} is not writable")


def check_model_fits(path: str, arch: str, train: ImageSet) -> None:
    """UserError unless the weights file is an `arch` of the dataset's class and channel counts."""
    _, info = load_user_model(path, arch=arch)
    if (info["num_classes"], info["in_channels"]) != (train.num_classes, train.in_channels):
        raise UserError(
            f"{path} has {info['num_classes']} classes and {info['in_channels']} input channels; "
            f"the dataset has {train.num_classes} and {train.in_channels}"
        )


def open_run(cfg: RunConfig, accelerator=None) -> Run:
    """Load the datasets and the split of `cfg.run_dir` (created on first use, on the main process)."""
    distributed = accelerator is not None and accelerator.num_processes > 1
    check_run_dir(cfg.run_dir)
    if distributed and cfg.download and not accelerator.is_main_process:
        accelerator.wait_for_everyone()  # let the main process download alone, then read its files
    train = load_images(
        cfg.dataset, cfg.data_dir, train=True, download=cfg.download, image_size=cfg.image_size
    )
    test = load_images(
        cfg.dataset, cfg.data_dir, train=False, download=cfg.download, image_size=cfg.image_size
    )
    if cfg.model is not None:  # the user's A_d must fit the data: checked before anything is written
        check_model_fits(cfg.model, cfg.arch, train)
    # One folder, one retrain pool: refused before any retrain is trained.
    check_pool_size(load_results(cfg.run_dir), cfg.retrains, cfg.run_dir)
    if cfg.normalize is not None:  # the model's own preprocessing instead of the dataset's
        mean, std = (tuple(v) * (train.in_channels if len(v) == 1 else 1) for v in cfg.normalize)
        if len(mean) != train.in_channels:
            raise UserError(f"--normalize has {len(mean)} channel(s), the images have {train.in_channels}")
        train, test = (dataclasses.replace(s, mean=mean, std=std) for s in (train, test))
    if distributed and cfg.download and accelerator.is_main_process:
        accelerator.wait_for_everyone()

    def make() -> Splits:
        return load_or_create_splits(
            cfg.run_dir,
            cfg.dataset,
            train.labels,
            len(test.labels),
            seed=cfg.seed,
            train_paths=train.paths,
            **cfg.split_options(),
        )

    if not distributed:
        splits = make()
    else:
        # The main process writes splits.json; the others read what it wrote.
        if accelerator.is_main_process:
            make()
        accelerator.wait_for_everyone()
        splits = make()
    return Run(cfg=cfg, splits=splits, train=train, test=test)


def open_run_from_cli(description: str, argv=None) -> tuple[Run, object]:
    """(run, accelerator) of the run folder named on a command line with the options it was made
    with (kga_fast.config's run options and --full): for the scripts that read a finished run."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(parser)
    parser.add_argument(
        "--full", action="store_true", help="the whole dataset (else the quick run's subsets)"
    )
    args = parser.parse_args(argv)
    use_quick_subsets(args)
    cfg = run_config_from_args(args)
    if not cfg.run_dir.is_dir():  # read, never made here
        raise UserError(f"no run folder {cfg.run_dir}: give the --run-dir of a finished run")
    accelerator = accel.make_accelerator(cfg.mixed_precision)
    return open_run(cfg, accelerator), accelerator

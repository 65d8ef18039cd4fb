"""A run folder opened for work: its config, its split, and the images of each split.

run = open_run(cfg, accelerator)
images, labels = run.subset("retain")   # uint8 (N, C, 32, 32), int64 (N,)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kga_fast.config import RunConfig
from kga_fast.data import ImageSet, load_images
from kga_fast.splits import Splits, load_or_create_splits

SUBSETS = ("forget", "retain", "new", "test")
# Which model is trained on which subsets of the train (D) and test sets.
TRAINED_ON = {"Ad": ("forget", "retain"), "Af": ("forget",), "An": ("new",), "Ar": ("retain",)}


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

    def indices(self, *names: str) -> list[int]:
        """Indices of the union of the named subsets, into the train or the test set."""
        out: list[int] = []
        for name in names:
            if name not in SUBSETS:
                raise ValueError(f"unknown subset {name!r}")
            out += getattr(self.splits, name)
        return sorted(out)

    def subset(self, *names: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 (N, C, H, W), labels int64 (N,)) of the union of the named subsets."""
        in_train = {n in ("forget", "retain") for n in names}
        if len(in_train) != 1:
            raise ValueError(f"cannot mix train and test subsets: {names}")
        source = self.train if in_train.pop() else self.test
        idx = torch.tensor(self.indices(*names), dtype=torch.long)
        return source.images[idx], source.labels[idx]


def open_run(cfg: RunConfig, accelerator=None) -> Run:
    """Load the datasets and the split of `cfg.run_dir` (created on first use, on the main process)."""
    distributed = accelerator is not None and accelerator.num_processes > 1
    if distributed and cfg.download and not accelerator.is_main_process:
        accelerator.wait_for_everyone()  # let the main process download alone, then read its files
    train = load_images(cfg.dataset, cfg.data_dir, train=True, download=cfg.download)
    test = load_images(cfg.dataset, cfg.data_dir, train=False, download=cfg.download)
    if distributed and cfg.download and accelerator.is_main_process:
        accelerator.wait_for_everyone()

    def make() -> Splits:
        return load_or_create_splits(
            cfg.run_dir,
            cfg.dataset,
            train.labels,
            len(test.labels),
            seed=cfg.seed,
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

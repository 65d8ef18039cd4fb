"""What every unlearning method shares: its registry entry (Method), what it reads (UnlearnData,
MethodData), what it returns (UnlearnResult), how it starts (start_from_ad), its seeds and
endless batch streams, and the training time of a pretrained model (A_r's is retraining's cost;
A_f's and A_n's are KGA's)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kga_fast import accel
from kga_fast.data import DeviceLoader
from kga_fast.errors import UserError
from kga_fast.freeze import apply_freeze
from kga_fast.models import StagedNet


@dataclass(frozen=True)
class Method:
    """One unlearning method, as the registry (kga_fast.methods.METHODS) lists it."""

    name: str  # what --method, the API, compare.py and results.json call it
    help: str  # one line for --help and the README
    preset: object = None  # its default configuration (KGA: UnlearnConfig; trained: BaselineConfig)
    fields: tuple[str, ...] = ()  # the BaselineConfig fields it reads beyond the common ones
    setup: Callable | None = None  # trained methods: kga_fast.methods.trained's Setup -> Training


@dataclass
class UnlearnData:
    """What unlearning reads: uint8 (N, C, 32, 32) images of D_r, D_f, D_n (no labels: every
    KGA loss compares model outputs) and the dataset's normalization. For KGA, `forget` holds
    the D_f images that L_a aligns on: those A_f was trained on (all of D_f, or the matched
    helper recipe's part of it)."""

    retain: torch.Tensor
    forget: torch.Tensor
    new: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class MethodData(UnlearnData):
    """UnlearnData plus the labels the baselines train on (KGA's unlearn accepts it as is)."""

    retain_labels: torch.Tensor  # (N_r,) int64
    forget_labels: torch.Tensor  # (N_f,) int64

    def __post_init__(self):
        for name, images, labels in (
            ("retain", self.retain, self.retain_labels),
            ("forget", self.forget, self.forget_labels),
        ):
            if len(images) != len(labels):
                raise ValueError(f"{len(images)} {name} images but {len(labels)} {name} labels")


@dataclass
class UnlearnResult:
    model: StagedNet  # A*, unwrapped, eval mode, on the accelerator's device
    seconds: float  # unlearning time, caching included, state saving excluded
    cache_seconds: float  # of which computing what is cached (kga_fast.methods.kga_cache), in this piece
    epochs_resumed: int  # epochs loaded from an earlier, interrupted run
    losses: dict[str, list[float]] = field(default_factory=dict)  # per-epoch mean L_r, L_a
    stopping: dict = field(default_factory=dict)  # how it ended (stop "gap": the checks made)


# The streams of one unlearning seed, one per use of randomness, so that no two uses share a
# random sequence: the D_r, D_f and D_n orders 0, 1, 2 (DeviceLoader adds the epoch; FCS's second
# D_r order is 2), KGA's held-out share of D_f 4, MSG's D_r sample 5, the fresh draw of
# shrink_perturb and fresh_distill 6; dropout DROPOUT_STREAM + epoch, above them all for any number
# of epochs. (Dropout once took 3 + epoch, which gave epochs 1-3 the seeds of streams 4-6.)
DROPOUT_STREAM = 1000


def stream_seed(seed: int, stream: int) -> int:
    """Independent seeds for one unlearning seed's streams (above): distinct for seeds below 2,147
    and streams below 10,007 (1,000,003 and 10,007 are primes; the modulus wraps above)."""
    return (seed * 1_000_003 + stream * 10_007) % 2**31


def dropout_seed(seed: int, epoch: int, rank: int) -> int:
    """The global RNG's seed for one epoch's dropout on one process: a resumed epoch replays it."""
    return stream_seed(seed, DROPOUT_STREAM + epoch) + rank


def endless(loader: DeviceLoader, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches from overall draw number `start` on, restarting with the next epoch's order when
    the loader runs out: draw k is batch k % len of epoch k // len, so resuming needs no state."""
    epoch, skip = divmod(start, len(loader))
    while True:
        loader.set_epoch(epoch)
        for b, batch in enumerate(loader):
            if b >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def start_from_ad(models: Mapping[str, StagedNet], freeze: tuple[int, ...], accelerator) -> StagedNet:
    """A* as every method starts it: a float32 copy of A_d with the 1-based blocks `freeze`
    frozen, in the accelerator's training memory format."""
    raw = copy.deepcopy(models["Ad"]).float()
    apply_freeze(raw.requires_grad_(True), freeze)
    return accel.to_train_layout(raw, accelerator)


def train_seconds(run_dir: str | Path, name: str) -> float:
    """A pretrained model's training time from models/<name>.json (A_r's is the cost of exact
    unlearning by retraining; A_f's and A_n's are part of KGA's cost)."""
    path = Path(run_dir) / "models" / f"{name}.json"
    try:
        return float(json.loads(path.read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {name}'s train_seconds from {path}: {e}") from None

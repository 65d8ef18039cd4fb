"""Baseline unlearning methods, run like KGA: same freezing, device-resident batches, timing,
resume and result type (kga_fast.unlearn.UnlearnResult).

    result = unlearn_baseline("scrub", models, data, BASELINE_PRESETS["scrub"], freeze=(1, 2),
                              seed=0, accelerator=accelerator, state_dir=...)

- retrain: A_r as it is; its time is A_r's training time (`retrain_seconds`).
- finetune: cross-entropy on D_r (the "FT" baseline of Unlearn-Sparse / SalUn).
- gradient_ascent: minus the cross-entropy on D_f ("GA").
- random_label: cross-entropy on D_r with true labels and D_f with random wrong labels, one
  shuffled union as SalUn's "RL" trains (each D_f sample keeps its wrong label for the run).
- salun: Fan, Liu, Zhang, Wong, Wei, Liu, "SalUn: Empowering Machine Unlearning via Gradient-
  based Weight Saliency", ICLR 2024. A saliency mask from the forget loss's gradient at A_d,
  g = sum over D_f batches of grad CE(A_d(x), y): m = 1(|g| >= gamma), gamma chosen so that
  the share `saliency` (0.5, the paper's median) of the trainable weights with the largest |g|
  is updated; then random_label's training with every gradient multiplied by m, and the
  masked-out weights restored after each step (so weight decay and momentum leave them
  exactly at A_d's values, as the reference code's RL does).
- scrub: Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine
  Unlearning", NeurIPS 2023. Teacher A_d, student a copy of A_d. Each epoch, while epoch <
  max_epochs, one max-pass over D_f maximizing KL(teacher || student) at temperature T; then
  one min-pass over D_r minimizing gamma * CE + alpha * KL(teacher || student). The KL is the
  reference DistillKL: KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean. Hyperparameters
  are the paper's CIFAR ones (SGD lr 5e-4, momentum 0.9, wd 5e-4, T 4, alpha 0.001, gamma
  0.99, forget batch 32) with fewer epochs; the learning-rate decay steps are left out.

Teachers run once (outputs cached and indexed per batch) as in KGA: they are frozen, in eval
mode, and there is no augmentation. Time counts teacher caching and the epochs, not setup.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kga_fast import accel
from kga_fast.checkpoint import model_shape
from kga_fast.data import DeviceLoader
from kga_fast.errors import UserError
from kga_fast.evaluate import predict
from kga_fast.losses import kl_rows
from kga_fast.models import StagedNet
from kga_fast.unlearn import UnlearnResult, start_from_ad, stream_seed
from kga_fast.unlearn_data import MethodData

METHODS = ("kga", "retrain", "finetune", "gradient_ascent", "random_label", "salun", "scrub")
TRAINED = ("finetune", "gradient_ascent", "random_label", "salun", "scrub")  # unlearn_baseline's


@dataclass
class BaselineConfig:
    """How a baseline trains A* (SGD with momentum throughout, as the baselines' papers use)."""

    method: str = "finetune"  # finetune | gradient_ascent | random_label | scrub
    lr: float = 0.01  # constant learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 on the trainable parameters
    batch_size: int = 128  # global batch (D_r, D_f and the union alike; SCRUB's D_r batch)
    epochs: int = 3  # passes over the method's data
    forget_batch_size: int = 32  # SCRUB: global D_f batch of the max-steps
    max_epochs: int = 2  # SCRUB: epochs that begin with a max-pass over D_f ("msteps")
    temperature: float = 4.0  # SCRUB: distillation temperature ("kd_T")
    alpha: float = 0.001  # SCRUB: weight of the KL on D_r in the min-steps
    gamma: float = 0.99  # SCRUB: weight of the cross-entropy on D_r in the min-steps
    saliency: float = 0.5  # SalUn: share of the trainable weights its mask lets train


BASELINE_PRESETS = {
    "finetune": BaselineConfig("finetune", lr=0.01, epochs=3),
    "gradient_ascent": BaselineConfig("gradient_ascent", lr=1e-4, epochs=2),
    "random_label": BaselineConfig("random_label", lr=0.01, epochs=2),
    "salun": BaselineConfig("salun", lr=0.01, epochs=2, saliency=0.5),
    "scrub": BaselineConfig("scrub", lr=5e-4, epochs=3, max_epochs=2),
}


def baseline_config_key(cfg: BaselineConfig) -> dict:
    """What results.json records as "config" (SCRUB-only fields dropped for the others)."""
    only = {
        "scrub": ("forget_batch_size", "max_epochs", "temperature", "alpha", "gamma"),
        "salun": ("saliency",),
    }
    other = [k for m, keys in only.items() if m != cfg.method for k in keys]
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in other}


def check_baseline_config(cfg: BaselineConfig) -> BaselineConfig:
    if cfg.method not in TRAINED:
        raise UserError(f"unknown baseline {cfg.method!r}; choose one of {', '.join(TRAINED)}")
    for name in ("lr", "batch_size", "epochs", "forget_batch_size", "temperature"):
        if not getattr(cfg, name) > 0:
            raise UserError(f"{name.replace('_', ' ')} must be positive, got {getattr(cfg, name)}")
    if not 0 < cfg.saliency <= 1:
        raise UserError(f"saliency must be in (0, 1], got {cfg.saliency}")
    for name in ("momentum", "weight_decay", "max_epochs", "alpha", "gamma"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name.replace('_', ' ')} must not be negative, got {getattr(cfg, name)}")
    return cfg


def train_seconds(run_dir: str | Path, name: str) -> float:
    """A pretrained model's training time from models/<name>.json (A_r's is the cost of exact
    unlearning by retraining; A_f's and A_n's are part of KGA's cost)."""
    path = Path(run_dir) / "models" / f"{name}.json"
    try:
        return float(json.loads(path.read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {name}'s train_seconds from {path}: {e}") from None


def retrain_seconds(run_dir: str | Path) -> float:
    """A_r's training time (models/Ar.json)."""
    return train_seconds(run_dir, "Ar")


def retrain(models: dict[str, StagedNet], run_dir: str | Path) -> UnlearnResult:
    """The gold standard as a method: A_r itself, timed by its own training (freezing n/a)."""
    return UnlearnResult(models["Ar"].eval(), retrain_seconds(run_dir), 0.0, 0, {})


def _distill_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    return kl_rows(teacher / t, student / t).mean() * t * t  # KL(teacher || student) * T^2


def unlearn_baseline(
    models: dict[str, StagedNet],
    data: MethodData,
    cfg: BaselineConfig,
    *,
    freeze: tuple[int, ...],
    seed: int,
    accelerator,
    state_dir: Path | None = None,
    desc: str | None = None,
) -> UnlearnResult:
    """A* from a copy of models["Ad"] by cfg.method; the arguments mean what they mean for
    kga_fast.unlearn.unlearn (state saved per epoch in `state_dir`, cleared by the caller)."""
    check_baseline_config(cfg)
    method, device, world = cfg.method, accelerator.device, accelerator.num_processes
    num_classes = model_shape(models["Ad"])[0]

    def loader(stream: int, images, labels, global_batch: int) -> DeviceLoader:
        batch = accel.per_process_batch(accelerator, global_batch)
        batch = min(batch, len(images) // world)  # a small D_f: one batch of all of it
        if batch < 2:  # BatchNorm in train mode needs two samples
            raise UserError(f"{method}: {len(images)} images are too few for {world} process(es)")
        return accel.rank_loader(
            accelerator,
            images,
            labels,
            global_batch=batch * world,
            mean=data.mean,
            std=data.std,
            shuffle=True,
            seed=stream_seed(seed, stream),
            drop_last=True,
        )

    if method in ("random_label", "salun"):  # a wrong label per D_f sample: (y + U{1..K-1}) mod K
        g = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, num_classes, (len(data.forget),), generator=g)
        wrong = (data.forget_labels + shift) % num_classes  # (N_f,)
        images = torch.cat([data.forget, data.retain])
        main_dl = loader(0, images, torch.cat([wrong, data.retain_labels]), cfg.batch_size)
    elif method == "gradient_ascent":
        main_dl = loader(0, data.forget, data.forget_labels, cfg.batch_size)
    else:
        main_dl = loader(0, data.retain, data.retain_labels, cfg.batch_size)
    forget_dl = (
        loader(1, data.forget, data.forget_labels, cfg.forget_batch_size) if method == "scrub" else None
    )

    raw = start_from_ad(models, freeze, accelerator)
    params = [p for p in raw.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    student, optimizer = accelerator.prepare(raw, optimizer)
    key = baseline_config_key(cfg) | {
        "freeze": list(freeze),
        "seed": seed,
        "world_size": world,
        "mixed_precision": str(accelerator.mixed_precision),
    }
    progress = {"epoch": 0, "seconds": 0.0, "losses": {}, "key": key}

    mask: dict[torch.nn.Parameter, torch.Tensor] = {}  # SalUn: parameter -> bool saliency mask

    def run_pass(dl: DeviceLoader, name: str, loss_of, epoch: int, bar) -> None:
        """One pass over `dl`, an optimizer step per batch; records the pass's mean loss."""
        dl.set_epoch(epoch)
        total = torch.zeros((), device=device)  # summed on the device: no host sync per step
        for x, y, idx in dl:
            with accelerator.autocast():
                out = student(x).float()  # (B, K)
            loss = loss_of(out, y, idx)
            accelerator.backward(loss)
            for p, m in mask.items():
                p.grad.mul_(m)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # masked-out weights stay A_d's (weight decay, momentum)
                for p, m in mask.items():
                    p.copy_(torch.where(m, p, start[p]))
            total += loss.detach()
            bar.update(1)
        mean = total / len(dl)
        mean = accelerator.reduce(mean, "mean") if world > 1 else mean
        losses.setdefault(name, []).append(mean.item())

    # The losses minimized, each on a batch's student logits (B, K), labels and positions.
    def cross_entropy(out, y, idx):
        return F.cross_entropy(out, y)

    def ascent(out, y, idx):
        return -F.cross_entropy(out, y)

    def scrub_max(out, y, idx):
        return -_distill_kl(out, teacher["forget"][idx], cfg.temperature)

    def scrub_min(out, y, idx):
        kd = _distill_kl(out, teacher["retain"][idx], cfg.temperature)
        return cfg.gamma * F.cross_entropy(out, y) + cfg.alpha * kd

    # (loader, loss name, loss, epochs that run this pass) in the order of an epoch
    passes = {
        "finetune": [(main_dl, "loss", cross_entropy, cfg.epochs)],
        "random_label": [(main_dl, "loss", cross_entropy, cfg.epochs)],
        "salun": [(main_dl, "loss", cross_entropy, cfg.epochs)],
        "gradient_ascent": [(main_dl, "loss", ascent, cfg.epochs)],
        "scrub": [
            (forget_dl, "max_step", scrub_max, cfg.max_epochs),
            (main_dl, "min_step", scrub_min, cfg.epochs),
        ],
    }[method]

    t0 = time.perf_counter()
    if method == "salun":  # the mask, from A_d's forget-loss gradient, before any resume
        start = {p: p.detach().clone() for p in params}  # A_d's weights, kept where m is 0
        mask = saliency_mask(
            raw, params, loader(2, data.forget, data.forget_labels, cfg.batch_size), cfg.saliency, accelerator
        )
    mask_seconds = time.perf_counter() - t0  # counted in the unlearning time
    try:
        progress = accel.resume(accelerator, state_dir, key) or progress
        start_epoch, losses = progress["epoch"], progress["losses"]
        t0 = time.perf_counter()
        if method == "scrub":  # A_d's logits on D_r and D_f, on the device
            teacher = {
                split: predict(
                    models["Ad"], images, mean=data.mean, std=data.std, accelerator=accelerator
                ).to(device)
                for split, images in (("retain", data.retain), ("forget", data.forget))
            }
        accel.synchronize(accelerator)
        cache_seconds = time.perf_counter() - t0 + mask_seconds
        seconds = progress["seconds"] + cache_seconds
        total_steps = sum(len(dl) * (min(n, cfg.epochs) - min(n, start_epoch)) for dl, _, _, n in passes)
        bar = tqdm(
            total=total_steps, desc=desc or method, leave=False, disable=not accelerator.is_local_main_process
        )
        student.train()
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            # Dropout (VGG) draws from a per-epoch seed, so a resumed epoch replays exactly.
            torch.manual_seed(stream_seed(seed, 3 + epoch) + accelerator.process_index)
            for dl, name, loss_of, until in passes:
                if epoch < until:
                    run_pass(dl, name, loss_of, epoch, bar)
            accel.synchronize(accelerator)
            seconds += time.perf_counter() - t0
            if state_dir is not None and epoch + 1 < cfg.epochs:
                progress.update(epoch=epoch + 1, seconds=seconds, losses=losses)
                accel.save_state(accelerator, state_dir, progress)
        bar.close()
    finally:
        accelerator.free_memory()  # as in unlearn(): the next run sees one model and optimizer
    return UnlearnResult(raw.eval(), seconds, cache_seconds, start_epoch, losses)


def saliency_mask(
    model: StagedNet, params: list[torch.nn.Parameter], forget_dl: DeviceLoader, share: float, accelerator
) -> dict[torch.nn.Parameter, torch.Tensor]:
    """SalUn's hard mask: {param: bool tensor}, True for the `share` of all trainable weights
    with the largest |sum over D_f batches of grad CE(model(x), y)| (model in eval mode, as the
    reference computes it; under DDP the gradients are summed over processes)."""
    was_training = model.training
    model.eval()
    grads = [torch.zeros_like(p) for p in params]
    forget_dl.set_epoch(0)
    for x, y, _ in forget_dl:
        with accelerator.autocast():
            loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        for g, d in zip(grads, torch.autograd.grad(loss, params), strict=True):
            g += d
    model.train(was_training)
    flat = torch.cat([g.flatten() for g in grads]).abs()
    if accelerator.num_processes > 1:
        flat = accelerator.reduce(flat, "sum")
    # Exactly `keep` weights by rank, as the reference's argsort does: a threshold would let ties
    # in. Most |g| can tie at exactly 0 (ReLU channels dead on all of D_f: 64% of A_d's weights on
    # the quick Fashion-MNIST run), and ">= the median" then kept every weight. Stable order:
    # ties go to the earlier weight, the same on every process.
    keep = max(1, round(share * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.argsort(flat, descending=True, stable=True)[:keep]] = True
    mask, offset = {}, 0
    for p in params:
        mask[p] = chosen[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return mask

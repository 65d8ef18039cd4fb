"""KGA unlearning (the paper's Algorithm 1) with layer freezing, cached teachers and resume;
its stopping rule is kga_stopping.py, its caches kga_cache.py.

    result = unlearn(models, data, UNLEARN_PRESETS["default"], freeze=(1, 2), seed=0,
                     accelerator=accelerator, state_dir=run_dir / "state" / name)

Schedule. Per epoch, retain batches are counted from 1. Every D_r batch back-propagates
L_r * (1 - ratio) / inner_steps. After every inner_steps-th batch AND after the epoch's last
batch, one D_f batch and one D_n batch are drawn (each stream restarts when it runs out),
L_a is back-propagated unscaled (as the original KGA code does) and the optimizer steps.
The one difference from the pseudo-code, which steps at batch 0 (`curr_step mod INNER_STEPS
= 0` before the increment): no gradient crosses an epoch boundary, so per-epoch resume is
exact and the first update sees inner_steps retain batches, like every other update.

Losses. The gap KL(A_d(z) || A_n(z)) is the same under both directions: the paper's eq. (2)
writes it so, and the original code's `F.kl_div(log_softmax(A_n), log_softmax(A_d),
log_target=True)` is KL(target || input) = KL(A_d || A_n) too. `direction` flips only the
terms that involve A*: student_first (the paper's equations) KL(A* || A_f), KL(A* || A_d);
teacher_first (the original code) KL(A_f || A*), KL(A_d || A*). `reduction` "pair" pairs the
i-th D_f sample with the i-th D_n sample (eq. 2); "batch" compares batch means (the original
code), and under DDP each process compares its own share of the batch.

Teachers (A_d, A_f, A_n) are frozen and in eval mode; without augmentation their outputs are
constants, computed once (`cache_teachers=True`) and indexed per batch; only A* runs forward
and backward. The uncached path runs them every step on the very same batches. Likewise the
features of A*'s frozen prefix are computed once when they fit in `prefix_cache_gb`, so that a
step runs only the trainable blocks (kga_fast.methods.kga_cache).

A damaged start (`start="ct"`, issue 17): A* begins as A_d with every trainable conv kernel
transposed (CT's damage, kga_fast.methods.ct); L_r (towards A_d on D_r) repairs it and L_a
aligns its gap; the gap rule then stops once A*'s distance to A_f has come down to the target.

The retain loss (`retain_loss`, issue 17): "kl" is the paper's L_r, KL(A*(x) || A_d(x)) on D_r;
"ce" is cross-entropy on D_r's labels instead, for the question whether L_r, a distillation from
A_d, re-teaches A* what A_d learned from D_f (fresh_distill measured that it does for a fresh
network). It needs the labels of D_r (MethodData) and skips A_d's cached outputs on D_r.

Under DDP each process takes its rank's share of every batch (DistributedSampler order), so
the processes together see the single-process batches and pairs; only the L_a backward of a
step all-reduces. BatchNorm in train mode normalizes per process (no SyncBatchNorm on CPU).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kga_fast import accel
from kga_fast.data import DeviceLoader
from kga_fast.errors import UserError
from kga_fast.losses import DIRECTIONS, REDUCTIONS, alignment_loss, retain_loss
from kga_fast.methods.common import (
    Method,
    MethodData,
    UnlearnData,
    UnlearnResult,
    dropout_seed,
    endless,
    start_from_ad,
    stream_seed,
)
from kga_fast.methods.ct import transpose_kernels
from kga_fast.methods.kga_cache import PrefixCache, Teachers
from kga_fast.methods.kga_stopping import GapStop, holdout_split
from kga_fast.models import StagedNet

OPTIMIZERS = ("adam", "sgd")
STOPS = ("epochs", "gap")
STARTS = ("ad", "ct")
RETAIN_LOSSES = ("kl", "ce")


@dataclass
class UnlearnConfig:
    """How A* is unlearned (the fields above `cache_teachers` change the result). The field
    defaults are the "default" preset."""

    preset: str = "default"  # the preset these values started from (overrides show in the rest)
    optimizer: str = "adam"  # adam | sgd
    lr: float = 3e-4  # constant learning rate
    eps: float = 1e-8  # Adam epsilon
    momentum: float = 0.0  # SGD momentum
    weight_decay: float = 0.0  # L2 on the trainable parameters
    ratio: float = 0.1  # retain loss ratio: each batch's L_r is scaled by (1 - ratio) / inner_steps
    inner_steps: int = 4  # retain batches per optimizer step (one L_a per step)
    batch_size: int = 64  # global batch (split across processes); D_f / D_n batches too
    epochs: int = 2  # passes over D_r
    direction: str = "student_first"  # student_first (paper eqs. 2, 3) | teacher_first (KGA code)
    reduction: str = "pair"  # pair (paper eq. 2) | batch (KGA code) | sorted (gap distributions)
    stop: str = "epochs"  # epochs: run them all | gap: stop once A*'s held-out gap meets D_n's (below)
    holdout: float = 0.2  # stop "gap": share of the D_f images kept out of L_a to check it on
    check_every: int = 4  # stop "gap": optimizer steps between checks
    start: str = "ad"  # ad: A* starts as A_d | ct: as A_d with every trainable conv kernel transposed
    retain_loss: str = "kl"  # kl: KL to A_d on D_r (paper eq. 3) | ce: cross-entropy on D_r's labels
    cache_teachers: bool = True  # teacher outputs computed once (same losses as uncached)
    prefix_cache_gb: float = 4.0  # frozen-prefix features kept when they fit (0: never)
    compile: bool = False  # torch.compile the student
    impl: str | None = None  # loss backend: fused | reference | auto (None: KGA_FAST_IMPL)
    log_every: int = 10  # optimizer steps between progress-bar loss updates (host syncs)


RUNTIME_FIELDS = ("cache_teachers", "prefix_cache_gb", "compile", "impl", "log_every")

# Section 4.1 / 5.1 of the paper: Adam lr 0.05, eps 1e-8, ratio 0.1, inner steps 15, batch 256,
# 15 epochs, no augmentation.
PAPER = UnlearnConfig(
    preset="paper", optimizer="adam", lr=0.05, eps=1e-8, ratio=0.1, inner_steps=15, batch_size=256, epochs=15
)
# Ours: the paper's loop at a 170x smaller Adam step and more, smaller steps. On the quick
# Fashion-MNIST run it keeps test accuracy within a point of A_d's while moving forget-set
# accuracy towards A_r's; the paper preset falls to chance (bench/RESULTS.md, "Unlearning
# presets (the paper's open question)").
DEFAULT = UnlearnConfig()  # Adam lr 3e-4, eps 1e-8, ratio 0.1, inner steps 4, batch 64, 2 epochs
UNLEARN_PRESETS = {"default": DEFAULT, "paper": PAPER}


def config_key(cfg: UnlearnConfig) -> dict:
    """The fields that change the result: what results.json records as "config". `start` and
    `retain_loss` are left out at "ad" and "kl": the records written before they existed used
    those, and still match."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}
    for name, before in (("start", "ad"), ("retain_loss", "kl")):
        if key[name] == before:
            del key[name]
    return key


def check_config(cfg: UnlearnConfig) -> UnlearnConfig:
    """UserError on a value that cannot work; returns cfg."""
    for name, choices in (
        ("optimizer", OPTIMIZERS),
        ("direction", DIRECTIONS),
        ("reduction", REDUCTIONS),
        ("stop", STOPS),
        ("start", STARTS),
        ("retain_loss", RETAIN_LOSSES),
    ):
        if getattr(cfg, name) not in choices:
            raise UserError(f"unknown {name} {getattr(cfg, name)!r}; choose one of {', '.join(choices)}")
    for name, ok in (
        ("lr", cfg.lr > 0),
        ("ratio", 0 <= cfg.ratio <= 1),
        ("inner_steps", cfg.inner_steps >= 1),
        ("batch_size", cfg.batch_size >= 1),
        ("epochs", cfg.epochs >= 1),
        ("prefix_cache_gb", cfg.prefix_cache_gb >= 0),
        ("holdout", 0 < cfg.holdout < 1),
        ("check_every", cfg.check_every >= 1),
    ):
        if not ok:
            bound = {"ratio": "in [0, 1]", "prefix_cache_gb": "0 or more", "holdout": "in (0, 1)"}.get(
                name, "positive"
            )
            raise UserError(f"{name.replace('_', ' ')} must be {bound}, got {getattr(cfg, name)}")
    return cfg


def _make_optimizer(cfg: UnlearnConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def unlearn(
    models: Mapping[str, StagedNet],
    data: UnlearnData,
    cfg: UnlearnConfig,
    *,
    freeze: tuple[int, ...],
    seed: int,
    accelerator,
    state_dir: Path | None = None,
    desc: str = "unlearn",
) -> UnlearnResult:
    """Unlearn D_f from a copy of models["Ad"] with KGA; teachers "Ad", "Af", "An".

    `freeze` holds 1-based block numbers (kga_fast.freeze). With `state_dir`, the state is saved
    there after every epoch but the last and an existing one is resumed; the caller clears it
    (accel.clear_state) once the result is recorded. `cfg.batch_size` is the global batch.
    """
    check_config(cfg)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    held = None
    if cfg.stop == "gap":  # a share of D_f kept out of L_a to check the rule on; D_n whole (the target)
        keep_f, held_f = holdout_split(len(data.forget), cfg.holdout, stream_seed(seed, 4))
        held = (data.forget[held_f], data.new)
        kept = {"forget_labels": data.forget_labels[keep_f]} if isinstance(data, MethodData) else {}
        data = dataclasses.replace(data, forget=data.forget[keep_f], **kept)
    per_rank = accel.per_process_batch(accelerator, cfg.batch_size)
    pair = min(per_rank, len(data.forget) // world, len(data.new) // world)  # D_f/D_n pairs per rank
    if pair < 1:
        raise UserError(f"D_f ({len(data.forget)}) and D_n ({len(data.new)}) need a sample per process")

    retain_labels = None  # read by retain_loss "ce" only
    if cfg.retain_loss == "ce":
        if not isinstance(data, MethodData):
            raise UserError("retain loss ce trains on D_r's labels: pass MethodData, which holds them")
        retain_labels = data.retain_labels

    def loader(stream: int, images: torch.Tensor, batch: int, drop_last: bool, labels=None) -> DeviceLoader:
        if labels is None:  # unused: L_a and the KL retain loss compare outputs
            labels = torch.zeros(len(images), dtype=torch.int64)
        return accel.rank_loader(
            accelerator,
            images,
            labels,
            global_batch=batch * world,
            mean=data.mean,
            std=data.std,
            shuffle=True,
            seed=stream_seed(seed, stream),
            drop_last=drop_last,
        )

    retain_dl = loader(0, data.retain, per_rank, False, retain_labels)
    forget_dl = loader(1, data.forget, pair, True)  # drop_last: every pair batch has P rows
    new_dl = loader(2, data.new, pair, True)
    n_batches = len(retain_dl)
    steps_per_epoch = math.ceil(n_batches / cfg.inner_steps)

    raw = start_from_ad(models, freeze, accelerator)
    if cfg.start == "ct":  # CT's damage, repaired by L_r and L_a
        transpose_kernels(raw, who="start ct")
    optimizer = _make_optimizer(cfg, [p for p in raw.parameters() if p.requires_grad])
    student, optimizer = accelerator.prepare(torch.compile(raw) if cfg.compile else raw, optimizer)
    key = config_key(cfg) | {
        "freeze": list(freeze),
        "seed": seed,
        "world_size": world,
        "mixed_precision": str(accelerator.mixed_precision),
    }
    progress = {"epoch": 0, "seconds": 0.0, "losses": {"retain": [], "align": []}, "checks": [], "key": key}
    stopped_at = None  # the optimizer step at which the gap rule stopped unlearning

    try:
        progress = accel.resume(accelerator, state_dir, key) or progress
        start_epoch, losses = progress["epoch"], progress["losses"]
        t0 = time.perf_counter()
        teachers = {k: models[k] for k in ("Ad", "Af", "An")}
        teachers = Teachers(
            teachers, data, accelerator, cfg.cache_teachers, cfg.impl, retain=cfg.retain_loss == "kl"
        )
        prefix = PrefixCache(raw, data, accelerator, cfg.prefix_cache_gb)
        if prefix.skipped:
            accelerator.print(f"note: {prefix.skipped}")
        stopper = None
        if held is not None:
            stopper = GapStop(
                teachers.models,
                *held,
                mean=data.mean,
                std=data.std,
                accelerator=accelerator,
                direction=cfg.direction,
                impl=cfg.impl,
                checks=progress["checks"],
                from_above=cfg.start != "ad",
            )
            if start_epoch == 0 and stopper.reached(student, 0):
                stopped_at = 0
        accel.synchronize(accelerator)
        cache_seconds = time.perf_counter() - t0
        seconds = progress["seconds"] + cache_seconds
        forget_it = endless(forget_dl, start_epoch * steps_per_epoch)
        new_it = endless(new_dl, start_epoch * steps_per_epoch)
        scale = (1.0 - cfg.ratio) / cfg.inner_steps
        bar = tqdm(
            total=(cfg.epochs - start_epoch) * n_batches,
            desc=desc,
            leave=False,
            disable=not accelerator.is_local_main_process,
        )
        student.train()
        for epoch in range(start_epoch, cfg.epochs if stopped_at is None else start_epoch):
            t0 = time.perf_counter()
            # Dropout (VGG) draws from a per-epoch seed, so a resumed epoch replays exactly.
            torch.manual_seed(dropout_seed(seed, epoch, rank))
            retain_dl.set_epoch(epoch)
            sum_r = torch.zeros((), device=device)  # summed on the device: no host sync per step
            sum_a = torch.zeros((), device=device)
            steps = 0
            for b, (x, y, idx) in enumerate(retain_dl, 1):
                # L_r backwards accumulate locally; only the step's L_a backward all-reduces.
                with accelerator.no_sync(student):
                    with accelerator.autocast():
                        out = student(*prefix.inputs("retain", x, idx)).float()  # (B, K)
                    if cfg.retain_loss == "ce":
                        l_r = F.cross_entropy(out, y)
                    else:
                        target = teachers.retain(x, idx)  # (B, K)
                        l_r = retain_loss(out, target, direction=cfg.direction, impl=cfg.impl)
                    accelerator.backward(l_r * scale)
                sum_r += l_r.detach()
                if b % cfg.inner_steps == 0 or b == n_batches:
                    xf, _, idx_f = next(forget_it)  # (P, C, H, W), (P,)
                    xn, _, idx_n = next(new_it)
                    with accelerator.autocast():
                        out_f = student(*prefix.inputs("forget", xf, idx_f)).float()  # (P, K)
                    l_a = alignment_loss(
                        out_f,
                        teachers.forget(xf, idx_f),
                        teachers.gap(xn, idx_n),
                        reduction=cfg.reduction,
                        direction=cfg.direction,
                        impl=cfg.impl,
                    )
                    accelerator.backward(l_a)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    sum_a += l_a.detach()
                    steps += 1
                    if steps % cfg.log_every == 0:
                        r, a = sum_r.item() / b, sum_a.item() / steps
                        bar.set_postfix(L_r=f"{r:.4f}", L_a=f"{a:.4f}", refresh=False)
                    step = epoch * steps_per_epoch + steps
                    if stopper is not None and step % cfg.check_every == 0:
                        if stopper.reached(student, step):
                            stopped_at = step
                            break
                bar.update(1)
            # Mean over processes of their mean losses: the single-process value at equal shares.
            epoch_means = torch.stack([sum_r / b, sum_a / steps])
            epoch_means = accelerator.reduce(epoch_means, "mean") if world > 1 else epoch_means
            losses["retain"].append(epoch_means[0].item())
            losses["align"].append(epoch_means[1].item())
            accel.synchronize(accelerator)
            seconds += time.perf_counter() - t0
            if stopped_at is not None:
                break
            if state_dir is not None and epoch + 1 < cfg.epochs:
                progress.update(
                    epoch=epoch + 1, seconds=seconds, losses=losses, checks=stopper.checks if stopper else []
                )
                accel.save_state(accelerator, state_dir, progress)
    finally:
        # Drop the DDP wrapper and optimizer from the accelerator (also after an interruption),
        # so that the next run's save_state / load_state see exactly one model and optimizer.
        accelerator.free_memory()
    bar.close()
    stopping = stopper.record(stopped_at) if stopper else {"rule": "epochs"}
    return UnlearnResult(raw.eval(), seconds, cache_seconds, start_epoch, losses, stopping)


METHOD = Method("kga", "Knowledge Gap Alignment, the paper's method (the default)", DEFAULT)

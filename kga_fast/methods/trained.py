"""The training loop that every baseline shares (finetune, gradient_ascent, random_label, salun,
scrub, neggrad_plus, ct, msg, fcs, shrink_perturb): one config dataclass, the same freezing,
device-resident batches, DDP, resume, timing and result type as KGA
(kga_fast.methods.common.UnlearnResult).

    result = unlearn_baseline(models, data, BASELINE_PRESETS["scrub"], freeze=(1, 2), seed=0,
                              accelerator=accelerator, state_dir=...)   # kga_fast.methods

A method (one module of kga_fast.methods) supplies `setup(ctx) -> Training`: the passes of an
epoch (which loader, which loss) and, where it has them, gradient scales and weights pinned to
A_d's values. Setup runs on the fresh copy of A_d before any resume (a damaged start, a saliency
mask from A_d's gradient, the teacher's cached outputs) and its time counts as the method's
caching time. Every pass steps SGD with momentum once per batch; the learning rate follows
`schedule` over all the run's steps (computed from the step number, so a resumed run continues
it exactly). A method whose passes each have their own SGD (FCS) names them in
`Training.optimizers`: each steps, and follows its schedule, over its own passes' steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kga_fast import accel
from kga_fast.checkpoint import model_shape
from kga_fast.data import DeviceLoader, normalize
from kga_fast.errors import UserError
from kga_fast.evaluation.evaluate import predict
from kga_fast.methods.common import (
    MethodData,
    UnlearnResult,
    dropout_seed,
    endless,
    start_from_ad,
    stream_seed,
)
from kga_fast.models import StagedNet

# The BaselineConfig fields that take one of a few words, and those words (the CLI's choices).
CHOICES = {
    "schedule": ("constant", "cosine", "triangle"),
    "reset_saliency": ("low", "high"),  # MSG: which end of the saliency order is re-initialized
}


@dataclass
class BaselineConfig:
    """How a baseline trains A* (SGD with momentum throughout, as the baselines' papers use). The
    fields below `schedule` belong to one method each (kga_fast.methods: Method.fields)."""

    method: str = "finetune"  # a trained method of kga_fast.methods
    lr: float = 0.01  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 on the trainable parameters
    batch_size: int = 128  # global batch (D_r, D_f and the union alike; SCRUB's D_r batch)
    epochs: int = 3  # passes over the method's data
    schedule: str = "constant"  # constant | cosine (to 0) | triangle (up to lr at mid-run, down to 0)
    forget_batch_size: int = 32  # SCRUB: global D_f batch of the max-steps
    max_epochs: int = 2  # SCRUB: epochs that begin with a max-pass over D_f ("msteps")
    temperature: float = 4.0  # SCRUB, fresh_distill: distillation temperature ("kd_T"); FCS: the contrast's
    alpha: float = 0.001  # SCRUB: weight of the KL on D_r in the min-steps; fresh_distill: of its KL
    gamma: float = 0.99  # SCRUB: weight of the CE on D_r in the min-steps; fresh_distill: of its CE
    saliency: float = 0.5  # SalUn: share of the trainable weights its mask lets train
    retain_weight: float = 0.95  # NegGrad+: alpha in alpha * CE(D_r) - (1 - alpha) * CE(D_f)
    reset_share: float = 0.3  # MSG: share of each conv layer's weights re-initialized
    kept_grad_scale: float = 0.1  # MSG: gradient scale of the conv weights not re-initialized
    reset_saliency: str = "low"  # MSG: re-initialize the lowest-|g| share (the original) or the highest
    uniform_lr: float = 0.005  # FCS: learning rate of its first pass (D_f's outputs to uniform)
    forget_lr: float = 3e-4  # FCS: peak learning rate of its contrast passes (cosine)
    shrink: float = 0.5  # shrink and perturb: the share of A_d's value each weight keeps
    perturb: float = 0.5  # shrink and perturb: the share of a fresh initialization's value added


# The fields every trained method reads; the others are named by the method that reads them.
COMMON_FIELDS = ("method", "lr", "momentum", "weight_decay", "batch_size", "epochs", "schedule")


@dataclass
class Pass:
    """One pass of an epoch: an optimizer step per batch of `loaders[0]`; the other loaders are
    cycled beside it (one batch each per step, each stream restarting when it runs out). `loss`
    takes the student's forward (images -> float32 logits) and one (x, y, idx) per loader."""

    name: str  # the loss's name in results.json "losses"
    loaders: tuple[DeviceLoader, ...]
    loss: Callable[..., torch.Tensor]
    epochs: int | None = None  # the first `epochs` epochs run it (None: every epoch)
    optimizer: str = "main"  # which SGD steps it: "main" (the config's) or one of Training.optimizers


@dataclass
class Training:
    """What a method's setup returns: its passes, and what changes every step."""

    passes: list[Pass]
    grad_scale: dict[torch.nn.Parameter, torch.Tensor] = field(default_factory=dict)  # grad *= scale
    pinned: dict[torch.nn.Parameter, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # pinned: param -> (bool where it trains, A_d's values kept elsewhere after every step)
    optimizers: dict[str, dict] = field(default_factory=dict)
    # optimizers: name -> overrides of the config's lr, weight_decay, schedule for an SGD of its own


@dataclass
class Setup:
    """What a method's setup can use: the fresh student (A_d's copy, blocks frozen, unwrapped),
    its trainable parameters, the data and config, and seeded loaders."""

    model: StagedNet
    params: list[torch.nn.Parameter]
    data: MethodData
    cfg: BaselineConfig
    models: Mapping[str, StagedNet]
    seed: int
    accelerator: object
    num_classes: int

    def loader(self, stream: int, images, labels, global_batch: int) -> DeviceLoader:
        """This rank's share of a shuffled, seeded stream (drop_last); a set smaller than the batch
        is one batch of all of it."""
        world = self.accelerator.num_processes
        batch = accel.per_process_batch(self.accelerator, global_batch)
        batch = min(batch, len(images) // world)
        if batch < 2:  # BatchNorm in train mode needs two samples
            raise UserError(f"{self.cfg.method}: {len(images)} images are too few for {world} process(es)")
        return accel.rank_loader(
            self.accelerator,
            images,
            labels,
            global_batch=batch * world,
            mean=self.data.mean,
            std=self.data.std,
            shuffle=True,
            seed=stream_seed(self.seed, stream),
            drop_last=True,
        )

    def retain_loader(self, stream: int = 0) -> DeviceLoader:
        return self.loader(stream, self.data.retain, self.data.retain_labels, self.cfg.batch_size)

    def forget_loader(self, stream: int = 1, batch: int | None = None) -> DeviceLoader:
        return self.loader(stream, self.data.forget, self.data.forget_labels, batch or self.cfg.batch_size)

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """A_d's logits on `images` (every process: the whole set), on the device."""
        return predict(
            self.models["Ad"], images, mean=self.data.mean, std=self.data.std, accelerator=self.accelerator
        ).to(self.accelerator.device)


def cross_entropy(forward, batch) -> torch.Tensor:
    """The loss of a pass over labelled images: CE(A*(x), y)."""
    x, y, _ = batch
    return F.cross_entropy(forward(x), y)


def loss_gradient(ctx: Setup, terms: list[tuple[torch.Tensor, torch.Tensor, float]]) -> list[torch.Tensor]:
    """sum over (images, labels, sign) in `terms` of sign * the gradient of the summed
    CE(model(x), y) over every image, per trainable parameter of ctx.model (in eval mode:
    BatchNorm statistics untouched). Each process takes every world-th image and the sums are
    all-reduced, so every rank holds the whole sets' gradient, each image counted once."""
    model, acc = ctx.model, ctx.accelerator
    rank, world = acc.process_index, acc.num_processes
    batch = accel.per_process_batch(acc, ctx.cfg.batch_size)
    was_training = model.training
    model.eval()
    grads = [torch.zeros_like(p) for p in ctx.params]
    for images, labels, sign in terms:
        mine = torch.arange(rank, len(images), world)
        for chunk in mine.split(batch):
            x = normalize(images[chunk], ctx.data.mean, ctx.data.std).to(acc.device)
            with acc.autocast():
                loss = sign * F.cross_entropy(model(x).float(), labels[chunk].to(acc.device), reduction="sum")
            for g, d in zip(grads, torch.autograd.grad(loss, ctx.params), strict=True):
                g += d
    model.train(was_training)
    if world > 1:
        flat = acc.reduce(torch.cat([g.flatten() for g in grads]), "sum")
        grads = [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)]
    return grads


def check_values(cfg: BaselineConfig) -> BaselineConfig:
    """UserError on a value that cannot work (the method's name: kga_fast.methods'
    check_baseline_config); returns cfg."""
    for name, words in CHOICES.items():
        if getattr(cfg, name) not in words:
            raise UserError(
                f"unknown {name.replace('_', ' ')} {getattr(cfg, name)!r}; choose one of {', '.join(words)}"
            )
    for name in ("lr", "batch_size", "epochs", "forget_batch_size", "temperature", "uniform_lr", "forget_lr"):
        if not getattr(cfg, name) > 0:
            raise UserError(f"{name.replace('_', ' ')} must be positive, got {getattr(cfg, name)}")
    for name in ("saliency", "reset_share"):
        if not 0 < getattr(cfg, name) <= 1:
            raise UserError(f"{name.replace('_', ' ')} must be in (0, 1], got {getattr(cfg, name)}")
    if not 0 <= cfg.retain_weight <= 1:
        raise UserError(f"retain weight must be in [0, 1], got {cfg.retain_weight}")
    for name in (
        "momentum",
        "weight_decay",
        "max_epochs",
        "alpha",
        "gamma",
        "kept_grad_scale",
        "shrink",
        "perturb",
    ):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name.replace('_', ' ')} must not be negative, got {getattr(cfg, name)}")
    if cfg.alpha == cfg.gamma == 0:
        raise UserError("alpha and gamma cannot both be 0: the loss on D_r would be 0")
    if cfg.shrink == cfg.perturb == 0:
        raise UserError("shrink and perturb cannot both be 0: every weight would be 0")
    return cfg


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total`, as a share of the peak."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    if schedule == "triangle":
        half = total / 2
        return min(1.0, (step + 1) / half, (total - step) / half)  # at most the peak (odd totals)
    return 1.0


def _batches(p: Pass, epoch: int) -> Iterator[tuple]:
    """(x, y, idx) per loader for each step of `p` in `epoch`; cycled loaders continue from draw
    epoch * len(loaders[0]), so a resumed epoch sees the batches it would have seen."""
    main, *cycled = p.loaders
    main.set_epoch(epoch)
    streams = [endless(dl, epoch * len(main)) for dl in cycled]
    for batch in main:
        yield (batch, *(next(s) for s in streams))


def train(
    setup: Callable[[Setup], Training],
    models: Mapping[str, StagedNet],
    data: MethodData,
    cfg: BaselineConfig,
    *,
    freeze: tuple[int, ...],
    seed: int,
    accelerator,
    state_dir: Path | None = None,
    desc: str | None = None,
    key: dict,
) -> UnlearnResult:
    """A* from a copy of models["Ad"] by a method's `setup` with `cfg` (checked by the caller);
    the arguments mean what they mean for kga_fast.methods.kga.unlearn (state saved per epoch in
    `state_dir`, cleared by the caller). `key` is what a saved state must match to be resumed."""
    device, world = accelerator.device, accelerator.num_processes
    raw = start_from_ad(models, freeze, accelerator)
    params = [p for p in raw.parameters() if p.requires_grad]
    ctx = Setup(raw, params, data, cfg, models, seed, accelerator, model_shape(models["Ad"])[0])
    t0 = time.perf_counter()
    training = setup(ctx)  # on A_d's copy, before any resume: the same on every rerun
    accel.synchronize(accelerator)
    cache_seconds = time.perf_counter() - t0  # counted in the unlearning time
    main = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, schedule=cfg.schedule)
    specs = {"main": main} | {name: main | over for name, over in training.optimizers.items()}
    used = list(dict.fromkeys(p.optimizer for p in training.passes))  # in the order of first use
    sgd = [
        torch.optim.SGD(
            params, lr=specs[n]["lr"], momentum=cfg.momentum, weight_decay=specs[n]["weight_decay"]
        )
        for n in used
    ]
    student, *sgd = accelerator.prepare(raw, *sgd)
    optimizers = dict(zip(used, sgd, strict=True))
    key = key | {
        "freeze": list(freeze),
        "seed": seed,
        "world_size": world,
        "mixed_precision": str(accelerator.mixed_precision),
    }
    progress = {"epoch": 0, "seconds": 0.0, "losses": {}, "key": key}

    def runs(p: Pass, epoch: int) -> bool:
        return p.epochs is None or epoch < p.epochs

    def steps_in(epoch: int, name: str | None = None) -> int:
        """The optimizer steps of `epoch`: of every pass, or of the passes optimizer `name` steps."""
        return sum(
            len(p.loaders[0]) for p in training.passes if runs(p, epoch) and name in (None, p.optimizer)
        )

    total_steps = {n: sum(steps_in(e, n) for e in range(cfg.epochs)) for n in used}

    def forward(x: torch.Tensor) -> torch.Tensor:
        with accelerator.autocast():
            return student(x).float()  # (B, K)

    def run_pass(p: Pass, epoch: int, step: int, bar) -> int:
        """One pass, a step of its optimizer per batch from that optimizer's step `step`; records
        the pass's mean loss and returns the optimizer's next step."""
        optimizer, spec = optimizers[p.optimizer], specs[p.optimizer]
        total = torch.zeros((), device=device)  # summed on the device: no host sync per step
        for batches in _batches(p, epoch):
            for group in optimizer.param_groups:
                group["lr"] = spec["lr"] * lr_factor(spec["schedule"], step, total_steps[p.optimizer])
            loss = p.loss(forward, *batches)
            accelerator.backward(loss)
            for param, scale in training.grad_scale.items():
                param.grad.mul_(scale)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # pinned weights stay A_d's (weight decay, momentum)
                for param, (trains, start) in training.pinned.items():
                    param.copy_(torch.where(trains, param, start))
            total += loss.detach()
            step += 1
            bar.update(1)
        mean = total / len(p.loaders[0])
        mean = accelerator.reduce(mean, "mean") if world > 1 else mean
        losses.setdefault(p.name, []).append(mean.item())
        return step

    try:
        progress = accel.resume(accelerator, state_dir, key) or progress
        start_epoch, losses = progress["epoch"], progress["losses"]
        seconds = progress["seconds"] + cache_seconds
        step = {n: sum(steps_in(e, n) for e in range(start_epoch)) for n in used}
        bar = tqdm(
            total=sum(steps_in(e) for e in range(start_epoch, cfg.epochs)),
            desc=desc or cfg.method,
            leave=False,
            disable=not accelerator.is_local_main_process,
        )
        student.train()
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            # Dropout (VGG) draws from a per-epoch seed, so a resumed epoch replays exactly.
            torch.manual_seed(dropout_seed(seed, epoch, accelerator.process_index))
            for p in training.passes:
                if runs(p, epoch):
                    step[p.optimizer] = run_pass(p, epoch, step[p.optimizer], bar)
            accel.synchronize(accelerator)
            seconds += time.perf_counter() - t0
            if state_dir is not None and epoch + 1 < cfg.epochs:
                progress.update(epoch=epoch + 1, seconds=seconds, losses=losses)
                accel.save_state(accelerator, state_dir, progress)
        bar.close()
    finally:
        accelerator.free_memory()  # as in unlearn(): the next run sees one model and optimizer
    return UnlearnResult(raw.eval(), seconds, cache_seconds, start_epoch, losses)

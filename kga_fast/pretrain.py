"""Supervised pretraining of the four models of KGA: A_d (on D), A_f (D_f), A_n (D_n), A_r (D_r);
with --helpers common, A_f and A_n are fine-tuned from a base A_b trained first (splits.py).

One readable loop under Accelerate (DDP, mixed precision), on device-resident batches. Each
model's state is saved after every epoch (at most every `save_every_seconds`, so that tiny splits
do not spend their time writing state) under <run>/state/pretrain-<name>; rerunning the same
command resumes there, and models already in <run>/models are loaded, not retrained.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from kga_fast import accel
from kga_fast.checkpoint import SavedModels, has_model, load_model, save_model
from kga_fast.config import PretrainConfig
from kga_fast.errors import UserError
from kga_fast.evaluation.evaluate import classification_metrics, predict
from kga_fast.evaluation.pool import pool_member, pool_names
from kga_fast.models import StagedNet, build_model
from kga_fast.run import TRAINED_ON, Run
from kga_fast.user_model import load_user_model

MODEL_NAMES = ("Ad", "Af", "An", "Ar")
DESCRIPTION = {"Ad": "A_d on D", "Af": "A_f on D_f", "An": "A_n on D_n", "Ar": "A_r on D_r"}
# What the helper recipes (kga_fast.splits.HELPER_RECIPES) change in those words.
HELPER_DESCRIPTION = {
    "shared": {"Af": "A_f on D_f + S", "An": "A_n on D_n + S"},
    "matched": {"Af": "A_f on |D_n| images of D_f"},
    "common": {
        "Ab": "A_b on B (a slice of D_r)",
        "Af": "A_f: A_b fine-tuned on |D_n| images of D_f",
        "An": "A_n: A_b fine-tuned on D_n",
    },
}
BASE = "Ab"  # helpers "common": the base that A_f and A_n are fine-tuned from
# Their fine-tuning runs the pretraining recipe at a tenth of its peak step, to keep more of what
# A_b knows: on the small setting (split 0, 100 images each) A_b's D_t accuracy of 0.77 fell to
# 0.66 / 0.72 (A_f / A_n) at the full step and to 0.72 / 0.74 at a tenth.
FINETUNE_LR_FACTOR = 0.1


def helper_names(recipe: str) -> tuple[str, ...]:
    """The models that KGA needs beyond A_d under a helper recipe: their training is its cost."""
    return (BASE, "Af", "An") if recipe == "common" else ("Af", "An")


def learning_rate(cfg: PretrainConfig, step: int, total: int) -> float:
    """The schedule as a pure function of the step, so resuming needs no scheduler state."""
    if cfg.schedule == "constant":
        return cfg.lr
    warmup = max(1, int(0.15 * total))  # one-cycle: linear up from lr/10, then linearly to 0
    if step < warmup:
        return cfg.lr * (0.1 + 0.9 * step / warmup)
    return cfg.lr * max(0.0, (total - step) / max(1, total - warmup))


def needed_models(cfg, *, retrain: bool = True, helpers: bool = True) -> tuple[str, ...]:
    """What a run of `cfg` needs: A_d; KGA's helpers A_f and A_n (`helpers`: only KGA reads them;
    --helpers common trains A_b on the way); with retraining A_r and its pool (--retrains)."""
    own = ("Af", "An") if helpers else ()
    return ("Ad", *own, *(("Ar", *pool_names(cfg.retrains)[1:]) if retrain else ()))


def is_model_name(name: str) -> bool:
    return name in MODEL_NAMES or name == BASE or pool_member(name) is not None


def _base_weights(run: Run, name: str, accelerator: Accelerator) -> dict | None:
    """Helpers "common": A_b's weights, where A_f and A_n start (A_b is trained first when
    missing); None for every other model and recipe."""
    recipe = run.splits.options.get("helpers")
    if name == BASE and recipe != "common":
        raise UserError(f"model {BASE} is the base of --helpers common; {run.cfg.run_dir} uses {recipe}")
    if name not in ("Af", "An") or recipe != "common":
        return None
    _ensure_saved(run, BASE, accelerator)
    return load_model(run.cfg.run_dir, BASE, device=accelerator.device, **_shape(run))[0].state_dict()


def train_model(run: Run, name: str, accelerator: Accelerator) -> StagedNet:
    """Train model `name` on its split (resuming from saved state) and save it to the run folder.
    A retrain pool's "Ar-<k>" (kga_fast.evaluation.pool) trains as A_r does, with seed + k; under
    helpers "common", A_f and A_n start from A_b's weights, at FINETUNE_LR_FACTOR of its step."""
    cfg, pre = run.cfg, run.cfg.pretrain
    start_weights = _base_weights(run, name, accelerator)
    if start_weights is not None:
        pre = dataclasses.replace(pre, lr=pre.lr * FINETUNE_LR_FACTOR)
    member = pool_member(name)
    trained_on = TRAINED_ON["Ar" if member is not None else name]
    seed = cfg.seed + (member or 0)
    images, labels = run.subset(*trained_on)
    set_seed(seed)  # the same initial weights for the four models (a pool member: its own)
    model = build_model(cfg.arch, run.num_classes, run.in_channels)
    if start_weights is not None:
        model.load_state_dict(start_weights)
    sync_bn = accel.is_distributed(accelerator) and accelerator.device.type == "cuda"
    if sync_bn:  # batch statistics over the global batch (SyncBatchNorm is GPU-only)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = accel.to_train_layout(model, accelerator)
    batch = min(pre.batch_size, len(images) - len(images) % accelerator.num_processes)
    loader = accel.rank_loader(
        accelerator,
        images,
        labels,
        global_batch=batch,
        mean=run.train.mean,
        std=run.train.std,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    epochs = max(pre.epochs, math.ceil(pre.min_steps / len(loader)))
    total_steps = epochs * len(loader)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=pre.lr,
        momentum=pre.momentum,
        nesterov=pre.nesterov and pre.momentum > 0,
        weight_decay=pre.weight_decay,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    state_dir = cfg.run_dir / "state" / f"pretrain-{name}"
    progress = accel.load_state(accelerator, state_dir) or {"epoch": -1, "seconds": 0.0, "train_loss": []}
    if progress["epoch"] >= 0:
        accelerator.print(f"[{name}] resuming after epoch {progress['epoch'] + 1}/{epochs}")

    last_save = time.perf_counter()
    for epoch in range(progress["epoch"] + 1, epochs):
        model.train()
        loader.set_epoch(epoch)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=accelerator.device)  # summed on device: no sync per step
        correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
        bar = tqdm(
            loader,
            desc=f"{name} epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=not accelerator.is_local_main_process,
        )
        for step, (x, y, _) in enumerate(bar, start=epoch * len(loader)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(pre, step, total_steps)
            with accelerator.autocast():
                logits = model(x)  # (B, classes)
                loss = F.cross_entropy(logits, y, label_smoothing=pre.label_smoothing)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == y).sum()
        seconds = time.perf_counter() - start
        stats = accelerator.reduce(torch.stack([loss_sum / len(loader), correct.float()]), "sum")
        epoch_loss = stats[0].item() / accelerator.num_processes
        progress = {
            "epoch": epoch,
            "seconds": progress["seconds"] + seconds,
            "train_loss": [*progress.get("train_loss", []), epoch_loss],  # older state lacks it
        }
        if epoch == epochs - 1 or time.perf_counter() - last_save >= pre.save_every_seconds:
            # Tiny splits run many short epochs: saving each one would cost more than it saves.
            accel.save_state(accelerator, state_dir, progress)
            last_save = time.perf_counter()
        seen = len(loader) * loader.batch_size * accelerator.num_processes
        accelerator.print(
            f"[{name}] epoch {epoch + 1}/{epochs}: loss {epoch_loss:.4f}"
            f"  train acc {stats[1].item() / seen:.4f}  {seen / seconds:.0f} img/s"
        )

    net = accelerator.unwrap_model(model)
    if sync_bn:
        net = _revert_sync_batchnorm(net)
    test_images, test_labels = run.subset("test")
    logits = predict(net, test_images, mean=run.train.mean, std=run.train.std, accelerator=accelerator)
    metrics = classification_metrics(logits, test_labels, run.num_classes)
    recipe = HELPER_DESCRIPTION.get(run.splits.options.get("helpers"), {})
    accelerator.print(
        f"[{name}] done: {recipe.get(name, DESCRIPTION.get(name, f'A_r on D_r, seed {seed}'))}, {len(images)} images, {epochs} epochs, "
        f"{progress['seconds']:.0f} s; held-out D_t accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['f1']:.4f}"
    )
    if accelerator.is_main_process:
        save_model(
            cfg.run_dir,
            name,
            net,
            {
                "dataset": cfg.dataset,
                "split": list(trained_on),
                "images": len(images),
                "helpers": run.splits.options.get("helpers", "disjoint"),
                "normalize": {"mean": list(run.train.mean), "std": list(run.train.std)},
                "epochs": epochs,
                "config": dataclasses.asdict(pre),
                "seed": seed,
                **({"init": BASE} if start_weights is not None else {}),  # its own time excludes A_b's
                "train_seconds": progress["seconds"],
                "train_loss": progress["train_loss"],  # mean per epoch: what a tiny run can check
                "test_accuracy": metrics["accuracy"],
                "test_f1": metrics["f1"],
            },
        )
    accel.clear_state(accelerator, state_dir)
    accelerator.free_memory()
    return net


def _revert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm back to BatchNorm2d (same parameters and statistics) for saving."""
    for child_name, child in module.named_children():
        if isinstance(child, torch.nn.SyncBatchNorm):
            bn = torch.nn.BatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            ).to(child.weight.device)
            bn.load_state_dict(child.state_dict())
            setattr(module, child_name, bn)
        else:
            _revert_sync_batchnorm(child)
    return module


def ensure_pretrained(
    run: Run,
    accelerator: Accelerator,
    *,
    allow_train: bool = True,
    names: tuple[str, ...] = MODEL_NAMES,
) -> SavedModels:
    """The models `names` (default all four: "Ad", "Af", "An", "Ar"; a retrain pool adds "Ar-1"
    ...): trained first when missing, then read from the run folder by name (SavedModels). A_d,
    the helpers and A_r are read here and kept; a pool's other members only when they are looked
    up (the pipeline does once per run folder, to cache their outputs), one at a time.

    On the accelerator's device, in eval mode, with requires_grad off (frozen teachers).
    """
    cfg = run.cfg
    if cfg.model is not None:
        import_ad(run, accelerator)
    for name in names:
        if not is_model_name(name):
            raise UserError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}, {BASE} or Ar-<k>")
        _ensure_saved(run, name, accelerator, allow_train)
    keep = [name for name in names if not pool_member(name)]  # not "Ar-<k>" with k >= 1
    models = SavedModels(cfg.run_dir, names, keep=keep, device=accelerator.device, **_shape(run))
    for name in keep:  # read now: a checkpoint that does not fit the run is refused before any work
        models[name]  # noqa: B018
    return models


def _shape(run: Run) -> dict:
    """What every model of the run folder must be (load_model refuses another)."""
    return {"arch": run.cfg.arch, "num_classes": run.num_classes, "in_channels": run.in_channels}


def _ensure_saved(run: Run, name: str, accelerator: Accelerator, allow_train: bool = True) -> None:
    """Train model `name` when the run folder lacks it (all processes train; the main one saves)."""
    cfg = run.cfg
    if not has_model(cfg.run_dir, name):
        if not allow_train:
            raise UserError(
                f"model {name} is missing from {cfg.run_dir / 'models'}; run without --no-pretrain "
                "(or scripts/pretrain.py) to train it"
            )
        train_model(run, name, accelerator)
        accelerator.wait_for_everyone()


def import_ad(run: Run, accelerator: Accelerator) -> None:
    """The user's model (`run.cfg.model`) as A_d of the run folder: checked against the dataset,
    its D_t accuracy printed and recorded before anything is unlearned (a wrong --normalize shows
    at once), saved as models/Ad. A folder whose A_d came from another file is refused."""
    cfg = run.cfg
    model, info = load_user_model(cfg.model, arch=cfg.arch)  # its shape: checked by open_run
    if has_model(cfg.run_dir, "Ad"):
        _, meta = load_model(cfg.run_dir, "Ad")
        if meta.get("sha256") != info["sha256"]:
            raise UserError(f"{cfg.run_dir} holds an A_d that is not {cfg.model}: use a new run folder")
        return
    test_images, test_labels = run.subset("test")
    logits = predict(
        model.to(accelerator.device),
        test_images,
        mean=run.train.mean,
        std=run.train.std,
        accelerator=accelerator,
    )
    metrics = classification_metrics(logits, test_labels, run.num_classes)
    accelerator.print(
        f"[Ad] your model {cfg.model}: held-out D_t accuracy {metrics['accuracy']:.4f}, macro-F1 "
        f"{metrics['f1']:.4f} (normalization mean {run.train.mean}, std {run.train.std})"
    )
    if accelerator.is_main_process:
        meta = {
            "dataset": cfg.dataset,
            "split": list(TRAINED_ON["Ad"]),
            "imported": True,
            **info,
            "normalize": {"mean": list(run.train.mean), "std": list(run.train.std)},
            "test_accuracy": metrics["accuracy"],
            "test_f1": metrics["f1"],
        }
        save_model(cfg.run_dir, "Ad", model, meta)
    accelerator.wait_for_everyone()

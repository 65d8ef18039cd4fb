"""Evaluation of an unlearning run: logits of a model on a split, and the paper's metrics.

    logits = {name: predict(models[name], images, mean=..., std=..., accelerator=acc) for name in MODELS}
    metrics = evaluate_unlearning(logits, labels, num_classes)

Every metric is computed once over the whole split, never averaged per batch: accuracy
(micro), macro-F1 (torchmetrics; the original code averaged per-batch F1, which differs),
and the true Jensen-Shannon divergence per sample in nats, averaged over samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from kga_fast.data import DeviceLoader
from kga_fast.losses import jsd_rows

MODELS = ("Ad", "A*", "Ar")  # original, unlearned, retrained-on-D_r (the gold standard)
# JSD(A_d, A_r) is the reference: A* moved towards A_r only where JSD(A*, A_r) is below it.
JSD_PAIRS = (("Ad", "A*"), ("A*", "Ar"), ("Ad", "Ar"))


def _rank_world(accelerator) -> tuple[int, int]:
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images_uint8: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    accelerator=None,
    batch_size: int = 512,
) -> torch.Tensor:
    """Logits (N, C) float32 on the CPU, in the order of `images_uint8`, on every rank.

    Each rank predicts its shard (DeviceLoader, no shuffle); the shards are gathered and the
    padding that makes them equal in size (as in DistributedSampler) is dropped.
    """
    n = len(images_uint8)
    rank, world = _rank_world(accelerator)
    if accelerator is not None:
        # Plain module: a DDP wrapper would broadcast buffers on every forward for nothing.
        model = accelerator.unwrap_model(model)
        device = accelerator.device
        autocast = accelerator.autocast()
    else:
        device = next(model.parameters()).device
        autocast = contextlib.nullcontext()
    loader = DeviceLoader(
        images_uint8,
        torch.zeros(n, dtype=torch.int64),
        batch_size=batch_size,
        mean=mean,
        std=std,
        shuffle=False,
        seed=0,
        device=device,
        rank=rank,
        world_size=world,
    )
    was_training = model.training
    model.eval()
    logits, positions = [], []
    try:
        with autocast:
            for x, _, idx in loader:
                logits.append(model(x).float())  # (B, C)
                positions.append(idx)  # (B,)
    finally:
        model.train(was_training)
    local = torch.cat(logits)  # (per_rank, C)
    if world == 1:
        return local.cpu()
    gathered = accelerator.gather(local).cpu()  # (world * per_rank, C), rank-major
    idx = accelerator.gather(torch.cat(positions)).cpu()  # (world * per_rank,)
    # Row j of rank r held padded position j * world + r; positions >= n are the wrap-around
    # padding, repeats of samples another rank already predicted.
    per_rank = loader.per_rank
    padded_pos = torch.arange(per_rank).repeat(world) * world + torch.arange(world).repeat_interleave(
        per_rank
    )
    keep = padded_pos < n
    out = torch.empty(n, gathered.shape[1], dtype=torch.float32)
    out[idx[keep]] = gathered[keep]
    if not torch.equal(idx[keep].sort().values, torch.arange(n)):
        raise RuntimeError("gathered predictions do not cover every sample exactly once")
    return out


def _check_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"expected logits (N, {num_classes}), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],) or len(labels) == 0:
        raise ValueError(f"expected {logits.shape[0]} labels (N > 0), got shape {tuple(labels.shape)}")


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 over the whole split: (N, C) logits, (N,) labels -> plain floats.

    Macro-F1 averages over the classes present in the labels or the predictions (as
    sklearn.metrics.f1_score(average="macro") does).
    """
    _check_logits(logits, labels, num_classes)
    preds = logits.argmax(dim=1).cpu()  # (N,)
    labels = labels.cpu()
    acc = multiclass_accuracy(preds, labels, num_classes, average="micro")
    f1 = multiclass_f1_score(preds, labels, num_classes, average="macro")
    return {"accuracy": float(acc), "f1": float(f1)}


def mean_jsd(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean over samples of the per-sample Jensen-Shannon divergence (nats, in [0, ln 2])."""
    return float(jsd_rows(p_logits.float(), q_logits.float()).double().mean())


def evaluate_unlearning(
    logits: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int
) -> dict[str, dict[str, float]]:
    """{"accuracy": {Ad, A*, Ar}, "f1": {Ad, A*, Ar}, "jsd": {"Ad,A*", "A*,Ar", "Ad,Ar"}} on one
    split. Without A_r's logits (unlearning without retraining) its entries are left out."""
    missing = [m for m in ("Ad", "A*") if m not in logits]
    if missing:
        raise ValueError(f"logits lack model(s) {missing}; need {list(MODELS)} (Ar optional)")
    present = [m for m in MODELS if m in logits]
    out: dict[str, dict[str, float]] = {"accuracy": {}, "f1": {}, "jsd": {}}
    for name in present:
        metrics = classification_metrics(logits[name], labels, num_classes)
        out["accuracy"][name] = metrics["accuracy"]
        out["f1"][name] = metrics["f1"]
    for a, b in JSD_PAIRS:
        if a in logits and b in logits:
            out["jsd"][f"{a},{b}"] = mean_jsd(logits[a], logits[b])
    return out


def evaluate_models(
    models: dict[str, torch.nn.Module],
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    accelerator=None,
    batch_size: int = 512,
) -> dict[str, dict[str, float]]:
    """predict() with A_d, A*, A_r on one split, then evaluate_unlearning (same on every rank)."""
    logits = {
        name: predict(
            models[name],
            images_uint8,
            mean=mean,
            std=std,
            accelerator=accelerator,
            batch_size=batch_size,
        )
        for name in MODELS
    }
    return evaluate_unlearning(logits, labels, num_classes)

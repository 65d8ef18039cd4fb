"""The paper code's KGA unlearning loop, re-implemented faithfully as the baseline to beat.

Bench-only (not shipped in kga_fast). It does what the CNN follow-up's code does (as the
specification's FINDINGS.md, on what the paper's code really does, reads it), step for step:

- a torch.utils.data.DataLoader over a per-image Dataset of float tensors, normalized one
  image at a time as torchvision's ToTensor + Normalize would, shuffle=True, num_workers=0
  (each batch is assembled on the host and copied to the device);
- float32 everywhere, no torch.compile, default memory format;
- per retain batch: A* forward, A_d forward, two F.log_softmax, F.kl_div(batchmean,
  log_target=True) (teacher first, as the code writes it), backward of L_r * (1 - ratio) / inner;
- when `batch_idx % inner_steps == 0` (first update at batch 0): one D_f batch through A* and
  A_f, one D_n batch through A_d and A_n, L_a = |KL_f - KL_n.item()| (a host sync, as in the
  code), backward, Adam step;
- freezing as the code does it: requires_grad False on the frozen blocks' parameters, the
  whole model still run as one module and in train mode (frozen BatchNorm statistics move).

One deliberate difference: the teachers A_d, A_f, A_n are in eval mode here. The paper's code
leaves them in train mode (a bug: their BatchNorm statistics drift, VGG dropout stays on);
eval mode costs the same per step, so the comparison stays about speed.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from kga_fast.models import StagedNet


@dataclass
class PaperConfig:
    """The paper's unlearning hyper-parameters (section 4.1 / 5.1)."""

    lr: float = 0.05  # Adam learning rate
    eps: float = 1e-8  # Adam epsilon
    ratio: float = 0.1  # retain loss ratio
    inner_steps: int = 15  # retain batches per optimizer step
    batch_size: int = 256  # retain, forget and new batches


class PerImageDataset(Dataset):
    """(normalized (C, H, W) float32 image, label 0) per index, one image at a time."""

    def __init__(self, images_uint8: torch.Tensor, mean, std):
        self.images = images_uint8  # (N, C, H, W) uint8 on the CPU
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div(255)  # ToTensor
        return x.sub_(self.mean).div_(self.std), 0  # Normalize


def _loader(images: torch.Tensor, mean, std, batch_size: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    dataset = PerImageDataset(images, mean, std)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0, generator=g)


def _endless(loader: DataLoader) -> Iterator[torch.Tensor]:
    while True:
        for x, _ in loader:
            yield x


def paper_freeze(model: StagedNet, blocks: tuple[int, ...]) -> StagedNet:
    """requires_grad False on the 1-based `blocks` (block 1 with the stem), nothing else: the
    model keeps running as one module in train mode, as in the paper's code."""
    for i, block in enumerate(model.blocks, 1):
        block.requires_grad_(i not in blocks)
    model.stem.requires_grad_(1 not in blocks)
    return model


def kl_teacher_first(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The code's `F.kl_div(log_softmax(student), log_softmax(teacher), log_target=True)`."""
    return F.kl_div(
        F.log_softmax(student, dim=1),
        F.log_softmax(teacher, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def paper_unlearn(
    models: dict[str, StagedNet],
    data,
    cfg: PaperConfig,
    *,
    freeze: tuple[int, ...],
    seed: int,
    device: torch.device | str,
    max_batches: int | None = None,
) -> tuple[StagedNet, float, int]:
    """One epoch of the paper's loop over `data.retain` (a kga_fast.methods.kga.UnlearnData), at
    most `max_batches` retain batches. Returns (A*, seconds of the loop, optimizer steps)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    teachers = {k: models[k].to(device).eval().requires_grad_(False) for k in ("Ad", "Af", "An")}
    student = paper_freeze(copy.deepcopy(models["Ad"]).float().requires_grad_(True), freeze)
    student.frozen = ()  # no no_grad prefix: the paper ran the whole model with autograd on
    student.to(device).train()
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=cfg.lr, eps=cfg.eps)
    retain = _loader(data.retain, data.mean, data.std, cfg.batch_size, seed)
    forget = _endless(_loader(data.forget, data.mean, data.std, cfg.batch_size, seed + 1))
    new = _endless(_loader(data.new, data.mean, data.std, cfg.batch_size, seed + 2))
    steps = 0
    start = time.perf_counter()
    for batch_idx, (x, _) in enumerate(itertools.islice(retain, max_batches)):
        x = x.to(device)  # (B, C, H, W) float32
        out = student(x)  # (B, K)
        with torch.no_grad():
            target = teachers["Ad"](x)  # (B, K)
        loss_r = kl_teacher_first(out, target)
        (loss_r * (1 - cfg.ratio) / cfg.inner_steps).backward()
        if batch_idx % cfg.inner_steps == 0:
            xf, xn = next(forget).to(device), next(new).to(device)
            out_f = student(xf)  # (P, K)
            with torch.no_grad():
                target_f = teachers["Af"](xf)
                gap_new = kl_teacher_first(teachers["An"](xn), teachers["Ad"](xn))
            loss_a = torch.abs(kl_teacher_first(out_f, target_f) - gap_new.item())
            loss_a.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return student.eval(), time.perf_counter() - start, steps

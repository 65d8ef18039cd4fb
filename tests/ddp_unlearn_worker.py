"""Worker for tests/test_unlearn_ddp.py: one KGA unlearning run, alone or under torchrun.

    python tests/ddp_unlearn_worker.py OUT.pt ARCH FREEZE [RETAIN_LOSS]              # one process
    torchrun --nproc_per_node 2 tests/ddp_unlearn_worker.py OUT.pt ARCH FREEZE [RETAIN_LOSS]

ARCH is resnet18 or "plain" (a small CNN without BatchNorm or dropout); RETAIN_LOSS kl (the
default) or ce, which trains on D_r's labels (each rank must draw its images' own labels).
Models and data come from fixed seeds; the main process saves the unlearned model's state, its
per-epoch losses and the logits of A_d and A* on held-out images, for the test to compare. After
kga_fast.accel.shutdown each rank writes the gloo threads it still has to OUT.rank<r>.threads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from gloo_threads import gloo_threads  # noqa: E402
from torch import nn  # noqa: E402

from kga_fast import accel  # noqa: E402
from kga_fast.data import normalize  # noqa: E402
from kga_fast.evaluation.evaluate import predict  # noqa: E402
from kga_fast.methods.common import MethodData  # noqa: E402
from kga_fast.methods.kga import UnlearnConfig, UnlearnData, unlearn  # noqa: E402
from kga_fast.models import StagedNet, build_model  # noqa: E402

MEAN, STD = (0.2,), (0.3,)
# Global batch 64 (32 per process under DDP); 4 retain batches per epoch, a step every 2. SGD:
# Adam would turn float noise in near-zero gradients into lr-sized steps.
CONFIG = UnlearnConfig(
    optimizer="sgd", lr=0.01, momentum=0.9, batch_size=64, inner_steps=2, epochs=2, impl="reference"
)


def plain_cnn() -> StagedNet:
    """Four freezable conv blocks, no BatchNorm, no dropout: DDP must match one process exactly."""
    stem = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU())
    blocks = [nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()) for _ in range(4)]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(16, 10))
    return StagedNet("plain", stem, blocks, head)


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Running statistics of the data, as a trained model has (a fresh one has 0 and 1)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average
    with torch.no_grad():
        model.train()(normalize(images, MEAN, STD))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def make_case(arch: str) -> tuple[dict, UnlearnData, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)

    data, held_out = UnlearnData(images(256), images(64), images(32), MEAN, STD), images(64)
    every = torch.cat([data.retain, data.forget, data.new])

    def build() -> nn.Module:
        return plain_cnn().eval() if arch == "plain" else calibrate_batchnorm(build_model(arch, 10, 1), every)

    return {name: build() for name in ("Ad", "Af", "An")}, data, held_out


def main(accelerator: Accelerator, out: str, arch: str, spec: str, retain_loss: str = "kl") -> None:
    freeze = tuple(int(b) for b in spec.split(",") if b != "0")
    models, data, held_out = make_case(arch)
    # The plain CNN's outputs are near uniform, so its KL gradients are small: a larger step.
    lr = {"kl": 2.0, "ce": 0.05}[retain_loss] if arch == "plain" else CONFIG.lr
    cfg = dataclasses.replace(CONFIG, lr=lr, retain_loss=retain_loss)
    if retain_loss == "ce":
        labels = torch.randint(0, 10, (len(data.retain),), generator=torch.Generator().manual_seed(2))
        fields = (getattr(data, f.name) for f in dataclasses.fields(data))
        data = MethodData(*fields, retain_labels=labels, forget_labels=labels[: len(data.forget)])
    result = unlearn(models, data, cfg, freeze=freeze, seed=0, accelerator=accelerator)
    logits = predict(result.model, held_out, mean=MEAN, std=STD, accelerator=accelerator)
    before = predict(models["Ad"], held_out, mean=MEAN, std=STD, accelerator=accelerator)
    if accelerator.is_main_process:
        torch.save(
            {
                "world": accelerator.num_processes,
                "losses": result.losses,
                "logits": logits,
                "before": before,
                "state": result.model.state_dict(),
            },
            out,
        )
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    out = sys.argv[1]
    accelerator = Accelerator(cpu=True)
    main(accelerator, out, *sys.argv[2:])
    accel.shutdown(accelerator)
    Path(f"{out}.rank{accelerator.process_index}.threads").write_text(json.dumps(gloo_threads()))

"""Worker for tests/test_evaluate.py: predict() under torchrun (2 CPU processes, gloo).

    torchrun --nproc_per_node 2 tests/ddp_predict_worker.py OUT.pt N BATCH

Every rank saves what predict() returned to OUT.pt.rank<r>; the model and images are made from
fixed seeds, so the test rebuilds them and compares. After kga_fast.accel.shutdown each rank
writes the gloo threads it still has to OUT.pt.rank<r>.threads (none, or teardown can abort).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from gloo_threads import gloo_threads  # noqa: E402

from kga_fast import accel  # noqa: E402
from kga_fast.evaluation.evaluate import predict  # noqa: E402


def make_case(n: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A small CNN with BatchNorm (eval mode matters) and n random uint8 images (N, 3, 32, 32)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    )
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return model, images


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def main(accelerator: Accelerator, out: str, n: int, batch: int) -> None:
    model, images = make_case(n)
    model = accelerator.prepare(model)  # DDP-wrapped: predict must unwrap it
    logits = predict(model, images, mean=MEAN, std=STD, accelerator=accelerator, batch_size=batch)
    torch.save(
        {"world": accelerator.num_processes, "logits": logits},
        f"{out}.rank{accelerator.process_index}",
    )


if __name__ == "__main__":
    out = sys.argv[1]
    accelerator = Accelerator(cpu=True)
    main(accelerator, out, int(sys.argv[2]), int(sys.argv[3]))
    accel.shutdown(accelerator)
    Path(f"{out}.rank{accelerator.process_index}.threads").write_text(json.dumps(gloo_threads()))

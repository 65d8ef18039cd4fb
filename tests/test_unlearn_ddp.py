"""Unlearning under DDP: a 2-process torchrun on CPU (gloo) against one process at the same
global batch (tests/ddp_unlearn_worker.py runs both).

Each process draws its rank's share of every batch (DistributedSampler order), so both runs see
the same batches and D_f / D_n pairs, and DDP averages the equal-sized per-process gradients
into the single-process gradient. Tolerance: float rounding (rtol 1e-4) on parameters, logits
and losses, whenever no BatchNorm runs in train mode: a CNN without BatchNorm fully trainable,
and resnet18 with blocks 1-4 frozen (its BatchNorm in eval mode, the classifier trains).

With trainable BatchNorm the runs differ as DDP always does without SyncBatchNorm (which has no
CPU kernel): each process normalizes by its own half batch. On random-init resnet18 and random
images (global batch 64) we measured JSD(A*_1proc, A*_2proc) = 0.036 nats on held-out images, as
large as the unlearning update itself; larger per-process batches make it smaller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "ddp_unlearn_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


def run(out: Path, arch: str, freeze: str, processes: int, retain_loss: str = "kl") -> dict:
    if processes == 1:
        cmd = [sys.executable, WORKER]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            WORKER,
        ]
    proc = subprocess.run(
        [*cmd, str(out), arch, freeze, retain_loss], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out)
    assert saved["world"] == processes
    for rank in range(processes):  # the group freed, its threads joined (kga_fast.accel.shutdown)
        assert json.loads(Path(f"{out}.rank{rank}.threads").read_text()) == []
    return saved


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,freeze,retain_loss", [("plain", "0", "kl"), ("resnet18", "1,2,3,4", "kl"), ("plain", "0", "ce")]
)
def test_two_processes_match_one_at_the_same_global_batch(tmp_path, arch, freeze, retain_loss):
    """retain_loss "ce": each rank's share of D_r comes with its own labels."""
    one = run(tmp_path / "one.pt", arch, freeze, 1, retain_loss)
    two = run(tmp_path / "two.pt", arch, freeze, 2, retain_loss)
    moved = 0
    for k, v in one["state"].items():
        torch.testing.assert_close(two["state"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    for p, p0 in zip(one["logits"], one["before"], strict=True):
        moved += int(not torch.allclose(p, p0, rtol=1e-3, atol=1e-4))
    assert moved > len(one["logits"]) // 2  # unlearning changed the model: the test can fail
    torch.testing.assert_close(two["logits"], one["logits"], rtol=1e-4, atol=1e-5)
    for key in ("retain", "align"):
        assert two["losses"][key] == pytest.approx(one["losses"][key], rel=1e-4, abs=1e-8)

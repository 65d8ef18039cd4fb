"""Worker for tests/test_pretrain.py: pretrain A_d for a few steps under torchrun (2 gloo
processes on CPU) and check that both ranks end with identical weights, and that the process
group is gone before the interpreter's teardown (make_accelerator's exit hook).

    torchrun --nproc_per_node 2 tests/ddp_pretrain_worker.py RUN_DIR OUT_JSON
"""

import atexit
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gloo_threads import gloo_threads  # noqa: E402

from kga_fast import accel  # noqa: E402
from kga_fast.config import PRETRAIN_PRESETS, RunConfig  # noqa: E402
from kga_fast.pretrain import train_model  # noqa: E402
from kga_fast.run import open_run  # noqa: E402


def record_teardown(out: Path) -> None:
    """Runs after make_accelerator's hook (atexit is last in, first out)."""
    if out.exists():
        result = json.loads(out.read_text())
        result["group_destroyed_at_exit"] = not torch.distributed.is_initialized()
        result["gloo_threads_at_exit"] = gloo_threads()
        out.write_text(json.dumps(result))


def main() -> None:
    run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    pre = PRETRAIN_PRESETS["default"]
    pre.epochs, pre.batch_size, pre.min_steps = 1, 64, 0
    cfg = RunConfig(run_dir=run_dir, train_subset=256, test_subset=100, pretrain=pre)
    atexit.register(record_teardown, out)
    accelerator = accel.make_accelerator("no")
    run = open_run(cfg, accelerator)
    net = train_model(run, "Ad", accelerator)
    # Parameters only: BatchNorm running statistics are per-rank between DDP's buffer broadcasts.
    flat = torch.cat([p.detach().flatten().double() for p in net.parameters()])
    sums = accelerator.gather(torch.stack([flat.sum(), (flat * flat).sum()]).unsqueeze(0))  # (ranks, 2)
    if accelerator.is_main_process:
        out.write_text(
            json.dumps(
                {
                    "world": accelerator.num_processes,
                    "checksums": sums.tolist(),
                    "distributed": accel.is_distributed(accelerator),
                }
            )
        )


if __name__ == "__main__":
    main()

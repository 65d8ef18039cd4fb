"""What every training loop here shares under Accelerate: the accelerator, the device-resident
batches of one rank, and resumable state saved each epoch without ever leaving a half-written
state behind.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from kga_fast.data import DeviceLoader
from kga_fast.errors import UserError


def make_accelerator(mixed_precision: str | None = None) -> Accelerator:
    """An Accelerator; mixed_precision None defers to `accelerate launch` / its config.

    Without a GPU we ask for the CPU explicitly: only then does Accelerate turn a torchrun
    launch with several processes into DDP over gloo (MULTI_CPU).

    At exit, `shutdown` releases the process group while the interpreter is still whole.
    Whoever builds an Accelerator without this function calls `shutdown` itself.
    """
    cpu = not torch.cuda.is_available()
    if cpu and mixed_precision == "fp16":
        raise UserError("fp16 mixed precision needs a GPU; use --mixed-precision bf16 on the CPU")
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    atexit.register(shutdown, accelerator)
    if cpu:
        _cpu_threads(accelerator)
    return accelerator


def shutdown(accelerator: Accelerator) -> None:
    """Drop the accelerator's prepared models and optimizers, then destroy the process group.

    A gloo group whose C++ object outlives the interpreter's teardown sometimes aborts the
    process after its work is done ("terminate called without an active exception", SIGABRT;
    pytorch/pytorch#190489; it failed CI runs here): a gloo worker thread releases the last
    collective's tensors while the interpreter finalizes. destroy_process_group alone does not
    free the group while a DDP wrapper still holds it; with no wrapper left it is freed at once
    and its threads are joined. So nothing of a caller may keep a prepared model past this call
    (the test workers check that no gloo thread is left).
    """
    accelerator.free_memory()  # and a garbage collection: wrappers in reference cycles go too
    accelerator.end_training()


def _cpu_threads(accelerator: Accelerator) -> None:
    """`accelerate launch` on a machine without a GPU sets OMP_NUM_THREADS=1 even for a single
    process, which halves a 2-core CPU run. Give the processes of this machine its cores
    (KGA_FAST_CPU_THREADS overrides; under plain python or torchrun nothing changes)."""
    wanted = os.environ.get("KGA_FAST_CPU_THREADS")
    if wanted is None:
        launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ and os.environ.get("OMP_NUM_THREADS") == "1"
        if not launched:
            return
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        wanted = max(1, len(os.sched_getaffinity(0)) // max(1, local))
    torch.set_num_threads(int(wanted))


def is_distributed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type != DistributedType.NO and accelerator.num_processes > 1


def channels_last(accelerator: Accelerator) -> bool:
    """Whether models and batches use the channels_last memory format: on GPUs, and on the CPU
    under bf16 autocast (oneDNN's bf16 convolutions, AMX where present, want it: +20% for
    resnet18-cifar and vgg11-bn-cifar on the dev box). In float32 on the CPU it is a wash
    (-4% to +26% by architecture; bench/RESULTS.md), so there the default layout stays."""
    return accelerator.device.type == "cuda" or accelerator.mixed_precision == "bf16"


def to_train_layout(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """`model` in the memory format that `channels_last` picks for this accelerator."""
    return model.to(memory_format=torch.channels_last) if channels_last(accelerator) else model


def per_process_batch(accelerator: Accelerator, global_batch: int) -> int:
    world = accelerator.num_processes
    if global_batch % world:
        raise UserError(f"global batch {global_batch} is not divisible by the {world} processes")
    return global_batch // world


def rank_loader(
    accelerator: Accelerator,
    images: torch.Tensor,  # (N, C, H, W) uint8
    labels: torch.Tensor,  # (N,)
    *,
    global_batch: int,
    mean,
    std,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
) -> DeviceLoader:
    """This rank's share of `images`, resident on the accelerator's device.

    Sharding follows DistributedSampler, so the union over ranks of batch b is the same set of
    images as batch b of a single process with the same global batch.
    """
    batch = per_process_batch(accelerator, global_batch)
    return DeviceLoader(
        images,
        labels,
        batch_size=batch,
        mean=mean,
        std=std,
        shuffle=shuffle,
        seed=seed,
        device=accelerator.device,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        drop_last=drop_last,
        channels_last=channels_last(accelerator),
    )


PROGRESS_FILE = "progress.json"


def save_state(accelerator: Accelerator, state_dir: Path, progress: dict) -> None:
    """accelerator.save_state (models, optimizers, RNG) plus `progress`, swapped in atomically:
    a crash while saving leaves the previous epoch's state intact."""
    state_dir = Path(state_dir)
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    old = state_dir.with_name(state_dir.name + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / PROGRESS_FILE).write_text(json.dumps(progress))
        shutil.rmtree(old, ignore_errors=True)
        if state_dir.exists():
            os.replace(state_dir, old)
        os.replace(tmp, state_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_state(accelerator: Accelerator, state_dir: Path) -> dict | None:
    """The progress saved by `save_state` after restoring models, optimizers and RNG; None if
    there is no complete state to resume from."""
    state_dir = Path(state_dir)
    if not (state_dir / PROGRESS_FILE).is_file():
        old = state_dir.with_name(state_dir.name + ".old")
        if not (old / PROGRESS_FILE).is_file():  # crashed between the two renames
            return None
        state_dir = old
    accelerator.load_state(str(state_dir))
    return json.loads((state_dir / PROGRESS_FILE).read_text())


def resume(accelerator: Accelerator, state_dir: Path | None, key: dict) -> dict | None:
    """The progress saved in `state_dir` by a run with the same `key` (models, optimizer and RNG
    restored), None when there is nothing to resume; UserError for another run's state."""
    saved = load_state(accelerator, state_dir) if state_dir is not None else None
    if saved is not None and saved.get("key") != key:
        raise UserError(f"{state_dir} holds the state of another configuration; delete it to start over")
    return saved


def synchronize(accelerator: Accelerator) -> None:
    """Wait for the device's queued work: honest timing on CUDA, nothing on the CPU."""
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)


def clear_state(accelerator: Accelerator, state_dir: Path) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for suffix in ("", ".tmp", ".old"):
            shutil.rmtree(Path(str(state_dir) + suffix), ignore_errors=True)
    accelerator.wait_for_everyone()


def reset_peak_memory(accelerator: Accelerator) -> None:
    """Start a new peak for `peak_memory`: CUDA's max allocated, or the process's peak RSS
    (Linux resets VmHWM when "5" is written to /proc/self/clear_refs)."""
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak then counts from the process's start, as `peak_memory` says


def peak_memory(accelerator: Accelerator) -> dict:
    """{"bytes", "kind"} since `reset_peak_memory`: "cuda_max_allocated" on a GPU, "cpu_peak_rss"
    (this process's VmHWM) on the CPU; {"bytes": None, ...} where neither can be read."""
    if accelerator.device.type == "cuda":
        return {
            "bytes": int(torch.cuda.max_memory_allocated(accelerator.device)),
            "kind": "cuda_max_allocated",
        }
    try:
        status = Path("/proc/self/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        return {"bytes": kib * 1024, "kind": "cpu_peak_rss"}
    except (OSError, StopIteration, ValueError):
        return {"bytes": None, "kind": "cpu_peak_rss"}

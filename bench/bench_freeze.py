"""How much layer freezing speeds up KGA unlearning: images per second of the unlearning loop for
each freeze configuration of resnet18 and vgg11, and the ratio to (0).

    python bench/bench_freeze.py                       # CPU here: 3 timed steps, batch 64
    python bench/bench_freeze.py --mixed-precision bf16 --compile
    python bench/bench_freeze.py                       # on a GPU: CUDA, 30 timed steps, batch 256

Synthetic CIFAR-shaped data (3 x 32 x 32, 10 classes, random weights): speed does not depend on
what the images show. A "step" is one retain batch (forward + backward of A*); the timed run is
one epoch of `steps` retain batches with inner_steps = steps, so it ends with one alignment
step (a D_f batch) and one optimizer step, exactly as kga_fast.methods.kga runs them. Teacher
outputs and the frozen prefix's features are cached (their one-off cost, cache_seconds, is
excluded: a run pays it once, not per epoch). A warm-up run comes first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from kga_fast.freeze import freeze_label, parse_freeze  # noqa: E402
from kga_fast.methods.kga import UNLEARN_PRESETS, UnlearnData, unlearn  # noqa: E402
from kga_fast.models import build_model  # noqa: E402

FREEZES = ["0", "1", "1,2", "1,2,3"]
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # (N, 3, 32, 32)


def measure(arch: str, freeze: tuple[int, ...], args, accelerator) -> dict:
    torch.manual_seed(0)
    teacher = build_model(arch, 10, 3).to(accelerator.device).eval()
    models = {"Ad": teacher, "Af": teacher, "An": teacher}  # one model: speed is all that counts
    cfg = dataclasses.replace(
        UNLEARN_PRESETS["default"],
        batch_size=args.batch,
        inner_steps=args.steps,
        epochs=1,
        compile=args.compile,
        log_every=10**9,
    )
    pair = images(args.batch, 1)
    warm = UnlearnData(images(args.warmup * args.batch, 2), pair, pair, MEAN, STD)
    unlearn(
        models,
        warm,
        dataclasses.replace(cfg, inner_steps=args.warmup),
        freeze=freeze,
        seed=0,
        accelerator=accelerator,
        desc="warm-up",
    )
    data = UnlearnData(images(args.steps * args.batch, 3), pair, pair, MEAN, STD)
    result = unlearn(models, data, cfg, freeze=freeze, seed=0, accelerator=accelerator, desc="timed")
    seconds = result.seconds - result.cache_seconds  # the loop alone (it synchronizes on CUDA)
    n_images = args.steps * args.batch + args.batch  # retain batches + the D_f batch
    return {
        "arch": arch,
        "freeze": list(freeze),
        "seconds": seconds,
        "images_per_s": n_images / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default="resnet18,vgg11", help="comma-separated archs")
    parser.add_argument("--freeze", nargs="+", default=FREEZES, help="freeze configurations")
    parser.add_argument("--steps", type=int, default=None, help="timed retain batches (CPU 3, CUDA 30)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up batches (CPU 1, CUDA 5)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (CPU 64, CUDA 256)")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    args.steps = args.steps or (30 if cuda else 3)
    args.warmup = args.warmup or (5 if cuda else 1)
    args.batch = args.batch or (256 if cuda else 64)
    accelerator = Accelerator(cpu=not cuda, mixed_precision=args.mixed_precision)
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"# bench_freeze: {device}, batch {args.batch}, {args.steps} timed steps, "
        f"mixed precision {args.mixed_precision}, compile {args.compile}"
    )
    print("| arch | freeze | images/s | ratio to the first (0) |\n|---|---|---|---|")
    rows = []
    for arch in args.archs.split(","):
        base = None
        for spec in args.freeze:
            row = measure(arch, parse_freeze(spec, arch), args, accelerator)
            base = base or row["images_per_s"]
            row["ratio"] = row["images_per_s"] / base
            rows.append(row)
            label = freeze_label(tuple(row["freeze"]))
            print(f"| {arch} | {label} | {row['images_per_s']:.1f} | {row['ratio']:.2f} |", flush=True)
    if args.json:
        meta = {
            "device": device,
            "batch": args.batch,
            "steps": args.steps,
            "mixed_precision": args.mixed_precision,
            "compile": args.compile,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

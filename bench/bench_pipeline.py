"""Pipeline throughput: KGA unlearning, ours (kga_fast.methods.kga.unlearn, the paper preset) against
the paper's loop (bench/paper_loop.py) in the same run, per architecture and freeze
configuration; pretraining images per second; on CUDA a full paper-preset unlearning run.

    pytest bench/bench_pipeline.py -s            ratio table at the end
    python bench/bench_pipeline.py [--out FILE]  table only

Both sides get the same model, synthetic CIFAR-shaped data (uint8 3x32x32, CIFAR-10
normalization), batch size and number of retain batches (with ceil(n / 15) alignment steps).
Ours is timed from its own clock without the one-off caching (teacher outputs and frozen-prefix
features, kga_fast.methods.kga_cache), which is reported beside it, together with the ratio over a
15-epoch paper-preset run that pays the caching once; |D_f| = |D_r| as in the paper's split.
Both sides are warmed up outside the timing. The paper loop is float32; ours uses bf16
autocast on GPUs that support it and float32 on the CPU (exact there).
Environment (CPU default / CUDA default): KGA_BENCH_DEVICE; KGA_BENCH_ARCHS (resnet18,vgg11);
KGA_BENCH_FREEZES (0;1;1,2;1,2,3); KGA_BENCH_STEPS, retain batches per run (2 / 98 = one epoch
of 25,000); KGA_BENCH_BATCH (256); KGA_BENCH_REPEATS (1, the fastest run counts);
KGA_BENCH_PRECISION of ours (no / bf16); KGA_BENCH_COMPILE, also ours under torch.compile
(0 / first = the first freeze configuration only, 1 = all); KGA_BENCH_PRETRAIN, archs timed
(resnet18 / resnet18-cifar; empty: none); KGA_BENCH_PRETRAIN_STEPS (3 / 100); KGA_BENCH_FULL, the full
paper-preset resnet18 run, 15 epochs over 25,000 (0 / 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).parent))
from paper_loop import PaperConfig, paper_unlearn  # noqa: E402

from kga_fast import accel  # noqa: E402
from kga_fast.data import STATS  # noqa: E402
from kga_fast.freeze import freeze_label  # noqa: E402
from kga_fast.methods.kga import PAPER, UnlearnData, unlearn  # noqa: E402
from kga_fast.models import build_model  # noqa: E402


def _env(name: str, cpu: str, cuda: str) -> str:
    return os.environ.get(name, cuda if DEVICE == "cuda" else cpu)


DEVICE = os.environ.get("KGA_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
ARCHS = [a for a in _env("KGA_BENCH_ARCHS", "resnet18,vgg11", "resnet18,vgg11").split(",") if a]
FREEZES = [
    tuple(int(b) for b in f.split(",") if b != "0")
    for f in _env("KGA_BENCH_FREEZES", "0;1;1,2;1,2,3", "0;1;1,2;1,2,3").split(";")
]
STEPS = int(_env("KGA_BENCH_STEPS", "2", "98"))
BATCH = int(os.environ.get("KGA_BENCH_BATCH", "256"))
REPEATS = int(os.environ.get("KGA_BENCH_REPEATS", "1"))
BF16_OK = DEVICE == "cuda" and torch.cuda.is_bf16_supported()
PRECISION = os.environ.get("KGA_BENCH_PRECISION", "bf16" if BF16_OK else "no")
COMPILE = _env("KGA_BENCH_COMPILE", "0", "first")  # 0 | 1 | first (first freeze config only)
PRETRAIN_ARCHS = [a for a in _env("KGA_BENCH_PRETRAIN", "resnet18", "resnet18-cifar").split(",") if a]
PRETRAIN_STEPS = int(_env("KGA_BENCH_PRETRAIN_STEPS", "3", "100"))
FULL = _env("KGA_BENCH_FULL", "0", "1") == "1"
SIDES = ("paper", "ours") + (("ours+compile",) if COMPILE != "0" else ())
MEAN, STD = STATS["cifar10"]
EPOCHS = PAPER.epochs  # 15: what the one-off caching is spread over in a paper-preset run

RESULTS: dict[tuple, dict] = {}  # (arch, freeze label, side) -> {"seconds", "cache_seconds"}
PRETRAIN: dict[str, float] = {}  # arch -> images / s
FULL_RUN: dict[str, float] = {}  # {"seconds", "cache_seconds"}
_STATE: dict = {}


def accelerator() -> Accelerator:
    """One per process (Accelerate's state is a singleton), mixed precision for ours only."""
    if "acc" not in _STATE:
        _STATE["acc"] = Accelerator(cpu=DEVICE == "cpu", mixed_precision=PRECISION)
    return _STATE["acc"]


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def images(n: int, seed: int) -> torch.Tensor:  # (n, 3, 32, 32) uint8
    return torch.randint(
        0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def teachers(arch: str) -> dict:
    """A_d, A_f, A_n of one architecture (random weights: timing only), on the device."""
    if _STATE.get("arch") != arch:
        _STATE.pop("models", None)  # free the previous architecture first (VGG11 is 130M params)
        torch.manual_seed(0)
        _STATE["models"] = {k: build_model(arch, 10, 3).to(DEVICE).eval() for k in ("Ad", "Af", "An")}
        _STATE["arch"] = arch
    return _STATE["models"]


def run_side(arch: str, freeze: tuple[int, ...], side: str, batches: int) -> dict:
    """Unlearn `batches` retain batches (one epoch) with one side; its seconds."""
    # |D_f| = |D_r| as in the paper's split: what one-off caching costs depends on it.
    n = batches * BATCH
    data = UnlearnData(images(n, 1), images(n, 2), images(BATCH, 3), MEAN, STD)
    models = teachers(arch)
    if side == "paper":
        cfg = PaperConfig(
            lr=PAPER.lr, eps=PAPER.eps, ratio=PAPER.ratio, inner_steps=PAPER.inner_steps, batch_size=BATCH
        )
        _, seconds, _ = paper_unlearn(models, data, cfg, freeze=freeze, seed=0, device=DEVICE)
        return {"seconds": seconds, "cache_seconds": 0.0}
    cfg = dataclasses.replace(PAPER, epochs=1, batch_size=BATCH, compile=side == "ours+compile")
    result = unlearn(models, data, cfg, freeze=freeze, seed=0, accelerator=accelerator())
    return {"seconds": result.seconds - result.cache_seconds, "cache_seconds": result.cache_seconds}


def wanted(freeze: tuple[int, ...], side: str) -> bool:
    return side != "ours+compile" or COMPILE == "1" or freeze == FREEZES[0]


def measure(arch: str, freeze: tuple[int, ...], side: str) -> dict:
    # Warm-up (kernel selection, allocator, compilation) outside the timing: on CUDA for every
    # configuration, on the slow CPU once per architecture and side.
    key = (arch, side) + ((freeze,) if DEVICE == "cuda" or side == "ours+compile" else ())
    if key not in _STATE.setdefault("warm", set()):
        run_side(arch, freeze, side, 1)
        _STATE["warm"].add(key)
    # The fastest of REPEATS runs: the least disturbed by other work on a shared machine.
    out = min((run_side(arch, freeze, side, STEPS) for _ in range(REPEATS)), key=lambda r: r["seconds"])
    RESULTS[(arch, freeze_label(freeze), side)] = out
    print(f"{arch} {freeze_label(freeze)} {side}: {STEPS * BATCH / out['seconds']:.0f} img/s", flush=True)
    return out


def pretrain_images_per_second(arch: str, steps: int) -> float:
    """Images/s of pretraining's step (kga_fast.pretrain.train_model): the rank's
    device-resident batches, memory format of accel.channels_last, autocast, cross-entropy, SGD Nesterov."""
    acc = accelerator()
    torch.manual_seed(0)
    model = build_model(arch, 10, 3)
    model = accel.to_train_layout(model, acc)
    n = (steps + 2) * BATCH
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(4))
    loader = accel.rank_loader(
        acc,
        images(n, 5),
        labels,
        global_batch=BATCH,
        mean=MEAN,
        std=STD,
        shuffle=True,
        seed=0,
        drop_last=True,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model, optimizer = acc.prepare(model, optimizer)
    model.train()
    try:
        for i, (x, y, _) in enumerate(loader):
            if i == 2:  # two warm-up steps
                sync()
                start = time.perf_counter()
            with acc.autocast():
                loss = F.cross_entropy(model(x), y)
            acc.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        seconds = time.perf_counter() - start
    finally:
        acc.free_memory()
    PRETRAIN[arch] = steps * BATCH * acc.num_processes / seconds
    return PRETRAIN[arch]


def full_paper_run() -> dict:
    """The paper preset end to end for resnet18: 15 epochs over 25,000 retain images, D_f
    25,000, D_n 1,000, caching included."""
    models = teachers("resnet18")
    data = UnlearnData(images(25_000, 6), images(25_000, 7), images(1_000, 8), MEAN, STD)
    cfg = PAPER  # the shipped defaults: no torch.compile
    result = unlearn(models, data, cfg, freeze=(), seed=0, accelerator=accelerator())
    FULL_RUN.update(seconds=result.seconds, cache_seconds=result.cache_seconds)
    return FULL_RUN


def table() -> str:
    """Markdown: per arch and freeze, images/s of each side and the ratios of this run."""
    where = torch.cuda.get_device_name() if DEVICE == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    head = f"{where}, torch {torch.__version__}, batch {BATCH}, {STEPS} retain batches per run, ours in {PRECISION}, paper loop in fp32"
    cols = ["arch", "freeze"] + [f"{s} img/s" for s in SIDES] + ["ours caching s", "ours vs paper"]
    cols += [f"ours vs paper, {EPOCHS} epochs with caching"]
    cols += ["compiled vs paper"] * (COMPILE != "0") + ["ours vs ours (0)", "paper vs paper (0)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for arch in ARCHS:
        for freeze in FREEZES:
            row = _row(arch, freeze_label(freeze))
            if row:
                lines.append("| " + " | ".join(row) + " |")
    extra = [f"pretraining {a}: {v:.0f} images/s ({PRECISION})" for a, v in PRETRAIN.items()]
    if FULL_RUN:
        extra.append(
            f"full paper-preset run, resnet18, 15 epochs x 25,000: {FULL_RUN['seconds']:.1f} s (caching {FULL_RUN['cache_seconds']:.1f} s)"
        )
    return "\n".join([head, "", *lines, "", *extra])


def _rate(arch: str, label: str, side: str) -> float | None:  # images / s
    r = RESULTS.get((arch, label, side))
    return STEPS * BATCH / r["seconds"] if r else None


def _row(arch: str, label: str) -> list[str] | None:
    rate = {s: _rate(arch, label, s) for s in SIDES}
    if not any(rate.values()):
        return None

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    ours = RESULTS.get((arch, label, "ours"))
    row = [arch, label] + [f"{rate[s]:.0f}" if rate[s] else "-" for s in SIDES]
    row += [f"{ours['cache_seconds']:.2f}" if ours else "-", ratio(rate["ours"], rate["paper"])]
    paper = RESULTS.get((arch, label, "paper"))
    if ours and paper:  # a run of the paper preset: EPOCHS epochs, caching once
        row += [ratio(EPOCHS * paper["seconds"], EPOCHS * ours["seconds"] + ours["cache_seconds"])]
    else:
        row += ["-"]
    if COMPILE != "0":
        row += [ratio(rate["ours+compile"], rate["paper"])]
    row += [ratio(rate["ours"], _rate(arch, "(0)", "ours"))]
    return row + [ratio(rate["paper"], _rate(arch, "(0)", "paper"))]


class _Summary:  # a pytest plugin registered by the fixture below: prints the table at the end
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if RESULTS or PRETRAIN or FULL_RUN:
            terminalreporter.write_sep("=", "Pipeline throughput (same run)")
            terminalreporter.write_line(table())


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    if not request.config.pluginmanager.has_plugin("bench_pipeline_summary"):
        request.config.pluginmanager.register(_Summary(), "bench_pipeline_summary")


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("freeze", FREEZES, ids=freeze_label)
@pytest.mark.parametrize("arch", ARCHS)
def test_unlearning_throughput(benchmark, arch, freeze, side):
    if not wanted(freeze, side):
        pytest.skip("KGA_BENCH_COMPILE=first compiles the first freeze configuration only")
    out = benchmark.pedantic(measure, args=(arch, freeze, side), rounds=1, iterations=1)
    assert out["seconds"] > 0


@pytest.mark.parametrize("arch", PRETRAIN_ARCHS)
def test_pretraining_throughput(benchmark, arch):
    assert benchmark.pedantic(pretrain_images_per_second, args=(arch, PRETRAIN_STEPS), rounds=1) > 0


@pytest.mark.skipif(not FULL, reason="KGA_BENCH_FULL=1 runs it (default on CUDA only)")
def test_full_paper_run(benchmark):
    assert benchmark.pedantic(full_paper_run, rounds=1)["seconds"] > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()

    def save() -> None:  # after every measurement: a run stopped by a time limit keeps its rows
        if args.out:
            Path(args.out).write_text(table() + "\n")

    for arch in ARCHS:
        for freeze in FREEZES:
            for side in SIDES:
                if wanted(freeze, side):
                    measure(arch, freeze, side)
                    save()
    for arch in PRETRAIN_ARCHS:
        pretrain_images_per_second(arch, PRETRAIN_STEPS)
        save()
    if FULL:
        full_paper_run()
        save()
    print(table())


if __name__ == "__main__":
    main()

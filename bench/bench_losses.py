"""Benchmarks of the KGA alignment loss (kga_fast.losses.alignment_loss, student first,
per-pair reduction, frozen teacher): providers reference eager, reference under
torch.compile, fused; modes forward (no autograd) and forward+backward.

    pytest bench/bench_losses.py --benchmark-enable      pytest-benchmark; ratio table at the end
    python bench/bench_losses.py --device cuda --dtype bfloat16 [--out FILE]     table only

Times are the best of several rounds; ratios are to the eager reference measured in the
same run. On CUDA the table adds the
fused effective bandwidth against a device copy measured in the same run. Its bytes are
those any autograd implementation must move: the forward reads student and teacher; the
backward, whose incoming gradient is unknown at forward time, reads them again (or a saved
gradient of the same size, written in the forward) and writes the student's gradient.
Environment: KGA_BENCH_SHAPES="256x10,4096x32000" picks shapes (CPU default leaves out
8192x50257, whose eager reference needs more memory than a 24 GiB box has),
KGA_BENCH_DTYPE, KGA_BENCH_DEVICE, KGA_BENCH_ROUNDS.
"""

from __future__ import annotations

import argparse
import os
import time

import pytest
import torch

from kga_fast import losses, native

ALL_SHAPES = [(256, 10), (256, 100), (4096, 32000), (8192, 50257)]
PROVIDERS = ("eager", "compiled", "fused")
MODES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RESULTS: dict[tuple, float] = {}  # (device, dtype, shape, mode, provider) -> best seconds
COPY_BANDWIDTH: dict[str, float] = {}  # device -> bytes / s


def bench_device() -> str:
    return os.environ.get("KGA_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")


def bench_shapes(device: str) -> list[tuple[int, int]]:
    spec = os.environ.get("KGA_BENCH_SHAPES")
    if spec:
        return [tuple(int(v) for v in s.split("x")) for s in spec.split(",")]
    return ALL_SHAPES if device == "cuda" else ALL_SHAPES[:3]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


_COMPILED: dict = {}


def loss_fn(provider: str):
    impl = "fused" if provider == "fused" else "reference"

    def loss(s, t, gap):
        return losses.alignment_loss(s, t, gap, impl=impl)

    if provider != "compiled":
        return loss
    if "fn" not in _COMPILED:  # one compiled function; it specializes per shape and mode
        _COMPILED["fn"] = torch.compile(loss, dynamic=False)
    return _COMPILED["fn"]


def make_step(provider: str, mode: str, shape, dtype, device: str):
    """A no-argument callable running one loss evaluation (and backward) to completion."""
    gen = torch.Generator(device=device).manual_seed(0)
    student = (torch.randn(shape, device=device, generator=gen) * 3).to(dtype)
    teacher = (torch.randn(shape, device=device, generator=gen) * 3).to(dtype)
    gap = torch.rand(shape[0], device=device, generator=gen)
    fn = loss_fn(provider)
    if mode == "fwd":

        def step():
            with torch.no_grad():
                fn(student, teacher, gap)
            synchronize(device)

    else:
        student.requires_grad_(True)

        def step():
            student.grad = None
            fn(student, teacher, gap).backward()
            synchronize(device)

    return step


def time_step(step, rounds: int) -> float:
    """Best seconds of `rounds` calls after two warm-ups (compilation, allocator, caches).
    The minimum, not the median: on a shared machine, noise only ever adds time."""
    step()
    step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy."""
    if device not in COPY_BANDWIDTH:
        src = torch.empty(1 << 28, device=device)
        dst = torch.empty_like(src)
        sec = time_step(lambda: (dst.copy_(src), synchronize(device)), 10)
        COPY_BANDWIDTH[device] = 2 * src.numel() * src.element_size() / sec
    return COPY_BANDWIDTH[device]


def must_bytes(shape, dtype, mode: str) -> int:
    elt = shape[0] * shape[1] * torch.tensor([], dtype=dtype).element_size()
    return 2 * elt if mode == "fwd" else 5 * elt  # fwd: read s, t; bwd: read s, t, write ds


def skip_reason(provider: str, device: str) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    if provider == "fused" and not native.has_device(device):
        return f"kga_fast._C has no {device} kernels"
    return None


def table(device: str, dtype_name: str) -> str:
    """Markdown table of the best times in RESULTS with ratios to the eager reference."""
    cuda = device == "cuda"
    head = "| shape | mode | eager ms | compiled ms | fused ms | fused vs eager | fused vs compiled |"
    head += " fused GB/s | % of copy |" if cuda else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    dtype = DTYPES[dtype_name]
    for shape in bench_shapes(device):
        for mode in MODES:
            ms = {p: RESULTS.get((device, dtype_name, shape, mode, p)) for p in PROVIDERS}
            if not any(ms.values()):
                continue
            cell = lambda s: f"{s * 1e3:.3f}" if s else "-"  # noqa: E731
            ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
            row = f"| {shape[0]}x{shape[1]} | {mode} | {cell(ms['eager'])} | {cell(ms['compiled'])} | {cell(ms['fused'])} | {ratio(ms['eager'], ms['fused'])} | {ratio(ms['compiled'], ms['fused'])} |"
            if cuda and ms["fused"]:
                bw = must_bytes(shape, dtype, mode) / ms["fused"]
                row += f" {bw / 1e9:.0f} | {100 * bw / copy_bandwidth(device):.0f}% |"
            lines.append(row)
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    copy = f", copy {copy_bandwidth(device) / 1e9:.0f} GB/s" if cuda else ""
    return f"{where}, {dtype_name}, torch {torch.__version__}{copy}\n\n" + "\n".join(lines)


DEVICE = bench_device()
DTYPE_NAME = os.environ.get("KGA_BENCH_DTYPE", "bfloat16" if DEVICE == "cuda" else "float32")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", bench_shapes(DEVICE), ids=lambda s: f"{s[0]}x{s[1]}")
def test_alignment_loss(benchmark, shape, mode, provider):
    reason = skip_reason(provider, DEVICE)
    if reason:
        pytest.skip(reason)
    step = make_step(provider, mode, shape, DTYPES[DTYPE_NAME], DEVICE)
    rounds = int(os.environ.get("KGA_BENCH_ROUNDS", "5" if shape[0] * shape[1] > 1e7 else "50"))
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)
    if benchmark.stats is not None:  # None under --benchmark-disable (one plain call)
        RESULTS[(DEVICE, DTYPE_NAME, shape, mode, provider)] = benchmark.stats.stats.min


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=DEVICE)
    parser.add_argument("--dtype", default=DTYPE_NAME, choices=sorted(DTYPES))
    parser.add_argument("--rounds", type=int, default=None, help="timed calls per case (best is kept)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    for shape in bench_shapes(args.device):
        for mode in MODES:
            for provider in PROVIDERS:
                if skip_reason(provider, args.device):
                    continue
                rounds = args.rounds or (5 if shape[0] * shape[1] > 1e7 else 50)
                step = make_step(provider, mode, shape, DTYPES[args.dtype], args.device)
                RESULTS[(args.device, args.dtype, shape, mode, provider)] = time_step(step, rounds)
                del step
    text = table(args.device, args.dtype)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

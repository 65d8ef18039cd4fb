"""The fast path computes what the plain path computes: a frozen prefix run under no_grad gives
the same gradients on the trainable blocks as running the whole model with autograd on, and
torch.compile of the student gives the same losses. Also checks the benchmark's baseline,
bench/paper_loop.py. (That the device-resident batches equal the DataLoader's is in
tests/test_data.py.)"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from kga_fast.freeze import apply_freeze
from kga_fast.losses import retain_loss
from kga_fast.methods.kga import UnlearnConfig, UnlearnData, unlearn
from kga_fast.models import build_model

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from paper_loop import PaperConfig, paper_unlearn  # noqa: E402

MEAN, STD = (0.2,), (0.3,)


def tiny_data(n_retain: int, n_forget: int, n_new: int) -> UnlearnData:
    g = torch.Generator().manual_seed(1)

    def images(n: int) -> torch.Tensor:  # (n, 1, 32, 32) uint8
        return torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)

    return UnlearnData(images(n_retain), images(n_forget), images(n_new), MEAN, STD)


def grads_of(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict:
    model.zero_grad(set_to_none=True)
    retain_loss(model(x).float(), target, impl="reference").backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "arch,freeze",
    [
        ("resnet18", (1,)),
        ("resnet18", (1, 2, 3)),
        ("resnet18", (2, 4)),
        ("vgg11-bn-cifar", (1, 2, 3)),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(map(str, v)),
)
def test_frozen_prefix_no_grad_gives_the_plain_gradients(arch, freeze):
    torch.manual_seed(0)
    fast = apply_freeze(build_model(arch, 10, 3), freeze).train()
    # The plain path: the same frozen parameters and BatchNorm modes, but the whole model runs
    # with autograd on (no no_grad prefix, nothing detached), as the paper's code ran it.
    plain = copy.deepcopy(fast)
    plain.frozen = ()
    plain.train()
    for i in freeze:
        plain.blocks[i - 1].eval()
    if 1 in freeze:
        plain.stem.eval()
    assert fast.frozen_prefix() == (len(freeze) if freeze[0] == 1 else 0)
    x = torch.randn(6, 3, 32, 32)
    target = torch.randn(6, 10)
    got, want = grads_of(fast, x, target), grads_of(plain, x, target)
    assert got.keys() == want.keys() and got
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)
    for name, buf in fast.named_buffers():  # the same BatchNorm statistics afterwards too
        torch.testing.assert_close(buf, plain.get_buffer(name), rtol=0, atol=0)


def _unlearn_losses(compile_student: bool) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(0)
    models = {k: build_model("resnet18", 10, 1).eval() for k in ("Ad", "Af", "An")}
    cfg = UnlearnConfig(
        optimizer="sgd",
        lr=0.05,
        batch_size=8,
        inner_steps=2,
        epochs=2,
        impl="reference",
        compile=compile_student,
    )
    acc = Accelerator(cpu=True)
    result = unlearn(models, tiny_data(16, 8, 8), cfg, freeze=(1,), seed=0, accelerator=acc)
    return result.losses, result.model


@pytest.mark.slow
def test_compile_on_and_off_give_the_same_losses():
    (eager, eager_model), (compiled, compiled_model) = map(_unlearn_losses, (False, True))
    assert len(eager["retain"]) == len(compiled["retain"]) == 2
    for key in ("retain", "align"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-6)
    torch.manual_seed(0)
    start = build_model("resnet18", 10, 1).state_dict()  # the A_d both runs started from

    @torch.no_grad()
    def update(model) -> torch.Tensor:  # all parameter changes, flattened
        return torch.cat([(p - start[n]).flatten() for n, p in model.named_parameters()])

    u_eager, u_compiled = update(eager_model), update(compiled_model)
    assert u_eager.norm() > 0.01
    # Inductor fuses and reorders float32 reductions: equal up to rounding, which 8 SGD steps
    # through train-mode BatchNorm on batches of 8 amplify (measured 3e-3).
    assert (u_compiled - u_eager).norm() / u_eager.norm() < 1e-2


def test_paper_loop_steps_and_freezing():
    torch.manual_seed(0)
    teacher = build_model("resnet18", 10, 1).eval()  # one model in the three roles: faster
    models = {k: teacher for k in ("Ad", "Af", "An")}
    before = copy.deepcopy(teacher.state_dict())
    cfg = PaperConfig(batch_size=4, inner_steps=2, lr=1e-3)
    data = tiny_data(12, 8, 8)  # 3 retain batches: updates at batches 0 and 2
    student, seconds, steps = paper_unlearn(models, data, cfg, freeze=(1, 2), seed=0, device="cpu")
    assert steps == math.ceil(3 / 2) and seconds > 0
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    after = student.state_dict()
    for name, _ in student.named_parameters():
        frozen = name.startswith(("stem.", "blocks.0.", "blocks.1."))
        assert torch.equal(before[name], after[name]) == frozen, name
    # As in the paper's code, the frozen blocks' BatchNorm statistics still move.
    assert not torch.equal(before["blocks.0.0.bn1.running_mean"], after["blocks.0.0.bn1.running_mean"])


@pytest.mark.parametrize(
    "device, precision, expected",
    [("cuda", "no", True), ("cuda", "bf16", True), ("cpu", "bf16", True), ("cpu", "no", False)],
)
def test_channels_last_rule(device, precision, expected):
    """One rule for models and batches alike: channels_last on GPUs and under bf16 on the CPU."""
    from types import SimpleNamespace

    from kga_fast import accel

    fake = SimpleNamespace(device=torch.device(device), mixed_precision=precision)
    assert accel.channels_last(fake) is expected
    model = accel.to_train_layout(build_model("resnet18-cifar", 10, 3), fake)
    conv = model.stem[0].weight  # (64, 3, 3, 3)
    assert conv.is_contiguous(memory_format=torch.channels_last) is expected


def test_start_runs_only_the_blocks_after_a_cached_prefix():
    torch.manual_seed(0)
    model = apply_freeze(build_model("resnet18", 10, 3), (1, 2)).train()
    x = torch.randn(4, 3, 32, 32)
    features = model.prefix(x, 2)  # (4, 128, 4, 4), no graph
    assert not features.requires_grad
    torch.testing.assert_close(model(features, start=2), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="skips trainable blocks"):
        model(model.prefix(x, 3), start=3)  # block 3 is trainable: it must not be skipped


def _unlearn_with_prefix_cache(monkeypatch, arch: str, freeze: tuple, limit_gb: float):
    """Losses, A* and the `start` of every student call of a small KGA run."""
    from kga_fast.methods import kga_cache as cache

    starts = []
    inputs = cache.PrefixCache.inputs

    def spy(self, name, x, idx):
        out = inputs(self, name, x, idx)
        starts.append(out[1])
        return out

    monkeypatch.setattr(cache.PrefixCache, "inputs", spy)
    torch.manual_seed(0)
    models = {k: build_model(arch, 10, 1).eval() for k in ("Ad", "Af", "An")}
    cfg = UnlearnConfig(
        optimizer="sgd",
        lr=0.05,
        batch_size=8,
        inner_steps=2,
        epochs=2,
        impl="reference",
        prefix_cache_gb=limit_gb,
    )
    acc = Accelerator(cpu=True)
    result = unlearn(models, tiny_data(24, 16, 8), cfg, freeze=freeze, seed=0, accelerator=acc)
    return result.losses, result.model, starts


@pytest.mark.parametrize(
    "arch,freeze", [("resnet18", (1, 2, 3)), ("vgg11-bn-cifar", (1,)), ("resnet18", (2, 3))]
)
def test_frozen_prefix_cache_gives_the_uncached_unlearning(monkeypatch, arch, freeze):
    """The cached features of the frozen prefix stand in for running it: same losses, same A*.
    (A frozen set that is not a prefix, (2,3), has nothing to cache.)"""
    got_losses, got, starts = _unlearn_with_prefix_cache(monkeypatch, arch, freeze, 4.0)
    prefix = len(freeze) if freeze[0] == 1 else 0
    assert starts and set(starts) == {prefix}  # every student call used the cache when possible
    want_losses, want, plain = _unlearn_with_prefix_cache(monkeypatch, arch, freeze, 0.0)
    assert set(plain) == {0}
    for k in want_losses:
        torch.testing.assert_close(got_losses[k], want_losses[k], rtol=1e-5, atol=1e-7)
    for (name, p), q in zip(got.state_dict().items(), want.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_frozen_prefix_cache_over_its_limit_runs_the_prefix(monkeypatch, capsys):
    *_, starts = _unlearn_with_prefix_cache(monkeypatch, "resnet18", (1,), 1e-6)
    assert set(starts) == {0}
    assert "frozen-prefix cache would need" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frozen_prefix_cache_on_cuda_in_bf16():
    """The GPU fast path (bf16 autocast, channels_last, cached prefix) against the same run
    with the prefix recomputed every batch: the same losses up to bf16 rounding."""
    from accelerate.state import AcceleratorState

    def run(limit_gb: float) -> dict:
        AcceleratorState._reset_state(True)  # a fresh bf16 accelerator, whatever ran before
        acc = Accelerator(mixed_precision="bf16")
        torch.manual_seed(0)
        models = {k: build_model("resnet18-cifar", 10, 1).to(acc.device).eval() for k in ("Ad", "Af", "An")}
        cfg = UnlearnConfig(
            optimizer="sgd", lr=0.01, batch_size=16, inner_steps=2, epochs=2, prefix_cache_gb=limit_gb
        )
        try:
            return unlearn(models, tiny_data(64, 32, 16), cfg, freeze=(1, 2), seed=0, accelerator=acc).losses
        finally:
            AcceleratorState._reset_state(True)

    cached, plain = run(4.0), run(0.0)
    for k in plain:
        torch.testing.assert_close(cached[k], plain[k], rtol=2e-2, atol=1e-3)

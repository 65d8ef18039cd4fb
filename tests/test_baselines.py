"""Baselines (kga_fast.baselines) on a tiny learnable task where D_f is one whole class: each
method moves A* the expected way, freezing holds, resume is exact, retrain reads A_r's time;
and the methods table (kga_fast.evaluation.methods_report) lands in report.md."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

import kga_fast.methods as B
from kga_fast import accel, results
from kga_fast.data import normalize
from kga_fast.errors import UserError
from kga_fast.evaluation import methods_report, report
from kga_fast.freeze import apply_freeze
from kga_fast.methods import (
    BASELINE_PRESETS,
    MethodData,
    baseline_config_key,
    fresh_distill,
    msg,
    shrink_perturb,
    unlearn_baseline,
)
from kga_fast.methods.common import DROPOUT_STREAM, dropout_seed, stream_seed
from kga_fast.methods.ct import transpose_kernels
from kga_fast.methods.fcs import contrast, uniform_kl
from kga_fast.methods.retrain import retrain
from kga_fast.methods.salun import saliency_mask
from kga_fast.methods.trained import Setup, loss_gradient, lr_factor
from kga_fast.models import StagedNet, build_model

MEAN, STD, K = (0.5,), (0.5,), 4
FORGET_CLASS = 3


@pytest.fixture(scope="module")
def acc() -> Accelerator:
    return Accelerator(cpu=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions run several times slower on two threads of a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(batchnorm: bool = True) -> StagedNet:
    """A StagedNet small enough for many CPU steps: stem, two freezable blocks, head. Without
    BatchNorm, DDP computes exactly what one process computes."""

    def conv(i: int, o: int) -> nn.Module:
        norm = nn.BatchNorm2d(o) if batchnorm else nn.Identity()
        return nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1), norm, nn.ReLU())

    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, K))
    return StagedNet("tiny", conv(1, 8), [conv(8, 16), conv(16, 16)], head)


def images_of(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Class c: a bright 16x16 square in quadrant c over noise. (N, 1, 32, 32) uint8."""
    x = torch.randint(0, 80, (len(labels), 1, 32, 32), generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c, 2)
        x[i, 0, 16 * r : 16 * r + 16, 16 * col : 16 * col + 16] += 150
    return x.to(torch.uint8)


def make_data() -> MethodData:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(160) % K
    images = images_of(labels, g)
    forget = labels == FORGET_CLASS
    return MethodData(
        images[~forget],
        images[forget],
        images[:8],
        MEAN,
        STD,
        retain_labels=labels[~forget],
        forget_labels=labels[forget],
    )


def train_ad(data: MethodData, batchnorm: bool = True) -> StagedNet:
    torch.manual_seed(0)
    ad = tiny_net(batchnorm)
    opt = torch.optim.SGD(ad.parameters(), lr=0.1, momentum=0.9)
    x = normalize(torch.cat([data.forget, data.retain]), MEAN, STD)
    y = torch.cat([data.forget_labels, data.retain_labels])
    for _ in range(40):  # A_d fits all four classes
        opt.zero_grad()
        F.cross_entropy(ad(x), y).backward()
        opt.step()
    return ad.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def task() -> tuple[dict, MethodData]:
    data = make_data()
    ad = train_ad(data)
    assert accuracy(ad, data.forget, data.forget_labels) == 1.0
    return {"Ad": ad, "Ar": tiny_net().eval()}, data


def logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(normalize(images, MEAN, STD))


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits(model, images).argmax(1) == labels).float().mean().item()


def ce(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return F.cross_entropy(logits(model, images), labels).item()


def run(task, acc, preset: str, **kw):
    models, data = task
    cfg = dataclasses.replace(BASELINE_PRESETS[preset], batch_size=32, **kw)
    return unlearn_baseline(models, data, cfg, freeze=(), seed=0, accelerator=acc)


@pytest.mark.numerics
def test_gradient_ascent_raises_the_forget_loss(task, acc):
    models, data = task
    out = run(task, acc, "gradient_ascent", lr=0.05, epochs=3).model
    assert ce(out, data.forget, data.forget_labels) > ce(models["Ad"], data.forget, data.forget_labels) + 1.0
    assert accuracy(out, data.forget, data.forget_labels) < 0.5


@pytest.mark.numerics
def test_random_label_forgets_the_class_and_keeps_the_rest(task, acc):
    _, data = task
    # lr 0.05 left D_r accuracy at 0.71 for one seed under SSE4.1 kernels (1.0 elsewhere); at 0.02
    # it is 1.0 for seeds 0-4 under SSE4.1 and AVX2.
    result = run(task, acc, "random_label", lr=0.02, epochs=4)
    assert accuracy(result.model, data.forget, data.forget_labels) < 0.5
    assert accuracy(result.model, data.retain, data.retain_labels) > 0.9
    assert len(result.losses["loss"]) == 4 and result.seconds > 0


@pytest.mark.numerics
def test_salun_trains_only_the_salient_share_and_forgets(task, acc):
    models, data = task
    result = run(task, acc, "salun", lr=0.05, epochs=4, saliency=0.3)
    assert accuracy(result.model, data.forget, data.forget_labels) < 0.5
    assert accuracy(result.model, data.retain, data.retain_labels) > 0.9
    before = torch.cat([p.flatten() for p in models["Ad"].parameters()])
    after = torch.cat([p.flatten() for p in result.model.parameters()])
    moved = (before != after).float().mean().item()
    assert 0.05 < moved <= 0.3 + 1e-3  # masked-out weights are exactly A_d's


def test_saliency_mask_keeps_the_largest_forget_gradients(task, acc):
    models, data = task
    net = copy.deepcopy(models["Ad"]).requires_grad_(True)
    params = list(net.parameters())
    cfg = dataclasses.replace(BASELINE_PRESETS["salun"], batch_size=16)
    ctx = Setup(net, params, data, cfg, models, 0, acc, K)  # the gradient in batches of 16
    mask = saliency_mask(loss_gradient(ctx, [(data.forget, data.forget_labels, 1.0)]), params, 0.25)
    x = normalize(data.forget, MEAN, STD)
    grads = torch.autograd.grad(F.cross_entropy(net(x), data.forget_labels, reduction="sum"), params)
    flat = torch.cat([g.abs().flatten() for g in grads])
    chosen = torch.cat([mask[p].flatten() for p in params])
    assert chosen.sum().item() == round(0.25 * flat.numel())
    assert flat[chosen].min() >= flat[~chosen].max()


def test_saliency_mask_keeps_its_share_when_most_gradients_tie_at_zero():
    """A weight with no gradient on D_f ties at |g| = 0; with most of them at 0 a threshold at the
    median kept every weight (SalUn became random labels). By rank: exactly the share, every
    nonzero |g| first, then the earliest zeros."""
    net = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # only input 0 is ever nonzero

    grads = torch.autograd.grad(F.cross_entropy(net(x), torch.tensor([0]), reduction="sum"), [net.weight])
    mask = saliency_mask(list(grads), [net.weight], 0.5)[net.weight]
    assert mask.sum().item() == 4
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]


@pytest.mark.numerics
def test_finetune_on_retain_fits_retain_and_drifts_from_the_forgotten_class(task, acc):
    models, data = task
    out = run(task, acc, "finetune", lr=0.05, epochs=4).model
    assert accuracy(out, data.retain, data.retain_labels) > 0.95
    # Trained on three classes only, A* stops favouring the fourth: the forget loss rises.
    assert ce(out, data.forget, data.forget_labels) > ce(models["Ad"], data.forget, data.forget_labels)


@pytest.mark.numerics
def test_scrub_moves_away_from_the_teacher_on_forget_only(task, acc):
    models, data = task
    # The paper's lr 5e-4 needs more max-steps than 2 passes over 40 images give.
    # Four min-step epochs: D_r accuracy 0.89-1.0 over seeds 0-4 under SSE4.1 and AVX2 kernels
    # (three left it at 0.80 for one seed); the forget KL ratio is 14-36 (bench/test_margins.py).
    result = run(task, acc, "scrub", lr=0.002, epochs=4, max_epochs=2, forget_batch_size=8)
    assert len(result.losses["max_step"]) == 2 and len(result.losses["min_step"]) == 4
    assert result.cache_seconds > 0

    def kl_to_teacher(images: torch.Tensor) -> float:
        t, s = logits(models["Ad"], images), logits(result.model, images)
        return F.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean").item()

    assert kl_to_teacher(data.forget) > 5 * kl_to_teacher(data.retain)
    assert accuracy(result.model, data.forget, data.forget_labels) < 0.5
    assert accuracy(result.model, data.retain, data.retain_labels) > 0.7


@pytest.mark.numerics
@pytest.mark.parametrize(
    "method, kw",
    [  # D_f accuracy 0.00 and D_r 0.99-1.00 for seeds 0-4 (bench/test_margins.py)
        ("neggrad_plus", dict(lr=0.02, epochs=4, retain_weight=0.8)),
        ("ct", dict(lr=0.05, epochs=8)),
    ],
)
def test_neggrad_plus_and_ct_forget_the_class_and_keep_the_rest(task, acc, method, kw):
    _, data = task
    result = run(task, acc, method, **kw)
    assert accuracy(result.model, data.forget, data.forget_labels) < 0.5
    assert accuracy(result.model, data.retain, data.retain_labels) > 0.9
    assert len(result.losses["loss"]) == kw["epochs"]


@pytest.mark.numerics
def test_msg_refits_retain_and_drifts_from_the_forgotten_class(task, acc):
    models, data = task
    # Like finetune, its training sees D_r only: D_r accuracy 1.00 and the forget CE 0.2-3.4
    # above A_d's for seeds 0-4, D_f accuracy anywhere in 0-1 (bench/test_margins.py).
    out = run(task, acc, "msg", lr=0.05, epochs=8).model
    assert accuracy(out, data.retain, data.retain_labels) > 0.9
    assert ce(out, data.forget, data.forget_labels) > ce(models["Ad"], data.forget, data.forget_labels)


@pytest.mark.numerics
def test_fcs_pulls_forget_outputs_to_uniform_and_keeps_retain(task, acc):
    models, data = task
    # A whole class forgotten: FCS mostly keeps its argmax (D_f accuracy 0.5-1.0 over seeds 0-4;
    # it was made for random forgetting), but D_f's outputs go towards uniform, far more than
    # D_r's. The larger of the two ratios below is 0.39-0.56 for seeds 0-4 under AVX-512 and
    # AVX2, 0.43-0.58 under SSE4.1 (bench/test_margins.py).
    result = run(task, acc, "fcs", lr=0.05, forget_lr=0.01, epochs=4)
    out = result.model
    kl_forget = uniform_kl(logits(out, data.forget)).item()
    assert kl_forget < 0.75 * uniform_kl(logits(models["Ad"], data.forget)).item()
    assert kl_forget < 0.75 * uniform_kl(logits(out, data.retain)).item()
    assert accuracy(out, data.retain, data.retain_labels) > 0.9
    assert [len(result.losses[n]) for n in ("uniform", "contrast", "retain")] == [1, 4, 4]
    assert result.losses["contrast"][-1] < result.losses["contrast"][0]


def test_fcs_losses_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    f, r, t = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g), 1.15
    assert uniform_kl(torch.zeros(3, 4)).item() == pytest.approx(0.0, abs=1e-7)
    p = f.softmax(1)
    direct = sum(0.25 * (math.log(0.25) - math.log(p[i, k])) for i in range(3) for k in range(4)) / 3
    assert uniform_kl(f).item() == pytest.approx(direct, rel=1e-5)
    total = 0.0
    for i in range(3):  # -log of each retain image's share of forget image i's similarities
        s = [float(f[i] @ r[j]) / t for j in range(5)]
        z = math.log(sum(math.exp(v) for v in s))
        total += sum(z - v for v in s)
    assert contrast(f, r, t).item() == pytest.approx(total / 15, rel=1e-5)


def test_ct_transposes_the_trainable_kernels_only(task):
    models, _ = task
    net = copy.deepcopy(models["Ad"]).requires_grad_(True)
    apply_freeze(net, (1,))  # the stem and block 1 stay A_d's
    assert transpose_kernels(net) == 1  # block 2's conv
    for (name, after), before in zip(
        net.state_dict().items(), models["Ad"].state_dict().values(), strict=True
    ):
        if name.endswith("0.weight") and after.dim() == 4 and not name.startswith(("stem.", "blocks.0.")):
            assert torch.equal(after, before.transpose(2, 3)) and not torch.equal(after, before), name
        else:
            assert torch.equal(after, before), name


@pytest.mark.parametrize("saliency", ["low", "high"])
def test_msg_resets_the_low_or_high_saliency_share_of_each_conv_and_slows_the_rest(task, acc, saliency):
    models, data = task
    net = copy.deepcopy(models["Ad"]).requires_grad_(True)
    params = list(net.parameters())
    cfg = dataclasses.replace(
        BASELINE_PRESETS["msg"], batch_size=32, reset_share=0.25, reset_saliency=saliency
    )
    training = msg.setup(Setup(net, params, data, cfg, models, 0, acc, K))
    # The gradient, directly: CE summed over the same D_r sample minus CE summed over D_f, at A_d.
    g = torch.Generator().manual_seed(stream_seed(0, 5))
    sample = torch.randperm(len(data.retain), generator=g)[: len(data.forget)]
    ad = copy.deepcopy(models["Ad"]).eval().requires_grad_(True)
    loss = F.cross_entropy(
        logits_grad(ad, data.retain[sample]), data.retain_labels[sample], reduction="sum"
    ) - F.cross_entropy(logits_grad(ad, data.forget), data.forget_labels, reduction="sum")
    names = [n for n, _ in ad.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(loss, list(ad.parameters())), strict=True))
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(training.grad_scale) == len(convs) == 3
    for name in convs:
        w, w0 = net.get_submodule(name).weight, models["Ad"].get_submodule(name).weight
        reset = w != w0
        k = round(0.25 * w.numel())
        assert reset.sum().item() == k, name  # fresh values differ from A_d's almost surely
        mag = grads[f"{name}.weight"].abs()  # the reset ones are the smallest or the largest
        low, high = (mag[reset], mag[~reset]) if saliency == "low" else (mag[~reset], mag[reset])
        assert low.max() <= high.min() + 1e-5 * mag.max(), name  # (up to summation order)
        scale = training.grad_scale[w]
        assert torch.equal(scale, torch.where(reset, 1.0, 0.1))


def test_no_two_uses_of_randomness_share_a_seed():
    # The named streams (common.py: the orders 0-2, each epoch's DeviceLoader seed + epoch; KGA's
    # held-out share 4, MSG's sample 5, the fresh draw of shrink_perturb and fresh_distill 6) and
    # dropout's per epoch and process, over 100 seeds and epochs.
    orders = [stream_seed(s, k) + e for s in range(100) for k in (0, 1, 2) for e in range(100)]
    named = orders + [stream_seed(s, k) for s in range(100) for k in (4, 5, 6)]
    dropout = [dropout_seed(s, e, r) for s in range(100) for e in range(100) for r in range(8)]
    assert len(set(named + dropout)) == len(named) + len(dropout)
    assert dropout_seed(3, 2, 1) == stream_seed(3, DROPOUT_STREAM + 2) + 1


def build_tiny(arch: str, num_classes: int, in_channels: int) -> StagedNet:
    """shrink_perturb's build_model for the tiny net, which build_model cannot name."""
    assert (arch, num_classes, in_channels) == ("tiny", K, 1)
    return tiny_net()


@pytest.fixture
def tiny_draws(monkeypatch):
    monkeypatch.setattr(shrink_perturb, "build_model", build_tiny)


def test_shrink_perturb_mixes_each_trainable_weight_with_a_fresh_draw_of_its_seed(task, acc, tiny_draws):
    models, data = task
    cfg = dataclasses.replace(BASELINE_PRESETS["shrink_perturb"], batch_size=32, shrink=0.6, perturb=0.3)
    net = copy.deepcopy(models["Ad"]).requires_grad_(True)
    apply_freeze(net, (1,))  # the stem and block 1 stay A_d's
    params = [p for p in net.parameters() if p.requires_grad]
    shrink_perturb.setup(Setup(net, params, data, cfg, models, 3, acc, K))
    fresh = dict(shrink_perturb.fresh_like(net, stream_seed(3, 6)).named_parameters())
    ad = dict(models["Ad"].named_parameters())
    for name, p in net.named_parameters():
        if name.startswith(("stem.", "blocks.0.")):
            assert torch.equal(p, ad[name]), name
        else:
            torch.testing.assert_close(p, 0.6 * ad[name] + 0.3 * fresh[name], rtol=0, atol=1e-6, msg=name)
    for name, value in net.named_buffers():  # BatchNorm statistics: A_d's until the repair runs
        assert torch.equal(value, models["Ad"].get_buffer(name)), name


def test_a_fresh_draw_has_the_models_shape_its_seeds_values_and_keeps_the_global_generator():
    model = build_model("resnet18", 10, 1)
    state = torch.random.get_rng_state()
    a, b = shrink_perturb.fresh_like(model, 1), shrink_perturb.fresh_like(model, 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    first = [name for name, _ in model.named_parameters()][0]
    assert a.get_parameter(first).shape == (64, 1, 7, 7) and a.head[-1].out_features == 10
    assert torch.equal(a.get_parameter(first), shrink_perturb.fresh_like(model, 1).get_parameter(first))
    assert not torch.equal(a.get_parameter(first), b.get_parameter(first))


@pytest.mark.numerics
def test_shrink_perturb_refits_retain_and_drifts_from_the_forgotten_class(task, acc, tiny_draws):
    models, data = task
    # Its training sees D_r only, from a half-fresh start: D_f accuracy 0.00, D_r 1.00 and the
    # forget CE 3.6-4.5 above A_d's for seeds 0-4 under AVX-512 and AVX2 (bench/test_margins.py).
    out = run(task, acc, "shrink_perturb", lr=0.05, epochs=8).model
    assert accuracy(out, data.retain, data.retain_labels) > 0.9
    assert accuracy(out, data.forget, data.forget_labels) < 0.5
    assert ce(out, data.forget, data.forget_labels) > ce(models["Ad"], data.forget, data.forget_labels)


def test_fresh_distill_redraws_each_trainable_weight_and_resets_its_batchnorm(task, acc, tiny_draws):
    models, data = task
    cfg = dataclasses.replace(BASELINE_PRESETS["fresh_distill"], batch_size=32)
    net = copy.deepcopy(models["Ad"]).requires_grad_(True)
    apply_freeze(net, (1,))  # the stem and block 1 stay A_d's, BatchNorm statistics included
    params = [p for p in net.parameters() if p.requires_grad]
    fresh_distill.setup(Setup(net, params, data, cfg, models, 3, acc, K))
    draw = shrink_perturb.fresh_like(net, stream_seed(3, 6))
    ad = models["Ad"]
    for name, p in net.named_parameters():
        want = ad if name.startswith(("stem.", "blocks.0.")) else draw
        assert torch.equal(p, want.get_parameter(name)), name
    for name, value in net.named_buffers():
        want = ad if name.startswith(("stem.", "blocks.0.")) else draw
        assert torch.equal(value, want.get_buffer(name)), name
    assert not torch.equal(net.get_buffer("blocks.1.1.running_var"), ad.get_buffer("blocks.1.1.running_var"))


def test_fresh_distill_trains_towards_a_d_outputs_on_d_r_and_the_labels_by_weight(task, acc, tiny_draws):
    models, data = task
    ad, t = models["Ad"], 4.0
    cfg = dataclasses.replace(BASELINE_PRESETS["fresh_distill"], batch_size=32, temperature=t)
    net = copy.deepcopy(ad).requires_grad_(True)
    training = fresh_distill.setup(Setup(net, list(net.parameters()), data, cfg, models, 0, acc, K))
    (p,) = training.passes
    assert len(p.loaders[0]) == len(data.retain) // 32  # one pass over D_r, no forget image
    x, y, idx = next(iter(p.loaders[0]))
    assert torch.equal(x, normalize(data.retain[idx], MEAN, STD))
    student = net.eval()(x).detach()
    teacher = logits(ad, data.retain[idx])
    kd = F.kl_div(
        (student / t).log_softmax(1), (teacher / t).log_softmax(1), log_target=True, reduction="batchmean"
    )
    want = {"kd": kd.item() * t * t, "ce": F.cross_entropy(student, y).item()}
    assert want["kd"] > 0.01  # the fresh student is far from A_d

    def loss(alpha, gamma, forward=lambda images: net(images)):
        cfg.alpha, cfg.gamma = alpha, gamma  # the loss reads the config when it runs
        return p.loss(forward, (x, y, idx)).item()

    assert loss(1.0, 0.0) == pytest.approx(want["kd"], rel=1e-5)
    assert loss(0.0, 1.0) == pytest.approx(want["ce"], rel=1e-5)
    assert loss(2.0, 0.5) == pytest.approx(2 * want["kd"] + 0.5 * want["ce"], rel=1e-5)
    assert loss(1.0, 0.0, lambda images: ad(images)) == pytest.approx(0.0, abs=1e-5)  # A_d vs its cache


@pytest.mark.numerics
def test_fresh_distill_fits_retain_from_a_fresh_start_and_never_learns_the_forgotten_class(
    task, acc, tiny_draws
):
    models, data = task
    # No weight of A_d survives and no forget image is seen: D_f accuracy 0.00, D_r 1.00 and the
    # forget CE above A_d's for seeds 0-4 under AVX-512 and AVX2 (bench/test_margins.py).
    out = run(task, acc, "fresh_distill", lr=0.1, epochs=8).model
    assert accuracy(out, data.retain, data.retain_labels) > 0.9
    assert accuracy(out, data.forget, data.forget_labels) < 0.5
    assert ce(out, data.forget, data.forget_labels) > ce(models["Ad"], data.forget, data.forget_labels)


def logits_grad(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(normalize(images, MEAN, STD))


def test_learning_rate_schedules():
    assert [lr_factor("constant", t, 4) for t in range(4)] == [1.0] * 4
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 9, 10) == pytest.approx(0.0245, abs=1e-4)
    assert [lr_factor("triangle", t, 4) for t in range(4)] == [0.5, 1.0, 1.0, 0.5]
    assert [lr_factor("triangle", t, 3) for t in range(3)] == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert lr_factor("triangle", 0, 1) == 1.0


def test_a_config_key_holds_the_common_fields_and_the_methods_own():
    key = baseline_config_key(BASELINE_PRESETS["msg"])
    assert {"lr", "schedule", "reset_share", "kept_grad_scale"} <= set(key)
    assert not {"saliency", "temperature", "retain_weight"} & set(key)
    assert "retain_weight" in baseline_config_key(BASELINE_PRESETS["neggrad_plus"])


def test_frozen_blocks_are_bitwise_unchanged(task, acc):
    models, data = task
    cfg = dataclasses.replace(BASELINE_PRESETS["finetune"], batch_size=32, epochs=1, lr=0.05)
    out = unlearn_baseline(models, data, cfg, freeze=(1,), seed=0, accelerator=acc).model
    before, after = models["Ad"].state_dict(), out.state_dict()
    for name, value in after.items():  # block 1 includes the stem (parameters and BN statistics)
        same = torch.equal(value, before[name])
        assert same == name.startswith(("stem.", "blocks.0.")), name


# ct: a cosine schedule continues; fcs: three optimizers, each with its own steps and schedule
@pytest.mark.parametrize("method", ["random_label", "ct", "fcs"])
def test_resume_after_interruption_is_exact(task, acc, monkeypatch, tmp_path, method):
    models, data = task
    cfg = dataclasses.replace(BASELINE_PRESETS[method], batch_size=32, epochs=2)
    whole = unlearn_baseline(models, data, cfg, freeze=(), seed=1, accelerator=acc)
    save = accel.save_state

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(accel, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        unlearn_baseline(models, data, cfg, freeze=(), seed=1, accelerator=acc, state_dir=tmp_path / "s")
    monkeypatch.setattr(accel, "save_state", save)
    resumed = unlearn_baseline(
        models, data, cfg, freeze=(), seed=1, accelerator=acc, state_dir=tmp_path / "s"
    )
    assert resumed.epochs_resumed == 1
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = dataclasses.replace(cfg, lr=0.5)
    with pytest.raises(UserError, match="another configuration"):
        unlearn_baseline(models, data, other, freeze=(), seed=1, accelerator=acc, state_dir=tmp_path / "s")


def test_retrain_is_ar_timed_by_its_training(task, tmp_path):
    models, _ = task
    with pytest.raises(UserError, match="train_seconds"):
        retrain(models, tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "Ar.json").write_text(json.dumps({"train_seconds": 42.5}))
    result = retrain(models, tmp_path)
    assert result.model is models["Ar"] and result.seconds == 42.5


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(method="kga"), "unknown baseline"),
        (dict(lr=0.0), "lr must be positive"),
        (dict(alpha=-1.0), "alpha must not be negative"),
        (dict(schedule="step"), "unknown schedule"),
        (dict(reset_share=0.0), "reset share must be in"),
        (dict(reset_saliency="mid"), "unknown reset saliency"),
        (dict(perturb=-0.5), "perturb must not be negative"),
        (dict(shrink=0.0, perturb=0.0), "cannot both be 0"),
        (dict(alpha=0.0, gamma=0.0), "alpha and gamma cannot both be 0"),
        (dict(retain_weight=1.5), "retain weight must be in"),
    ],
)
def test_bad_config_is_a_user_error(task, acc, change, match):
    with pytest.raises(UserError, match=match):
        run(task, acc, "scrub", **change)


@pytest.mark.parametrize("method", ["ct", "msg"])
def test_damage_with_every_conv_frozen_is_a_user_error(task, acc, method):
    models, data = task
    cfg = dataclasses.replace(BASELINE_PRESETS[method], batch_size=32)
    with pytest.raises(UserError, match="no trainable conv"):
        unlearn_baseline(models, data, cfg, freeze=(1, 2), seed=0, accelerator=acc)


def test_too_small_forget_set_is_a_user_error(task, acc):
    models, data = task
    tiny = dataclasses.replace(data, forget=data.forget[:1], forget_labels=data.forget_labels[:1])
    with pytest.raises(UserError, match="too few"):
        unlearn_baseline(
            models, tiny, BASELINE_PRESETS["gradient_ascent"], freeze=(), seed=0, accelerator=acc
        )


def record(method: str | None, seed: int, acc_forget: float, seconds: float) -> dict:
    models = {"Ad": 1.0, "A*": acc_forget, "Ar": 0.8}
    split = {"accuracy": models, "f1": models, "jsd": {"Ad,A*": 0.1, "A*,Ar": 0.02}}
    mia = {m: {a: 0.5 for a in methods_report.ATTACKS} for m in ("Ad", "A*", "Ar")}
    r = {
        "dataset": "fashion-mnist",
        "arch": "resnet18",
        "freeze": [1, 2],
        "seed": seed,
        "preset": "default",
        "config": {"lr": 0.1},
        "unlearn_seconds": seconds,
        "retrain_seconds": 40.0,
        "eval": {"test": split, "forget": split, "retain": split},
        "mia": mia,
    }
    return r | ({"method": method} if method else {})


def test_methods_table_appears_in_report_md(tmp_path, monkeypatch):
    kga = [record(None, 0, 0.82, 10.0), record(None, 1, 0.84, 12.0)]
    kga[0]["helper_seconds"] = kga[1]["helper_seconds"] = {"Af": 20.0, "An": 10.0}
    for r in [*kga, record("finetune", 0, 0.9, 20.0), record("retrain", 0, 0.8, 40.0)]:
        results.append_result(tmp_path, r)
    monkeypatch.setattr(report, "SECTIONS", [*report.SECTIONS, methods_report.methods_section])
    md, _ = report.write_report(tmp_path)
    text = md.read_text()
    assert "## Methods and membership inference: fashion-mnist, resnet18" in text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert "0.830 ± 0.014" in rows["kga^(1,2) (default)"]  # Acc D_f: mean, sample std of 2 seeds
    assert "0.275 ± 0.035" in rows["kga^(1,2) (default)"]  # time / retrain: 11 s of 40 s
    assert rows["kga^(1,2) (default)"].rstrip(" |").endswith("1.025 ± 0.035")  # + 30 s of helpers
    assert rows["finetune^(1,2) (default)"].rstrip(" |").endswith("0.500 ± 0.000")  # no helpers
    assert "0.900 ± 0.000" in rows["finetune^(1,2) (default)"]
    assert "retrain^(1,2) (default)" not in rows  # folded into the A_r reference row
    assert "1.000 ± 0.000" in rows["retrain (A_r)"] and "original (A_d)" in rows
    assert methods_report.methods_section([]) == ""


def test_rows_of_one_label_name_the_settings_they_differ_in():
    tuned = record(None, 0, 0.8, 10.0)
    tuned["config"] = {"lr": 0.01, "stop": "gap"}
    table = methods_report.format_methods_table([record(None, 0, 0.9, 10.0), tuned])
    labels = [line.split(" | ")[0][2:] for line in table.splitlines()[4:]]
    assert set(labels) == {"kga^(1,2) (default) [lr 0.1, stop -]", "kga^(1,2) (default) [lr 0.01, stop gap]"}
    assert "[" not in methods_report.format_methods_table([record(None, 0, 0.9, 10.0)])


def test_report_names_match_the_methods():
    assert methods_report.METHOD_ORDER == tuple(B.METHODS)


# msg: a gradient summed over processes; neggrad_plus: two streams per step; fcs: retain logits
# gathered from every process
DDP_METHODS = {
    "random_label": dict(lr=0.05, epochs=2),
    "msg": dict(lr=0.05, epochs=2),
    "neggrad_plus": dict(lr=0.02, epochs=2),
    "scrub": dict(lr=0.002, epochs=2, max_epochs=1, forget_batch_size=8),
    "fcs": dict(lr=0.05, forget_lr=0.01, epochs=2),
}


def ddp_case(ad_state: dict, accelerator) -> dict:
    """Each DDP_METHODS run on the BatchNorm-free net: {method: (state, losses)}."""
    data = make_data()
    ad = tiny_net(batchnorm=False)
    ad.load_state_dict(ad_state)
    out = {}
    for method, kw in DDP_METHODS.items():
        cfg = dataclasses.replace(BASELINE_PRESETS[method], batch_size=32, **kw)
        result = unlearn_baseline(
            {"Ad": ad.eval().requires_grad_(False)}, data, cfg, freeze=(), seed=0, accelerator=accelerator
        )
        out[method] = ({k: v.cpu() for k, v in result.model.state_dict().items()}, result.losses)
    return out


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tmp_path):
    root = Path(__file__).resolve().parents[1]
    ad = train_ad(make_data(), batchnorm=False)
    torch.save(ad.state_dict(), tmp_path / "ad.pt")
    one = ddp_case(ad.state_dict(), Accelerator(cpu=True))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(root),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(tmp_path / "ad.pt"),
        str(tmp_path / "two.pt"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt")
    for rank in (0, 1):  # the group freed, its threads joined (kga_fast.accel.shutdown)
        assert json.loads(Path(f"{tmp_path / 'two.pt'}.rank{rank}.threads").read_text()) == []
    for method, (state, losses) in one.items():
        before = ad.state_dict()
        assert any(not torch.allclose(v, before[k]) for k, v in state.items())  # it trained
        for k, v in state.items():
            torch.testing.assert_close(two[method][0][k], v, rtol=1e-4, atol=1e-6, msg=k)
        for name, values in losses.items():
            assert two[method][1][name] == pytest.approx(values, rel=1e-4, abs=1e-7)


def ddp_worker(acc: Accelerator, ad_file: str, out: str) -> None:
    result = ddp_case(torch.load(ad_file), acc)
    if acc.is_main_process:
        torch.save(result, out)


if __name__ == "__main__":  # the worker of the test above, under torchrun
    from gloo_threads import gloo_threads

    acc = Accelerator(cpu=True)
    ddp_worker(acc, sys.argv[1], sys.argv[2])
    accel.shutdown(acc)
    Path(f"{sys.argv[2]}.rank{acc.process_index}.threads").write_text(json.dumps(gloo_threads()))

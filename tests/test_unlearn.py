"""KGA unlearning (kga_fast.methods.kga): Algorithm 1's schedule, the loss conventions against the
reference, layer freezing, cached teachers, resume, config checks. Tiny random data, CPU."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from accelerate import Accelerator

import kga_fast.methods.kga as U
from kga_fast import accel, native, reference
from kga_fast.data import normalize
from kga_fast.errors import UserError
from kga_fast.freeze import apply_freeze
from kga_fast.methods.common import MethodData
from kga_fast.methods.kga import UNLEARN_PRESETS, UnlearnConfig, UnlearnData, check_config, unlearn
from kga_fast.models import build_model

MEAN, STD = (0.2,), (0.3,)
IMPLS = ["reference"] + (["fused"] if native.has_device("cpu") else [])


@pytest.fixture(scope="module")
def acc() -> Accelerator:
    return Accelerator(cpu=True)


def make_models(arch: str = "resnet18", shared: bool = False) -> dict:
    torch.manual_seed(0)
    if shared:  # one model in all three roles: saves memory for the big VGG11
        m = build_model(arch, 10, 1).eval()
        return {"Ad": m, "Af": m, "An": m}
    return {name: build_model(arch, 10, 1).eval() for name in ("Ad", "Af", "An")}


def make_data(n_retain: int, n_forget: int, n_new: int) -> UnlearnData:
    g = torch.Generator().manual_seed(1)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)

    return UnlearnData(images(n_retain), images(n_forget), images(n_new), MEAN, STD)


def small_cfg(**kw) -> UnlearnConfig:
    base = dict(optimizer="sgd", lr=0.1, batch_size=16, inner_steps=3, epochs=1, impl="reference")
    return UnlearnConfig(**(base | kw))


class Recorder:
    """Patches the loss functions, the teacher lookups and the optimizer to log what happens."""

    def __init__(self, monkeypatch):
        self.events: list[str] = []
        self.retain_idx, self.forget_idx, self.new_idx = [], [], []
        self.values: list[float] = []
        self.params: list = []
        for name, tag in (("retain_loss", "r"), ("alignment_loss", "a")):
            original = getattr(U, name)
            monkeypatch.setattr(U, name, self._wrap(original, tag))
        for name, store in (("retain", self.retain_idx), ("forget", self.forget_idx), ("gap", self.new_idx)):
            monkeypatch.setattr(U.Teachers, name, self._lookup(getattr(U.Teachers, name), store))
        make = U._make_optimizer

        def make_optimizer(cfg, params):
            self.params = list(params)
            opt = make(cfg, self.params)
            opt.register_step_post_hook(lambda *_: self.events.append("s"))
            return opt

        monkeypatch.setattr(U, "_make_optimizer", make_optimizer)

    def _wrap(self, fn, tag):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.events.append(tag)
            self.values.append(float(out.detach()))
            return out

        return wrapped

    def _lookup(self, fn, store):
        def wrapped(teachers, x, idx):
            store.append(idx.clone())
            return fn(teachers, x, idx)

        return wrapped


def test_schedule_steps_and_batches(acc, monkeypatch):
    rec = Recorder(monkeypatch)
    data = make_data(100, 40, 20)  # D_r: 7 batches of 16 (the last 4); pairs of 16 (D_n has 20)
    result = unlearn(
        make_models(), data, small_cfg(epochs=2, lr=0.01), freeze=(1, 2, 3), seed=0, accelerator=acc
    )
    # Steps after retain batches 3, 6 and the epoch's last, 7; L_r before L_a within a step.
    epoch = ["r", "r", "r", "a", "s", "r", "r", "r", "a", "s", "r", "a", "s"]
    assert rec.events == epoch * 2
    for e in range(2):  # every epoch visits each D_r sample exactly once
        seen = torch.cat(rec.retain_idx[7 * e : 7 * (e + 1)])
        assert sorted(seen.tolist()) == list(range(100))
    assert [len(i) for i in rec.retain_idx[:7]] == [16] * 6 + [4]
    # 6 draws of 16 pairs; D_f (40) holds 2 draws per pass, D_n (20) one, then they restart.
    assert len(rec.forget_idx) == len(rec.new_idx) == 6
    assert all(len(f) == len(n) == 16 for f, n in zip(rec.forget_idx, rec.new_idx, strict=True))
    assert not set(rec.forget_idx[0].tolist()) & set(rec.forget_idx[1].tolist())
    assert rec.forget_idx[0].tolist() != rec.forget_idx[2].tolist()  # a new order per pass
    assert not torch.equal(rec.new_idx[0], rec.new_idx[1])
    assert len(result.losses["retain"]) == len(result.losses["align"]) == 2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", ["student_first", "teacher_first"])
@pytest.mark.parametrize("reduction", ["pair", "batch", "sorted"])
def test_one_step_matches_reference_losses(acc, monkeypatch, direction, reduction, impl):
    """One optimizer step (3 retain batches, then L_a) with SGD lr 1: the update is minus the
    gradient of sum_b L_r,b (1 - ratio) / inner + L_a, each written out with the reference KL."""
    rec = Recorder(monkeypatch)
    models, data = make_models(), make_data(24, 16, 10)
    cfg = small_cfg(batch_size=8, lr=1.0, ratio=0.3, direction=direction, reduction=reduction, impl=impl)
    result = unlearn(models, data, cfg, freeze=(1,), seed=3, accelerator=acc)
    assert rec.events == ["r", "r", "r", "a", "s"]

    student = copy.deepcopy(models["Ad"]).requires_grad_(True)
    apply_freeze(student, (1,))
    student.train()

    def kl(s_logits, t_logits):  # (B,) in the asked direction
        if direction == "student_first":
            return reference.kl_rows(s_logits, t_logits)
        return reference.kl_rows(t_logits, s_logits)

    def x_of(images, idx):
        return normalize(images[idx], MEAN, STD)

    with torch.no_grad():
        xn = x_of(data.new, rec.new_idx[0])
        gap = reference.kl_rows(models["Ad"](xn), models["An"](xn))  # (P,) KL(A_d || A_n)
    for idx in rec.retain_idx:
        x = x_of(data.retain, idx)
        (kl(student(x), models["Ad"](x).detach()).mean() * (1 - 0.3) / 3).backward()
    xf = x_of(data.forget, rec.forget_idx[0])
    kl_f = kl(student(xf), models["Af"](xf).detach())
    if reduction == "batch":
        l_a = (kl_f.mean() - gap.mean()).abs()
    elif reduction == "sorted":
        l_a = (kl_f.sort().values - gap.sort().values).abs().mean()
    else:
        l_a = (kl_f - gap).abs().mean()
    l_a.backward()
    assert rec.values[-1] == pytest.approx(float(l_a.detach()), rel=1e-4, abs=1e-6)
    moved = 0
    for (name, p), q in zip(student.named_parameters(), result.model.parameters(), strict=True):
        if p.grad is None:
            assert torch.equal(p, q), name
            continue
        torch.testing.assert_close(q, p.detach() - p.grad, rtol=1e-4, atol=2e-6, msg=name)
        moved += int(p.grad.abs().sum() > 0)
    assert moved > 10


def test_retain_loss_ce_steps_on_the_labels_of_d_r_instead_of_a_d(acc, monkeypatch):
    """retain_loss="ce": one optimizer step (3 retain batches, then L_a) with SGD lr 1 is minus the
    gradient of sum_b CE(A*(x_b), y_b) (1 - ratio) / inner + L_a; A_d's outputs on D_r are never
    looked up. Without D_r's labels (UnlearnData) it is refused."""
    rec = Recorder(monkeypatch)
    models, base = make_models(), make_data(24, 16, 10)
    labels = torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(2))
    data = MethodData(*(getattr(base, f.name) for f in dataclasses.fields(base)), labels, labels[:16])
    cfg = small_cfg(batch_size=8, lr=1.0, ratio=0.3, retain_loss="ce")
    result = unlearn(models, data, cfg, freeze=(1,), seed=3, accelerator=acc)
    assert rec.events == ["a", "s"] and rec.retain_idx == []

    student = copy.deepcopy(models["Ad"]).requires_grad_(True)
    apply_freeze(student, (1,))
    student.train()
    # The retain batches in unlearn()'s order: its loader for stream 0, rebuilt here.
    retain = accel.rank_loader(
        acc, data.retain, labels, global_batch=8, mean=MEAN, std=STD, shuffle=True, seed=U.stream_seed(3, 0)
    )
    retain.set_epoch(0)
    for x, y, _ in retain:
        (torch.nn.functional.cross_entropy(student(x), y) * (1 - 0.3) / 3).backward()
    xf = normalize(data.forget[rec.forget_idx[0]], MEAN, STD)
    xn = normalize(data.new[rec.new_idx[0]], MEAN, STD)
    with torch.no_grad():
        gap = reference.kl_rows(models["Ad"](xn), models["An"](xn))
    kl_f = reference.kl_rows(student(xf), models["Af"](xf).detach())
    (kl_f - gap).abs().mean().backward()
    for (name, p), q in zip(student.named_parameters(), result.model.parameters(), strict=True):
        if p.grad is None:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(q, p.detach() - p.grad, rtol=1e-4, atol=2e-6, msg=name)
    with pytest.raises(UserError, match="D_r's labels"):
        unlearn(models, base, cfg, freeze=(1,), seed=3, accelerator=acc)


def test_method_data_keeps_labels_beside_their_images(acc):
    """MethodData refuses labels that do not match its images, so a set replaced without its
    labels (KGA's held-out share of D_f under the gap rule) cannot go unnoticed."""
    base = make_data(24, 16, 10)
    images = [getattr(base, f.name) for f in dataclasses.fields(base)]
    labels = torch.zeros(24, dtype=torch.int64)
    with pytest.raises(ValueError, match="16 forget images but 15 forget labels"):
        MethodData(*images, labels, labels[:15])
    data = MethodData(*images, labels, labels[:16])
    cfg = small_cfg(stop="gap", check_every=1, retain_loss="ce")  # holds 4 of D_f's 16 out of L_a
    unlearn(make_models(), data, cfg, freeze=(1, 2, 3), seed=0, accelerator=acc)


FREEZE_CASES = [
    ("resnet18", (1, 2)),
    ("resnet18", (2, 4)),
    ("vgg11", (1, 2, 3)),
    ("vgg11-bn-cifar", (1, 3, 8)),
]


@pytest.mark.parametrize("arch,freeze", FREEZE_CASES)
def test_frozen_blocks_are_bitwise_unchanged(acc, monkeypatch, arch, freeze):
    rec = Recorder(monkeypatch)
    models = make_models(arch, shared=arch == "vgg11")
    before = copy.deepcopy(models["Ad"].state_dict())
    cfg = small_cfg(batch_size=8, inner_steps=1, lr=0.05)
    result = unlearn(models, make_data(16, 8, 8), cfg, freeze=freeze, seed=0, accelerator=acc)
    net = result.model
    assert all(torch.equal(before[k], v) for k, v in models["Ad"].state_dict().items())  # teacher
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for p in rec.params} == trainable  # the optimizer holds exactly those
    after = net.state_dict()
    for i, block in enumerate(net.blocks, 1):
        prefix = [k for k, _ in net.named_parameters()] + [k for k, _ in net.named_buffers()]
        names = [k for k in prefix if k.startswith(f"blocks.{i - 1}.")]
        if i == 1:
            names += [k for k in prefix if k.startswith("stem.")]
        if not names:
            continue
        same = [torch.equal(before[k], after[k]) for k in names]
        if i in freeze:
            assert all(same), (
                f"frozen block {i} changed: {[k for k, s in zip(names, same, strict=True) if not s]}"
            )
            assert all(not p.requires_grad for p in block.parameters())
        else:
            assert not all(same), f"trainable block {i} did not move"
            stats = [k for k in names if k.endswith("running_mean")]
            assert not stats or not all(torch.equal(before[k], after[k]) for k in stats)
    head = [k for k, _ in net.head.named_parameters(prefix="head")]
    assert not all(torch.equal(before[k], after[k]) for k in head)


@pytest.mark.numerics
def test_cached_teachers_give_the_same_losses_and_updates(acc, monkeypatch):
    runs = []
    for cached in (True, False):
        with monkeypatch.context() as patch:
            rec = Recorder(patch)
            cfg = small_cfg(epochs=2, batch_size=8, cache_teachers=cached, lr=0.05)
            result = unlearn(make_models(), make_data(24, 16, 12), cfg, freeze=(), seed=1, accelerator=acc)
        runs.append((rec.values, rec.retain_idx, result))
    (v1, i1, r1), (v2, i2, r2) = runs
    assert all(torch.equal(a, b) for a, b in zip(i1, i2, strict=True))
    # Teacher logits computed in batches of 512 or of 8 differ in the last bits (conv kernels
    # depend on the batch size), so "the same" means equal to float32 rounding.
    assert v1 == pytest.approx(v2, rel=1e-4, abs=1e-6)
    assert min(v1) > 0
    start = list(make_models()["Ad"].parameters())

    def update(result) -> torch.Tensor:  # all parameter changes, flattened
        return torch.cat([(p - p0).flatten() for p, p0 in zip(result.model.parameters(), start, strict=True)])

    u1, u2 = update(r1), update(r2)
    assert u1.norm() > 0.1
    assert (u1 - u2).norm() / u1.norm() < 1e-3  # measured 1e-4


def test_resume_after_interruption_is_exact(acc, monkeypatch, tmp_path):
    models, data = make_models(), make_data(24, 16, 8)
    cfg = small_cfg(epochs=3, batch_size=8, optimizer="adam", lr=1e-3)
    whole = unlearn(models, data, cfg, freeze=(2, 3, 4), seed=2, accelerator=acc)

    state = tmp_path / "state" / "Astar"
    save = accel.save_state

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the first epoch's state was written

    monkeypatch.setattr(accel, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        unlearn(models, data, cfg, freeze=(2, 3, 4), seed=2, accelerator=acc, state_dir=state)
    monkeypatch.setattr(accel, "save_state", save)
    assert (state / accel.PROGRESS_FILE).is_file()
    resumed = unlearn(models, data, cfg, freeze=(2, 3, 4), seed=2, accelerator=acc, state_dir=state)
    assert resumed.epochs_resumed == 1
    assert resumed.losses == whole.losses
    for p, q in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert resumed.seconds > resumed.cache_seconds

    other = dataclasses.replace(cfg, lr=2e-3)  # a state never resumes another configuration
    with pytest.raises(UserError, match="another configuration"):
        unlearn(models, data, other, freeze=(2, 3, 4), seed=2, accelerator=acc, state_dir=state)


def test_presets_and_config_checks():
    paper = UNLEARN_PRESETS["paper"]
    assert (paper.optimizer, paper.lr, paper.eps, paper.ratio) == ("adam", 0.05, 1e-8, 0.1)
    assert (paper.inner_steps, paper.batch_size, paper.epochs) == (15, 256, 15)
    assert (paper.direction, paper.reduction) == ("student_first", "pair")
    assert UNLEARN_PRESETS["default"] == UnlearnConfig()  # the field defaults are the preset
    for preset in UNLEARN_PRESETS.values():
        check_config(preset)
    bad = [
        dict(optimizer="rmsprop"),
        dict(direction="both"),
        dict(reduction="sum"),
        dict(lr=0.0),
        dict(ratio=1.5),
        dict(inner_steps=0),
        dict(epochs=0),
        dict(batch_size=0),
    ]
    for kw in bad:
        with pytest.raises(UserError):
            check_config(UnlearnConfig(**kw))


def test_too_small_new_set_is_a_user_error(acc):
    with pytest.raises(UserError, match="D_n"):
        unlearn(make_models(), make_data(16, 8, 0), small_cfg(), freeze=(), seed=0, accelerator=acc)

"""The gap rule (kga_fast.methods.kga_stopping): on a toy problem whose answer is known in closed form, and
inside unlearn(): it stops at the first check that reaches the target, never later, and keeps
its held-out D_f images out of L_a; its target is the gap over all of D_n."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from test_unlearn import Recorder, make_data, make_models, small_cfg
from torch import nn

import kga_fast.methods.kga_stopping as S
from kga_fast.errors import UserError
from kga_fast.methods.kga import unlearn
from kga_fast.methods.kga_stopping import GapStop, holdout_split


class Fixed(nn.Module):
    """The same two-class logits for every image."""

    def __init__(self, logits):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.w.expand(len(x), -1)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def kl_from_uniform(t: float) -> float:
    """KL(softmax([t, -t]) || uniform) = log 2 - H(p), p = sigmoid(2t)."""
    p = sigmoid(2 * t)
    return math.log(2) + p * math.log(p) + (1 - p) * math.log(1 - p)


def kl_to_uniform_reversed(t: float) -> float:
    """KL(uniform || softmax([t, -t])) = -log 2 - (log p + log(1 - p)) / 2."""
    p = sigmoid(2 * t)
    return -math.log(2) - (math.log(p) + math.log(1 - p)) / 2


@pytest.mark.parametrize("direction", ["student_first", "teacher_first"])
def test_toy_rule_stops_exactly_where_a_star_is_as_far_from_a_f_as_a_d_from_a_n(direction):
    """A_f = A_n = uniform over two classes, A_d = softmax([1, -1]), A* = softmax([t, -t]): the
    target is KL(A_d || A_n) = kl_from_uniform(1); A*'s distance to A_f grows with t, so the rule
    must fire exactly from the t* where that distance equals the target (t* = 1 student first)."""
    teachers = {"Af": Fixed([0.0, 0.0]), "An": Fixed([0.0, 0.0]), "Ad": Fixed([1.0, -1.0])}
    images = torch.zeros(5, 1, 4, 4, dtype=torch.uint8)
    rule = GapStop(teachers, images, images, mean=(0.5,), std=(0.5,), accelerator=None, direction=direction)
    target = kl_from_uniform(1.0)
    assert rule.target == pytest.approx(target, rel=1e-6)
    distance = kl_from_uniform if direction == "student_first" else kl_to_uniform_reversed
    lo, hi = 0.0, 2.0  # bisection for t*: distance(t*) = target
    for _ in range(60):
        lo, hi = ((lo + hi) / 2, hi) if distance((lo + hi) / 2) < target else (lo, (lo + hi) / 2)
    if direction == "student_first":
        assert lo == pytest.approx(1.0, abs=1e-9)
    for step, t in enumerate([0.0, lo / 2, lo - 0.01]):
        assert not rule.reached(Fixed([t, -t]), step)
        assert rule.checks[-1][1] == pytest.approx(distance(t), rel=1e-4, abs=1e-6)
    assert rule.reached(Fixed([lo + 0.01, -lo - 0.01]), 3)
    record = rule.record(3)
    assert record["stopped_at_step"] == 3 and [c[0] for c in record["checks"]] == [0, 1, 2, 3]
    assert record["held_out_forget"] == 5


def test_from_a_damaged_start_the_rule_stops_once_the_distance_comes_down_to_the_target():
    """The toy above with A* starting far from A_f (t large, from_above): no stop while its
    distance exceeds the target, a stop at the first check at or below it (t* = 1)."""
    teachers = {"Af": Fixed([0.0, 0.0]), "An": Fixed([0.0, 0.0]), "Ad": Fixed([1.0, -1.0])}
    images = torch.zeros(5, 1, 4, 4, dtype=torch.uint8)
    rule = GapStop(
        teachers,
        images,
        images,
        mean=(0.5,),
        std=(0.5,),
        accelerator=None,
        direction="student_first",
        from_above=True,
    )
    for step, t in enumerate([3.0, 2.0, 1.01]):
        assert not rule.reached(Fixed([t, -t]), step)
    assert rule.reached(Fixed([0.99, -0.99]), 3)
    assert rule.record(3)["from_above"] is True


def test_holdout_split_is_seeded_disjoint_and_never_empty():
    kept, held = holdout_split(50, 0.2, seed=3)
    assert len(held) == 10 and sorted(kept.tolist() + held.tolist()) == list(range(50))
    assert torch.equal(holdout_split(50, 0.2, seed=3)[1], held)
    assert len(holdout_split(3, 0.01, 0)[1]) == 1 and len(holdout_split(3, 0.99, 0)[0]) == 1


@pytest.fixture(scope="module")
def acc() -> Accelerator:
    return Accelerator(cpu=True)


def test_unlearn_stops_at_the_first_check_that_reaches_the_target(acc, monkeypatch):
    """Distances 0, 0.1, 0.2, ... against a target of 0.25, a check every 2 steps: checks at
    steps 0, 2, 4, 6 and the stop at step 6, mid-way through the second of 5 epochs."""
    rec = Recorder(monkeypatch)
    monkeypatch.setattr(S.GapStop, "distance", lambda self, student: 0.1 * len(self.checks))
    original_init = S.GapStop.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.target = 0.25

    monkeypatch.setattr(S.GapStop, "__init__", init)
    data = make_data(100, 40, 20)  # 7 retain batches of 16, 3 steps per epoch
    cfg = small_cfg(epochs=5, lr=0.01, stop="gap", holdout=0.25, check_every=2)
    result = unlearn(make_models(), data, cfg, freeze=(1, 2, 3), seed=0, accelerator=acc)
    assert result.stopping["stopped_at_step"] == 6
    assert [c[0] for c in result.stopping["checks"]] == [0, 2, 4, 6]
    assert rec.events.count("s") == 6 and rec.events[-1] == "s"
    assert len(result.losses["align"]) == 2  # epoch 1 whole, epoch 2 up to the stop
    # L_a drew only from the kept 30 of D_f's 40 images, and from all 20 of D_n.
    assert max(int(i.max()) for i in rec.forget_idx) < 30
    assert max(int(i.max()) for i in rec.new_idx) >= 15
    assert result.stopping["held_out_forget"] == 10


def test_kga_from_cts_damaged_start_transposes_then_stops_when_the_distance_falls(acc, monkeypatch):
    """start="ct": A*'s trainable conv kernels begin transposed (an lr of 1e-12 leaves them so),
    frozen blocks stay A_d's; with distances 0.5, 0.4, ... against a target of 0.25 the gap rule
    stops at the first check at or below it (step 3, a check every step)."""
    monkeypatch.setattr(S.GapStop, "distance", lambda self, student: 0.5 - 0.1 * len(self.checks))
    original_init = S.GapStop.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.target = 0.25

    monkeypatch.setattr(S.GapStop, "__init__", init)
    models, data = make_models(), make_data(100, 40, 20)
    cfg = small_cfg(epochs=2, lr=1e-12, stop="gap", check_every=1, start="ct")
    result = unlearn(models, data, cfg, freeze=(1, 2, 3), seed=0, accelerator=acc)
    assert result.stopping["stopped_at_step"] == 3 and result.stopping["from_above"] is True
    before, after = models["Ad"].state_dict(), result.model.state_dict()
    convs = [k for k, v in after.items() if v.dim() == 4]
    for k in convs:
        if k.startswith("blocks.3."):  # block 4 trains: its kernels transposed
            torch.testing.assert_close(after[k], before[k].transpose(2, 3), rtol=0, atol=1e-9)
        else:
            assert torch.equal(after[k], before[k]), k
    assert any(k.startswith("blocks.3.") for k in convs)
    with pytest.raises(UserError, match="no trainable conv"):
        unlearn(models, data, small_cfg(start="ct"), freeze=(1, 2, 3, 4), seed=0, accelerator=acc)


def test_the_target_is_the_mean_gap_over_all_of_d_n(acc):
    """The target does not depend on the unlearning seed (no D_n image is held out): the mean
    of KL(A_d || A_n) over every D_n image, computed here by hand."""
    models, data = make_models(), make_data(48, 24, 12)
    norm = dict(mean=data.mean, std=data.std)
    gap = S.kl_rows(S.predict(models["Ad"], data.new, **norm), S.predict(models["An"], data.new, **norm))
    targets = []
    for seed in (0, 1):
        cfg = small_cfg(epochs=1, stop="gap", check_every=1)
        result = unlearn(make_models(), data, cfg, freeze=(1, 2, 3), seed=seed, accelerator=acc)
        targets.append(result.stopping["target"])
    assert targets[0] == targets[1] == pytest.approx(float(gap.double().mean()), rel=1e-5)


def test_unlearn_without_reaching_the_target_runs_every_epoch(acc):
    data = make_data(48, 24, 12)
    cfg = small_cfg(epochs=2, stop="gap", check_every=1)
    result = unlearn(make_models(), data, cfg, freeze=(1, 2, 3), seed=0, accelerator=acc)
    checks = result.stopping["checks"]
    if result.stopping["stopped_at_step"] is None:  # random models: either outcome can happen
        assert len(checks) == 1 + 2 * 1 and all(kl < result.stopping["target"] for _, kl in checks)
    else:
        assert checks[-1][1] >= result.stopping["target"]
        assert all(kl < result.stopping["target"] for _, kl in checks[:-1])
    assert unlearn(
        make_models(), data, small_cfg(epochs=2), freeze=(1, 2, 3), seed=0, accelerator=acc
    ).stopping == {"rule": "epochs"}

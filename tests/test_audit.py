"""Membership inference (kga_fast.evaluation.audit) on constructed logits with known answers: a model that
memorized its members is caught by every attack, an unlearned one is not, and when members and
non-members come from one distribution every attack sits at chance."""

from __future__ import annotations

import math

import pytest
import torch

from kga_fast.evaluation import methods_report
from kga_fast.evaluation.audit import (
    ATTACKS,
    audit_models,
    membership_inference,
    prediction_entropy,
    sample_loss,
    true_class_confidence,
)

C = 10
N = 400  # per split: a few seconds for the SVC at most


def labels_of(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, C, (n,), generator=g)


def memorized(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Logits of a model that fits these samples: true class far ahead, varied margins."""
    logits = torch.randn(len(labels), C, generator=g)
    margin = 8 + 4 * torch.rand(len(labels), generator=g)
    logits[torch.arange(len(labels)), labels] += margin
    return logits  # (N, C)


def unseen(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Logits on unseen samples: right only sometimes, and unsure."""
    logits = 1.5 * torch.randn(len(labels), C, generator=g)
    logits[torch.arange(len(labels)), labels] += 1.0
    return logits


def splits(forget: str, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    labels = {s: labels_of(N, g) for s in ("forget", "retain", "test")}
    make = {"memorized": memorized, "unseen": unseen}
    logits = {
        "forget": make[forget](labels["forget"], g),
        "retain": memorized(labels["retain"], g),
        "test": unseen(labels["test"], g),
    }
    return logits, labels


def test_features_match_their_definitions():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    p = logits.double().softmax(1)
    assert sample_loss(logits, labels) == pytest.approx([-p[0, 0].log().item(), math.log(3)])
    assert true_class_confidence(logits, labels) == pytest.approx([p[0, 0].item(), 1 / 3])
    ent = -(p * p.log()).sum(1)
    assert prediction_entropy(logits) == pytest.approx(ent.tolist())
    # A one-hot-like row (probabilities underflow to 0) has entropy 0, not NaN.
    assert prediction_entropy(torch.tensor([[1000.0, 0.0]])) == pytest.approx([0.0], abs=1e-12)


def test_memorized_forget_set_is_detected_by_every_attack():
    mia = membership_inference(*splits("memorized"), seed=0)
    assert set(mia) == set(ATTACKS)
    assert mia["loss_lr_cv_acc"] > 0.95  # forget losses tell members from test samples
    assert mia["mia_efficacy_confidence"] < 0.05  # D_f looks like D_r: hardly any "non-member"
    assert mia["entropy_lr_forget_member_rate"] > 0.95


def test_forgotten_set_looks_like_unseen_data():
    mia = membership_inference(*splits("unseen"), seed=0)
    assert abs(mia["loss_lr_cv_acc"] - 0.5) < 0.1  # D_f and D_t from one distribution
    assert mia["mia_efficacy_confidence"] > 0.9
    assert mia["entropy_lr_forget_member_rate"] < 0.1


@pytest.mark.parametrize("seed", [0, 1])
def test_one_distribution_for_all_splits_gives_chance(seed):
    g = torch.Generator().manual_seed(10 + seed)
    labels = {s: labels_of(N, g) for s in ("forget", "retain", "test")}
    logits = {s: unseen(y, g) for s, y in labels.items()}
    mia = membership_inference(logits, labels, seed=seed)
    assert abs(mia["loss_lr_cv_acc"] - 0.5) < 0.1
    assert 0.25 < mia["mia_efficacy_confidence"] < 0.75
    assert 0.25 < mia["entropy_lr_forget_member_rate"] < 0.75


def test_seeded_and_balanced():
    logits, labels = splits("unseen", seed=3)
    a = membership_inference(logits, labels, seed=5)
    assert membership_inference(logits, labels, seed=5) == a
    # A much larger forget set is subsampled to the test set's size: same kind of answer.
    big = {k: torch.cat([v] * 4) for k, v in logits.items() if k == "forget"}
    big_labels = {k: torch.cat([v] * 4) for k, v in labels.items() if k == "forget"}
    b = membership_inference(logits | big, labels | big_labels, seed=5)
    assert abs(b["loss_lr_cv_acc"] - 0.5) < 0.1


def test_audit_models_keys_and_bad_input():
    logits, labels = splits("memorized")
    out = audit_models({"Ad": logits, "A*": splits("unseen")[0]}, labels, seed=0)
    assert set(out) == {"Ad", "A*"} and set(out["Ad"]) == set(ATTACKS)
    assert out["Ad"]["loss_lr_cv_acc"] > out["A*"]["loss_lr_cv_acc"]
    with pytest.raises(ValueError, match="needs logits and labels"):
        membership_inference({"forget": logits["forget"]}, labels)
    with pytest.raises(ValueError, match="expected"):
        membership_inference(logits, labels | {"test": labels["test"][:-1]})


def test_report_names_match_the_audit():
    assert methods_report.ATTACKS == ATTACKS

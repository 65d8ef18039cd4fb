"""Membership-inference audit of an unlearned model: three attacks from the literature.

    mia = {m: membership_inference(logits[m], labels, seed=0) for m in ("Ad", "A*", "Ar")}

Each attack reads a model's logits (N, C) float32 on the CPU, gathered over ranks (what
kga_fast.evaluation.evaluate.predict returns), for the forget (D_f, members of A_d), retain (D_r,
members of every model) and test (D_t, members of none) splits, and the true labels. The keys
name the attack; the ideal after unlearning is A_r's value, not a fixed number:

- "loss_lr_cv_acc": the NeurIPS 2023 unlearning challenge kit's `simple_mia`. Feature: the
  per-sample cross-entropy loss. Forget (label 1) vs test (label 0), the larger set randomly
  subsampled to the size of the smaller; scikit-learn LogisticRegression() scored by
  cross_val_score over StratifiedShuffleSplit(n_splits=10, test_size=0.1); mean accuracy.
  0.5: the attacker cannot tell D_f from unseen data.
- "mia_efficacy_confidence": SalUn's / Unlearn-Sparse's MIA-efficacy (Jia et al. 2023,
  `SVC_MIA`, the "confidence" readout). Feature: softmax probability of the true label. SVC(C=3,
  gamma="auto", kernel="rbf") fit on retain (member, 1) vs test (non-member, 0), the retain
  set randomly subsampled to the test set's size; applied to D_f: the share predicted
  non-member. Higher is more forgotten.
- "entropy_lr_forget_member_rate": the bad-teacher (Chundawat et al. 2023) / SCRUB
  (Kurmanji et al. 2023) `get_membership_attack_prob`. Feature: entropy of the softmax.
  LogisticRegression(class_weight="balanced") fit on all of retain (1) vs test (0); applied to
  D_f: the share predicted member. Lower is more forgotten.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
from sklearn.svm import SVC

SPLITS = ("forget", "retain", "test")
ATTACKS = ("loss_lr_cv_acc", "mia_efficacy_confidence", "entropy_lr_forget_member_rate")
CV_SPLITS = 10  # the challenge kit's StratifiedShuffleSplit(n_splits=10)


def sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per-sample cross-entropy (N,) float64: (N, C) logits, (N,) labels."""
    return F.cross_entropy(logits.double(), labels.long(), reduction="none").numpy()


def true_class_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Softmax probability of the true label (N,) float64."""
    probs = logits.double().softmax(dim=1)  # (N, C)
    return probs.gather(1, labels.long()[:, None])[:, 0].numpy()


def prediction_entropy(logits: torch.Tensor) -> np.ndarray:
    """Entropy of the softmax in nats (N,) float64 (0 log 0 = 0, via log_softmax)."""
    log_p = logits.double().log_softmax(dim=1)  # (N, C)
    return -(log_p.exp() * log_p).sum(dim=1).numpy()


def _subsample(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return values if len(values) <= size else rng.permutation(values)[:size]


def _two_classes(members: np.ndarray, non_members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, 1) and labels (N,): members 1, non-members 0."""
    x = np.concatenate([members, non_members]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    return x, y


def loss_lr_cv_acc(forget_loss: np.ndarray, test_loss: np.ndarray, seed: int = 0) -> float:
    """The challenge kit's simple_mia on balanced forget / test losses (see the module doc)."""
    rng = np.random.default_rng(seed)
    n = min(len(forget_loss), len(test_loss))
    if n * 2 < CV_SPLITS:
        raise ValueError(f"need at least {CV_SPLITS // 2} forget and test samples, got {n}")
    x, y = _two_classes(_subsample(forget_loss, n, rng), _subsample(test_loss, n, rng))
    cv = StratifiedShuffleSplit(n_splits=CV_SPLITS, random_state=seed)
    return float(cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="accuracy").mean())


def mia_efficacy_confidence(
    retain_conf: np.ndarray, test_conf: np.ndarray, forget_conf: np.ndarray, seed: int = 0
) -> float:
    """SalUn's MIA-efficacy: share of D_f an SVC (retain vs test confidences) calls non-member."""
    rng = np.random.default_rng(seed)
    x, y = _two_classes(_subsample(retain_conf, len(test_conf), rng), test_conf)
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return float(1.0 - clf.predict(forget_conf.reshape(-1, 1)).mean())


def entropy_lr_forget_member_rate(
    retain_ent: np.ndarray, test_ent: np.ndarray, forget_ent: np.ndarray
) -> float:
    """Bad-teacher / SCRUB MIA: share of D_f a balanced LR (retain vs test entropies) calls member."""
    x, y = _two_classes(retain_ent, test_ent)
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs").fit(x, y)
    return float(clf.predict(forget_ent.reshape(-1, 1)).mean())


def membership_inference(
    logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], *, seed: int = 0
) -> dict[str, float | None]:
    """The three attacks on one model: {"forget", "retain", "test"} -> (N, C) logits and (N,)
    labels; returns {attack: value} with the keys of ATTACKS (documented in the module doc)."""
    for split in SPLITS:
        if split not in logits or split not in labels:
            raise ValueError(f"membership_inference needs logits and labels of {list(SPLITS)}")
        x, y = logits[split], labels[split]
        if x.dim() != 2 or y.shape != (x.shape[0],) or len(y) == 0:
            raise ValueError(f"{split}: expected (N, C) logits and (N,) labels, N > 0")
    cpu = {s: (logits[s].detach().float().cpu(), labels[s].cpu()) for s in SPLITS}
    loss = {s: sample_loss(*cpu[s]) for s in SPLITS}
    conf = {s: true_class_confidence(*cpu[s]) for s in SPLITS}
    ent = {s: prediction_entropy(cpu[s][0]) for s in SPLITS}
    # A small deletion request (fewer than CV_SPLITS images) is too small for the
    # cross-validated loss attack (each 10% test fold needs both classes): its value is None,
    # the other two attacks still run.
    enough = min(len(loss["forget"]), len(loss["test"])) >= CV_SPLITS
    return {
        "loss_lr_cv_acc": loss_lr_cv_acc(loss["forget"], loss["test"], seed) if enough else None,
        "mia_efficacy_confidence": mia_efficacy_confidence(
            conf["retain"], conf["test"], conf["forget"], seed
        ),
        "entropy_lr_forget_member_rate": entropy_lr_forget_member_rate(
            ent["retain"], ent["test"], ent["forget"]
        ),
    }


def audit_models(
    logits: dict[str, dict[str, torch.Tensor]], labels: dict[str, torch.Tensor], *, seed: int = 0
) -> dict[str, dict[str, float]]:
    """{model: {split: logits}} -> {model: {attack: value}}: what results.json keeps as "mia"."""
    return {m: membership_inference(by_split, labels, seed=seed) for m, by_split in logits.items()}

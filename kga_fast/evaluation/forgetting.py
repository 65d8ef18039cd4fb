"""Forgetting quality F: the NeurIPS 2023 unlearning challenge's score (Triantafillou et al. 2024).

    conf_u = logit_scaled_confidence(logits_u, labels)   # (N, M): N unlearned models, M forget images
    conf_r = logit_scaled_confidence(logits_r, labels)   # (N, M): N retrained models
    f = forgetting_quality(conf_u, conf_r)               # in [0, 1]; 1: indistinguishable from retraining
    score = challenge_score(f, retain_acc=(ra_u, ra_r), test_acc=(ta_u, ta_r))

Per forget example the N unlearned and N retrained confidences are two samples; an attacker picks
the best rule from two families on a grid of 0.01 (one threshold: "at or above t"; two thresholds:
"between l and r", centred on the narrower sample) and the example's epsilon is the largest

    max(log(1 - delta - FPR) - log(FNR), log(1 - delta - FNR) - log(FPR)),  delta = 1e-5,

over the rules, clipped to [0, 50]. A rule with FPR = FNR = 0 separates the samples (epsilon
infinite); a rule with exactly one of them 0 is dropped (too few samples to tell). A sample whose
spread is under 1% of the other's is scored at the cap 50. Epsilons fall in buckets 0.5 wide worth
1, 1/2, 1/4, ... up to ceil(ln(N - 1)) (N models say nothing about larger epsilons); F is the mean
of the points over the forget set. The definitions follow google-deepmind/unlearning_evaluation
(metric.py), whose code runs on CUDA with a threshold-by-model matrix; here each rate is a count in
a sorted sample (np.searchsorted), so it runs on any machine in float64 and the counts are exact
(the reference keeps rates in float32, its single-threshold grid in float32 and adds 1e-45 inside
its logarithms; two samples that are both constant stop it, and are scored at the cap here). Of
the two-threshold grid (about 160,000 rules per example) only the rules where a count changes are
counted: the same (TP, FP) pairs, so the same epsilon, about 5x faster (bench/bench_forgetting.py).

F depends strongly on N (two draws of one distribution score about 0.19 at N = 8, 0.18 at N = 32):
compare it only with the ceiling at the same N, F of retrains against other retrains.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DELTA = 1e-5  # the delta of (epsilon, delta)-unlearning
EPSILON_CAP = 50.0  # epsilon of an example whose two samples cannot be told apart by the grid
THRESHOLDS_PER_UNIT = 100  # the grid: 0.01 in logit-scaled confidence
BUFFER = 2.0  # the two-threshold rule's search window around the narrower sample
BUCKET = 0.5  # width of an epsilon bucket
MIN_MODELS = 16  # runs compute F from this many seeds on (below, its scale moves too much with N)


def logit_scaled_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """log p_y - log(1 - p_y) per row (float64), computed stably from (N, C) logits and (N,) labels:
    log p_y = z_y - logsumexp(z), log(1 - p_y) = logsumexp of the other logits - logsumexp(z)."""
    z = logits.detach().double().cpu()
    y = labels.long().cpu()
    true = z.gather(1, y[:, None])[:, 0]
    others = z.scatter(1, y[:, None], -math.inf).logsumexp(1)
    return (true - others).numpy()


def _rule_epsilons(fpr: np.ndarray, fnr: np.ndarray, separated: np.ndarray) -> np.ndarray:
    """Epsilon of each rule (inf where it separates, NaN where it is dropped), float64."""
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.fmax(np.log(1 - DELTA - fpr) - np.log(fnr), np.log(1 - DELTA - fnr) - np.log(fpr))
    eps = np.clip(eps, 0.0, None)  # NaN stays NaN (both terms undefined): dropped
    eps[(fpr * fnr == 0) & ~separated] = np.nan
    eps[separated] = np.inf
    return eps


def _count_at_or_above(sorted_sample: np.ndarray, t: np.ndarray) -> np.ndarray:
    return len(sorted_sample) - np.searchsorted(sorted_sample, t, side="left")


def _count_between(sorted_sample: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Counts of the sample in [lo[i, j], hi[i]]: (R, L) lower and (R,) upper bounds."""
    at_or_below = np.searchsorted(sorted_sample, hi, side="right")[:, None]  # (R, 1)
    return np.maximum(at_or_below - np.searchsorted(sorted_sample, lo, side="left"), 0)


def _single_threshold(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TP, FP) counts of "positive at or above t" for t on the grid over both samples."""
    lo, hi = min(pos[0], neg[0]), max(pos[-1], neg[-1])
    # torch.linspace, as the reference: its upper half counts down from hi, unlike np.linspace.
    t = torch.linspace(lo, hi, math.ceil((hi - lo) * THRESHOLDS_PER_UNIT), dtype=torch.float64).numpy()
    return _count_at_or_above(pos, t), _count_at_or_above(neg, t)


def _first_above(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(R, V) column of the first entry above each of `values` in each ascending row of `rows`
    (R, L), L where there is none: np.searchsorted(row, values, side="right") row by row, from
    the rows' even spacing, then corrected against the entries themselves (exact)."""
    n = rows.shape[1]
    step = (rows[:, -1:] - rows[:, :1]) / (n - 1)
    j = np.clip(np.floor((values - rows[:, :1]) / step) + 1, 0, n).astype(np.intp)
    while True:
        back = (j > 0) & (np.take_along_axis(rows, np.maximum(j - 1, 0), 1) > values)
        on = (j < n) & (np.take_along_axis(rows, np.minimum(j, n - 1), 1) <= values)
        if not (back.any() or on.any()):
            return j
        j += on.astype(np.intp) - back


def _double_threshold(
    pos: np.ndarray, neg: np.ndarray, every_rule: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(TP, FP) counts of "positive between l and r", positive being the narrower sample:
    r on the grid from its min + its width - BUFFER to its max + BUFFER, l from r - width - BUFFER
    to r - width + BUFFER. Along one r the counts change only where l passes a sample value, so
    only the first l and those just past one are counted: the same set of (TP, FP) pairs as the
    whole (r, l) grid (`every_rule`: the tests' and bench/bench_forgetting.py's reference), from
    about 10x fewer rules."""
    if pos[-1] - pos[0] >= neg[-1] - neg[0]:
        pos, neg = neg, pos
    width = pos[-1] - pos[0]
    lo, hi = pos[0] + width - BUFFER, pos[-1] + BUFFER
    right = np.linspace(lo, hi, math.ceil((hi - lo) * THRESHOLDS_PER_UNIT))  # (R,)
    centre = right - width
    left = np.linspace(centre - BUFFER, centre + BUFFER, math.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT), axis=1)
    if not every_rule:
        steps = _first_above(left, np.concatenate([pos, neg]))  # (R, 2n): where a count goes up
        first = np.zeros((len(right), 1), np.intp)
        cols = np.minimum(np.concatenate([first, steps], axis=1), left.shape[1] - 1)
        left = np.take_along_axis(left, cols, 1)
    return _count_between(pos, left, right).ravel(), _count_between(neg, left, right).ravel()


def _best_epsilon(tp: np.ndarray, fp: np.ndarray, n: int) -> float:
    """The largest epsilon over rules with these (TP, FP) counts out of n models per sample (inf
    where one separates, NaN where every rule is dropped). A rule's epsilon is a function of its
    counts, so each distinct pair, at most (n + 1)^2 of them, is scored once."""
    seen = np.bincount(tp * (n + 1) + fp, minlength=(n + 1) ** 2).nonzero()[0]
    tp, fp = np.divmod(seen, n + 1)
    fpr, fnr = fp / n, (n - tp) / n
    eps = _rule_epsilons(fpr, fnr, (fp == 0) & (tp == n))
    return np.nan if np.isnan(eps).all() else float(np.nanmax(eps))


def example_epsilons(unlearned: np.ndarray, retrained: np.ndarray) -> np.ndarray:
    """(M,) epsilon per forget example from (N, M) confidences of unlearned and retrained models."""
    unlearned, retrained = _check(unlearned, retrained)
    out = np.empty(unlearned.shape[1])
    for i in range(unlearned.shape[1]):
        u, r = np.sort(unlearned[:, i]), np.sort(retrained[:, i])
        spreads = sorted((u[-1] - u[0], r[-1] - r[0]))
        # One sample (nearly) a point: the grid may miss how different it is. (Both points: the
        # reference finds no rule and stops; scored at the cap here too.)
        if spreads[1] == 0 or spreads[0] / spreads[1] < 0.01:
            out[i] = EPSILON_CAP
            continue
        # The positive class of an example is the sample with the larger median.
        pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
        counts = [rule(pos, neg) for rule in (_double_threshold, _single_threshold)]
        eps = _best_epsilon(*(np.concatenate(c) for c in zip(*counts, strict=True)), len(u))
        if np.isnan(eps):
            raise RuntimeError(f"forget example {i}: every rule was dropped (FPR or FNR 0)")
        out[i] = eps
    return np.clip(out, 0.0, EPSILON_CAP)


def bucket_points(num_models: int) -> list[tuple[float, float]]:
    """[(bucket start, points)]: 0.5-wide buckets worth 1, 1/2, 1/4, ... whose end is at most
    ceil(ln(N - 1))."""
    top = math.ceil(math.log(num_models - 1)) if num_models > 1 else 0
    return [(k * BUCKET, 0.5**k) for k in range(int(top / BUCKET))]


def forgetting_quality(unlearned, retrained) -> float:
    """F in [0, 1] (module doc) from (N, M) logit-scaled confidences of N unlearned models (seeds
    of one method from one A_d) and N retrained models on the same M forget examples."""
    eps = example_epsilons(unlearned, retrained)
    buckets = bucket_points(np.asarray(unlearned).shape[0])
    points = [next((p for start, p in buckets if e < start + BUCKET), 0.0) for e in eps]
    return float(np.mean(points))


def challenge_score(f: float, *, retain_acc: tuple[float, float], test_acc: tuple[float, float]) -> float:
    """The challenge's final score F x (RA_U / RA_R) x (TA_U / TA_R): (unlearned, retrained)
    mean accuracies on D_r and D_t."""
    return f * (retain_acc[0] / retain_acc[1]) * (test_acc[0] / test_acc[1])


def _check(unlearned, retrained) -> tuple[np.ndarray, np.ndarray]:
    u, r = np.asarray(unlearned, dtype=np.float64), np.asarray(retrained, dtype=np.float64)
    if u.ndim != 2 or u.shape != r.shape or u.shape[0] < 2 or u.shape[1] == 0:
        raise ValueError(
            f"expected two (N, M) arrays, N >= 2 models, M >= 1 examples; got {u.shape}, {r.shape}"
        )
    if not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise ValueError("confidences must be finite")
    return u, r

"""Forgetting quality F (kga_fast.evaluation.forgetting): the challenge's definition on cases worked by hand,
its limits (one repeated model, fully separated samples), and random cases against a direct
transcription that builds every rule and its rates as threshold-by-model indicator matrices; the
two-threshold rules counted where a count changes give the whole grid's (TP, FP) pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kga_fast.evaluation import forgetting
from kga_fast.evaluation.forgetting import (
    DELTA,
    bucket_points,
    challenge_score,
    example_epsilons,
    forgetting_quality,
    logit_scaled_confidence,
)


def test_logit_scaled_confidence_is_log_odds_of_the_true_class_and_stable():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [1000.0, 0.0], [0.0, 1000.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 0, 1])
    got = logit_scaled_confidence(logits, labels)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [0.0, math.log(3), 1000.0, -1000.0, 0.0], atol=1e-12)
    three = torch.tensor([[2.0, 1.0, 0.0]])  # p = e^2 / (e^2 + e + 1): log p - log(1 - p)
    assert logit_scaled_confidence(three, torch.tensor([0]))[0] == pytest.approx(2 - math.log(math.e + 1))


def test_buckets_stop_at_ceil_log_n_minus_one():
    assert bucket_points(2) == []  # ceil(ln 1) = 0: two models can tell nothing
    assert bucket_points(4) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.25), (1.5, 0.125)]  # ceil(ln 3) = 2
    assert len(bucket_points(32)) == 8  # ceil(ln 31) = 4


def test_identical_samples_score_one():
    """Every rule has FPR = 1 - FNR: both epsilon terms are <= 0, clipped to 0, first bucket."""
    conf = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, 7.5], [3.0, 9.0]])
    np.testing.assert_array_equal(example_epsilons(conf, conf.copy()), [0.0, 0.0])
    assert forgetting_quality(conf, conf.copy()) == 1.0


def test_a_shift_by_one_of_four_models_worked_by_hand():
    """u = 0, 1, 2, 3 and r = 1, 2, 3, 4. The rules that keep both rates above 0 are "at or above
    t" with t in (1, 2] or (2, 3] and the intervals [0, 1], [0, 2] (FPR, FNR = 1/4, 1/2 or 1/2, 1/4);
    the best epsilon is log((1 - delta - 1/2) / (1/4)) = log(2 - 4 delta), in the bucket [0.5, 1)
    worth 1/2 at N = 4."""
    u = np.array([[0.0], [1.0], [2.0], [3.0]])
    eps = example_epsilons(u, u + 1)
    assert eps[0] == pytest.approx(math.log(2 - 4 * DELTA), abs=1e-12)
    assert forgetting_quality(u, u + 1) == 0.5
    both = np.hstack([u, u])  # one example shifted, one identical: (1/2 + 1) / 2
    assert forgetting_quality(both, np.hstack([u + 1, u])) == 0.75


def test_one_repeated_model_scores_zero():
    """N copies of one unlearned model: its sample has no spread, scored at the cap."""
    rng = np.random.default_rng(0)
    retrained = rng.normal(size=(16, 20))
    unlearned = np.repeat(rng.normal(size=(1, 20)), 16, axis=0)
    assert (example_epsilons(unlearned, retrained) == 50).all()
    assert forgetting_quality(unlearned, retrained) == 0.0
    assert forgetting_quality(unlearned, unlearned.copy()) == 0.0  # both constant: capped too


def test_fully_separated_samples_score_zero():
    rng = np.random.default_rng(1)
    retrained = rng.normal(size=(16, 10))
    assert forgetting_quality(retrained + 10, retrained) == 0.0
    assert forgetting_quality(retrained - 10, retrained) == 0.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="N >= 2"):
        forgetting_quality(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="N >= 2"):
        forgetting_quality(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        forgetting_quality(np.full((4, 3), np.nan), np.zeros((4, 3)))


def test_challenge_score_scales_f_by_both_accuracy_ratios():
    assert challenge_score(0.5, retain_acc=(0.9, 1.0), test_acc=(0.8, 0.8)) == pytest.approx(0.45)


# A direct transcription of the definition: every rule's predicted positives as a
# (thresholds, models) boolean matrix, the rates as its means.
def direct_epsilon(u: np.ndarray, r: np.ndarray) -> float:
    small, large = sorted([np.ptp(u), np.ptp(r)])
    if small / large < 0.01:
        return 50.0
    pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
    rules = []  # (predicted positive for pos, for neg): (thresholds, N) each
    lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
    t = torch.linspace(lo, hi, math.ceil((hi - lo) * 100), dtype=torch.float64).numpy()[:, None]
    rules.append((pos[None] >= t, neg[None] >= t))
    peaky, other = (neg, pos) if np.ptp(pos) >= np.ptp(neg) else (pos, neg)
    width = np.ptp(peaky)
    a, b = peaky.min() + width - 2, peaky.max() + 2
    for right in np.linspace(a, b, math.ceil((b - a) * 100)):
        left = np.linspace(right - width - 2, right - width + 2, 400)[:, None]
        rules.append(
            ((left <= peaky[None]) & (peaky[None] <= right), (left <= other[None]) & (other[None] <= right))
        )
    tpr = np.concatenate([pp_pos.mean(1) for pp_pos, _ in rules])
    fpr = np.concatenate([pp_neg.mean(1) for _, pp_neg in rules])
    fnr = 1 - tpr
    if ((fpr == 0) & (fnr == 0)).any():
        return 50.0  # a rule separates the samples: infinite epsilon, capped
    kept = fpr * fnr > 0  # a rule with one rate 0 is dropped
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.stack([np.log(1 - DELTA - fpr) - np.log(fnr), np.log(1 - DELTA - fnr) - np.log(fpr)])
    terms = terms[:, kept]
    defined = ~np.isnan(terms).all(0)
    return min(50.0, max(0.0, np.nanmax(terms[:, defined])))


def direct_quality(unlearned: np.ndarray, retrained: np.ndarray) -> float:
    n = unlearned.shape[0]
    top, points = math.ceil(math.log(n - 1)), []
    for i in range(unlearned.shape[1]):
        e = direct_epsilon(unlearned[:, i], retrained[:, i])
        start, worth, got = 0.0, 1.0, 0.0
        while start + 0.5 <= top:
            if e < start + 0.5:
                got = worth
                break
            start, worth = start + 0.5, worth / 2
        points.append(got)
    return float(np.mean(points))


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_match_the_direct_transcription(seed):
    rng = np.random.default_rng(seed)
    n, m = (6, 9, 12, 16)[seed], 4
    retrained = rng.normal(scale=0.4, size=(n, m))
    shift = rng.normal(scale=0.5, size=m)  # per example: from none to well apart
    unlearned = rng.normal(scale=rng.uniform(0.2, 0.8, size=m), size=(n, m)) + shift
    expected = [direct_epsilon(unlearned[:, i], retrained[:, i]) for i in range(m)]
    assert len(set(expected)) > 1  # the cases differ (not all at 0 or at the cap)
    np.testing.assert_allclose(example_epsilons(unlearned, retrained), expected, rtol=1e-12, atol=1e-12)
    assert forgetting_quality(unlearned, retrained) == pytest.approx(direct_quality(unlearned, retrained))


def test_first_above_is_searchsorted_row_by_row():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=50)
    rows = np.linspace(centres - 2, centres + 2, 400, axis=1)
    values = np.concatenate([rng.normal(scale=3, size=30), rows[7, [0, 5, 399]], [-100.0, 100.0]])
    want = np.stack([np.searchsorted(row, values, side="right") for row in rows])
    np.testing.assert_array_equal(forgetting._first_above(rows, values), want)


@pytest.mark.parametrize("grid", [None, 0.01, 0.25])
def test_two_threshold_rules_where_a_count_changes_give_every_rules_pairs(grid):
    # Ties and values on the 0.01 grid (grid 0.01, 0.25) are where an off-by-one column would show.
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.choice([4, 16, 32]))
        a = rng.normal(scale=rng.uniform(0.05, 2), size=n)
        b = rng.normal(scale=rng.uniform(0.05, 2), size=n) + rng.normal()
        if grid:
            a, b = np.round(a / grid) * grid, np.round(b / grid) * grid
        pos, neg = np.sort(a), np.sort(b)
        fast = forgetting._double_threshold(pos, neg)
        every = forgetting._double_threshold(pos, neg, every_rule=True)
        assert set(zip(*fast, strict=True)) == set(zip(*every, strict=True))
        assert len(fast[0]) * 5 < len(every[0])


def test_exported_at_the_top_level():
    import kga_fast

    assert kga_fast.forgetting_quality is forgetting_quality

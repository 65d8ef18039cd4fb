"""bench/forgetting_spread.py, which splits the gap between F and its ceiling into a shift, a
narrowing and A_d's memory in the unlearned models' confidences: its moves reach the retrains'
mean and spread, and each measure reads a known difference between two samples."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import forgetting_spread as fs  # noqa: E402

from kga_fast.errors import UserError  # noqa: E402
from kga_fast.models import StagedNet, build_model  # noqa: E402

N, M = 16, 120


def samples(spread=1.0, shift=0.0, kept=0.0, seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unlearned, retrained, original) confidences: per example a retrain mean and sd, A_d's
    confidence some sds from the mean (its excess), the unlearned sample `shift` + `kept` x that
    excess sds away from the mean and `spread` times as wide."""
    rng = np.random.default_rng(seed)
    centre, sd = rng.normal(2.0, 2.0, size=M), rng.uniform(0.5, 1.5, size=M)
    excess = rng.normal(0.3, 1.5, size=M)
    retrained = centre + sd * rng.standard_normal((N, M))
    unlearned = centre + (shift + kept * excess) * sd + spread * sd * rng.standard_normal((N, M))
    return unlearned, retrained, centre + excess * sd


@pytest.mark.parametrize("centre,scale", [(True, False), (False, True), (True, True)])
def test_moved_takes_the_retrains_mean_or_spread_and_keeps_the_rest(centre, scale):
    u, r, _ = samples(spread=0.3, shift=1.0)
    out = fs.moved(u, r, centre=centre, scale=scale)
    want_mean, want_sd = (r if centre else u).mean(0), (r if scale else u).std(0, ddof=1)
    assert np.allclose(out.mean(0), want_mean) and np.allclose(out.std(0, ddof=1), want_sd)
    # the shape of each sample (its standardized values) is kept
    z = lambda x: (x - x.mean(0)) / x.std(0, ddof=1)  # noqa: E731
    assert np.allclose(z(out), z(u))


def test_moved_leaves_a_constant_sample_constant():
    u, r, _ = samples()
    u[:, 0] = 1.5
    out = fs.moved(u, r, centre=True, scale=True)
    assert np.allclose(out[:, 0], r[:, 0].mean())


def test_same_distribution_reads_as_one_spread_no_shift_and_nothing_kept():
    row = fs.spread_row(*samples(seed=1))
    assert 0.85 < row["spread"] < 1.15 and row["|shift|"] < 0.5 and abs(row["shift"]) < 0.2
    assert abs(row["kept"]) < 0.1 and abs(row["F unkept"] - row["F"]) < 0.01


# A move makes a sample's mean or spread equal the reference's exactly, which scores above the
# ceiling: each moved F is judged against a sample of the retrains' own distribution, moved alike.


def test_a_narrow_sample_is_read_as_narrow_and_rescaling_recovers_f():
    same, row = fs.spread_row(*samples(seed=2)), fs.spread_row(*samples(spread=0.2, seed=2))
    assert 0.15 < row["spread"] < 0.25 and row["|shift|"] < 0.5
    assert row["F"] < same["F"] - 0.05 and row["F recentred"] < same["F recentred"] - 0.05
    assert abs(row["F rescaled"] - same["F rescaled"]) < 0.03


@pytest.mark.parametrize("shift", [2.0, -2.0])
def test_a_shifted_sample_is_read_as_shifted_and_recentring_recovers_f(shift):
    same, row = fs.spread_row(*samples(seed=3)), fs.spread_row(*samples(shift=shift, seed=3))
    assert (
        0.85 < row["spread"] < 1.15
        and 1.5 < row["|shift|"] < 2.5
        and 1.5 < row["shift"] * np.sign(shift) < 2.5
    )
    assert row["F"] < same["F"] - 0.05 and row["F rescaled"] < same["F rescaled"] - 0.05
    assert abs(row["F recentred"] - same["F recentred"]) < 0.03


def test_a_sample_that_follows_a_d_is_read_as_kept_and_unkeeping_recovers_f():
    same, row = fs.spread_row(*samples(seed=4)), fs.spread_row(*samples(kept=0.6, seed=4))
    assert 0.5 < row["kept"] < 0.7 and abs(row["shift"] - 0.6 * 0.3) < 0.3  # the excess's mean is 0.3
    assert row["F"] < same["F"] - 0.05 and row["F rescaled"] < same["F rescaled"] - 0.05
    assert abs(row["F unkept"] - same["F"]) < 0.03  # the average shift of 0.18 sds is kept


def test_constant_retrains_are_refused():
    u, r, a = samples()
    r[:, 3] = 0.0
    with pytest.raises(UserError, match="same confidence in every reference retrain"):
        fs.spread_row(u, r, a)
    with pytest.raises(UserError, match="same confidence in every reference retrain"):
        fs.reference_row(a, r)


def test_a_missing_run_folder_is_refused_and_not_made(tmp_path, capsys):
    missing = tmp_path / "missing"
    with pytest.raises(SystemExit) as exit_info:
        fs.main(["--run-dir", str(missing), "--seed", "1"])
    assert exit_info.value.code == 2 and "no run folder" in capsys.readouterr().err
    assert not missing.exists()


def test_a_reference_at_the_retrains_mean_reads_as_no_shift_and_two_sds_below_as_minus_two():
    _, r, _ = samples(seed=5)
    mean, sd = r.mean(0), r.std(0, ddof=1)
    at = fs.reference_row(mean, r)
    assert at["|shift|"] == pytest.approx(0, abs=1e-12) and at["r"] == pytest.approx(1)
    off = fs.reference_row(mean - 2 * sd, r)
    assert off["|shift|"] == pytest.approx(2) and off["shift"] == pytest.approx(-2)


def test_nearest_confidence_averages_the_k_most_similar_new_images():
    new = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    conf = np.array([10.0, 20.0, 30.0, 40.0])
    forget = torch.tensor([[2.0, 0.1], [0.0, 3.0]])  # nearest: image 0 then 2; image 1 then 2
    assert np.allclose(fs.nearest_confidence(forget, new, conf, 1), [10.0, 20.0])
    assert np.allclose(fs.nearest_confidence(forget, new, conf, 2), [20.0, 25.0])
    with pytest.raises(UserError, match="5 nearest of 4"):
        fs.nearest_confidence(forget, new, conf, 5)


def test_a_sample_centred_on_one_draw_scores_below_one_centred_on_the_mean():
    # Per example the centre of the retrains' distribution is known here: a sample spread as
    # they are around it scores as they do; around one retrain's draw (or one sd off) it does not.
    rng, m = np.random.default_rng(6), 40  # 40 examples; over seeds 6-25: 0.97-1.15x, 0.65-0.78x, 0.47-0.66x
    centre, sd = rng.normal(2.0, 2.0, size=m), rng.uniform(0.5, 1.5, size=m)
    first, reference = (centre + sd * rng.standard_normal((N, m)) for _ in range(2))
    ceiling = fs.left_out_ceiling(first, reference)
    at_centre, one_draw, off = (
        fs.centred_f(c, first, reference) / ceiling for c in (centre, None, centre + sd)
    )
    assert at_centre > 0.9 and one_draw < 0.85 and off < one_draw


def test_features_are_what_the_classifier_reads():
    model = build_model("resnet18", 10, 1).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.head[-1](fs.Features(model)(x)), model(x), atol=1e-5)
    flat = StagedNet("flat", torch.nn.Identity(), [torch.nn.Flatten(1)], torch.nn.Linear(4, 2))
    with pytest.raises(UserError, match="head ending in a layer"):
        fs.Features(flat)

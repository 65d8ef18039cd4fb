"""The retrain pool: K models retrained on D_r with one recipe and K seeds, what every evaluation
is judged against (two retrains of the same D_r already differ).

    names = pool_names(8)                       # ("Ar", "Ar-1", ..., "Ar-7")
    block = summarize_pool(logits, labels, num_classes, mia, seeds)   # results.json "retrains"

A_r (the run's seed) is the pool's first member; "Ar-<k>" trains as A_r does with pretraining seed
seed + k. The block holds the pool's checkpoints and seeds, the floor (the mean JSD between two
retrains, over all pairs, per split) and the band (min / mean / max over the pool of accuracy and
F1 per split and of each membership attack). A method lands where retraining lands when its
metrics sit inside the band and its mean JSD to the pool is near the floor. With N >= 16
unlearning seeds and at least 2N retrains, each record also gets the challenge's forgetting quality F
(kga_fast.evaluation.forgetting) against N retrains, beside its ceiling: N other retrains against them.
"""

from __future__ import annotations

import itertools
import statistics

import numpy as np
import torch

from kga_fast.errors import UserError
from kga_fast.evaluation.evaluate import classification_metrics, mean_jsd
from kga_fast.evaluation.forgetting import challenge_score, forgetting_quality, logit_scaled_confidence
from kga_fast.results import POOL_KEY


def pool_names(size: int) -> tuple[str, ...]:
    """("Ar", "Ar-1", ..., "Ar-<size-1>"): the checkpoint names of a pool of `size`."""
    if size < 1:
        raise UserError(f"--retrains must be at least 1, got {size}")
    return ("Ar", *(f"Ar-{k}" for k in range(1, size)))


def pool_member(name: str) -> int | None:
    """k of "Ar-<k>" (0 for "Ar"): its pretraining seed is the run's seed + k; None for other names."""
    if name == "Ar":
        return 0
    head, _, k = name.partition("-")
    return int(k) if head == "Ar" and k.isdigit() and int(k) >= 1 and k == str(int(k)) else None


def jsd_to_pool(logits: torch.Tensor, pool_logits: list[torch.Tensor]) -> float:
    """Mean over the pool of the mean per-sample JSD between `logits` and each retrain's."""
    return statistics.fmean(mean_jsd(logits, p) for p in pool_logits)


def _band(values: list[float | None]) -> dict[str, float] | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {"min": min(known), "mean": statistics.fmean(known), "max": max(known)}


def summarize_pool(
    logits: dict[str, dict[str, torch.Tensor]],
    labels: dict[str, torch.Tensor],
    num_classes: int,
    mia: dict[str, dict[str, float | None]],
    seeds: dict[str, int],
) -> dict:
    """results.json's "retrains" block from {member: {split: logits}}, {split: labels}, the
    members' audits {member: {attack: value}} and pretraining seeds {member: seed}."""
    names = list(logits)
    splits = list(labels)
    if len(names) < 2:
        raise ValueError("a pool needs at least two retrains")
    metrics = {
        m: {s: classification_metrics(logits[m][s], labels[s], num_classes) for s in splits} for m in names
    }
    floor = {
        s: statistics.fmean(mean_jsd(logits[a][s], logits[b][s]) for a, b in itertools.combinations(names, 2))
        for s in splits
    }
    band = {s: {k: _band([metrics[m][s][k] for m in names]) for k in ("accuracy", "f1")} for s in splits}
    attacks = list(next(iter(mia.values())))
    band["mia"] = {a: _band([mia[m][a] for m in names]) for a in attacks}
    return {
        "size": len(names),
        "checkpoints": [f"models/{m}.safetensors" for m in names],
        "seeds": [seeds[m] for m in names],
        "floor": floor,
        "band": band,
    }


def forgetting_against_pool(
    unlearned: list[torch.Tensor],
    pool: list[torch.Tensor],
    labels: torch.Tensor,
    *,
    retain_acc: tuple[float, float],
    test_acc: tuple[float, float],
) -> dict | None:
    """The challenge's forgetting quality of N unlearned models (their D_f logits, one per
    unlearning seed) against N retrains, and its ceiling at the same N: the pool's first N
    retrains against the same N others (needs 2N retrains; None with fewer, or N < 2).
    retain_acc / test_acc: (unlearned, retrained) mean accuracies for the final score."""
    n = len(unlearned)
    if n < 2 or len(pool) < 2 * n:
        return None

    def confidences(logits: list[torch.Tensor]) -> np.ndarray:  # (models, M)
        return np.stack([logit_scaled_confidence(x, labels) for x in logits])

    first, second = confidences(pool[:n]), confidences(pool[n : 2 * n])
    f = forgetting_quality(confidences(unlearned), second)
    return {
        "N": n,
        "F": f,
        "ceiling": forgetting_quality(first, second),
        "score": challenge_score(f, retain_acc=retain_acc, test_acc=test_acc),
    }


def check_pool_size(results: dict, size: int, run_dir) -> None:
    """UserError when results.json was judged against a pool of another size (K > 1 only; a
    run with one retrain records no pool): one folder, one pool."""
    recorded = results.get(POOL_KEY)
    if size > 1 and recorded is not None and recorded["size"] != size:
        raise UserError(
            f"the results in {run_dir} were judged against {recorded['size']} retrains: rerun with "
            f"--retrains {recorded['size']}, or use a new run folder"
        )

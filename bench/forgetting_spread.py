"""Why forgetting quality F sits below its ceiling: are the unlearned models' confidences on D_f
shifted from the retrains', narrower, or still where A_d's are? (issue 17, bench/RESULTS.md)

    python bench/forgetting_spread.py --run-dir runs/f16-s1 --seed 1 --train-subset 2000 \\
      --test-subset 1000 --forget-fraction 0.1 --retrains 32

Opens a run folder (with the options it was made with) whose records carry F (N unlearning seeds
against 2N retrains: kga_fast.evaluation.pool.forgetting_against_pool) and prints one row per
method and setting, and one for the pool's first N retrains (the ceiling's side). Per forget
example, the N unlearned models' logit-scaled confidences are one sample and the reference
retrains' (the pool's second N, as F uses them) the other; the row gives, as medians over D_f:
- spread: the sample's standard deviation over the retrains';
- |shift|: |its mean - the retrains' mean| in the retrains' standard deviations, and shift, the
  same with its sign (above 0: more confident on D_f than retraining, as a model that remembers);
- kept: how much of A_d's own difference from the retrains the shift keeps, per example: the
  least-squares slope of shift on A_d's excess (A_d's confidence - the retrains' mean, in their
  standard deviations) over D_f. 1: each example's sample sits where A_d sits; 0: wherever A_d
  sits, as a retrain's would. A memory of A_d's training, image by image, that a per-example
  membership test reads;
then F as recorded, and F again after each example's unlearned sample is moved to the retrains'
mean (recentred), scaled to their standard deviation around its own mean (rescaled), or both,
and moved by -kept x (its excess - the mean excess over D_f), which takes out the part of the
shift that follows A_d and keeps the average shift (unkept): how much of the gap to the ceiling
each part of the difference costs. A moved sample matches the reference's mean or spread
exactly, which scores above the ceiling: read each moved F against the retrains' row in the same
column (the first N retrains, moved alike).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from targets import method_rows  # noqa: E402  (bench/targets.py: one row per method and setting)

from kga_fast.checkpoint import load_model  # noqa: E402
from kga_fast.errors import UserError, cli_main  # noqa: E402
from kga_fast.evaluation.evaluate import predict  # noqa: E402
from kga_fast.evaluation.forgetting import forgetting_quality, logit_scaled_confidence  # noqa: E402
from kga_fast.pipeline import EVAL_SPLITS, reference_outputs_cached  # noqa: E402
from kga_fast.run import open_run_from_cli  # noqa: E402

COLUMNS = (
    "N",
    "spread",
    "|shift|",
    "shift",
    "kept",
    "F",
    "F recentred",
    "F rescaled",
    "F both",
    "F unkept",
    "ceiling",
)


def moved(unlearned: np.ndarray, retrained: np.ndarray, *, centre: bool, scale: bool) -> np.ndarray:
    """(N, M) unlearned confidences with each example's mean moved to the retrains' (centre) and
    its standard deviation scaled to theirs around its mean (scale; a constant sample stays one)."""
    mean_u, sd_u = unlearned.mean(0), unlearned.std(0, ddof=1)
    deviation = unlearned - mean_u
    if scale:
        factor = np.divide(retrained.std(0, ddof=1), sd_u, out=np.ones_like(sd_u), where=sd_u > 0)
        deviation = deviation * factor
    return deviation + (retrained.mean(0) if centre else mean_u)


def spread_row(unlearned: np.ndarray, retrained: np.ndarray, original: np.ndarray) -> dict[str, float]:
    """The row's values (module doc) for (N, M) confidences of unlearned and reference models and
    A_d's (M,)."""
    sd_r = retrained.std(0, ddof=1)
    if (sd_r == 0).any():
        raise UserError("a forget example has the same confidence in every reference retrain")
    mean_r = retrained.mean(0)
    shift, excess = (unlearned.mean(0) - mean_r) / sd_r, (original - mean_r) / sd_r
    kept = float(np.polyfit(excess, shift, 1)[0])
    row = {
        "N": unlearned.shape[0],
        "spread": float(np.median(unlearned.std(0, ddof=1) / sd_r)),
        "|shift|": float(np.median(np.abs(shift))),
        "shift": float(np.median(shift)),
        "kept": kept,
        "F": forgetting_quality(unlearned, retrained),
        "F unkept": forgetting_quality(unlearned - kept * (excess - excess.mean()) * sd_r, retrained),
    }
    for name, centre, scale in (("recentred", True, False), ("rescaled", False, True), ("both", True, True)):
        row[f"F {name}"] = forgetting_quality(
            moved(unlearned, retrained, centre=centre, scale=scale), retrained
        )
    return row


def spread_table(run, accelerator) -> str:
    run_dir = run.cfg.run_dir
    pool, rows = method_rows(Path(run_dir))
    groups = {label: [r for r in records if r.get("forgetting_quality")] for label, records in rows.items()}
    groups = {label: records for label, records in groups.items() if records}
    sizes = {records[0]["forgetting_quality"]["N"] for records in groups.values()}
    if len(sizes) != 1:
        raise UserError(
            f"{run_dir}: expected records with F of one N (16+ seeds, 2N retrains), found {sizes or 'none'}"
        )
    (n,) = sizes
    images, labels = run.subset("forget")

    def confidences(names: list[str]) -> np.ndarray:  # (models, M)
        out = []
        for name in names:
            model, _ = load_model(run_dir, name, device=accelerator.device)
            logits = predict(model, images, mean=run.train.mean, std=run.train.std, accelerator=accelerator)
            out.append(logit_scaled_confidence(logits, labels))
        return np.stack(out)

    # The pool's logits as the runs scored them: the pipeline's reference cache (made once per
    # folder; computed and kept here if it is missing or stale).
    members = [Path(c).stem for c in pool["checkpoints"]][: 2 * n]
    splits = {s: run.subset(s) for s in EVAL_SPLITS}
    reference_models = {m: load_model(run_dir, m, device=accelerator.device)[0] for m in ("Ad", *members)}
    cached, _ = reference_outputs_cached(
        run, reference_models, splits, {s: y for s, (_, y) in splits.items()}, accelerator
    )
    pool_conf = np.stack([logit_scaled_confidence(cached["forget"][m], labels) for m in members])
    first, reference = pool_conf[:n], pool_conf[n:]
    original = logit_scaled_confidence(cached["forget"]["Ad"], labels)
    lines = ["| models | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]

    def add(label: str, unlearned: np.ndarray, ceiling: float | None = None) -> dict[str, float]:
        row = spread_row(unlearned, reference, original)
        row["ceiling"] = row["F"] if ceiling is None else ceiling  # the first N retrains: F is it
        cells = [f"{row[c]}" if c == "N" else f"{row[c]:.3f}" for c in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return row

    add("retrains (the pool's first N)", first)
    for label, records in groups.items():
        quality = records[0]["forgetting_quality"]
        if len(records) != n:
            raise UserError(f"{label}: {len(records)} records carry F of N = {n}")
        row = add(label, confidences([Path(r["checkpoint"]).stem for r in records]), quality["ceiling"])
        if not np.isclose(row["F"], quality["F"]):  # the same models and retrains as the record's F
            raise RuntimeError(f"{label}: F recomputed {row['F']:.4f}, recorded {quality['F']:.4f}")
    return "\n".join(lines)


@cli_main
def main(argv=None) -> None:
    run, accelerator = open_run_from_cli(__doc__, argv)
    accelerator.print(f"{run.describe(accelerator)}\n\n{spread_table(run, accelerator)}")


if __name__ == "__main__":
    main()

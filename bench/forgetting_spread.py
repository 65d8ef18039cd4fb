"""Why forgetting quality F sits below its ceiling: are the unlearned models' confidences on D_f
shifted from the retrains', narrower, or still where A_d's are; could anything cheap say where a
retrain's lie; what F can seeds that share one model's confidences reach? (issue 17, RESULTS.md)

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

A second table asks whether any one model, or a reference that never trained on D_f, could tell
a method where each forget example's retrained confidence lies: per row, |shift| and shift (as
above, of one model's confidence instead of a sample's mean) and r, the correlation with the
retrains' means over D_f. Rows: one retrain (the pool's first), A_d, A_n where the folder has it
(trained on D_n alone), A_d's mean confidence on the k nearest D_n images (k = 1, 5; cosine
similarity of the features A_d's classifier reads: non-members that look alike), and the first
unlearned model of each method and setting.

A third asks what F a method could reach whose seeds all share one model's confidence per forget
example: each sample is centred on that model's confidences and spread around them as the
retrains spread (the first N retrains but one, their deviations from their own mean), against N - 1
reference retrains, as a ratio to the retrains' own F at N - 1 (both averaged over which of the
first N is left out). Rows: one retrain (each left-out retrain is its own centre), A_d, each
method's N-seed mean, and the first N retrains' mean.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from targets import method_rows  # noqa: E402  (bench/targets.py: one row per method and setting)

from kga_fast.checkpoint import SavedModels, has_model, load_model  # noqa: E402
from kga_fast.errors import UserError, cli_main  # noqa: E402
from kga_fast.evaluation.evaluate import predict  # noqa: E402
from kga_fast.evaluation.forgetting import forgetting_quality, logit_scaled_confidence  # noqa: E402
from kga_fast.models import StagedNet  # noqa: E402
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
REFERENCE_COLUMNS = ("|shift|", "shift", "r")
NEAREST = (1, 5)  # how many D_n images stand in for each forget image


def moved(unlearned: np.ndarray, retrained: np.ndarray, *, centre: bool, scale: bool) -> np.ndarray:
    """(N, M) unlearned confidences with each example's mean moved to the retrains' (centre) and
    its standard deviation scaled to theirs around its mean (scale; a constant sample stays one)."""
    mean_u, sd_u = unlearned.mean(0), unlearned.std(0, ddof=1)
    deviation = unlearned - mean_u
    if scale:
        factor = np.divide(retrained.std(0, ddof=1), sd_u, out=np.ones_like(sd_u), where=sd_u > 0)
        deviation = deviation * factor
    return deviation + (retrained.mean(0) if centre else mean_u)


def retrain_moments(retrained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per forget example, the (N, M) reference retrains' mean and standard deviation: the unit
    every distance here is measured in (UserError where they all agree: no unit)."""
    sd_r = retrained.std(0, ddof=1)
    if (sd_r == 0).any():
        raise UserError("a forget example has the same confidence in every reference retrain")
    return retrained.mean(0), sd_r


def spread_row(unlearned: np.ndarray, retrained: np.ndarray, original: np.ndarray) -> dict[str, float]:
    """The row's values (module doc) for (N, M) confidences of unlearned and reference models and
    A_d's (M,)."""
    mean_r, sd_r = retrain_moments(retrained)
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


def reference_row(confidence: np.ndarray, retrained: np.ndarray) -> dict[str, float]:
    """The second table's values for one (M,) confidence per forget example against the
    reference retrains' (N, M): medians of its signed and absolute distance from their mean in
    their standard deviations, and its correlation with that mean over D_f."""
    mean_r, sd_r = retrain_moments(retrained)
    shift = (confidence - mean_r) / sd_r
    return {
        "|shift|": float(np.median(np.abs(shift))),
        "shift": float(np.median(shift)),
        "r": float(np.corrcoef(confidence, mean_r)[0, 1]),
    }


def nearest_confidence(
    forget: torch.Tensor, new: torch.Tensor, new_confidence: np.ndarray, k: int
) -> np.ndarray:
    """Per forget example (features (M, D)), the mean confidence of the k D_n images (features
    (K, D), confidences (K,)) nearest to it by cosine similarity."""
    if not 1 <= k <= len(new):
        raise UserError(f"cannot average the {k} nearest of {len(new)} D_n images")
    similarity = torch.nn.functional.normalize(forget, dim=1) @ torch.nn.functional.normalize(new, dim=1).T
    return new_confidence[similarity.topk(k, dim=1).indices.numpy()].mean(1)


def centred_f(centre: np.ndarray | None, first: np.ndarray, reference: np.ndarray) -> float:
    """Mean F at N - 1 of a sample with the retrains' spread around a (M,) centre (third table,
    module doc); `first` (N, M) gives the spread, `reference` (N, M) the other side. centre None:
    each left-out retrain is the centre (one retrain's draw, shared by all)."""
    n = first.shape[0]
    scores = []
    for j in range(n):
        others = np.delete(first, j, 0)
        spread = (others - others.mean(0)) * np.sqrt((n - 1) / (n - 2))  # each deviation's sd: one
        scores.append(
            forgetting_quality((first[j] if centre is None else centre) + spread, reference[: n - 1])
        )
    return float(np.mean(scores))


def left_out_ceiling(first: np.ndarray, reference: np.ndarray) -> float:
    """The retrains' own F at N - 1, averaged over which of the first N is left out: what
    centred_f is read against."""
    n = first.shape[0]
    return float(np.mean([forgetting_quality(np.delete(first, j, 0), reference[: n - 1]) for j in range(n)]))


class Features(torch.nn.Module):
    """A StagedNet up to its head's last layer: the features its classifier reads."""

    def __init__(self, model: StagedNet):
        super().__init__()
        if not isinstance(model.head, torch.nn.Sequential):
            raise UserError(f"{model.arch}: the nearest-image reference needs a head ending in a layer")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head[:-1](self.model.prefix(x, len(self.model.blocks)))


def markdown(head: tuple[str, ...], rows: list[tuple[str, list[str]]]) -> str:
    """A markdown table: the header, then one line per (label, cells)."""
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    return "\n".join(lines + [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows])


def nearest_references(run, ad: StagedNet, images: torch.Tensor, outputs) -> dict[str, np.ndarray]:
    """The second table's non-member references from A_d: its mean confidence on the k D_n images
    nearest each forget image (`images`), k in NEAREST. outputs(model, images): its outputs."""
    new_images, new_labels = run.subset("new")
    new_confidence = logit_scaled_confidence(outputs(ad, new_images), new_labels)
    forget, new = outputs(Features(ad), images), outputs(Features(ad), new_images)
    return {
        f"A_d on the {k} nearest D_n images": nearest_confidence(forget, new, new_confidence, k)
        for k in NEAREST
    }


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

    def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return predict(model, x, mean=run.train.mean, std=run.train.std, accelerator=accelerator)

    def confidences(names: list[str]) -> np.ndarray:  # (models, M)
        out = []
        for name in names:
            model, _ = load_model(run_dir, name, device=accelerator.device)
            out.append(logit_scaled_confidence(outputs(model, images), labels))
        return np.stack(out)

    # The pool's logits as the runs scored them: the pipeline's reference cache (made once per
    # folder; computed and kept here if it is missing or stale).
    members = [Path(c).stem for c in pool["checkpoints"]][: 2 * n]
    splits = {s: run.subset(s) for s in EVAL_SPLITS}
    names = ("Ad", *members)  # the pool is read only where its cache is stale, one model at a time
    reference_models = SavedModels(run_dir, names, keep=("Ad",), device=accelerator.device)
    cached, _ = reference_outputs_cached(
        run, reference_models, names, splits, {s: y for s, (_, y) in splits.items()}, accelerator
    )
    pool_conf = np.stack([logit_scaled_confidence(cached["forget"][m], labels) for m in members])
    first, reference = pool_conf[:n], pool_conf[n:]
    original = logit_scaled_confidence(cached["forget"]["Ad"], labels)

    samples = {}  # label: (the N unlearned models' confidences, their records)
    for label, records in groups.items():
        if len(records) != n:
            raise UserError(f"{label}: {len(records)} records carry F of N = {n}")
        samples[label] = (confidences([Path(r["checkpoint"]).stem for r in records]), records)

    own = spread_row(first, reference, original)
    spread = [("retrains (the pool's first N)", own | {"ceiling": own["F"]})]  # their F is the ceiling
    for label, (sample, records) in samples.items():
        quality = records[0]["forgetting_quality"]
        row = spread_row(sample, reference, original)
        if not np.isclose(row["F"], quality["F"]):  # the same models and retrains as the record's F
            raise RuntimeError(f"{label}: F recomputed {row['F']:.4f}, recorded {quality['F']:.4f}")
        spread.append((label, row | {"ceiling": quality["ceiling"]}))

    references = {"one retrain (the pool's first)": first[0], "A_d": original}
    if has_model(run_dir, "An"):
        references["A_n (trained on D_n)"] = confidences(["An"])[0]
    references |= nearest_references(run, reference_models["Ad"], images, outputs)
    for label, (sample, records) in samples.items():
        references[f"{label}: one model (seed {records[0]['seed']})"] = sample[0]

    centres = {"one retrain (each of the first N)": None, "A_d": original}
    centres |= {f"{label}: its N seeds' mean": sample.mean(0) for label, (sample, _) in samples.items()}
    centres["the first N retrains' mean"] = first.mean(0)
    ceiling = left_out_ceiling(first, reference)

    def cells(row: dict[str, float], columns: tuple[str, ...]) -> list[str]:
        return [f"{row[c]}" if c == "N" else f"{row[c]:.3f}" for c in columns]

    tables = [
        markdown(("models", *COLUMNS), [(label, cells(row, COLUMNS)) for label, row in spread]),
        markdown(
            ("one model or reference", *REFERENCE_COLUMNS),
            [
                (label, cells(reference_row(c, reference), REFERENCE_COLUMNS))
                for label, c in references.items()
            ],
        ),
        markdown(
            ("centre", "F with the retrains' spread / ceiling (at N - 1)"),
            [(label, [f"{centred_f(c, first, reference) / ceiling:.2f}x"]) for label, c in centres.items()],
        ),
    ]
    return "\n\n".join(tables)


@cli_main
def main(argv=None) -> None:
    run, accelerator = open_run_from_cli(__doc__, argv)
    accelerator.print(f"{run.describe(accelerator)}\n\n{spread_table(run, accelerator)}")


if __name__ == "__main__":
    main()

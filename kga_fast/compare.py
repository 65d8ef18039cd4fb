"""Every method on one footing: the same tuning budget on a tuning split, then the chosen
settings over seeds on splits that did not choose them.

    tuned = tune(run, models, accelerator)            # split seed 0: GRID per method, seed 0
    compare(run, models, accelerator, tuned, [0, 1, 2])  # another split: every method, 3 seeds

Tuning runs each method's GRID (BUDGET settings each, KGA included) with unlearning seed 0 and
keeps the setting of the lowest `score`. The score looks at the retrains (the pool of
--retrains, else A_r), which is allowed on the tuning split only: `compare` refuses the
settings of a tuning run made on the same split. A method whose every setting collapses
(test accuracy far below A_r's) is still reported, with its best setting, and the table shows
it.
"""

from __future__ import annotations

import dataclasses
import json

from kga_fast.errors import UserError
from kga_fast.files import write_json_atomic
from kga_fast.methods import BASELINE_PRESETS
from kga_fast.methods.kga import UNLEARN_PRESETS
from kga_fast.pipeline import Job, run_job
from kga_fast.results import POOL_KEY, load_results

BUDGET = 4  # settings tried per method
# A variant is a GRID name that runs a method with fixed overrides: KGA from CT's damaged start
# (issue 17), tuned on its own budget of the gap rule's step sizes (a repair needs larger ones).
VARIANTS = {"kga_ct": ("kga", {"start": "ct"})}
# Each method's settings (overrides of its preset); KGA's are the candidates of bench/RESULTS.md.
GRID: dict[str, list[dict]] = {
    "kga": [  # for a --helpers matched or common folder: its gaps are comparable (bench/RESULTS.md)
        dict(reduction="sorted", stop="gap", check_every=1, epochs=6, lr=lr)
        for lr in (1e-4, 3e-4, 3e-5, 1e-3)
    ],
    "kga_ct": [
        dict(reduction="sorted", stop="gap", check_every=1, epochs=4, lr=lr)
        for lr in (3e-4, 1e-3, 3e-3, 1e-4)
    ],
    "finetune": [dict(lr=lr, epochs=e) for lr in (0.01, 0.04) for e in (2, 4)],
    "gradient_ascent": [dict(lr=lr, epochs=2) for lr in (1e-4, 3e-4, 1e-3, 3e-3)],
    "random_label": [dict(lr=lr, epochs=e) for lr in (0.003, 0.01) for e in (1, 2)],
    "salun": [dict(lr=lr, epochs=e) for lr in (0.003, 0.01) for e in (1, 2)],
    "scrub": [dict(lr=lr, max_epochs=m, epochs=2) for lr in (5e-5, 2e-4) for m in (1, 2)],
    # Deep Unlearn tunes NegGrad+'s alpha and lr; CT and MSG: the step and the repair's length.
    "neggrad_plus": [dict(lr=lr, epochs=2, retain_weight=a) for lr in (0.003, 0.01) for a in (0.95, 0.99)],
    "ct": [dict(lr=lr, epochs=e) for lr in (0.003, 0.01) for e in (2, 4)],
    "msg": [dict(lr=lr, epochs=e) for lr in (0.003, 0.01) for e in (2, 4)],
    # FCS: the repair's step and the epochs (its preset's 8 cost about 2x a retrain).
    "fcs": [dict(lr=lr, epochs=e) for lr in (0.004, 0.01) for e in (2, 4)],
    # Shrink and perturb: how far towards a fresh start, and the repair's step (its preset's 4 epochs).
    "shrink_perturb": [
        dict(lr=lr, shrink=s, perturb=round(1 - s, 2)) for lr in (0.01, 0.03) for s in (0.5, 0.7)
    ],
    # Distillation into a fresh network: the step and the length (8 epochs cost about a retrain).
    "fresh_distill": [dict(lr=lr, epochs=e) for lr in (0.02, 0.05) for e in (4, 8)],
}
TUNED_FILE = "tuned.json"


def read_tuned(path) -> dict:
    """A tuned.json written by `tune`; UserError when it cannot be read as one."""
    try:
        tuned = json.loads(open(path).read())
        tuned["split_seed"], tuned["methods"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read tuned settings from {path}: {e}") from None
    return tuned


def method_of(name: str) -> str:
    """The method a GRID name runs (a variant's, or the name itself)."""
    return VARIANTS.get(name, (name, {}))[0]


def config_for(name: str, overrides: dict):
    """The preset of a GRID name's method with the variant's and then `overrides` (KGA: the
    default preset)."""
    method, fixed = VARIANTS.get(name, (name, {}))
    base = UNLEARN_PRESETS["default"] if method == "kga" else BASELINE_PRESETS[method]
    return dataclasses.replace(base, **(fixed | overrides))


def score(record: dict, pool: dict | None = None) -> float:
    """Lower is better, in accuracy points: the distance of A*'s forget accuracy from the
    retrains', the test accuracy lost below theirs, and 10x A*'s JSD to them on D_f and D_t (a
    JSD of 0.01 weighs like one point). "The retrains": the pool (results.json "retrains": its
    mean accuracies, the record's mean JSD to each retrain) where the record was judged against
    one, else A_r alone."""
    ev = record["eval"]
    if pool is not None and "A*,retrains" in ev["forget"]["jsd"]:
        target = {s: pool["band"][s]["accuracy"]["mean"] for s in ("forget", "test")}
        pair = "A*,retrains"
    else:
        target = {s: ev[s]["accuracy"]["Ar"] for s in ("forget", "test")}
        pair = "A*,Ar"
    forget_gap = abs(ev["forget"]["accuracy"]["A*"] - target["forget"])
    test_loss = max(0.0, target["test"] - ev["test"]["accuracy"]["A*"])
    return forget_gap + test_loss + 10 * (ev["forget"]["jsd"][pair] + ev["test"]["jsd"][pair])


def tune(
    run, models, accelerator, *, freeze: tuple[int, ...] = (), methods=tuple(GRID), budget: int = BUDGET
) -> dict:
    """Run the first `budget` settings of every method's GRID (the same count for each) on `run`
    with unlearning seed 0 and write <run>/tuned.json:
    {"split_seed", "run_dir", "methods": {method: {"overrides", "score", "tried": [...]}}}.
    The methods an existing tuned.json of the same split and budget holds that are not tuned
    again are kept (a method added later is tuned alone)."""
    if not 1 <= budget <= min(len(GRID[m]) for m in methods):
        raise UserError(f"budget must be between 1 and {min(len(GRID[m]) for m in methods)}, got {budget}")
    out = {"split_seed": run.cfg.seed, "run_dir": str(run.cfg.run_dir), "budget": budget, "methods": {}}
    path = run.cfg.run_dir / TUNED_FILE
    if path.is_file():
        previous = read_tuned(path)
        if (previous.get("split_seed"), previous.get("budget")) == (run.cfg.seed, budget):
            out["methods"] = {m: v for m, v in previous["methods"].items() if m not in methods}
    for method in methods:
        tried = []
        for overrides in GRID[method][:budget]:
            job = Job(method_of(method), config_for(method, overrides), [freeze], [0])
            (record,) = run_job(run, models, job, accelerator)
            pool = load_results(run.cfg.run_dir).get(POOL_KEY)
            tried.append({"overrides": overrides, "score": score(record, pool)})
        best = min(tried, key=lambda t: t["score"])
        out["methods"][method] = {**best, "tried": tried}
        accelerator.print(f"tuned {method}: {best['overrides']} (score {best['score']:.4f})")
    if accelerator.is_main_process:
        write_json_atomic(run.cfg.run_dir / TUNED_FILE, out)
    return out


def compare(
    run, models, accelerator, tuned: dict, seeds: list[int], *, freeze: tuple[int, ...] = ()
) -> list[dict]:
    """Every tuned method over `seeds` on `run`, plus KGA's default preset and retrain."""
    if tuned["split_seed"] == run.cfg.seed:
        raise UserError(
            f"these settings were tuned on split seed {tuned['split_seed']}, the split of "
            f"{run.cfg.run_dir}: report on another split (--seed)"
        )
    jobs = [Job("retrain"), Job("kga", UNLEARN_PRESETS["default"], [freeze], seeds)]
    for method, chosen in tuned["methods"].items():
        jobs.append(Job(method_of(method), config_for(method, chosen["overrides"]), [freeze], seeds))
    return [record for job in jobs for record in run_job(run, models, job, accelerator)]

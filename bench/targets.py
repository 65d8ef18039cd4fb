"""Every method against every target of issue 17, on the report splits of a comparison
(bench/compare_methods.sh): one row per (method, setting), one cell per target with the value
(mean over unlearning seeds) on each report split and whether it is met there.

    python bench/targets.py runs/cmp50-s1 runs/cmp50-s2
    python bench/targets.py runs/full10-s1 --max-time 0.35     # the full dataset's time target

Targets, each against the run folder's retrain pool (results.json "retrains"):
- forget accuracy inside the band [min - 0.005, max + 0.005];
- test accuracy at least the band's min - 0.005;
- mean JSD to the pool at most 1.25x the floor, on D_f and on D_t;
- each attack inside the pool's range widened by 10% of |A_d's value - the pool's mean|;
- time (unlearning plus KGA's helper models) at most --max-time x a retrain: 1 on the quick
  subsets (the default), 0.35 on the full dataset. A retrain's time is the pool's mean training
  time (one retrain's time moves with the box's load: 153 s against the pool's 80-109 s in
  bench/RESULTS.md's fifth session), A_r's alone for a record that lacks the pool's times;
- forgetting quality F at least 0.8x its ceiling, where the records have it (N >= 16 seeds
  against 2N retrains: the small setting of bench/RESULTS.md); "-" elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kga_fast.errors import UserError, cli_main  # noqa: E402
from kga_fast.evaluation.methods_report import ATTACKS  # noqa: E402
from kga_fast.methods import METHODS  # noqa: E402
from kga_fast.results import POOL_KEY, RESULTS_FILE, load_results  # noqa: E402

SLACK = 0.005  # accuracy
JSD_RATIO = 1.25  # x the floor
ATTACK_WIDEN = 0.10  # of |A_d - pool mean|
F_RATIO = 0.8  # x the ceiling
TARGETS = ("acc D_f", "acc D_t", "JSD D_f", "JSD D_t", *ATTACKS, "time", "F")


def method_rows(run_dir: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(pool, {row label: records}) of a run folder: one row per (method, config)."""
    if not (run_dir / RESULTS_FILE).is_file():
        raise UserError(f"no {RESULTS_FILE} in {run_dir}")
    results = load_results(run_dir)
    rows: dict[str, list[dict]] = {}
    for r in results["runs"]:
        if "A*,retrains" not in r["eval"]["forget"]["jsd"]:
            continue  # a record made before the pool
        method = r.get("method", "kga")
        preset = dataclasses.asdict(METHODS[method].preset) if METHODS[method].preset else {}
        changed = {k: v for k, v in r["config"].items() if k in preset and preset[k] != v}
        setting = ", ".join(f"{k} {v}" for k, v in sorted(changed.items())) or "preset"
        rows.setdefault(f"{method} ({setting})", []).append(r)
    if not rows:
        raise UserError(f"{run_dir} has no records judged against a retrain pool (--retrains K > 1)")
    return results[POOL_KEY], rows


def retrain_seconds(record: dict) -> float:
    """A retrain's training time for `record`: the mean over its pool (A_r's time and the other
    members', record "phases" "retrain_pool"), or A_r's alone where the record lacks the pool's."""
    others = record.get("phases", {}).get("retrain_pool")
    size = record["config"].get("retrains")
    if others is None or not size:
        return record["retrain_seconds"]
    return (record["retrain_seconds"] + others) / size


def cells(pool: dict, records: list[dict], max_time: float = 1.0) -> dict[str, tuple[float, bool]]:
    """{target: (mean value over the records, met)}; time is met at most `max_time` retrains."""
    band, floor = pool["band"], pool["floor"]

    def mean(get) -> float:
        return statistics.fmean(get(r) for r in records)

    out = {}
    f = band["forget"]["accuracy"]
    v = mean(lambda r: r["eval"]["forget"]["accuracy"]["A*"])
    out["acc D_f"] = (v, f["min"] - SLACK <= v <= f["max"] + SLACK)
    v = mean(lambda r: r["eval"]["test"]["accuracy"]["A*"])
    out["acc D_t"] = (v, v >= band["test"]["accuracy"]["min"] - SLACK)
    for split, name in (("forget", "JSD D_f"), ("test", "JSD D_t")):
        ratio = mean(lambda r, s=split: r["eval"][s]["jsd"]["A*,retrains"]) / floor[split]
        out[name] = (ratio, ratio <= JSD_RATIO)
    for attack in ATTACKS:
        b = band["mia"][attack]
        ad = records[0]["mia"]["Ad"][attack]
        widen = ATTACK_WIDEN * abs(ad - b["mean"])
        v = mean(lambda r, a=attack: r["mia"]["A*"][a])
        out[attack] = (v, b["min"] - widen <= v <= b["max"] + widen)

    def cost(r: dict) -> float:
        helpers = sum((r.get("helper_seconds") or {}).values())
        return (r["unlearn_seconds"] + helpers) / retrain_seconds(r)

    v = mean(cost)
    out["time"] = (v, v <= max_time)
    quality = records[0].get("forgetting_quality")
    if quality:
        v = quality["F"] / quality["ceiling"]
        out["F"] = (v, v >= F_RATIO)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", help="report splits' run folders (judged against a pool)")
    parser.add_argument(
        "--max-time", type=float, default=1.0, help="time target in retrains (default 1; full dataset: 0.35)"
    )
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.max_time <= 0:
        raise UserError(f"--max-time must be positive, got {args.max_time}")
    run_dirs = args.run_dirs
    per_split = [method_rows(Path(d)) for d in run_dirs]
    labels = [label for label in per_split[0][1] if all(label in rows for _, rows in per_split)]
    print(f"report splits: {', '.join(run_dirs)}; a cell: the value on each split, * where met")
    for pool, _ in per_split:
        print(f"floor D_f {pool['floor']['forget']:.4f}, D_t {pool['floor']['test']:.4f}")
    print("\n| method (setting) | " + " | ".join(TARGETS) + " | targets met |")
    print("|---" * (len(TARGETS) + 2) + "|")
    for label in labels:
        results = [cells(pool, rows[label], args.max_time) for pool, rows in per_split]
        row = []
        for t in TARGETS:
            fmt = "{:.2f}x" if t.startswith(("JSD", "time", "F")) else "{:.3f}"
            row.append(
                " / ".join(fmt.format(c[t][0]) + ("*" if c[t][1] else "") if t in c else "-" for c in results)
            )
        met = sum(c[t][1] for c in results for t in TARGETS if t in c)
        print(f"| {label} | " + " | ".join(row) + f" | {met} |")


if __name__ == "__main__":
    main()

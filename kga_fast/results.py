"""results.json: one record per unlearning run, the file every report is built from.

A record: {"dataset", "arch", "freeze": [1, 2], "seed", "preset", "config": {...},
"unlearn_seconds", "checkpoint", "eval": {"test": {"accuracy": {"Ad", "A*", "Ar"}, "f1": {...},
"jsd": {"Ad,A*", "A*,Ar"}}, "forget": {...}}}, optionally "method" and any further keys.
A record is unique by where and how it unlearned (result_key); writing one replaces a record of
the same key, and the file is only ever replaced whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from kga_fast.errors import UserError
from kga_fast.files import write_bytes_atomic

RESULTS_FILE = "results.json"
POOL_KEY = "retrains"  # the top-level block of a retrain pool (kga_fast.evaluation.pool)
REQUIRED = ("dataset", "arch", "freeze", "seed", "preset", "config", "unlearn_seconds", "eval")


def load_results(run_dir: str | Path) -> dict:
    """{"runs": [record, ...]}; {"runs": []} when there is no results.json yet."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return {"runs": []}
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); fix or move it away") from None
    if not isinstance(results, dict) or not isinstance(results.get("runs"), list):
        raise UserError(f"{path} has no list 'runs'; fix or move it away")
    for i, record in enumerate(results["runs"]):
        missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
        if missing:
            raise UserError(f"{path}: run {i} lacks {', '.join(missing)}; fix or move the file away")
    return results


def result_key(record: dict) -> tuple:
    """What makes a run unique: where and how it unlearned (not its results)."""
    config = json.dumps(record["config"], sort_keys=True, default=str)
    return (
        record["dataset"],
        record["arch"],
        tuple(record["freeze"]),
        record["seed"],
        record["preset"],
        record.get("method"),
        config,
    )


def find_result(run_dir: str | Path, key_record: dict) -> dict | None:
    key = result_key(key_record)
    return next((r for r in load_results(run_dir)["runs"] if result_key(r) == key), None)


def append_result(run_dir: str | Path, *records: dict) -> None:
    """Add `records` to results.json, each replacing a record of the same key; one atomic write."""
    for record in records:
        missing = [k for k in REQUIRED if k not in record]
        if missing:
            raise ValueError(f"result record lacks {missing}")
    results = load_results(run_dir)  # a corrupt file stops here, untouched
    keys = {result_key(record) for record in records}
    results["runs"] = [r for r in results["runs"] if result_key(r) not in keys] + list(records)
    _write(run_dir, results)


def write_pool(run_dir: str | Path, block: dict) -> None:
    """Set results.json's top-level POOL_KEY (kga_fast.evaluation.pool), keeping every record; atomic."""
    results = load_results(run_dir)
    results[POOL_KEY] = block
    _write(run_dir, results)


def _write(run_dir: str | Path, results: dict) -> None:
    write_bytes_atomic(Path(run_dir) / RESULTS_FILE, (json.dumps(results, indent=2) + "\n").encode())

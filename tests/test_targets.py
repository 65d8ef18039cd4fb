"""bench/targets.py, the table of every method against issue 17's targets: each target's
edge (met just inside, missed just outside), the time target of the full dataset
(--max-time), and a clear error for a folder it cannot judge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import targets  # noqa: E402

from kga_fast.evaluation.methods_report import ATTACKS  # noqa: E402

SCRIPT = Path(__file__).parents[1] / "bench" / "targets.py"


def pool() -> dict:
    """A retrain pool block as kga_fast.evaluation.pool writes it (the fields targets.py reads)."""
    band = {
        "forget": {"accuracy": {"min": 0.85, "mean": 0.86, "max": 0.87}},
        "test": {"accuracy": {"min": 0.84, "mean": 0.85, "max": 0.86}},
        "mia": {a: {"min": 0.50, "mean": 0.55, "max": 0.60} for a in ATTACKS},
    }
    return {"size": 8, "floor": {"forget": 0.02, "test": 0.02}, "band": band}


def record(forget=0.86, test=0.85, jsd=0.02, attack=0.55, seconds=40.0, method="msg", **config) -> dict:
    ev = {
        "forget": {"accuracy": {"A*": forget}, "jsd": {"A*,retrains": jsd}},
        "test": {"accuracy": {"A*": test}, "jsd": {"A*,retrains": jsd}},
    }
    return {
        "dataset": "fashion-mnist",
        "arch": "resnet18",
        "freeze": [],
        "seed": 0,
        "preset": "default",
        "method": method,
        "config": {"lr": 0.001, "epochs": 5} | config,
        "eval": ev,
        "mia": {"Ad": {a: 0.75 for a in ATTACKS}, "A*": {a: attack for a in ATTACKS}},
        "unlearn_seconds": seconds,
        "retrain_seconds": 100.0,
        "helper_seconds": None,
    }


def met(**kwargs) -> dict[str, bool]:
    return {t: ok for t, (_, ok) in targets.cells(pool(), [record(**kwargs)]).items()}


def test_each_target_met_inside_its_edge_and_missed_outside():
    assert all(met().values())
    assert met(forget=0.87 + 0.004)["acc D_f"] and not met(forget=0.87 + 0.006)["acc D_f"]
    assert met(forget=0.85 - 0.004)["acc D_f"] and not met(forget=0.85 - 0.006)["acc D_f"]
    assert met(test=0.99)["acc D_t"] and not met(test=0.84 - 0.006)["acc D_t"]
    assert met(jsd=0.02 * 1.24)["JSD D_f"] and not met(jsd=0.02 * 1.26)["JSD D_t"]
    # widened by 10% of |A_d - pool mean| = 0.02: inside up to 0.62
    assert met(attack=0.615)[ATTACKS[0]] and not met(attack=0.625)[ATTACKS[0]]


def test_time_target_is_max_time_retrains():
    (v, ok) = targets.cells(pool(), [record(seconds=40.0)])["time"]
    assert v == pytest.approx(0.4) and ok
    assert not targets.cells(pool(), [record(seconds=40.0)], max_time=0.35)["time"][1]
    with_helpers = record(seconds=20.0) | {"helper_seconds": {"Af": 10.0, "An": 10.0}}
    assert targets.cells(pool(), [with_helpers], max_time=0.35)["time"][0] == pytest.approx(0.4)
    # judged against a pool of 8: a retrain's time is the pool's mean (A_r 100 s, 7 others 60 s each)
    pooled = record(seconds=40.0, retrains=8) | {"phases": {"retrain_pool": 7 * 60.0}}
    assert targets.cells(pool(), [pooled])["time"][0] == pytest.approx(40.0 / 65.0)


def write_run(folder: Path, records: list[dict]) -> Path:
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"retrains": pool(), "runs": records}))
    return folder


def test_table_counts_met_targets_per_setting(tmp_path, capsys):
    run = write_run(tmp_path / "s1", [record(lr=0.01, epochs=2), record(forget=0.95)])
    targets.main([str(run), "--max-time", "0.35"])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0]: line for line in out.splitlines() if line.startswith("| msg")}
    assert set(rows) == {"| msg (epochs 2, lr 0.01)", "| msg (preset)"}
    assert rows["| msg (epochs 2, lr 0.01)"].endswith("| 0.40x | - | 7 |")  # all but time
    assert rows["| msg (preset)"].endswith("| 6 |")  # and forget accuracy missed


@pytest.mark.parametrize("runs", [None, [record() | {"eval": {"forget": {"jsd": {}}}}]])
def test_unjudgeable_folder_is_a_one_line_error(tmp_path, runs):
    folder = tmp_path / "run"
    if runs is None:
        folder.mkdir()  # no results.json
    else:
        write_run(folder, runs)
    done = subprocess.run([sys.executable, str(SCRIPT), str(folder)], capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1

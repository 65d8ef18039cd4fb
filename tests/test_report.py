"""results.json records, their summary over seeds, report.md/png and scripts/report.py."""

from __future__ import annotations

import json
import runpy
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from kga_fast.errors import UserError
from kga_fast.evaluation.report import format_table, format_time_table, summarize, write_report
from kga_fast.results import RESULTS_FILE, append_result, find_result, load_results, result_key

ROOT = Path(__file__).resolve().parents[1]


def record(seed: int, freeze: list[int], *, shift: float = 0.0, **extra) -> dict:
    """A run whose numbers depend on seed and freeze, so means and stds are known."""
    s = 0.01 * seed + 0.1 * len(freeze) + shift

    def split(base: float) -> dict:
        return {
            "accuracy": {"Ad": base + 0.5, "A*": base + s, "Ar": base + 0.4},
            "f1": {"Ad": base + 0.45, "A*": base + s / 2, "Ar": base + 0.35},
            "jsd": {"Ad,A*": 0.05 + s / 10, "A*,Ar": 0.01 + s / 100},
        }

    return {
        "dataset": "fashion-mnist",
        "arch": "resnet18",
        "freeze": freeze,
        "seed": seed,
        "preset": "default",
        "config": {"lr": 0.01, "seed": seed},
        "unlearn_seconds": 60.0 + 30 * seed,
        "checkpoint": f"models/Astar-{seed}.safetensors",
        "eval": {"test": split(0.3), "forget": split(0.2)},
        **extra,
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    for seed in (0, 1):
        for freeze in ([], [1, 2]):
            append_result(tmp_path, record(seed, freeze))
    return tmp_path


def test_append_replaces_a_record_with_the_same_key(tmp_path):
    assert load_results(tmp_path) == {"runs": []}
    append_result(tmp_path, record(0, [1]))
    append_result(tmp_path, record(1, [1]))
    append_result(tmp_path, record(0, [1], shift=0.2))  # rerun of the first: replaces it
    runs = load_results(tmp_path)["runs"]
    assert len(runs) == 2
    found = find_result(tmp_path, record(0, [1]))
    assert found is not None and found["eval"]["test"]["accuracy"]["A*"] == pytest.approx(0.3 + 0.3)
    assert find_result(tmp_path, record(2, [1])) is None
    assert result_key(record(0, [1], method="kga")) != result_key(record(0, [1]))
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed into place


def test_summary_is_mean_and_sample_std_over_seeds(run_dir):
    rows = summarize(load_results(run_dir)["runs"])
    assert [r["label"] for r in rows] == ["resnet18^(0)", "resnet18^(1,2)"]
    row = rows[1]
    assert row["seeds"] == [0, 1]
    values = [0.3 + 0.01 * seed + 0.2 for seed in (0, 1)]
    assert row["mean"]["test/accuracy/A*"] == pytest.approx(statistics.fmean(values))
    assert row["std"]["test/accuracy/A*"] == pytest.approx(0.01 / 2**0.5)
    assert row["std"]["test/accuracy/Ad"] == pytest.approx(0.0)
    assert row["mean"]["unlearn_seconds"] == pytest.approx(75.0)
    assert row["std"]["unlearn_seconds"] == pytest.approx(statistics.stdev([60.0, 90.0]))


def test_one_seed_has_zero_std_and_differing_configs_stay_apart(tmp_path):
    runs = [record(0, [1]), record(0, [1], lr=None) | {"config": {"lr": 0.1, "seed": 0}}]
    rows = summarize(runs)
    assert len(rows) == 2
    assert {r["label"] for r in rows} == {"resnet18^(1) [lr=0.01]", "resnet18^(1) [lr=0.1]"}
    assert all(v == 0.0 for r in rows for v in r["std"].values())


def test_extra_metrics_are_summarized_too():
    runs = [record(seed, [1]) for seed in (0, 1)]
    for i, r in enumerate(runs):
        r["eval"]["forget"]["mia"] = {"A*": 0.5 + i / 10}
    (row,) = summarize(runs)
    assert row["mean"]["forget/mia/A*"] == pytest.approx(0.55)


def test_tables_have_the_paper_layout(run_dir):
    table = format_table(load_results(run_dir), "forget")
    lines = table.splitlines()
    assert lines[0] == (
        "| Model | JSD (Ad,A*) | JSD (A*,Ar) | JSD (Ad,Ar) | F1 Ad | F1 A* | F1 Ar | Acc Ad | Acc A* | Acc Ar |"
    )
    # forget split, freeze (1,2): A* accuracy 0.2 + 0.2 + 0.01 * seed over seeds 0 and 1
    row = next(line for line in lines if line.startswith("| resnet18^(1,2) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[8] == "0.405 ± 0.007"
    assert cells[7] == "0.700 ± 0.000"
    assert cells[3] == "-"  # these records predate the JSD(A_d, A_r) reference
    times = format_time_table(load_results(run_dir))
    assert "| resnet18^(0) (default) | 1 min 15 sec (75.0 ± 21.2 s) |" in times


def test_write_report(run_dir):
    md, png = write_report(run_dir)
    text = md.read_text()
    assert "fashion-mnist: test (D_t)" in text and "fashion-mnist: forget (D_f)" in text
    assert format_table(load_results(run_dir), "test") in text
    assert "Table 6" in text and "How to read" in text and "sample standard deviation" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_empty_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no results"):
        write_report(tmp_path)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/report.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_script_rebuilds_the_report(run_dir):
    proc = run_script(str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "| resnet18^(1,2) |" in proc.stdout
    assert (run_dir / "report.md").read_text() in proc.stdout
    assert (run_dir / "report.png").stat().st_size > 0


def script_main():
    """scripts/report.py's main(), in this process (a subprocess costs seconds of imports)."""
    return runpy.run_path(str(ROOT / "scripts/report.py"), run_name="report_script")["main"]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"runs": [{"dataset": "x"}]}), "[]"])
def test_corrupt_results_are_a_user_error_and_stay_unchanged(tmp_path, capsys, content):
    path = tmp_path / RESULTS_FILE
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        script_main()([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {path}")
    with pytest.raises(UserError):
        append_result(tmp_path, record(0, [1]))
    assert path.read_text() == content
    assert not (tmp_path / "report.md").exists()


def test_script_exits_2_on_corrupt_results(tmp_path):
    (tmp_path / RESULTS_FILE).write_text('{"runs": [')
    proc = run_script(str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert (tmp_path / RESULTS_FILE).read_text() == '{"runs": ['


def test_missing_results_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script_main()([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "not found" in capsys.readouterr().err

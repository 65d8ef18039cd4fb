"""scripts/unlearn.py --method: baselines and the membership-inference audit end to end, on a
tiny run folder; records carry "method", "mia" and "retrain_seconds"; report.md gets the
methods table; a forget-class scenario goes through the same command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kga_fast.checkpoint import save_model
from kga_fast.config import RunConfig
from kga_fast.data import FASHION_MNIST_DIR
from kga_fast.models import build_model
from kga_fast.run import open_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "unlearn.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
SMALL = ["--train-subset", "64", "--test-subset", "40"]
TRAIN = ["--batch-size", "16", "--freeze", "1,2,3", "--epochs", "1"]  # not for retrain

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)",
)


def seeded_run(run_dir: Path, names=("Ad", "Af", "An", "Ar"), **split) -> Path:
    """A run folder with its split and randomly initialised "pretrained" models (default: four)."""
    cfg = RunConfig(run_dir=run_dir, train_subset=64, test_subset=40, **split)
    run = open_run(cfg)
    torch.manual_seed(0)
    for name in names:
        model = build_model("resnet18", run.num_classes, run.in_channels)
        save_model(run_dir, name, model, {"dataset": "fashion-mnist", "train_seconds": 100.0})
    return run_dir


def unlearn(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, SCRIPT, "--run-dir", str(run_dir), *SMALL, "--no-pretrain", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def test_methods_share_one_results_file_and_report(tmp_path):
    run_dir = seeded_run(tmp_path / "run")
    for method in ("kga", "finetune", "gradient_ascent", "retrain"):
        out = unlearn(run_dir, "--method", method, *([] if method == "retrain" else TRAIN))
        assert out.returncode == 0, out.stderr[-2000:]
    runs = json.loads((run_dir / "results.json").read_text())["runs"]
    assert sorted(r["method"] for r in runs) == ["finetune", "gradient_ascent", "kga", "retrain"]
    for r in runs:
        assert r["retrain_seconds"] == 100.0
        assert set(r["mia"]) == {"Ad", "A*", "Ar"}
        assert set(r["mia"]["A*"]) == {
            "loss_lr_cv_acc",
            "mia_efficacy_confidence",
            "entropy_lr_forget_member_rate",
        }
        assert set(r["eval"]) == {"test", "forget", "retain"}
        assert (run_dir / r["checkpoint"]).is_file()
    retrain = next(r for r in runs if r["method"] == "retrain")
    assert retrain["freeze"] == [] and retrain["checkpoint"] == "models/Ar.safetensors"
    assert retrain["eval"]["test"]["jsd"]["A*,Ar"] == pytest.approx(0.0, abs=1e-6)  # A* is A_r
    report = (run_dir / "report.md").read_text()
    assert "gradient_ascent" in report and "mia_efficacy_confidence" in report


def test_a_method_other_than_kga_needs_no_helper_models(tmp_path):
    """Only KGA reads A_f and A_n: the recommended method runs in a folder without them (with
    --no-pretrain, a missing model it needed would fail), and KGA there names what is missing."""
    run_dir = seeded_run(tmp_path / "run", names=("Ad", "Ar"))
    out = unlearn(run_dir, "--method", "recommended", *TRAIN)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (run_dir / "models" / "Af.json").exists()
    kga = unlearn(run_dir, "--method", "kga", *TRAIN)
    assert kga.returncode == 2 and "model Af is missing" in kga.stderr


def test_forget_classes_scenario_through_the_command(tmp_path):
    run_dir = seeded_run(tmp_path / "run", forget_classes=[3])
    out = unlearn(run_dir, "--forget-classes", "3", "--method", "finetune", *TRAIN)
    assert out.returncode == 0, out.stderr[-2000:]
    splits = json.loads((run_dir / "splits.json").read_text())
    assert splits["options"]["forget_classes"] == [3]
    other = unlearn(run_dir, "--method", "finetune", *TRAIN)  # no --forget-classes
    assert other.returncode == 2 and "error:" in other.stderr


def test_recommended_runs_its_method_with_the_measured_setting(tmp_path):
    """--method recommended: RECOMMENDED's method at its setting (the quick run's cap of a
    preset's epochs does not apply), the measurement named in --help and in the output; the
    Python API's default is the same."""
    import inspect

    from kga_fast import api
    from kga_fast.methods import RECOMMENDED, TRAINED, check_baseline_config

    assert RECOMMENDED.method in TRAINED and check_baseline_config(RECOMMENDED.config)
    assert inspect.signature(api.unlearn_model).parameters["method"].default == "recommended"
    assert api._method_config("recommended", None) == (RECOMMENDED.method, RECOMMENDED.config)
    help_text = subprocess.run([sys.executable, SCRIPT, "--help"], env=ENV, capture_output=True, text=True)
    assert "recommended: " in help_text.stdout and "bench/RESULTS.md" in help_text.stdout
    run_dir = seeded_run(tmp_path / "run")
    setting = ["--batch-size", "16", "--schedule", "cosine"]  # every trained method reads both
    out = unlearn(run_dir, "--method", "recommended", *setting, "--freeze", "1,2,3")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"--method recommended: {RECOMMENDED.describe()}" in out.stdout
    (record,) = json.loads((run_dir / "results.json").read_text())["runs"]
    assert record["method"] == RECOMMENDED.method
    expected = {**RECOMMENDED.overrides, "batch_size": 16, "schedule": "cosine"}
    assert {k: record["config"][k] for k in expected} == expected


def test_options_a_method_does_not_use_are_refused(tmp_path):
    run_dir = seeded_run(tmp_path / "run")
    cases = {
        "--method finetune --inner-steps 3": "--method finetune does not use --inner-steps",
        "--method msg --start ct": "--method msg does not use --start",
        "--method ct --retain-loss ce": "--method ct does not use --retain-loss",
        "--method scrub --preset paper --retain-ratio 0.5": "does not use --preset, --retain-ratio",
        "--method retrain --freeze 1,2": "--method retrain does not use --freeze",
        "--method retrain --epochs 1": "--method retrain does not use --epochs",
        "--method kga --reset-share 0.5": "--method kga does not use --reset-share",
        "--method salun --schedule cosine --alpha 0.1": "--method salun does not use --alpha",
        "--method recommended --saliency 0.5": "--method recommended does not use --saliency",
        "--method msg --reset-share 0": "reset share must be in (0, 1], got 0.0",
        "--method msg --shrink 0.5": "--method msg does not use --shrink",
    }
    for args, message in cases.items():
        out = unlearn(run_dir, *args.split())
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr[-500:])
        assert "Traceback" not in out.stderr
    assert not (run_dir / "results.json").exists()


@pytest.mark.slow
def test_compare_tunes_on_one_split_and_reports_on_another(tmp_path):
    """scripts/compare.py end to end on tiny data: --tune writes tuned.json with the same budget
    for every method; the report mode refuses the tuning split and fills the methods table of
    another split with every method, KGA's default and retrain."""
    script = str(ROOT / "scripts" / "compare.py")
    tiny = [
        "--train-subset",
        "64",
        "--test-subset",
        "60",
        "--pretrain-preset",
        "paper",
        "--pretrain-epochs",
        "1",
        "--pretrain-batch-size",
        "16",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def compare(*args):
        return subprocess.run(
            [sys.executable, script, *tiny, *args], env=env, capture_output=True, text=True, timeout=900
        )

    tuning = tmp_path / "s0"
    out = compare(
        "--run-dir", str(tuning), "--seed", "0", "--tune", "--methods", "kga,finetune,salun", "--budget", "2"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    tuned = json.loads((tuning / "tuned.json").read_text())
    assert tuned["split_seed"] == 0 and set(tuned["methods"]) == {"kga", "finetune", "salun"}
    assert all(len(t["tried"]) == 2 for t in tuned["methods"].values())
    again = compare("--run-dir", str(tuning), "--seed", "0", "--tuned", str(tuning / "tuned.json"))
    assert again.returncode == 2 and "tuned on split seed 0" in again.stderr
    report_dir = tmp_path / "s1"
    out = compare(
        "--run-dir", str(report_dir), "--seed", "1", "--tuned", str(tuning / "tuned.json"), "--seeds", "0"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = json.loads((report_dir / "results.json").read_text())["runs"]
    assert sorted({r["method"] for r in runs}) == ["finetune", "kga", "retrain", "salun"]
    assert len([r for r in runs if r["method"] == "kga"]) == 2  # the default and the tuned one
    text = (report_dir / "report.md").read_text()
    assert "salun^(0)" in text and "time with helpers / retrain" in text


def test_a_variant_runs_its_method_and_tuning_a_method_later_keeps_the_others(tmp_path, monkeypatch):
    """compare.py's "kga_ct" is KGA with start="ct" (its records say so in "config"); tuning one
    method into a folder that already has tuned.json (same split, same budget) adds it and keeps
    the rest."""
    import types

    from kga_fast import compare as C
    from kga_fast.methods.kga import UnlearnConfig, config_key

    cfg = C.config_for("kga_ct", {"lr": 1e-3})
    assert C.method_of("kga_ct") == "kga" and isinstance(cfg, UnlearnConfig)
    assert (cfg.start, cfg.lr, config_key(cfg)["start"]) == ("ct", 1e-3, "ct")
    key = config_key(UnlearnConfig())  # records from before these fields existed still match
    assert "start" not in key and "retain_loss" not in key
    assert config_key(UnlearnConfig(retain_loss="ce"))["retain_loss"] == "ce"
    jobs = []
    monkeypatch.setattr(C, "run_job", lambda run, models, job, acc: jobs.append(job) or [{"eval": None}])
    monkeypatch.setattr(C, "score", lambda record, pool: 0.5)
    run = types.SimpleNamespace(cfg=types.SimpleNamespace(seed=0, run_dir=tmp_path))
    acc = types.SimpleNamespace(print=lambda *a: None, is_main_process=True)
    C.tune(run, {}, acc, methods=["finetune"], budget=2)
    C.tune(run, {}, acc, methods=["kga_ct"], budget=2)
    tuned = json.loads((tmp_path / C.TUNED_FILE).read_text())
    assert list(tuned["methods"]) == ["finetune", "kga_ct"]
    assert [j.method for j in jobs] == ["finetune", "finetune", "kga", "kga"]
    assert all(j.cfg.start == "ct" for j in jobs[2:])
    C.tune(run, {}, acc, methods=["ct"], budget=1)  # another budget: a fresh file
    assert list(json.loads((tmp_path / C.TUNED_FILE).read_text())["methods"]) == ["ct"]

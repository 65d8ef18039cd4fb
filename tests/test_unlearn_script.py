"""scripts/unlearn.py end to end: a real tiny run through `accelerate launch`, resume after a
kill, finished pairs skipped, and bad input (clear error, exit 2, earlier results untouched)."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kga_fast.checkpoint import save_model
from kga_fast.config import RunConfig
from kga_fast.data import FASHION_MNIST_DIR
from kga_fast.models import build_model
from kga_fast.run import open_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "unlearn.py")
SMALL = ["--train-subset", "64", "--test-subset", "40", "--batch-size", "16", "--inner-steps", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)",
)


def run_script(*args: str, launch: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    if launch:
        accelerate = Path(sys.executable).with_name("accelerate")
        cmd = [
            str(accelerate),
            "launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--cpu",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            SCRIPT,
        ]
    else:
        cmd = [sys.executable, SCRIPT]
    return subprocess.run([*cmd, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def seed_run(run_dir: Path, dataset: str = "fashion-mnist", data_dir: Path | None = None) -> Path:
    """A run folder with its split and four (randomly initialised) "pretrained" models, so the
    tests below exercise unlearning, not pretraining (tested on its own)."""
    cfg = RunConfig(run_dir=run_dir, dataset=dataset, data_dir=data_dir, train_subset=64, test_subset=40)
    run = open_run(cfg)
    torch.manual_seed(0)
    for name in ("Ad", "Af", "An", "Ar"):
        model = build_model("resnet18", run.num_classes, run.in_channels)
        save_model(run_dir, name, model, {"dataset": dataset, "note": "random init (test)"})
    return run_dir


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory) -> Path:
    return seed_run(tmp_path_factory.mktemp("seeded") / "run")


@pytest.fixture
def run_dir(seeded_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(seeded_run, target)
    return target


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.numerics
def test_tiny_end_to_end_run_pretrains_unlearns_and_reports(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), *SMALL, "--pretrain-batch-size", "4", "--freeze", "0", "1,2"]
    proc = run_script(*args, launch=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = read_results(run_dir)["runs"]
    assert [r["freeze"] for r in runs] == [[], [1, 2]]
    for r in runs:
        assert (r["dataset"], r["arch"], r["seed"], r["preset"]) == (
            "fashion-mnist",
            "resnet18",
            0,
            "default",
        )
        assert (run_dir / r["checkpoint"]).is_file() and r["unlearn_seconds"] > 0
        for split in ("test", "forget"):
            ev = r["eval"][split]
            assert all(0 <= ev[m][k] <= 1 for m in ("accuracy", "f1") for k in ("Ad", "A*", "Ar"))
            assert all(0 <= v <= np.log(2) for v in ev["jsd"].values())
    for name in ("Ad", "Af", "An", "Ar"):
        # On 64 images D_t accuracy is a few images either side of chance and moves with the
        # CPU's kernels (AVX-512 vs AVX2); a ResNet fitting its own few images over 100+ SGD steps
        # lowers its training loss on any box.
        loss = json.loads((run_dir / "models" / f"{name}.json").read_text())["train_loss"]
        assert len(loss) >= 2 and all(np.isfinite(loss)) and loss[-1] < loss[0], (name, loss)
    report = (run_dir / "report.md").read_text()
    assert "resnet18^(1,2)" in report and (run_dir / "report.png").stat().st_size > 0
    assert "resnet18^(1,2) seed 0: A* acc" in proc.stdout and "report:" in proc.stdout
    assert not any((run_dir / "state").glob("Astar*"))  # resume state cleared when recorded

    before = (run_dir / "results.json").read_bytes()
    again = run_script(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier, skipped") == 2
    assert (run_dir / "results.json").read_bytes() == before


def test_kga_with_common_helpers_counts_the_base_in_its_cost(tmp_path):
    """--helpers common: KGA's cost beyond unlearning is A_b's training and A_f's and A_n's
    fine-tuning, each read from its model's JSON."""
    run_dir = tmp_path / "run"
    cfg = RunConfig(run_dir=run_dir, train_subset=64, test_subset=40, helpers="common", shared_fraction=0.2)
    run = open_run(cfg)
    seconds = {"Ad": 7.0, "Ab": 3.0, "Af": 2.0, "An": 1.5}
    for name, s in seconds.items():
        model = build_model("resnet18", run.num_classes, run.in_channels)
        save_model(run_dir, name, model, {"dataset": "fashion-mnist", "train_seconds": s})
    args = ["--run-dir", str(run_dir), *SMALL, "--helpers", "common", "--shared-fraction", "0.2"]
    proc = run_script(*args, "--no-retrain", "--epochs", "1", "--freeze", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = read_results(run_dir)["runs"]
    assert record["helpers"] == "common" and record["helper_seconds"] == {"Ab": 3.0, "Af": 2.0, "An": 1.5}
    assert record["phases"]["helper_models"] == pytest.approx(6.5)


def test_killed_run_resumes_from_its_last_epoch(run_dir):
    args = [
        SCRIPT,
        "--run-dir",
        str(run_dir),
        *SMALL,
        "--no-pretrain",
        "--freeze",
        "1",
        "--epochs",
        "6",
    ]
    proc = subprocess.Popen(
        [sys.executable, *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    try:
        while not any((run_dir / "state").glob("Astar*/progress.json")):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "no resume state was written"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "results.json").exists()
    done = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed after epoch" in done.stdout
    (record,) = read_results(run_dir)["runs"]
    assert len(record["losses"]["retain"]) == 6  # the epochs of both pieces, each once


def _write_cifar10(folder: Path, n: int) -> None:
    """Small CIFAR-10 python batches (the real format) so a second dataset is available."""
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        (base / f).write_bytes(pickle.dumps(entry))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))


def script_main():
    """scripts/unlearn.py's main(), for in-process calls (no interpreter start per case)."""
    spec = importlib.util.spec_from_file_location("unlearn_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_bad_input_fails_clearly_and_leaves_results_alone(run_dir, tmp_path, capsys):
    main = script_main()
    main(["--run-dir", str(run_dir), *SMALL, "--no-pretrain", "--freeze", "1,2,3", "--epochs", "1"])
    results = (run_dir / "results.json").read_bytes()
    models = sorted(p.name for p in (run_dir / "models").iterdir())
    _write_cifar10(tmp_path / "cifar", 50)
    cases = {
        "freeze block 5 out of range": ["--freeze", "5"],
        "arch='vgg11' was asked for": ["--arch", "vgg11"],
        "dataset='fashion-mnist' there": [
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path / "cifar"),
        ],
        "invalid choice: 'fast'": ["--preset", "fast"],
        "lr must be positive": ["--lr", "0"],
        "missing": ["--run-dir", str(tmp_path / "empty")],  # no models, pretraining disabled
    }
    for message, extra in cases.items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(["--run-dir", str(run_dir), *SMALL, "--no-pretrain", *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (extra, err)
        assert message in err and "Traceback" not in err, (extra, err)
        assert (run_dir / "results.json").read_bytes() == results
        assert sorted(p.name for p in (run_dir / "models").iterdir()) == models
    assert "--no-pretrain" in err and not (tmp_path / "empty" / "results.json").exists()


def test_reproduce_paper_dry_run_lists_the_grid():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "reproduce_paper.py"),
            "--data-dir",
            "/data",
            "--dry-run",
            "--",
            "--mixed-precision",
            "bf16",
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4  # {cifar10, cifar100} x {resnet18, vgg11}
    for line in lines:
        assert "--preset paper --pretrain-preset paper --seeds 0,1 --freeze 0 1 1,2 1,2,3" in line
        assert line.endswith("--mixed-precision bf16") and "--full" in line


@pytest.mark.slow
def test_reproduce_paper_runs_its_grid(tmp_path):
    _write_cifar10(tmp_path / "cifar", 50)
    runs = tmp_path / "runs"
    seed_run(runs / "cifar10-resnet18", "cifar10", tmp_path / "cifar")
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "reproduce_paper.py"),
        "--data-dir",
        str(tmp_path / "cifar"),
        "--runs-dir",
        str(runs),
        "--datasets",
        "cifar10",
        "--archs",
        "resnet18",
        "--seeds",
        "0",
        "--",
        "--no-pretrain",
        *SMALL,
        "--epochs",
        "1",
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_results(runs / "cifar10-resnet18")["runs"]
    assert [r["freeze"] for r in records] == [[], [1], [1, 2], [1, 2, 3]]
    assert {(r["preset"], r["config"]["lr"], r["config"]["epochs"]) for r in records} == {("paper", 0.05, 1)}
    assert "resnet18^(1,2,3)" in proc.stdout and (runs / "cifar10-resnet18" / "report.md").is_file()

"""scripts/unlearn.py end to end: a real tiny run through `accelerate launch`, resume after a
kill, finished pairs skipped, and bad input (clear error, exit 2, earlier results untouched)."""

from __future__ import annotations

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
        cmd = [str(accelerate), "launch", "--num_processes", "1", "--num_machines", "1", "--cpu",
               "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT]  # fmt: skip
    else:
        cmd = [sys.executable, SCRIPT]
    return subprocess.run([*cmd, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory) -> Path:
    """A run folder with its split and four (randomly initialised) "pretrained" models, so the
    tests below exercise unlearning, not pretraining (tested on its own)."""
    run_dir = tmp_path_factory.mktemp("seeded") / "run"
    cfg = RunConfig(run_dir=run_dir, train_subset=64, test_subset=40)
    run = open_run(cfg)
    torch.manual_seed(0)
    for name in ("Ad", "Af", "An", "Ar"):
        model = build_model("resnet18", run.num_classes, run.in_channels)
        save_model(run_dir, name, model, {"dataset": "fashion-mnist", "note": "random init (test)"})
    return run_dir


@pytest.fixture
def run_dir(seeded_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(seeded_run, target)
    return target


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_tiny_end_to_end_run_pretrains_unlearns_and_reports(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), *SMALL, "--pretrain-batch-size", "4", "--freeze", "0", "1,2"]
    proc = run_script(*args, launch=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = read_results(run_dir)["runs"]
    assert [r["freeze"] for r in runs] == [[], [1, 2]]
    for r in runs:
        assert (r["dataset"], r["arch"], r["seed"], r["preset"]) == ("fashion-mnist", "resnet18", 0, "default")  # fmt: skip
        assert (run_dir / r["checkpoint"]).is_file() and r["unlearn_seconds"] > 0
        for split in ("test", "forget"):
            ev = r["eval"][split]
            assert all(0 <= ev[m][k] <= 1 for m in ("accuracy", "f1") for k in ("Ad", "A*", "Ar"))
            assert all(0 <= v <= np.log(2) for v in ev["jsd"].values())
        assert r["eval"]["test"]["accuracy"]["Ad"] > 0.2  # pretraining learned something
    report = (run_dir / "report.md").read_text()
    assert "resnet18^(1,2)" in report and (run_dir / "report.png").stat().st_size > 0
    assert "resnet18^(1,2) seed 0: A* acc" in proc.stdout and "report:" in proc.stdout
    assert not any((run_dir / "state").glob("Astar*"))  # resume state cleared when recorded

    before = (run_dir / "results.json").read_bytes()
    again = run_script(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier, skipped") == 2
    assert (run_dir / "results.json").read_bytes() == before


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
    proc = subprocess.Popen([sys.executable, *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
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
    done = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
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
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}  # fmt: skip
        (base / f).write_bytes(pickle.dumps(entry))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))


def test_bad_input_fails_clearly_and_leaves_results_alone(run_dir, tmp_path):
    ok = run_script("--run-dir", str(run_dir), *SMALL, "--no-pretrain", "--freeze", "1,2,3", "--epochs", "1")  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
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
    }
    for message, extra in cases.items():
        proc = run_script("--run-dir", str(run_dir), *SMALL, "--no-pretrain", *extra)
        assert proc.returncode == 2, (extra, proc.stderr[-2000:])
        assert message in proc.stderr, (extra, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        assert (run_dir / "results.json").read_bytes() == results
        assert sorted(p.name for p in (run_dir / "models").iterdir()) == models

    empty = tmp_path / "empty"
    proc = run_script("--run-dir", str(empty), *SMALL, "--no-pretrain")
    assert proc.returncode == 2 and "missing" in proc.stderr and "--no-pretrain" in proc.stderr
    assert not (empty / "results.json").exists()

"""Pretraining through the script on real Fashion-MNIST subsets: a tiny run, resume after a kill,
DDP with two CPU processes, and bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = ["--train-subset", "512", "--test-subset", "200", "--pretrain-batch-size", "64"]
pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST (Debian package dataset-fashion-mnist) is not installed",
)


def pretrain(run_dir, *extra, check=True, **kw):
    cmd = [PY, str(ROOT / "scripts" / "pretrain.py"), "--run-dir", str(run_dir), *TINY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=check, **kw)


@pytest.mark.numerics
def test_tiny_pretraining_writes_four_models(tmp_path):
    out = pretrain(tmp_path, "--pretrain-preset", "paper", "--pretrain-epochs", "1")
    for name in ("Ad", "Af", "An", "Ar"):
        meta = json.loads((tmp_path / "models" / f"{name}.json").read_text())
        assert meta["arch"] == "resnet18" and meta["num_classes"] == 10 and meta["in_channels"] == 1
        assert meta["config"]["preset"] == "paper" and 0.0 <= meta["test_accuracy"] <= 1.0
        assert len(meta["train_loss"]) == 1 and 0 < meta["train_loss"][0] < 10  # one epoch's mean CE
        assert (tmp_path / "models" / f"{name}.safetensors").stat().st_size > 1_000_000
    assert "held-out D_t accuracy" in out.stdout
    assert not (tmp_path / "state" / "pretrain-Ad").exists()  # resume state removed once finished
    again = pretrain(tmp_path, "--pretrain-preset", "paper", "--pretrain-epochs", "1")
    assert "epoch" not in again.stdout  # finished models are loaded, not retrained


def test_resume_after_kill_gives_the_same_weights(tmp_path):
    # Batch 16: 4 epochs of 32 steps, over the default preset's 100-step floor (batch 64 needed 13
    # epochs of 8 steps, three times the images and a saved state per epoch).
    args = [
        "--only",
        "Ad",
        "--pretrain-epochs",
        "4",
        "--pretrain-batch-size",
        "16",
        "--pretrain-save-every",
        "0",
    ]
    pretrain(tmp_path / "straight", *args)
    interrupted = tmp_path / "interrupted"
    cmd = [PY, str(ROOT / "scripts" / "pretrain.py"), "--run-dir", str(interrupted), *TINY, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = interrupted / "state" / "pretrain-Ad" / "progress.json"
    deadline = time.time() + 300
    while not progress.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (interrupted / "models" / "Ad.safetensors").exists(), "run finished before it was killed"
    resumed = pretrain(interrupted, *args)
    assert "resuming after epoch" in resumed.stdout
    a = load_file(tmp_path / "straight" / "models" / "Ad.safetensors")
    b = load_file(interrupted / "models" / "Ad.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_ddp_two_cpu_processes_hold_identical_weights(tmp_path):
    out = tmp_path / "ddp.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        str(Path(PY).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "ddp_pretrain_worker.py"),
        str(tmp_path / "run"),
        str(out),
    ]
    subprocess.run(cmd, check=True, timeout=300, env=env, capture_output=True)
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["distributed"]
    assert result["group_destroyed_at_exit"]  # no gloo teardown abort at exit
    assert result["gloo_threads_at_exit"] == []  # the group freed, its threads joined
    (s0, q0), (s1, q1) = result["checksums"]
    assert s0 == s1 and q0 == q1
    assert (tmp_path / "run" / "models" / "Ad.safetensors").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "mnist"], "unknown dataset"),
        (["--arch", "resnet50"], "unknown arch"),
        (["--forget-fraction", "1.5"], "forget"),
        (["--pretrain-epochs", "0"], "must be positive"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    run_dir = tmp_path / "run"
    out = pretrain(run_dir, *args, check=False)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last
    assert "Traceback" not in out.stderr
    assert not (run_dir / "models").exists()


@pytest.mark.parametrize("helpers", ["matched", "shared"])
def test_helper_recipes_train_a_f_and_a_n_on_their_sets(tmp_path, helpers):
    """matched: A_f on |D_n| images of D_f under exactly A_n's schedule; shared: both on their
    own set plus the same slice S of D_r. What each trained on is in its JSON."""
    pretrain(
        tmp_path,
        "--only",
        "Af,An",
        "--helpers",
        helpers,
        "--pretrain-preset",
        "paper",
        "--pretrain-epochs",
        "2",
    )
    splits = json.loads((tmp_path / "splits.json").read_text())
    meta = {m: json.loads((tmp_path / "models" / f"{m}.json").read_text()) for m in ("Af", "An")}
    assert meta["Af"]["helpers"] == meta["An"]["helpers"] == helpers
    if helpers == "matched":
        assert meta["Af"]["images"] == meta["An"]["images"] == len(splits["new"])
        assert meta["Af"]["epochs"] == meta["An"]["epochs"] == 2
        assert meta["Af"]["config"] == meta["An"]["config"]
    else:
        assert meta["Af"]["images"] == len(splits["forget"]) + len(splits["shared"])
        assert meta["An"]["images"] == len(splits["new"]) + len(splits["shared"])


def test_common_helpers_are_fine_tuned_from_one_base_for_the_same_steps(tmp_path):
    """common: A_b trains first on its slice B of D_r; A_f (on |D_n| images of D_f) and A_n (on
    D_n) start from A_b's weights, not from the seed's, under one schedule of their own."""
    common = ["--helpers", "common", "--shared-fraction", "0.1", "--pretrain-preset", "paper"]
    pretrain(tmp_path, "--only", "Af,An", *common, "--pretrain-epochs", "1")
    splits = json.loads((tmp_path / "splits.json").read_text())
    meta = {m: json.loads((tmp_path / "models" / f"{m}.json").read_text()) for m in ("Ab", "Af", "An")}
    assert meta["Ab"]["images"] == len(splits["base"]) == round(0.1 * 512)
    assert meta["Af"]["images"] == meta["An"]["images"] == len(splits["new"])
    assert meta["Af"]["init"] == meta["An"]["init"] == "Ab" and "init" not in meta["Ab"]
    assert meta["Af"]["epochs"] == meta["An"]["epochs"] and meta["Af"]["config"] == meta["An"]["config"]
    assert meta["Af"]["config"]["lr"] == pytest.approx(0.1 * meta["Ab"]["config"]["lr"])  # fine-tuned
    # Where they start: a folder of the same split given another A_b (one of seed 7, far from
    # seed 0's) fine-tunes its helpers from that one. One epoch at a tenth of the paper's lr 1e-3
    # moves a model little, so they stay near it, far from the helpers that started from seed 0's A_b.
    pretrain(tmp_path / "seed7", "--only", "Ab", "--seed", "7", *common, "--pretrain-epochs", "1")
    (tmp_path / "swapped" / "models").mkdir(parents=True)
    for suffix in ("json", "safetensors"):
        shutil.copy(tmp_path / "seed7" / "models" / f"Ab.{suffix}", tmp_path / "swapped" / "models")
    pretrain(tmp_path / "swapped", "--only", "Af,An", *common, "--pretrain-epochs", "1")

    def weights(folder, name):  # conv and linear weights (batch statistics move most)
        state = load_file(folder / "models" / f"{name}.safetensors")
        return torch.cat([v.flatten() for k, v in sorted(state.items()) if v.dim() > 1])

    seed7 = weights(tmp_path / "seed7", "Ab")
    for helper in ("Af", "An"):
        swapped, own = weights(tmp_path / "swapped", helper), weights(tmp_path, helper)
        assert (swapped - seed7).norm() < 0.2 * (swapped - own).norm()
    bad = pretrain(tmp_path / "disjoint", "--only", "Ab", "--pretrain-preset", "paper", check=False)
    assert bad.returncode == 2 and "base of --helpers common" in bad.stderr


def test_a_pool_member_trains_on_d_r_with_its_own_seed(tmp_path):
    """--retrains 3 asks for Ar-1 and Ar-2 besides A_r: Ar-<k> trains on D_r with seed + k."""
    small = [
        "--train-subset",
        "96",
        "--test-subset",
        "40",
        "--pretrain-preset",
        "paper",
        "--pretrain-epochs",
        "1",
    ]
    cmd = [PY, str(ROOT / "scripts" / "pretrain.py"), "--run-dir", str(tmp_path), *small, "--seed", "4"]
    subprocess.run([*cmd, "--only", "Ar-2"], capture_output=True, text=True, timeout=600, check=True)
    splits = json.loads((tmp_path / "splits.json").read_text())
    meta = json.loads((tmp_path / "models" / "Ar-2.json").read_text())
    assert meta["seed"] == 6 and meta["split"] == ["retain"] and meta["images"] == len(splits["retain"])
    assert len(meta["train_loss"]) == 1
    bad = subprocess.run([*cmd, "--only", "Ar-x"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "unknown model 'Ar-x'" in bad.stderr

"""Evaluation metrics over whole splits, and predict() in one process and gathered over two."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from kga_fast import reference
from kga_fast.data import normalize
from kga_fast.evaluation.evaluate import classification_metrics, evaluate_unlearning, mean_jsd, predict

sys.path.insert(0, str(Path(__file__).parent))
from ddp_predict_worker import MEAN, STD, make_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_hot_logits(preds: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), num_classes).float() * 5.0


def test_accuracy_and_macro_f1_match_sklearn_on_the_whole_split():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (300,), generator=g)
    logits = torch.randn(300, 7, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, 7)
    got = classification_metrics(logits, labels, 7)
    preds = logits.argmax(1)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, preds), abs=1e-6)
    assert got["f1"] == pytest.approx(f1_score(labels, preds, average="macro"), abs=1e-6)
    assert 0.3 < got["accuracy"] < 0.95  # a case where F1 and accuracy are not trivial


def test_macro_f1_is_over_the_split_not_averaged_per_batch():
    # Batch 1 holds only class 0, batch 2 classes 1 and 2: per-batch F1 averages disagree.
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    preds = [0, 0, 0, 1, 1, 2, 2, 2]
    got = classification_metrics(one_hot_logits(preds, 3), labels, 3)["f1"]
    whole = f1_score(labels, preds, average="macro")
    per_batch = (
        f1_score(labels[:4], preds[:4], average="macro") + f1_score(labels[4:], preds[4:], average="macro")
    ) / 2
    assert got == pytest.approx(whole, abs=1e-6)
    assert abs(whole - per_batch) > 0.05


def test_macro_f1_counts_a_class_only_predicted_but_not_one_absent_from_both():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = [0, 1, 1, 1, 2, 3]  # class 3 only predicted, class 4 nowhere
    got = classification_metrics(one_hot_logits(preds, 5), labels, 5)
    assert got["f1"] == pytest.approx(f1_score(labels, preds, average="macro"), abs=1e-6)
    assert got["accuracy"] == pytest.approx(4 / 6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="logits"):
        classification_metrics(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(torch.zeros(4, 5), torch.zeros(3, dtype=torch.long), 5)


def test_jsd_is_the_mean_of_reference_per_sample_jsd_and_zero_for_one_model():
    g = torch.Generator().manual_seed(2)
    p, q = torch.randn(257, 10, generator=g) * 3, torch.randn(257, 10, generator=g) * 3
    expected = reference.jsd_rows(p.double(), q.double()).mean().item()
    assert mean_jsd(p, q) == pytest.approx(expected, rel=1e-5)
    assert 0 < mean_jsd(p, q) <= math.log(2)
    assert mean_jsd(p, p) == pytest.approx(0.0, abs=1e-6)


def test_evaluate_unlearning_layout_and_values():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (64,), generator=g)
    logits = {m: torch.randn(64, 4, generator=g) for m in ("Ad", "A*", "Ar")}
    out = evaluate_unlearning(logits, labels, 4)
    assert set(out) == {"accuracy", "f1", "jsd"}
    assert set(out["accuracy"]) == set(out["f1"]) == {"Ad", "A*", "Ar"}
    assert set(out["jsd"]) == {"Ad,A*", "A*,Ar", "Ad,Ar"}  # Ad,Ar: the reference
    assert all(type(v) is float for d in out.values() for v in d.values())
    assert out["accuracy"]["A*"] == classification_metrics(logits["A*"], labels, 4)["accuracy"]
    assert out["jsd"]["A*,Ar"] == pytest.approx(mean_jsd(logits["A*"], logits["Ar"]))
    assert out["jsd"]["Ad,Ar"] == pytest.approx(mean_jsd(logits["Ad"], logits["Ar"]))
    # Without A_r (unlearning without retraining) its entries are left out, nothing else.
    no_ar = evaluate_unlearning({"Ad": logits["Ad"], "A*": logits["A*"]}, labels, 4)
    assert set(no_ar["accuracy"]) == {"Ad", "A*"} and set(no_ar["jsd"]) == {"Ad,A*"}
    assert no_ar["accuracy"]["A*"] == out["accuracy"]["A*"]
    with pytest.raises(ValueError, match="A\\*"):
        evaluate_unlearning({"Ad": logits["Ad"], "Ar": logits["Ar"]}, labels, 4)


def plain_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(normalize(images[i : i + 4], MEAN, STD)) for i in range(0, len(images), 4)])


def test_predict_equals_a_plain_model_loop_and_restores_train_mode():
    model, images = make_case(13)
    model.train()
    got = predict(model, images, mean=MEAN, std=STD, batch_size=5)
    assert model.training
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == (13, 5)
    torch.testing.assert_close(got, plain_logits(model, images), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_predict_gathers_two_cpu_processes_without_duplicates(tmp_path):
    n, batch = 13, 4  # 13 = 2 * 7 - 1: rank 1 gets one padding sample
    out = tmp_path / "logits.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        str(ROOT / ".venv/bin/torchrun"),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests/ddp_predict_worker.py"),
        str(out),
        str(n),
        str(batch),
    ]
    if not Path(cmd[0]).exists():
        cmd[0:1] = [sys.executable, "-m", "torch.distributed.run"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, images = make_case(n)
    single = predict(model, images, mean=MEAN, std=STD, batch_size=batch)
    for rank in (0, 1):
        saved = torch.load(f"{out}.rank{rank}")
        assert saved["world"] == 2
        assert saved["logits"].shape == (n, 5)  # every sample once, the padding dropped
        torch.testing.assert_close(saved["logits"], single, rtol=1e-5, atol=1e-5)
        # The group was freed, its threads joined: none is left to abort the teardown.
        assert json.loads(Path(f"{out}.rank{rank}.threads").read_text()) == []

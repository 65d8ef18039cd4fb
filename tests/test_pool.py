"""The retrain pool (kga_fast.evaluation.pool, --retrains K): names and seeds, the floor and the band, the
report's verdicts, and a tiny run through scripts/unlearn.py (pool block, JSD to the pool, the
evaluation cache, one folder one pool, bad input refused with nothing written)."""

from __future__ import annotations

import itertools
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
from kga_fast.errors import UserError
from kga_fast.evaluation.evaluate import mean_jsd
from kga_fast.evaluation.methods_report import pool_section, verdict
from kga_fast.evaluation.pool import jsd_to_pool, pool_member, pool_names, summarize_pool
from kga_fast.models import build_model
from kga_fast.run import open_run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
SMALL = ["--train-subset", "64", "--test-subset", "40", "--batch-size", "16", "--inner-steps", "2"]
needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)",
)


def test_names_and_members():
    assert pool_names(1) == ("Ar",)
    assert pool_names(3) == ("Ar", "Ar-1", "Ar-2")
    assert [pool_member(n) for n in ("Ar", "Ar-1", "Ar-12")] == [0, 1, 12]
    assert [pool_member(n) for n in ("Ad", "Ar-0", "Ar-01", "Ar-x", "Arr-1")] == [None] * 5
    with pytest.raises(UserError, match="at least 1"):
        pool_names(0)


def fake_logits(seed: int, n: int = 30, classes: int = 4) -> torch.Tensor:
    return torch.randn(n, classes, generator=torch.Generator().manual_seed(seed))


def test_floor_is_the_mean_pairwise_jsd_and_the_band_the_range():
    names = ("Ar", "Ar-1", "Ar-2")
    logits = {
        m: {s: fake_logits(10 * i + j) for j, s in enumerate(("forget", "test"))} for i, m in enumerate(names)
    }
    labels = {s: torch.arange(30) % 4 for s in ("forget", "test")}
    mia = {m: {"attack": v} for m, v in zip(names, (0.2, 0.6, None), strict=True)}
    block = summarize_pool(logits, labels, 4, mia, {"Ar": 5, "Ar-1": 6, "Ar-2": 7})
    assert block["size"] == 3 and block["seeds"] == [5, 6, 7]
    assert block["checkpoints"] == [
        "models/Ar.safetensors",
        "models/Ar-1.safetensors",
        "models/Ar-2.safetensors",
    ]
    for s in ("forget", "test"):
        pairs = [mean_jsd(logits[a][s], logits[b][s]) for a, b in itertools.combinations(names, 2)]
        assert block["floor"][s] == pytest.approx(sum(pairs) / 3)
        accs = [(logits[m][s].argmax(1) == labels[s]).float().mean().item() for m in names]
        got = block["band"][s]["accuracy"]
        assert (got["min"], got["max"]) == pytest.approx((min(accs), max(accs)))
        assert got["mean"] == pytest.approx(sum(accs) / 3)
    assert block["band"]["mia"]["attack"] == pytest.approx(
        {"min": 0.2, "mean": 0.4, "max": 0.6}
    )  # None skipped
    star = fake_logits(99)
    members = [logits[m]["test"] for m in names]
    assert jsd_to_pool(star, members) == pytest.approx(sum(mean_jsd(star, p) for p in members) / 3)


def test_verdicts_and_the_report_section():
    band = {"min": 0.8, "mean": 0.85, "max": 0.9}
    assert [verdict(v, band) for v in (0.79, 0.8, 0.9, 0.91)] == ["below", "inside", "inside", "above"]
    assert pool_section([], {"runs": []}) == ""  # no pool: no section
    split_band = {"accuracy": band, "f1": band}
    pool = {
        "size": 2,
        "seeds": [0, 1],
        "floor": {"forget": 0.02, "test": 0.01, "retain": 0.01},
        "band": {"forget": split_band, "retain": split_band, "test": split_band, "mia": {}},
    }
    ev = {
        "accuracy": {"A*": 0.95, "Ad": 0.97},
        "f1": {"A*": 0.85, "Ad": 0.97},
        "jsd": {"A*,retrains": 0.04, "Ad,retrains": 0.05},
    }
    record = {
        "method": "finetune",
        "freeze": [],
        "preset": "default",
        "config": {},
        "eval": {s: ev for s in ("forget", "retain", "test")},
    }
    text = pool_section([record], {"runs": [record], "retrains": pool})
    assert "2 retrains of D_r" in text and "| retrain band (2 retrains) | 0.800-0.900" in text
    row = next(line for line in text.splitlines() if line.startswith("| finetune^(0)"))
    assert (
        "0.950 above" in row and "0.850 inside" in row and "0.0400 (2.00x)" in row and "0.0400 (4.00x)" in row
    )


def run_script(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "unlearn.py"), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture
def pooled_run(tmp_path) -> Path:
    """A run folder with its split, A_d, A_f, A_n and a pool of four (random init: the test is
    about the bookkeeping, not about learning)."""
    run_dir = tmp_path / "run"
    run = open_run(RunConfig(run_dir=run_dir, train_subset=64, test_subset=40))
    for i, name in enumerate(("Ad", "Af", "An", "Ar", "Ar-1", "Ar-2", "Ar-3")):
        torch.manual_seed(i)
        save_model(run_dir, name, build_model("resnet18", run.num_classes, run.in_channels), {"note": "test"})
    return run_dir


@needs_fmnist
@pytest.mark.slow
def test_a_run_against_a_pool_records_floor_band_and_jsd_to_the_pool(pooled_run):
    base = ["--run-dir", str(pooled_run), *SMALL[:6], "--freeze", "1,2,3", "--no-pretrain", "--epochs", "1"]
    proc = run_script(*base, "--retrains", "4", "--seeds", "0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((pooled_run / "results.json").read_text())
    pool = results["retrains"]
    assert pool["size"] == 4 and pool["seeds"] == [0, 1, 2, 3]
    assert set(pool["floor"]) == {"forget", "retain", "test"} and all(v > 0 for v in pool["floor"].values())
    assert set(pool["band"]["mia"]) == {
        "loss_lr_cv_acc",
        "mia_efficacy_confidence",
        "entropy_lr_forget_member_rate",
    }
    record, _ = results["runs"]
    assert record["config"]["retrains"] == 4
    assert record["phases"]["retrain_pool"] is None  # these models record no training time
    jsd = record["eval"]["forget"]["jsd"]
    assert 0 < jsd["A*,retrains"] <= 0.7 and 0 < jsd["Ad,retrains"] <= 0.7
    report = (pooled_run / "report.md").read_text()
    assert "## Against the retrain pool: 4 retrains of D_r" in report and "| kga^(1,2,3) (default)" in report
    # Two seeds: F is not computed below 16 (test_forgetting_quality_of_a_group_... below).
    assert "forgetting_quality" not in record and "computed from N = 16 seeds" in report

    # The reference outputs are cached per folder: a second method reads them, computes none.
    cache = sorted((pooled_run / "cache").glob("eval-*.safetensors"))
    assert {p.name for p in cache} == {f"eval-{m}.safetensors" for m in ("Ad", "Ar", "Ar-1", "Ar-2", "Ar-3")}
    stamps = [p.stat().st_mtime_ns for p in cache]
    again = run_script(*base, "--retrains", "4", "--method", "finetune")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in cache] == stamps
    after = json.loads((pooled_run / "results.json").read_text())
    assert after["retrains"] == pool and len(after["runs"]) == 3
    assert after["runs"][2]["mia"]["Ad"] == record["mia"]["Ad"]  # A_d audited once per folder

    # One folder, one pool: another size is refused and changes nothing.
    before = (pooled_run / "results.json").read_bytes()
    other = run_script(*base, "--retrains", "2")
    assert other.returncode == 2 and "judged against 4 retrains" in other.stderr
    assert (pooled_run / "results.json").read_bytes() == before


@needs_fmnist
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--retrains", "0"], "--retrains must be at least 1"),
        (["--retrains", "3", "--no-retrain"], "--no-retrain"),
    ],
)
def test_bad_pool_options_are_refused_before_anything_is_written(tmp_path, args, message):
    run_dir = tmp_path / "run"
    proc = run_script("--run-dir", str(run_dir), *SMALL, *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_the_tuning_score_measures_the_distance_to_the_pool():
    from kga_fast.compare import score

    def split(acc_star, acc_ar, jsd_ar, jsd_pool=None):
        jsd = {"A*,Ar": jsd_ar} | ({"A*,retrains": jsd_pool} if jsd_pool is not None else {})
        return {"accuracy": {"A*": acc_star, "Ar": acc_ar}, "jsd": jsd}

    alone = {"eval": {"forget": split(0.90, 0.85, 0.01), "test": split(0.80, 0.84, 0.02)}}
    assert score(alone) == pytest.approx(0.05 + 0.04 + 10 * 0.03)
    pooled = {"eval": {"forget": split(0.90, 0.85, 0.01, 0.03), "test": split(0.80, 0.84, 0.02, 0.01)}}
    pool = {"band": {s: {"accuracy": {"mean": m}} for s, m in (("forget", 0.88), ("test", 0.79))}}
    assert score(pooled, pool) == pytest.approx(0.02 + 0.0 + 10 * 0.04)
    assert score(alone, pool) == pytest.approx(score(alone))  # a record made before the pool


def test_an_unlearning_that_returns_retrains_scores_the_ceiling():
    from kga_fast.evaluation.forgetting import MIN_MODELS
    from kga_fast.evaluation.methods_report import MIN_MODELS as SHOWN_FROM
    from kga_fast.evaluation.pool import forgetting_against_pool

    assert SHOWN_FROM == MIN_MODELS
    labels = torch.arange(30) % 4
    pool = [fake_logits(i) for i in range(8)]
    accs = dict(retain_acc=(0.9, 1.0), test_acc=(0.5, 0.5))
    assert forgetting_against_pool(pool[:5], pool, labels, **accs) is None  # needs 2N retrains
    got = forgetting_against_pool([x.clone() for x in pool[:4]], pool, labels, **accs)
    assert got["N"] == 4 and got["F"] == got["ceiling"] and got["score"] == pytest.approx(0.9 * got["F"])
    shifted = forgetting_against_pool([x + 3 * torch.eye(4)[labels] for x in pool[:4]], pool, labels, **accs)
    assert shifted["F"] < got["F"]  # more confident on the true class than any retrain: told apart


@needs_fmnist
def test_the_pool_is_read_only_where_its_cached_outputs_are_missing(pooled_run, monkeypatch):
    """ensure_pretrained keeps A_d, the helpers and A_r in memory, not the pool's other members:
    reference_outputs_cached reads each of those once, where its outputs are not cached yet."""
    from accelerate import Accelerator

    import kga_fast.checkpoint as checkpoint
    from kga_fast.pipeline import EVAL_SPLITS, reference_outputs_cached
    from kga_fast.pretrain import ensure_pretrained, needed_models

    accelerator = Accelerator(cpu=True)
    run = open_run(RunConfig(run_dir=pooled_run, train_subset=64, test_subset=40, retrains=4), accelerator)
    models = ensure_pretrained(run, accelerator, allow_train=False, names=needed_models(run.cfg))
    reads = []
    load_model = checkpoint.load_model

    def counted(run_dir, name, **kwargs):
        reads.append(name)
        return load_model(run_dir, name, **kwargs)

    monkeypatch.setattr(checkpoint, "load_model", counted)
    assert models["Ad"] is models["Ad"] and models["Ar"] is models["Ar"] and reads == []
    assert "Ar-3" in models and reads == []
    splits = {s: run.subset(s) for s in EVAL_SPLITS}
    labels = {s: y for s, (_, y) in splits.items()}
    names = ("Ad", "Ar", "Ar-1", "Ar-2", "Ar-3")
    first, _ = reference_outputs_cached(run, models, names, splits, labels, accelerator)
    assert reads == ["Ar-1", "Ar-2", "Ar-3"]
    (pooled_run / "cache" / "eval-Ar-2.safetensors").unlink()
    again, _ = reference_outputs_cached(run, models, names, splits, labels, accelerator)
    assert reads == ["Ar-1", "Ar-2", "Ar-3", "Ar-2"]
    for s in splits:
        for m in names:
            torch.testing.assert_close(again[s][m], first[s][m])


@needs_fmnist
def test_forgetting_quality_of_a_group_against_half_the_pool(pooled_run, monkeypatch):
    """In process, with F's minimum N lowered to 2: two seeds against retrains 3-4, the ceiling
    retrains 1-2 against them; seeds finished earlier are read back from their checkpoints."""
    import dataclasses

    from accelerate import Accelerator

    import kga_fast.pipeline as pipeline
    from kga_fast.methods import BASELINE_PRESETS
    from kga_fast.pretrain import ensure_pretrained, needed_models
    from kga_fast.results import load_results, write_pool

    calls = []

    def spy(unlearned, pool, labels, **accs):
        calls.append(([u.clone() for u in unlearned], pool))
        return {"N": len(unlearned), "F": 0.5, "ceiling": 0.75, "score": 0.5}

    monkeypatch.setattr(pipeline, "MIN_MODELS", 2)
    monkeypatch.setattr(pipeline, "forgetting_against_pool", spy)
    accelerator = Accelerator(cpu=True)
    run = open_run(RunConfig(run_dir=pooled_run, train_subset=64, test_subset=40, retrains=4), accelerator)
    models = ensure_pretrained(run, accelerator, allow_train=False, names=needed_models(run.cfg))
    cfg = dataclasses.replace(BASELINE_PRESETS["finetune"], epochs=1, batch_size=16)
    job = pipeline.Job("finetune", cfg, [(1, 2, 3)], [0, 1])
    records = pipeline.run_job(run, models, job, accelerator)
    assert [len(u) for u, _ in calls] == [2] and len(calls[0][1]) == 4
    expected = {"N": 2, "F": 0.5, "ceiling": 0.75, "score": 0.5, "seeds": [0, 1]}
    assert all(r["forgetting_quality"] == expected for r in records + load_results(pooled_run)["runs"])
    pipeline.run_job(run, models, job, accelerator)
    assert len(calls) == 1  # found with its F: nothing recomputed

    results = load_results(pooled_run)  # drop F: the finished seeds are read back from checkpoints
    for r in results["runs"]:
        del r["forgetting_quality"]
    (pooled_run / "results.json").write_text(json.dumps(results))
    write_pool(pooled_run, results["retrains"])
    pipeline.run_job(run, models, job, accelerator)
    assert len(calls) == 2
    for a, b in zip(calls[0][0], calls[1][0], strict=True):
        torch.testing.assert_close(a, b)

"""One unlearning job on a run folder, the piece the CLI (scripts/unlearn.py) and the Python API
(kga_fast.api) share: for each (freeze, seed) of a method, skip what is finished, unlearn,
evaluate, audit, save the model, record the result; then the report.

    job = Job(method="kga", cfg=UnlearnConfig(), freezes=[(), (1, 2, 3)], seeds=[0])
    records = run_job(run, models, job, accelerator)

`models` holds A_d, A_f, A_n (KGA's helpers) and A_r unless the job runs without retraining
(`job.retrain=False`, the deletion-request mode): then nothing is compared with A_r, and the
records say so ("retrain": false).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from kga_fast import accel
from kga_fast.checkpoint import load_model, save_model
from kga_fast.errors import UserError
from kga_fast.evaluation.audit import audit_models
from kga_fast.evaluation.evaluate import evaluate_unlearning, predict
from kga_fast.evaluation.forgetting import MIN_MODELS
from kga_fast.evaluation.pool import (
    forgetting_against_pool,
    jsd_to_pool,
    pool_member,
    pool_names,
    summarize_pool,
)
from kga_fast.evaluation.report import format_table, write_report
from kga_fast.files import atomic_path, sha256_file
from kga_fast.freeze import freeze_label
from kga_fast.methods import baseline_config_key, unlearn_baseline
from kga_fast.methods.common import MethodData, train_seconds
from kga_fast.methods.kga import UnlearnConfig, config_key, unlearn
from kga_fast.methods.retrain import retrain
from kga_fast.methods.trained import BaselineConfig
from kga_fast.models import StagedNet
from kga_fast.pretrain import helper_names
from kga_fast.results import append_result, find_result, load_results, write_pool
from kga_fast.run import Run

EVAL_SPLITS = ("test", "forget", "retain")


@dataclass
class Job:
    """What to run on a run folder: one method over freeze configurations and seeds."""

    method: str = "kga"  # a name of kga_fast.methods.METHODS
    cfg: UnlearnConfig | BaselineConfig | None = None  # the method's configuration (retrain: None)
    freezes: list[tuple[int, ...]] = field(default_factory=lambda: [()])  # 1-based frozen blocks
    seeds: list[int] = field(default_factory=lambda: [0])  # unlearning seeds
    retrain: bool = True  # whether A_r exists to compare with (False: --no-retrain)

    @property
    def preset(self) -> str:
        return self.cfg.preset if isinstance(self.cfg, UnlearnConfig) else "default"

    def config(self, accelerator) -> dict:
        """What results.json records as "config"."""
        if self.method == "kga":
            key = config_key(self.cfg)
        else:
            key = {} if self.method == "retrain" else baseline_config_key(self.cfg)
        # Without A_r the evaluation differs: such a run is its own record, never taken for
        # (or skipped because of) the same setting evaluated against A_r.
        extra = {} if self.retrain else {"retrain": False}
        return key | {"mixed_precision": str(accelerator.mixed_precision)} | extra


def model_name(method: str, arch: str, freeze: tuple[int, ...], seed: int, preset: str, config: dict) -> str:
    """Astar-resnet18-f12-s0-default-<hash> (baselines: <method>-resnet18-...): the hash of the
    config keeps the models of two configurations apart, so a finished model is never
    overwritten by another one."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    prefix = "Astar" if method == "kga" else method
    return f"{prefix}-{arch}-f{''.join(map(str, freeze)) or 0}-s{seed}-{preset}-{digest}"


def summary_line(label: str, seed: int, record: dict) -> str:
    ev = record["eval"]
    models = ("Ad", "Ar") if record.get("retrain", True) else ("Ad",)
    acc = "/".join(f"{ev[s]['accuracy']['A*']:.3f}" for s in ("test", "forget"))
    ref = "/".join(f"{ev[s]['accuracy'][m]:.3f}" for s in ("test", "forget") for m in models)
    jsd = ev["test"]["jsd"]
    to_ar = f" JSD(A*,Ar) {jsd['A*,Ar']:.4f} (Ad,Ar {jsd['Ad,Ar']:.4f});" if "A*,Ar" in jsd else ""
    return (
        f"{label} seed {seed}: A* acc test/forget {acc} ({', '.join(models)}: {ref}); "
        f"JSD(Ad,A*) {jsd['Ad,A*']:.4f};{to_ar} {record['unlearn_seconds']:.1f} s -> {record['checkpoint']}"
    )


def _seconds_or_none(run_dir, name: str) -> float | None:
    try:
        return train_seconds(run_dir, name)
    except UserError:  # models trained elsewhere (a user's own A_d) may not record it
        return None


def reference_outputs_cached(
    run: Run, models: Mapping[str, StagedNet], names, splits: dict, labels: dict, accelerator
) -> tuple[dict, dict]:
    """({split: {model: logits}}, {model: audit}) of the reference models `names` (A_d, A_r, the
    pool), kept in <run>/cache/eval-<model>.safetensors with the SHA-256 of the checkpoint they came
    from and the precision: computed once per run folder, not per method and seed. The audit is
    computed (and returned) on the main process only. A model is looked up in `models` only when
    its outputs are computed (a SavedModels reads a pool member then, and frees it after)."""
    run_dir = run.cfg.run_dir
    paths = {m: run_dir / "cache" / f"eval-{m}.safetensors" for m in names}
    precision = str(accelerator.mixed_precision)  # bf16 logits are not fp32 logits
    shas = {m: sha256_file(run_dir / "models" / f"{m}.safetensors") for m in names}
    found = {}
    for m, path in paths.items():
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                same = meta.get("checkpoint_sha256") == shas[m] and meta.get("mixed_precision") == precision
                if same and set(f.keys()) == set(splits):
                    found[m] = ({s: f.get_tensor(s) for s in splits}, json.loads(meta["mia"]))
    accelerator.wait_for_everyone()  # every rank decided what to compute before anything is written
    logits: dict[str, dict] = {s: {} for s in splits}
    mia: dict[str, dict] = {}
    for m in names:
        if m in found:
            by_split, mia[m] = found[m]
        else:
            model = models[m]
            by_split = {
                s: predict(
                    model, splits[s][0], mean=run.train.mean, std=run.train.std, accelerator=accelerator
                )
                for s in splits
            }
            del model  # a pool member read for this is freed before the next is read
            if accelerator.is_main_process:
                mia[m] = audit_models({m: by_split}, labels)[m]
                meta = {"checkpoint_sha256": shas[m], "mixed_precision": precision, "mia": json.dumps(mia[m])}
                with atomic_path(paths[m]) as tmp:
                    save_file({s: t.contiguous() for s, t in by_split.items()}, str(tmp), metadata=meta)
        for s in splits:
            logits[s][m] = by_split[s]
    accelerator.wait_for_everyone()
    return logits, mia


def run_job(run: Run, models: Mapping[str, StagedNet], job: Job, accelerator) -> list[dict]:
    """Run `job` on `run` (module doc); returns the records written (or found) per (freeze, seed)."""
    if job.method == "retrain" and not job.retrain:
        raise UserError("method retrain needs A_r: drop --no-retrain")
    run_dir, arch = run.cfg.run_dir, run.cfg.arch
    splits = {s: run.subset(s) for s in EVAL_SPLITS}
    labels = {s: y for s, (_, y) in splits.items()}
    data = MethodData(
        splits["retain"][0],
        splits["forget"][0],
        run.subset("new")[0],
        run.train.mean,
        run.train.std,
        retain_labels=labels["retain"],
        forget_labels=labels["forget"],
    )
    if job.method == "kga":  # L_a aligns on the D_f images A_f was trained on
        helper_forget, helper_labels = run.subset("helper_forget")
        aligned = dataclasses.replace(data, forget=helper_forget, forget_labels=helper_labels)
    pool = pool_names(run.cfg.retrains) if job.retrain and run.cfg.retrains > 1 else ()
    reference = ("Ad", "Ar", *pool[1:]) if job.retrain else ("Ad",)
    ar_seconds = _seconds_or_none(run_dir, "Ar") if job.retrain else None
    pool_seconds = [_seconds_or_none(run_dir, m) for m in pool[1:]]
    helpers = {m: _seconds_or_none(run_dir, m) for m in helper_names(run.splits.options.get("helpers"))}
    known = job.method == "kga" and None not in helpers.values()
    helper_total = sum(helpers.values()) if known else None  # KGA's cost beyond unlearning
    # Records judged against a pool are their own (never skipped for a record against A_r alone).
    config = job.config(accelerator) | ({"retrains": len(pool)} if pool else {})

    def logits_of(model, split: str):
        return predict(
            model, splits[split][0], mean=run.train.mean, std=run.train.std, accelerator=accelerator
        )

    fixed: dict = {}  # logits of A_d, A_r and the pool per split, and their audits: once per folder

    def reference_outputs() -> None:
        if fixed:
            return
        logits, mia = reference_outputs_cached(run, models, reference, splits, labels, accelerator)
        fixed.update(logits, mia=mia)
        if pool and accelerator.is_main_process:
            block = summarize_pool(
                {m: {s: logits[s][m] for s in splits} for m in pool},
                labels,
                run.num_classes,
                {m: mia[m] for m in pool},
                {m: run.cfg.seed + pool_member(m) for m in pool},
            )
            write_pool(run_dir, block)
            fixed["pool"] = block

    freezes = [()] if job.method == "retrain" else job.freezes  # A_r as it is: nothing frozen
    records = []
    for freeze in freezes:
        forget_logits = {}  # seed -> A*'s logits on D_f, for the forgetting quality
        for seed in job.seeds:
            label = f"{arch}^{freeze_label(freeze)}"
            key = {
                "dataset": run.cfg.dataset,
                "arch": arch,
                "freeze": list(freeze),
                "seed": seed,
                "preset": job.preset,
                "method": job.method,
                "config": config,
            }
            found = find_result(run_dir, key)
            if found is not None:
                accelerator.print(f"{label} seed {seed}: finished earlier, skipped")
                records.append(found)
                continue
            name = model_name(job.method, arch, freeze, seed, job.preset, config)
            state_dir = run_dir / "state" / name
            desc = f"{job.method} {label} seed {seed}"
            accel.reset_peak_memory(accelerator)
            common = dict(freeze=freeze, seed=seed, accelerator=accelerator, state_dir=state_dir, desc=desc)
            if job.method == "kga":
                result = unlearn(models, aligned, job.cfg, **common)
            elif job.method == "retrain":
                result = retrain(models, run_dir)
            else:
                result = unlearn_baseline(models, data, job.cfg, **common)
            if result.epochs_resumed:
                accelerator.print(f"{label} seed {seed}: resumed after epoch {result.epochs_resumed}")
            peak = accel.peak_memory(accelerator)
            t0 = time.perf_counter()
            reference_outputs()
            evaluation, star = {}, {}
            for split in splits:
                star[split] = logits_of(result.model, split)
                evaluation[split] = evaluate_unlearning(
                    {m: fixed[split][m] for m in ("Ad", "Ar") if m in reference} | {"A*": star[split]},
                    labels[split],
                    run.num_classes,
                )
                if pool:
                    members = [fixed[split][m] for m in pool]
                    evaluation[split]["jsd"]["A*,retrains"] = jsd_to_pool(star[split], members)
                    evaluation[split]["jsd"]["Ad,retrains"] = jsd_to_pool(fixed[split]["Ad"], members)
            checkpoint = "models/Ar.safetensors" if job.method == "retrain" else f"models/{name}.safetensors"
            record = key | {
                "unlearn_seconds": result.seconds,
                "checkpoint": checkpoint,
                "retrain": job.retrain,
                "retrain_seconds": ar_seconds,
                "helper_seconds": helpers if job.method == "kga" else None,
                "helpers": run.splits.options.get("helpers", "disjoint"),
                "stopping": result.stopping,
                "losses": result.losses,
                "world_size": accelerator.num_processes,
                "eval": evaluation,
            }
            if accelerator.is_main_process:
                # Membership inference on the gathered logits, once (not per rank); A_d and A_r
                # are audited once per folder with a fixed seed, so their values are shared.
                shared = {m: fixed["mia"][m] for m in ("Ad", "Ar") if m in reference}
                record["mia"] = shared | audit_models({"A*": star}, labels)
            record["phases"] = {
                "helper_models": helper_total,
                "caching": result.cache_seconds,
                "unlearning": result.seconds - result.cache_seconds,
                "evaluation": time.perf_counter() - t0,
            }
            if pool:  # the extra retrains' training (A_r's is retrain_seconds)
                record["phases"]["retrain_pool"] = sum(pool_seconds) if None not in pool_seconds else None
            record["peak_memory"] = peak
            if accelerator.is_main_process:
                if job.method != "retrain":
                    meta = {k: v for k, v in record.items() if k not in ("checkpoint", "eval", "mia")}
                    save_model(run_dir, name, result.model, meta)
                append_result(run_dir, record)  # after the model: a record never lacks it
            accel.clear_state(accelerator, state_dir)  # barriers inside: all ranks see the record
            accelerator.print(summary_line(label, seed, record))
            records.append(record)
            forget_logits[seed] = star["forget"]
        # F for N seeds against N retrains, beside N other retrains against them; from N =
        # MIN_MODELS only (below, its scale moves with N and nothing shows it).
        if pool and job.method != "retrain" and MIN_MODELS <= len(job.seeds) <= len(pool) // 2:
            reference_outputs()
            group = records[-len(job.seeds) :]
            _add_forgetting_quality(run, group, forget_logits, fixed, pool, splits, accelerator)
    return records


def _add_forgetting_quality(run, group, forget_logits, fixed, pool, splits, accelerator) -> None:
    """Record the challenge's F of a (method, freeze) group's seeds against the pool, where the
    pool holds twice as many retrains as seeds (kga_fast.evaluation.pool.forgetting_against_pool)."""
    seeds = sorted(r["seed"] for r in group)
    if all(r.get("forgetting_quality", {}).get("seeds") == seeds for r in group):
        return
    for r in group:  # seeds finished earlier: their A* from the checkpoint
        if r["seed"] not in forget_logits:
            model, _ = load_model(run.cfg.run_dir, Path(r["checkpoint"]).stem, device=accelerator.device)
            forget_logits[r["seed"]] = predict(
                model, splits["forget"][0], mean=run.train.mean, std=run.train.std, accelerator=accelerator
            )
    if accelerator.is_main_process:
        band = fixed["pool"]["band"]

        def mean_accuracy(split: str) -> tuple[float, float]:
            unlearned = statistics.fmean(r["eval"][split]["accuracy"]["A*"] for r in group)
            return unlearned, band[split]["accuracy"]["mean"]

        quality = forgetting_against_pool(
            [forget_logits[r["seed"]] for r in group],
            [fixed["forget"][m] for m in pool],
            splits["forget"][1],
            retain_acc=mean_accuracy("retain"),
            test_acc=mean_accuracy("test"),
        )
        for r in group:
            r["forgetting_quality"] = quality | {"seeds": seeds}
        append_result(run.cfg.run_dir, *group)
    accelerator.wait_for_everyone()


def report(run: Run, accelerator) -> None:
    """Print the paper's tables for the run folder and write report.md / report.png (main process)."""
    if accelerator.is_main_process:
        run_dir = run.cfg.run_dir
        results = load_results(run_dir)
        for split in ("test", "forget"):
            print(
                f"\n{run.cfg.dataset}, {split} split (mean ± std over seeds):\n{format_table(results, split)}"
            )
        md, png = write_report(run_dir)
        print(
            f"\nresults: {run_dir / 'results.json'}\nreport:  {md}\nfigure:  {png}\nmodels:  {run_dir / 'models'}"
        )
    accelerator.wait_for_everyone()

"""Every unlearning method, one module each, and the registry that the CLI's --method, the Python
API, compare.py and the report read.

    from kga_fast.methods import METHODS
    METHODS["ct"].preset          # its default BaselineConfig; METHODS["kga"].preset: UnlearnConfig

- kga (kga.py, kga_stopping.py, kga_cache.py): the paper's method.
- retrain: A_r itself. The others train A* through one loop (trained.py): finetune,
  gradient_ascent, random_label, salun, scrub, neggrad_plus, ct, msg, fcs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kga_fast.errors import UserError
from kga_fast.methods import (
    ct,
    fcs,
    finetune,
    gradient_ascent,
    kga,
    msg,
    neggrad_plus,
    random_label,
    retrain,
    salun,
    scrub,
)
from kga_fast.methods.common import Method, MethodData, UnlearnResult
from kga_fast.methods.trained import COMMON_FIELDS, BaselineConfig, check_values, train
from kga_fast.models import StagedNet

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        kga.METHOD,
        retrain.METHOD,
        finetune.METHOD,
        gradient_ascent.METHOD,
        random_label.METHOD,
        salun.METHOD,
        scrub.METHOD,
        neggrad_plus.METHOD,
        ct.METHOD,
        msg.METHOD,
        fcs.METHOD,
    )
}
TRAINED = tuple(name for name, m in METHODS.items() if m.setup is not None)  # trained.py's loop
BASELINE_PRESETS = {name: METHODS[name].preset for name in TRAINED}


def check_baseline_config(cfg: BaselineConfig) -> BaselineConfig:
    """UserError on an unknown trained method or a value that cannot work; returns cfg."""
    if cfg.method not in TRAINED:
        raise UserError(f"unknown baseline {cfg.method!r}; choose one of {', '.join(TRAINED)}")
    return check_values(cfg)


def baseline_config_key(cfg: BaselineConfig) -> dict:
    """What results.json records as "config": the common fields and the method's own."""
    keep = COMMON_FIELDS + METHODS[cfg.method].fields
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k in keep}


def unlearn_baseline(
    models: dict[str, StagedNet],
    data: MethodData,
    cfg: BaselineConfig,
    *,
    freeze: tuple[int, ...],
    seed: int,
    accelerator,
    state_dir: Path | None = None,
    desc: str | None = None,
) -> UnlearnResult:
    """A* from a copy of models["Ad"] by the trained method cfg.method (kga_fast.methods.trained)."""
    check_baseline_config(cfg)
    return train(
        METHODS[cfg.method].setup,
        models,
        data,
        cfg,
        freeze=freeze,
        seed=seed,
        accelerator=accelerator,
        state_dir=state_dir,
        desc=desc,
        key=baseline_config_key(cfg),
    )

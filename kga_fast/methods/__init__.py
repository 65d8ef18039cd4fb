"""Every unlearning method, one module each, and the registry that the CLI's --method, the Python
API, compare.py and the report read.

    from kga_fast.methods import METHODS
    METHODS["ct"].preset          # its default BaselineConfig; METHODS["kga"].preset: UnlearnConfig

- kga (kga.py, kga_stopping.py, kga_cache.py): the paper's method.
- retrain: A_r itself. The others train A* through one loop (trained.py): finetune,
  gradient_ascent, random_label, salun, scrub, neggrad_plus, ct, msg, fcs, shrink_perturb,
  fresh_distill.
- RECOMMENDED: the method and setting that met the most targets in the comparison it names;
  "recommended" is its name for --method and the Python API's default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kga_fast.errors import UserError
from kga_fast.methods import (
    ct,
    fcs,
    finetune,
    fresh_distill,
    gradient_ascent,
    kga,
    msg,
    neggrad_plus,
    random_label,
    retrain,
    salun,
    scrub,
    shrink_perturb,
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
        shrink_perturb.METHOD,
        fresh_distill.METHOD,
    )
}
TRAINED = tuple(name for name, m in METHODS.items() if m.setup is not None)  # trained.py's loop
BASELINE_PRESETS = {name: METHODS[name].preset for name in TRAINED}


@dataclass(frozen=True)
class Recommendation:
    """A trained method with the setting that a measurement chose, and where that measurement is."""

    method: str
    overrides: dict  # of the method's preset: the setting its tuning chose
    chosen_by: str  # the measurement (bench/RESULTS.md section) that chose it

    @property
    def config(self) -> BaselineConfig:
        return dataclasses.replace(BASELINE_PRESETS[self.method], **self.overrides)

    def describe(self) -> str:
        setting = ", ".join(f"{k} {v}" for k, v in self.overrides.items())
        return f"{self.method} ({setting}), chosen by {self.chosen_by}"


RECOMMENDED = Recommendation(
    "msg",
    {"lr": 0.01, "epochs": 2},
    "bench/RESULTS.md, 'Every method against the targets on the quick subsets at 10% (issue 17)': "
    "14 of 16 targets on the report splits, the most of any method (13 of 16 on the small setting; "
    "at the paper's 50% 6, where CT met 13 at a retrain's cost: 'Issue 17, third session')",
)


def resolve(method: str, config=None) -> tuple[str, object]:
    """(method, config): "recommended" becomes RECOMMENDED's method, and a missing config the
    method's preset (RECOMMENDED's setting for "recommended")."""
    if method == "recommended":
        return RECOMMENDED.method, config or RECOMMENDED.config
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of recommended, {', '.join(METHODS)}")
    return method, config or METHODS[method].preset


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
    models: Mapping[str, StagedNet],
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

"""Retraining: the gold standard as a method, A_r itself, timed by its own training."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kga_fast.methods.common import Method, UnlearnResult, train_seconds
from kga_fast.models import StagedNet


def retrain(models: Mapping[str, StagedNet], run_dir: str | Path) -> UnlearnResult:
    """A_r as it is (freezing n/a); its time is A_r's training time (models/Ar.json)."""
    return UnlearnResult(models["Ar"].eval(), train_seconds(run_dir, "Ar"), 0.0, 0, {})


METHOD = Method("retrain", "A_r as it is (retrained on D_r from scratch)")

"""Model checkpoints: `<run>/models/<name>.safetensors` (weights) + `<name>.json` (what made them).

safetensors holds tensors only, so loading a checkpoint never unpickles code. Every file is
written to a temporary name and moved into place with os.replace, the JSON last: a model
counts as present only when both files are, so an interrupted save is never taken as done.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import kga_fast
from kga_fast.errors import UserError
from kga_fast.files import atomic_path
from kga_fast.models import StagedNet, build_model

MODELS_DIR = "models"


def _paths(run_dir: str | Path, name: str) -> tuple[Path, Path]:
    if not name or name != Path(name).name or name.startswith("."):
        raise UserError(f"bad model name {name!r}: use a plain file name such as Ad")
    folder = Path(run_dir) / MODELS_DIR
    return folder / f"{name}.safetensors", folder / f"{name}.json"


def model_shape(model: StagedNet) -> tuple[int, int]:
    """(num_classes, in_channels): the last Linear's outputs and the first Conv2d's inputs."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features, convs[0].in_channels


def has_model(run_dir: str | Path, name: str) -> bool:
    """Whether `name` was saved completely (weights and their JSON)."""
    return all(p.is_file() for p in _paths(run_dir, name))


def save_model(run_dir: str | Path, name: str, model: StagedNet, meta: dict) -> Path:
    """Writes models/<name>.safetensors and models/<name>.json; returns the weights' path.

    `meta` (dataset, split, epochs, config, ...) is stored with arch, num_classes,
    in_channels, frozen (1-based block numbers, the paper's notation) and package versions.
    """
    if not isinstance(model, StagedNet):
        raise TypeError(f"save_model needs a StagedNet (unwrap DDP/compile first), got {type(model)}")
    weights, info = _paths(run_dir, name)
    num_classes, in_channels = model_shape(model)
    meta = {
        **meta,
        "arch": model.arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "frozen": [i + 1 for i in model.frozen],
        "versions": {
            "kga_fast": kga_fast.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Both files are written in full before anything is replaced (a failed save leaves an
    # older model as it was); then the weights move into place before their JSON.
    with atomic_path(info) as info_tmp, atomic_path(weights) as weights_tmp:
        save_file(state, str(weights_tmp), metadata={"format": "pt", "arch": model.arch})
        info_tmp.write_text(json.dumps(meta, indent=1, default=str) + "\n")
        info.unlink(missing_ok=True)  # an old JSON must never vouch for the new weights
    return weights


def load_model(
    run_dir: str | Path,
    name: str,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[StagedNet, dict]:
    """The saved model (in eval mode, on `device`, nothing frozen) and its JSON meta.

    arch / num_classes / in_channels, when given, must match the checkpoint: a model trained
    for another architecture or class count is refused with both values in the message.
    """
    weights, info = _paths(run_dir, name)
    if not has_model(run_dir, name):
        raise UserError(f"no saved model {name!r}: expected {weights} and {info}")
    try:
        meta = json.loads(info.read_text())
        saved = {
            "arch": meta["arch"],
            "num_classes": meta["num_classes"],
            "in_channels": meta["in_channels"],
        }
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {info}: {e}") from None
    wanted = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels}
    for key, value in wanted.items():
        if value is not None and value != saved[key]:
            raise UserError(f"{weights} has {key}={saved[key]!r}, but {key}={value!r} was asked for")
    model = build_model(saved["arch"], saved["num_classes"], saved["in_channels"])
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise UserError(f"cannot load {weights} into the {saved['arch']} its JSON names: {why}") from None
    return model.to(device).eval(), meta


class SavedModels(Mapping[str, StagedNet]):
    """The saved models `names` of a run folder by name, each read (load_model with `load_args`,
    requires_grad off) when it is looked up. Those in `keep` stay in memory after their first
    read; the others are read again at each look-up and freed when the caller drops them, so that
    a pool of 64 retrains, read once per run folder to cache its outputs, is never held at once."""

    def __init__(self, run_dir: str | Path, names: Iterable[str], *, keep: Iterable[str] = (), **load_args):
        self._run_dir, self._names, self._load_args = run_dir, tuple(names), load_args
        self._keep = set(keep) & set(self._names)
        self._kept: dict[str, StagedNet] = {}

    def __getitem__(self, name: str) -> StagedNet:
        if name not in self._names:
            raise KeyError(name)
        if name in self._kept:
            return self._kept[name]
        model = load_model(self._run_dir, name, **self._load_args)[0].requires_grad_(False)
        if name in self._keep:
            self._kept[name] = model
        return model

    def __contains__(self, name: object) -> bool:  # Mapping's would read the model
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

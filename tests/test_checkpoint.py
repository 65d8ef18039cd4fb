"""Checkpoints: safetensors + JSON round trip, clear errors, nothing damaged by a failed save."""

from __future__ import annotations

import json

import pytest
import torch

import kga_fast.checkpoint as checkpoint
from kga_fast.checkpoint import SavedModels, has_model, load_model, save_model
from kga_fast.errors import UserError
from kga_fast.freeze import apply_freeze
from kga_fast.models import build_model


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = build_model("resnet18-cifar", num_classes=10, in_channels=1)
    model.train()
    model(torch.randn(4, 1, 32, 32))  # move BatchNorm running statistics off their defaults
    return apply_freeze(model.eval(), (1,))


def test_round_trip(tmp_path, small_model):
    meta = {"dataset": "fashion-mnist", "split": "D", "epochs": 3, "config": {"lr": 0.1}}
    path = save_model(tmp_path, "Ad", small_model, meta)
    assert path == tmp_path / "models" / "Ad.safetensors" and has_model(tmp_path, "Ad")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["Ad.json", "Ad.safetensors"]
    model, saved = load_model(tmp_path, "Ad", arch="resnet18-cifar", num_classes=10, in_channels=1)
    assert saved["arch"] == "resnet18-cifar" and saved["num_classes"] == 10 and saved["in_channels"] == 1
    assert saved["frozen"] == [1] and saved["epochs"] == 3 and saved["config"] == {"lr": 0.1}
    assert set(saved["versions"]) == {"kga_fast", "torch", "torchvision"}
    assert not model.training
    for key, value in small_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), small_model(x))


@pytest.mark.parametrize(
    "expect,match",
    [
        (dict(arch="vgg11"), "arch='resnet18-cifar'.*arch='vgg11'"),
        (dict(num_classes=100), "num_classes=10.*num_classes=100"),
        (dict(in_channels=3), "in_channels=1.*in_channels=3"),
    ],
)
def test_wrong_model_is_a_clear_error(tmp_path, small_model, expect, match):
    save_model(tmp_path, "Ad", small_model, {})
    with pytest.raises(UserError, match=match):
        load_model(tmp_path, "Ad", **expect)


def test_missing_or_half_written_model(tmp_path, small_model):
    with pytest.raises(UserError, match="no saved model 'Af'"):
        load_model(tmp_path, "Af")
    save_model(tmp_path, "Af", small_model, {})
    (tmp_path / "models" / "Af.json").unlink()  # as if the save had stopped between the files
    assert not has_model(tmp_path, "Af")
    with pytest.raises(UserError, match="no saved model"):
        load_model(tmp_path, "Af")
    with pytest.raises(UserError, match="bad model name"):
        has_model(tmp_path, "../Af")


def test_weights_that_do_not_fit_their_json(tmp_path, small_model):
    save_model(tmp_path, "An", small_model, {})
    info = tmp_path / "models" / "An.json"
    meta = json.loads(info.read_text())
    info.write_text(json.dumps({**meta, "arch": "vgg11-bn-cifar"}))
    with pytest.raises(UserError, match="cannot load .* into the vgg11-bn-cifar"):
        load_model(tmp_path, "An")
    info.write_text("{broken")
    with pytest.raises(UserError, match="cannot read"):
        load_model(tmp_path, "An")


def test_loading_never_unpickles(tmp_path, small_model):
    save_model(tmp_path, "Ar", small_model, {})
    weights = tmp_path / "models" / "Ar.safetensors"
    torch.save(small_model.state_dict(), weights)  # a pickle where safetensors should be
    with pytest.raises(UserError, match="cannot load"):
        load_model(tmp_path, "Ar")


def test_failed_save_leaves_the_old_model_intact(tmp_path, small_model, monkeypatch):
    save_model(tmp_path, "Ad", small_model, {"epochs": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "models").iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path, "Ad", small_model, {"epochs": 2})
    assert {p.name: p.read_bytes() for p in (tmp_path / "models").iterdir()} == before
    monkeypatch.undo()
    save_model(tmp_path, "Ad", small_model, {"epochs": 2})  # a successful overwrite replaces both
    assert load_model(tmp_path, "Ad")[1]["epochs"] == 2
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["Ad.json", "Ad.safetensors"]


def test_saved_models_keep_only_what_they_are_told(tmp_path, small_model, monkeypatch):
    """SavedModels reads a model when it is looked up: those in `keep` once, the others at each
    look-up; asking what it holds reads nothing, and a wrong shape is refused as load_model does."""
    for name in ("Ad", "Ar-1"):
        save_model(tmp_path, name, small_model, {})
    reads = []
    load = checkpoint.load_model
    monkeypatch.setattr(
        checkpoint, "load_model", lambda run_dir, name, **kw: reads.append(name) or load(run_dir, name, **kw)
    )
    models = SavedModels(tmp_path, ("Ad", "Ar-1"), keep=("Ad",), arch="resnet18-cifar")
    assert list(models) == ["Ad", "Ar-1"] and len(models) == 2 and "Ar-1" in models and "Af" not in models
    assert reads == []
    assert models["Ad"] is models["Ad"] and models["Ar-1"] is not models["Ar-1"]
    assert reads == ["Ad", "Ar-1", "Ar-1"]
    assert not models["Ar-1"].training and not any(p.requires_grad for p in models["Ad"].parameters())
    with pytest.raises(KeyError):
        models["Af"]
    with pytest.raises(UserError, match="arch='resnet18-cifar'.*arch='vgg11'"):
        SavedModels(tmp_path, ("Ad",), arch="vgg11")["Ad"]

"""Your model, your images, your deletion request: torchvision checkpoints loaded as A_d with
bitwise-equal logits, ImageFolder trees the tests write (PNG and JPEG, grayscale and RGB, two
sizes), a forget list, --normalize, an end-to-end --no-retrain run, and each bad input (one
`error:` line, exit 2, nothing written)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models as tvm

from kga_fast.data import load_images
from kga_fast.errors import UserError
from kga_fast.folder import read_forget_list
from kga_fast.user_model import load_user_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "unlearn.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


def write_tree(
    root: Path, *, classes=("cat", "dog", "owl"), per_class=(8, 4), gray=False, sizes=((40, 30), (20, 20))
) -> Path:
    """root/train/<class>/*.png|jpg and root/test/<class>/*, of two sizes and both formats."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = sizes[i % 2]
                shape = (h, w) if gray else (h, w, 3)
                pixels = np.clip(rng.normal(60 + 60 * c, 30, shape), 0, 255).astype(np.uint8)
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(pixels).save(folder / f"{i:03d}.{ext}")
    return root


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_torchvision_state_dict_loads_as_a_d_with_bitwise_equal_logits(tmp_path, arch):
    torch.manual_seed(0)
    net = tvm.resnet18(num_classes=7) if arch == "resnet18" else tvm.vgg11(num_classes=7)
    net.eval()
    path = tmp_path / "mine.pt"
    torch.save(net.state_dict(), path)
    staged, info = load_user_model(path, arch=arch)
    assert (info["num_classes"], info["in_channels"], info["key_names"]) == (7, 3, "torchvision")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(staged(x), net(x))
    ddp = tmp_path / "ddp.pt"  # DDP's module. prefix, nested under "state_dict"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, ddp)
    with torch.no_grad():
        assert torch.equal(load_user_model(ddp, arch=arch)[0](x), net(x))


def test_staged_safetensors_and_grayscale_resnet_load(tmp_path):
    from safetensors.torch import save_file

    from kga_fast.models import build_model

    torch.manual_seed(1)
    mine = build_model("resnet18-cifar", 5, 1).eval()
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in mine.state_dict().items()}, str(path))
    loaded, info = load_user_model(path, arch="resnet18-cifar")
    assert (info["num_classes"], info["in_channels"], info["key_names"]) == (5, 1, "staged")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), mine(x))


def test_bad_model_files_are_clear_errors(tmp_path):
    torch.manual_seed(0)
    resnet = tmp_path / "resnet.pt"
    torch.save(tvm.resnet18(num_classes=10).state_dict(), resnet)
    with pytest.raises(UserError, match="pass --arch resnet18"):
        load_user_model(resnet, arch="vgg11")
    with pytest.raises(UserError, match="not a resnet18-cifar"):
        load_user_model(resnet, arch="resnet18-cifar")  # 7x7 stem against a 3x3 one
    pickled = tmp_path / "module.pt"
    torch.save(tvm.resnet18(num_classes=10), pickled)  # a whole module: needs code to unpickle
    with pytest.raises(UserError, match="needs code to load"):
        load_user_model(pickled, arch="resnet18")
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(UserError, match="neither a safetensors file nor a PyTorch state dict"):
        load_user_model(text, arch="resnet18")


def test_image_folder_reads_sorted_classes_resized_uint8_and_train_statistics(tmp_path):
    root = write_tree(tmp_path / "rgb")
    train = load_images("folder", root, train=True, image_size=16)
    test = load_images("folder", root, train=False, image_size=16)
    assert train.images.shape == (24, 3, 16, 16) and train.images.dtype == torch.uint8
    assert test.images.shape == (12, 3, 16, 16) and train.num_classes == 3
    assert train.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert train.paths[:2] == ["cat/000.png", "cat/001.jpg"]
    expected = train.images.double().div(255).mean(dim=(0, 2, 3))
    assert train.mean == pytest.approx(expected.tolist(), abs=1e-5) and test.mean == train.mean
    gray = load_images("folder", write_tree(tmp_path / "gray", gray=True), image_size=32)
    assert gray.images.shape == (24, 1, 32, 32)


def test_image_folder_bad_input(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_images("folder", empty, image_size=17)
    tree = write_tree(tmp_path / "t")
    (tree / "train" / "emu").mkdir()
    with pytest.raises(UserError, match="has no images"):
        load_images("folder", tree, image_size=18)
    tree = write_tree(tmp_path / "u")
    (tree / "test" / "yak").mkdir()
    Image.new("RGB", (8, 8)).save(tree / "test" / "yak" / "a.png")
    with pytest.raises(UserError, match="'yak'.*missing from train"):
        load_images("folder", tree, image_size=19)
    tree = write_tree(tmp_path / "v")
    good = (tree / "train" / "cat" / "000.png").read_bytes()
    (tree / "train" / "cat" / "000.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(UserError, match="cannot read image"):
        load_images("folder", tree, image_size=20)


def test_forget_list_names_files_of_the_train_folder(tmp_path):
    paths = ["cat/000.png", "cat/001.jpg", "dog/000.png"]
    listed = tmp_path / "forget.txt"
    listed.write_text("# a deletion request\ndog/000.png\n./cat/000.png\n\n")
    assert read_forget_list(listed, paths).tolist() == [0, 2]
    for content, match in (
        ("cat/999.png\n", "is not an image"),
        ("\n", "names no image"),
        ("\n".join(paths), "every train image"),
        ("cat/000.png\ncat/000.png", "twice"),
    ):
        listed.write_text(content)
        with pytest.raises(UserError, match=match):
            read_forget_list(listed, paths)


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


FOLDER_ARGS = [
    "--dataset",
    "folder",
    "--arch",
    "resnet18",
    "--batch-size",
    "8",
    "--inner-steps",
    "2",
    "--freeze",
    "0",
    "--pretrain-preset",
    "paper",
    "--pretrain-epochs",
    "1",
    "--new-fraction",
    "0.5",
]


def users_request(tmp_path: Path, forgotten: list[str], per_class=(8, 4)) -> tuple[Path, Path, Path]:
    """What a user brings: an ImageFolder tree of 3 classes, a torchvision resnet18 state dict
    for it, and a forget list naming `forgotten`."""
    tree = write_tree(tmp_path / "images", per_class=per_class)
    torch.manual_seed(0)
    weights = tmp_path / "mine.pt"
    torch.save(tvm.resnet18(num_classes=3).state_dict(), weights)
    forget = tmp_path / "forget.txt"
    forget.write_text("".join(f"{name}\n" for name in forgotten))
    return tree, weights, forget


@pytest.mark.slow
def test_your_model_your_folder_your_request_without_retraining(tmp_path):
    """End to end: a torchvision resnet18 of the user's, an ImageFolder tree, a forget list,
    --no-retrain: no A_r is trained, the records and report have no A_r numbers and say so."""
    tree, weights, forget = users_request(
        tmp_path, ["cat/000.png", "cat/001.jpg", "dog/002.png", "owl/003.jpg"]
    )
    run_dir = tmp_path / "run"
    args = [
        "--run-dir",
        str(run_dir),
        "--data-dir",
        str(tree),
        "--model",
        str(weights),
        "--forget-list",
        str(forget),
        "--no-retrain",
        "--normalize",
        "imagenet",
        *FOLDER_ARGS,
    ]
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "your model" in proc.stdout and "held-out D_t accuracy" in proc.stdout
    assert not (run_dir / "models" / "Ar.json").exists()
    ad = json.loads((run_dir / "models" / "Ad.json").read_text())
    assert ad["imported"] and ad["normalize"]["mean"] == [0.485, 0.456, 0.406]
    splits = json.loads((run_dir / "splits.json").read_text())
    assert splits["forget"] == [0, 1, 10, 19] and splits["options"]["normalize"][1][0] == 0.229
    (record,) = json.loads((run_dir / "results.json").read_text())["runs"]
    assert record["retrain"] is False and record["retrain_seconds"] is None
    assert set(record["eval"]["test"]["accuracy"]) == {"Ad", "A*"}
    assert set(record["mia"]) == {"Ad", "A*"}
    assert record["mia"]["A*"]["loss_lr_cv_acc"] is None  # 4 images: too few to cross-validate
    assert 0 <= record["mia"]["A*"]["mia_efficacy_confidence"] <= 1
    assert set(record["phases"]) == {"helper_models", "caching", "unlearning", "evaluation"}
    assert set(record["helper_seconds"]) == {"Af", "An"} and all(
        v > 0 for v in record["helper_seconds"].values()
    )
    assert record["phases"]["helper_models"] == pytest.approx(sum(record["helper_seconds"].values()))
    assert record["peak_memory"]["kind"] == "cpu_peak_rss" and record["peak_memory"]["bytes"] > 0
    report = (run_dir / "report.md").read_text()
    assert "A_r was not trained" in report
    af = json.loads((run_dir / "models" / "Af.json").read_text())
    assert af["normalize"] == ad["normalize"]  # every model of the folder sees one preprocessing
    # The same folder with another model file is refused, and nothing is overwritten.
    other = tmp_path / "other.pt"
    torch.save(tvm.resnet18(num_classes=3).state_dict(), other)
    before = (run_dir / "results.json").read_bytes()
    bad = run(*[str(other) if a == str(weights) else a for a in args])
    assert bad.returncode == 2 and "holds an A_d that is not" in bad.stderr
    assert (run_dir / "results.json").read_bytes() == before


def test_a_model_of_another_class_count_is_refused_before_anything_is_written(tmp_path):
    tree = write_tree(tmp_path / "images")  # 3 classes
    weights = tmp_path / "five.pt"
    torch.save(tvm.resnet18(num_classes=5).state_dict(), weights)
    run_dir = tmp_path / "run"
    proc = run("--run-dir", str(run_dir), "--data-dir", str(tree), "--model", str(weights), *FOLDER_ARGS)
    assert proc.returncode == 2 and "has 5 classes" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()  # not even splits.json


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train-subset", "0"], "--train-subset must be at least 2"),
        (["--run-dir", "/dev/null/run"], "cannot create the run folder"),
        (["--method", "retrain", "--no-retrain"], "cannot run with --no-retrain"),
        (["--normalize", "0.5,0.5,0.5"], "C means then C positive stds"),
        (["--model", "/nonexistent/weights.pt"], "does not exist"),
        (["--dataset", "folder"], "needs --data-dir"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, extra, message):
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), "--freeze", "0", *extra]
    if extra[:2] == ["--run-dir", "/dev/null/run"]:
        args = ["--freeze", "0", *extra]
    proc = run(*args, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") or "error:" in last, last
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "models").exists() and not (run_dir / "results.json").exists()


@pytest.mark.slow
def test_python_api_example_on_your_model_and_folder(tmp_path):
    """examples/own_model.py: kga_fast.unlearn_model on a torchvision resnet18 and an ImageFolder
    tree; the unlearned state dict loads back into torchvision's resnet18."""
    forgotten = ["cat/000.png", "dog/001.jpg", "owl/002.png", "owl/003.jpg", "cat/004.png"]
    tree, weights, forget = users_request(tmp_path, forgotten, per_class=(8, 10))  # D_n: 3 of 30
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "own_model.py"),
        "--data-dir",
        str(tree),
        "--model",
        str(weights),
        "--forget-list",
        str(forget),
        "--run-dir",
        str(run_dir),
        "--epochs",
        "1",
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy on the forgotten images" in proc.stdout
    state = torch.load(run_dir / "unlearned_state_dict.pt", weights_only=True)
    back = tvm.resnet18(num_classes=3)
    back.load_state_dict(state)  # strict: the user's own key names
    (record,) = json.loads((run_dir / "results.json").read_text())["runs"]
    assert (
        record["retrain"] is False and len(json.loads((run_dir / "splits.json").read_text())["forget"]) == 5
    )


@pytest.mark.slow
def test_python_api_runs_any_trained_method_without_helpers(tmp_path):
    """unlearn_model(method="ct"): the registry's method on the user's model and folder, with no
    A_f / A_n trained (only KGA needs them); a method or config it cannot run is one UserError."""
    from kga_fast import unlearn_model
    from kga_fast.methods import BASELINE_PRESETS
    from kga_fast.methods.kga import UnlearnConfig

    tree, weights, forget = users_request(tmp_path, ["cat/000.png", "dog/001.jpg", "owl/002.png"])
    common = dict(forget=forget, run_dir=tmp_path / "run", arch="resnet18", normalize="imagenet")
    for method, config, message in [
        ("retrain", None, "unknown method 'retrain'"),
        ("ct", UnlearnConfig(), "takes a BaselineConfig"),
        ("kga", BASELINE_PRESETS["ct"], "takes an UnlearnConfig"),
    ]:
        with pytest.raises(UserError, match=message):
            unlearn_model(weights, tree, method=method, config=config, **common)
    cfg = dataclasses.replace(BASELINE_PRESETS["ct"], epochs=1, batch_size=8)
    unlearned, record = unlearn_model(weights, tree, method="ct", config=cfg, **common)
    assert record["method"] == "ct" and record["config"]["schedule"] == "cosine"
    assert not (tmp_path / "run" / "models" / "Af.json").exists()
    assert isinstance(unlearned, tvm.ResNet)

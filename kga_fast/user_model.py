"""Your own trained model as A_d: a weights file of a torchvision resnet18 / vgg11 (or of our
-cifar variants), mapped exactly into a StagedNet.

    model, info = load_user_model("my_resnet18.pt", arch="resnet18")

The file is a safetensors file or a PyTorch state dict (`torch.save(model.state_dict(), path)`),
read with `torch.load(weights_only=True)`: nothing that needs code to load is ever unpickled.
Key names may be torchvision's own (`conv1.weight`, `layer1.0.bn1.running_mean`, `fc.weight`;
`features.0.weight`, `classifier.6.bias`), a StagedNet's (`stem.`, `blocks.`, `head.`: our -cifar
variants and our own checkpoints), with or without DDP's `module.` prefix, or nested under a
"state_dict" / "model" key. The StagedNet is built around the torchvision module and the weights
are loaded into that module with strict key and shape checks, so it computes exactly what the
torchvision model computes. Class count and input channels are read from the weights.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from kga_fast.errors import UserError
from kga_fast.files import sha256_file
from kga_fast.models import ARCHS, StagedNet, build_with_torchvision

STAGED_PREFIXES = ("stem.", "blocks.", "head.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a weights-only PyTorch file (UserError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        pass  # not a safetensors file: try a PyTorch state dict
    with path.open("rb") as f:  # torch.save writes a zip archive (legacy: a raw pickle)
        is_torch_file = zipfile.is_zipfile(f) or (f.seek(0) == 0 and f.read(1) == b"\x80")
    if not is_torch_file:
        raise UserError(f"{path} is neither a safetensors file nor a PyTorch state dict")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = str(e).splitlines()[0][:200]
        raise UserError(
            f"{path} is a pickle that needs code to load ({why}); save the weights with "
            "torch.save(model.state_dict(), path) or as safetensors"
        ) from None
    except Exception as e:  # a zip, a text file, a truncated file: all are "not weights"
        raise UserError(
            f"{path} is neither a safetensors file nor a PyTorch state dict ({type(e).__name__})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# The first convolution's weight, by (key names, family): its input channels are the model's.
FIRST_CONV = {
    ("torchvision", "resnet18"): "conv1.weight",
    ("torchvision", "vgg11"): "features.0.weight",
    ("staged", "resnet18"): "stem.0.weight",
    ("staged", "vgg11"): "blocks.0.0.weight",
}


def infer_shape(state: dict[str, torch.Tensor]) -> tuple[str, str, int, int]:
    """(key names "torchvision" | "staged", family "resnet18" | "vgg11", num_classes,
    in_channels): the classes are the outputs of the last linear layer (state dicts list
    modules in order), the channels the inputs of the first convolution."""
    names = "staged" if all(k.startswith(STAGED_PREFIXES) for k in state) else "torchvision"
    resnet = "conv1.weight" in state or "blocks.0.0.conv1.weight" in state
    family = "resnet18" if resnet else "vgg11"
    conv = state.get(FIRST_CONV[names, family])
    linears = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if conv is None or conv.dim() != 4 or not linears:
        raise UserError("the weights are neither a torchvision resnet18 / vgg11 nor a StagedNet")
    return names, family, int(linears[-1].shape[0]), int(conv.shape[1])


def load_user_model(path: str | Path, *, arch: str) -> tuple[StagedNet, dict]:
    """(StagedNet in eval mode on the CPU, info) from a weights file of `arch` (module doc).
    info: {"source", "sha256", "num_classes", "in_channels", "key_names"}."""
    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    state = read_state_dict(path)
    names, family, num_classes, in_channels = infer_shape(state)
    if not arch.startswith(family):
        raise UserError(
            f"{path} holds a {family}, not a {arch}: pass --arch {family} (or its -cifar variant)"
        )
    staged, torchvision_net = build_with_torchvision(arch, num_classes, in_channels)
    target = staged if names == "staged" else torchvision_net
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as e:
        why = " ".join(str(e).split())[:300]
        raise UserError(
            f"{path} is not a {arch} with {num_classes} classes and {in_channels} channels: {why}"
        ) from None
    digest = sha256_file(path)
    info = {
        "source": str(path),
        "sha256": digest,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "key_names": names,
    }
    return staged.eval(), info

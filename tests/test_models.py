"""Models (StagedNet over torchvision ResNet18 / VGG11) and layer freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from kga_fast.errors import UserError
from kga_fast.freeze import apply_freeze, freeze_label, parse_freeze
from kga_fast.models import ARCHS, block_names, build_model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_channels,num_classes", [(1, 10), (3, 100)])
def test_output_shapes(arch, in_channels, num_classes):
    model = build_model(arch, num_classes, in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "arch,n_blocks", [("resnet18", 4), ("resnet18-cifar", 4), ("vgg11", 8), ("vgg11-bn-cifar", 8)]
)
def test_freezable_blocks(arch, n_blocks):
    model = build_model(arch, 10, 3)
    assert len(model.blocks) == n_blocks == len(block_names(arch))
    if arch.startswith("vgg"):  # each block is one conv and what follows it up to the next conv
        for block in model.blocks:
            assert isinstance(block[0], nn.Conv2d)
            assert sum(isinstance(m, nn.Conv2d) for m in block) == 1
    else:
        assert block_names(arch) == ["layer1", "layer2", "layer3", "layer4"]
        assert all(len(block) == 2 for block in model.blocks)  # two BasicBlocks per layer


def _torchvision(arch: str) -> nn.Module:
    return tvm.resnet18(num_classes=10) if arch == "resnet18" else tvm.vgg11(num_classes=10)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_forward_equals_torchvision(arch):
    torch.manual_seed(0)
    reference = _torchvision(arch).eval()
    model = build_model(arch, 10, 3).eval()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert len(ours) == len(theirs)
    # Same modules in the same order: copy the torchvision weights across position by position.
    mapped = {}
    for (key, value), (tv_key, tv_value) in zip(ours.items(), theirs.items(), strict=True):
        assert value.shape == tv_value.shape, (key, tv_key)
        mapped[key] = tv_value
    model.load_state_dict(mapped)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_frozen_prefix_computes_the_same_and_trains_only_the_rest():
    torch.manual_seed(0)
    model = build_model("resnet18-cifar", 10, 1).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
    apply_freeze(model, (1, 2))
    assert model.frozen_prefix() == 2
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # the no-grad prefix path
    model.train()
    assert not model.stem.training and not model.blocks[1].training and model.blocks[2].training
    frozen_bn = model.blocks[0][0].bn1.running_mean.clone()
    trained_bn = model.blocks[2][0].bn1.running_mean.clone()
    model(x).sum().backward()
    assert torch.equal(model.blocks[0][0].bn1.running_mean, frozen_bn)  # frozen BN does not move
    assert not torch.equal(model.blocks[2][0].bn1.running_mean, trained_bn)
    assert all(p.grad is None for p in model.stem.parameters())
    assert all(p.grad is None for p in model.blocks[1].parameters())
    assert all(p.grad is not None for p in model.blocks[3].parameters())


def test_parse_freeze():
    assert parse_freeze("0", "resnet18") == () and parse_freeze("", "vgg11") == ()
    assert parse_freeze("2,1", "resnet18") == (1, 2) and parse_freeze("(1,2,3)", "vgg11") == (
        1,
        2,
        3,
    )
    assert (
        parse_freeze([8], "vgg11") == (8,) and freeze_label((1, 2)) == "(1,2)" and freeze_label(()) == "(0)"
    )


@pytest.mark.parametrize(
    "spec,arch,match",
    [
        ("5", "resnet18", "out of range"),
        ("9", "vgg11", "out of range"),
        ("1,a", "resnet18", "bad freeze spec"),
        ("1,1", "resnet18", "twice"),
        ("-1", "vgg11", "out of range"),
    ],
)
def test_parse_freeze_errors(spec, arch, match):
    with pytest.raises(UserError, match=match):
        parse_freeze(spec, arch)


def test_build_model_errors():
    with pytest.raises(UserError, match="unknown arch"):
        build_model("resnet50", 10)
    with pytest.raises(UserError, match="bad model shape"):
        build_model("resnet18", 1)

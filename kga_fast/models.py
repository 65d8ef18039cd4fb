"""Architectures: torchvision ResNet18 / VGG11 as the paper used them, and CIFAR variants.

Every model is a `StagedNet`: stem -> freezable blocks -> head, which computes exactly
what the torchvision forward computes, but exposes the ordered freezable blocks
(ResNet18: layer1..layer4; VGG11: its 8 conv blocks) so that freezing is one concept
(kga_fast.freeze) and a frozen prefix can run without an autograd graph.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from kga_fast.errors import UserError

ARCHS = ("resnet18", "vgg11", "resnet18-cifar", "vgg11-bn-cifar")


class StagedNet(nn.Module):
    """stem -> blocks[0..B-1] -> head.

    `frozen` holds the 0-based indices of frozen blocks (set by kga_fast.freeze). The stem
    counts as part of block 0: freezing block 0 freezes the stem too. While training, the
    longest frozen prefix runs under no_grad (nothing in it needs a gradient), and frozen
    blocks stay in eval mode so their BatchNorm running statistics never move.
    """

    def __init__(self, arch: str, stem: nn.Module, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.arch = arch
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.frozen: tuple[int, ...] = ()

    def frozen_prefix(self) -> int:
        """Number of leading blocks that are frozen (the stem goes with block 0)."""
        n = 0
        while n < len(self.blocks) and n in self.frozen:
            n += 1
        return n

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(N, C, H, W) images -> (N, classes) logits. With `start` = k > 0, x is instead the
        output of the stem and the first k blocks (kga_fast.methods.kga_cache.PrefixCache keeps it for a
        frozen prefix), and only blocks k.. and the head run."""
        if start:
            if torch.is_grad_enabled() and start > self.frozen_prefix():
                raise ValueError(
                    f"start={start} skips trainable blocks (frozen prefix: {self.frozen_prefix()})"
                )
        else:
            prefix = self.frozen_prefix() if torch.is_grad_enabled() else 0
            x, start = self.prefix(x, prefix), prefix
        for block in self.blocks[start:]:
            x = block(x)
        return self.head(x)

    def prefix(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The stem and the first k blocks on images x; without autograd when k > 0 (the frozen
        prefix: nothing in it needs a gradient), the stem alone with it when k == 0."""
        if not k:
            return self.stem(x)
        with torch.no_grad():
            x = self.stem(x)
            for block in self.blocks[:k]:
                x = block(x)
        return x.detach()

    def train(self, mode: bool = True) -> StagedNet:
        super().train(mode)
        for i in self.frozen:
            self.blocks[i].eval()
            if i == 0:
                self.stem.eval()
        return self


def _resnet18(num_classes: int, in_channels: int, cifar: bool) -> tuple[StagedNet, nn.Module]:
    net = tvm.resnet18(num_classes=num_classes)
    if cifar:  # 3x3 stride-1 stem, no max-pool: keeps 32x32 inputs at full resolution
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    blocks = [net.layer1, net.layer2, net.layer3, net.layer4]
    head = nn.Sequential(net.avgpool, nn.Flatten(1), net.fc)
    return StagedNet("resnet18-cifar" if cifar else "resnet18", stem, blocks, head), net


def _vgg11(num_classes: int, in_channels: int, cifar: bool) -> tuple[StagedNet, nn.Module]:
    net = tvm.vgg11_bn(num_classes=num_classes) if cifar else tvm.vgg11(num_classes=num_classes)
    if in_channels != 3:
        net.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    features = list(net.features)
    # A block is one conv with what follows it up to the next conv (BN, ReLU, max-pool).
    starts = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    ends = starts[1:] + [len(features)]
    blocks = [nn.Sequential(*features[s:e]) for s, e in zip(starts, ends, strict=True)]
    if cifar:  # five 2x pools take 32x32 to 1x1: a linear classifier on the 512 features
        head = nn.Sequential(nn.Flatten(1), nn.Linear(512, num_classes))
    else:
        head = nn.Sequential(net.avgpool, nn.Flatten(1), net.classifier)
    return StagedNet("vgg11-bn-cifar" if cifar else "vgg11", nn.Identity(), blocks, head), net


def build_with_torchvision(arch: str, num_classes: int, in_channels: int = 3):
    """(StagedNet, the torchvision module it is made of): the two share every parameter, so
    weights loaded into the torchvision module under its own key names are the StagedNet's."""
    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 2 or in_channels < 1:
        raise UserError(f"bad model shape: num_classes={num_classes}, in_channels={in_channels}")
    build = _resnet18 if arch.startswith("resnet18") else _vgg11
    return build(num_classes, in_channels, cifar=arch.endswith("-cifar"))


def build_model(arch: str, num_classes: int, in_channels: int = 3) -> StagedNet:
    """A freshly initialised model. Inputs are (N, in_channels, 32, 32) images."""
    return build_with_torchvision(arch, num_classes, in_channels)[0]


def block_names(arch: str) -> list[str]:
    """Human names of the freezable blocks, 1-based as in the paper's notation."""
    n = 4 if arch.startswith("resnet18") else 8
    kind = "layer" if arch.startswith("resnet18") else "conv"
    return [f"{kind}{i}" for i in range(1, n + 1)]

"""Residual networks: pre-activation ``resnet18`` and wide ResNets (``wrn``)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from prunelab.errors import ModelError
from prunelab.models.factory import register
from prunelab.models.layers import sap_init
from prunelab.models.options import chw, positive_float, positive_int, probability, scaled


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b), as the PQ Index code's ``resnet.Block``.

    out = conv2([dropout](relu(bn2(conv1(relu(bn1(x))))))) + shortcut, where the shortcut is ``x``
    or, when the shape changes, a bias-free 1×1 conv of the pre-activated ``relu(bn1(x))``.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of conv1 and of the shortcut.
        dropout: rate of a dropout between the two convs, or None for no dropout layer.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout is not None else None
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.dropout is not None:
            out = self.dropout(out)
        return self.conv2(out) + skip


class WideBlock(PreActBlock):
    """Wide-ResNet basic block (Zagoruyko & Komodakis 2016), as the PQ Index code's ``wresnet``:
    a :class:`PreActBlock` with dropout between its two convs."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__(in_planes, planes, stride, dropout)


class _PreActNetwork(nn.Module):
    """3×3 stem (no max-pool) → stages of pre-activation blocks → BN-ReLU-GAP-Linear.

    Args:
        in_channels: input channels.
        num_classes: outputs.
        stem: channels of the stem conv.
        stages: ``(channels, stride of the first block, number of blocks)`` per stage.
        block: ``block(in_planes, planes, stride)`` builds one block.
    """

    def __init__(self, in_channels: int, num_classes: int, stem: int, stages,
                 block: Callable[[int, int, int], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        planes = stem
        for i, (width, stride, blocks) in enumerate(stages, start=1):
            stage = []
            for j in range(blocks):
                stage.append(block(planes, width, stride if j == 0 else 1))
                planes = width
            self.add_module(f"layer{i}", nn.Sequential(*stage))
        self.num_stages = len(stages)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.flatten(self.avgpool(self.relu(self.bn(x)))))


class PreActResNet(_PreActNetwork):
    """CIFAR-style pre-activation ResNet: 3×3 stem (no max-pool), four stages, BN-ReLU-GAP-Linear.

    Args:
        in_channels: input channels.
        num_classes: outputs.
        widths: channels of the four stages (the stem has ``widths[0]``).
        blocks: blocks per stage.
    """

    def __init__(self, in_channels: int, num_classes: int, widths, blocks):
        stages = [(w, 1 if i == 0 else 2, n) for i, (w, n) in enumerate(zip(widths, blocks))]
        super().__init__(in_channels, num_classes, widths[0], stages, PreActBlock)


class WideResNet(_PreActNetwork):
    """WRN-depth-k: 3×3 stem (16 channels), three stages of (depth−4)/6 wide blocks with
    16k, 32k, 64k channels and strides 1, 2, 2, then BN-ReLU-GAP-Linear.

    Args:
        in_channels: input channels.
        num_classes: outputs.
        depth: total depth, 6n + 4.
        widen_factor: k.
        dropout: dropout rate between the two convs of a block.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, widen_factor: int, dropout: float):
        n = (depth - 4) // 6
        stages = [(w * widen_factor, stride, n) for w, stride in zip((16, 32, 64), (1, 2, 2))]
        super().__init__(in_channels, num_classes, 16, stages,
                         lambda in_planes, planes, stride: WideBlock(in_planes, planes, stride, dropout))


@register("resnet18")
def _resnet18(in_shape, num_classes, *, width=1.0):
    """Pre-activation ResNet18, CIFAR stem (PQ Index paper, Diao et al. 2023; code ``resnet.py``).

    Widths 64-128-256-512 × ``width``, blocks [2, 2, 2, 2], bias-free convs, final BN-ReLU before
    global average pooling; SAP init. 11,172,170 parameters at width 1 with 10 classes.
    """
    channels, _, _ = chw(in_shape)
    width = positive_float("width", width)
    widths = [scaled(c, width) for c in (64, 128, 256, 512)]
    return sap_init(PreActResNet(channels, num_classes, widths, (2, 2, 2, 2)))


@register("wrn")
def _wrn(in_shape, num_classes, *, depth=28, widen_factor=10, dropout=0.0):
    """Wide ResNet (gRDA: WRN-28-10, Chao et al. 2020; PQ Index: WRN-28-8, Diao et al. 2023), SAP init.

    Bias-free convs, dropout 0 by default. With 32×32 inputs the last stage is 8×8, so global
    average pooling equals the original ``avg_pool2d(8)``. ``depth`` must be 6n + 4 (10, 16, 22,
    28, …). 36,479,194 parameters for WRN-28-10 with 10 classes.
    """
    channels, _, _ = chw(in_shape)
    depth = positive_int("depth", depth)
    if depth < 10 or (depth - 4) % 6:
        raise ModelError(f"depth must be 6n + 4 with n ≥ 1 (10, 16, 22, 28, 40, …), got {depth}")
    widen_factor = positive_int("widen_factor", widen_factor)
    dropout = probability("dropout", dropout)
    return sap_init(WideResNet(channels, num_classes, depth, widen_factor, dropout))

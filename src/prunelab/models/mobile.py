"""Mobile architectures: ``mobilenetv2``, ``efficientnet-b0`` and ``mixnet-s``.

All three are stacks of one block, :class:`InvertedResidual` (Sandler et al. 2018): a 1×1
expansion conv, a depthwise conv (one kernel size, or MixNet's mixed kernel sizes), an optional
squeeze-and-excitation, and a linear 1×1 projection, with a residual connection when the shape
is kept. The stride schedules are adapted to 28×28 / 32×32 inputs as CIFAR versions of these
networks do: the stem and the first stride-2 stage of the ImageNet versions keep stride 1, so
a 28×28 input reaches the head at 4×4 (32×32: 4×4) instead of collapsing to 1×1.

Every model takes ``width`` (channel multiplier, default 0.5 so that the defaults train on two
CPU cores) and ``depth`` (repeat multiplier: a stage of ``n`` blocks gets ``ceil(n · depth)``).
Depthwise convs are ``nn.Conv2d`` with ``groups`` = channels, so their weights are
``(C, 1, k, k)``. Conv weights use the SAP init (kaiming-normal fan_out), BN γ=1, β=0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prunelab.models.factory import register
from prunelab.models.layers import sap_init
from prunelab.models.options import chw, positive_float, probability, scaled

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU}


def _activation(name: str) -> nn.Module:
    # Separate, non-inplace modules: forward hooks on the conv before them see its own output.
    return _ACTIVATIONS[name]()


def split_channels(channels: int, parts: int) -> list[int]:
    """``channels`` split into ``parts`` near-equal groups, the first group taking the remainder
    (MixNet's ``_split_channels``).

    Args:
        channels: channels to split.
        parts: number of groups.

    Returns:
        The group sizes, summing to ``channels``.

    Example:
        >>> split_channels(10, 3)
        [4, 3, 3]
    """
    sizes = [channels // parts] * parts
    sizes[0] += channels - sum(sizes)
    return sizes


class ConvBNAct(nn.Sequential):
    """Conv (bias-free, "same" padding) → BatchNorm → activation (none when ``act`` is None).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel: kernel size.
        stride: stride.
        groups: conv groups (``in_channels`` for a depthwise conv).
        act: ``"relu"``, ``"relu6"``, ``"silu"`` or None (linear, as a bottleneck projection).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
                 groups: int = 1, act: str | None = "relu6"):
        layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(out_channels)]
        if act is not None:
            layers.append(_activation(act))
        super().__init__(*layers)


class MixedDepthwise(nn.Module):
    """MixNet's mixed depthwise conv (Tan & Le 2019): the channels split into one group per kernel
    size (:func:`split_channels`), each group a depthwise conv with its own kernel, outputs
    concatenated. With one kernel size it is a plain depthwise conv.

    Args:
        channels: input and output channels.
        kernels: kernel sizes, e.g. ``(3, 5, 7)``; only the first ``channels`` are used when
            there are fewer channels than kernels.
        stride: stride of every group.
    """

    def __init__(self, channels: int, kernels: tuple[int, ...], stride: int):
        super().__init__()
        kernels = kernels[:channels]  # a very narrow layer cannot give every kernel a channel
        self.splits = split_channels(channels, len(kernels))
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
                                   for c, k in zip(self.splits, kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.convs) == 1:
            return self.convs[0](x)
        parts = torch.split(x, self.splits, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, parts)], dim=1)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as in EfficientNet/MixNet: global average pool →
    1×1 conv (reduce, with bias) → activation → 1×1 conv (expand, with bias) → sigmoid → scale.

    Args:
        channels: channels of the feature map it scales.
        reduced: channels of the bottleneck.
        act: activation of the bottleneck.
    """

    def __init__(self, channels: int, reduced: int, act: str):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = _activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Inverted residual block with a linear bottleneck (MobileNetV2; MBConv of EfficientNet/MixNet).

    [1×1 expand-BN-act, left out when ``expand == 1``] → depthwise k×k (mixed kernels when
    several) -BN-act → [squeeze-excite] → 1×1 project-BN (linear) → [+ input, when stride 1 and
    ``in_channels == out_channels``; stochastic depth drops the branch per sample in training].

    Args:
        in_channels: input channels.
        out_channels: output channels.
        expand: expansion ratio t (hidden channels = ``in_channels · t``).
        kernels: depthwise kernel size(s).
        stride: stride of the depthwise conv.
        act: activation (``"relu6"``, ``"relu"``, ``"silu"``).
        se_ratio: squeeze-excite bottleneck as a fraction of ``in_channels``; 0 for none.
        drop_path: probability of dropping the residual branch of a sample in training
            (stochastic depth, Huang et al. 2016); only used when the block is residual.
    """

    def __init__(self, in_channels: int, out_channels: int, expand: float, kernels: tuple[int, ...],
                 stride: int, act: str, se_ratio: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        hidden = max(1, int(round(in_channels * expand)))
        self.expand = ConvBNAct(in_channels, hidden, 1, act=act) if expand != 1 else None
        self.depthwise = MixedDepthwise(hidden, kernels, stride)
        self.bn = nn.BatchNorm2d(hidden)
        self.act = _activation(act)
        self.se = SqueezeExcite(hidden, max(1, int(in_channels * se_ratio)), act) if se_ratio > 0 else None
        self.project = ConvBNAct(hidden, out_channels, 1, act=None)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.act(self.bn(self.depthwise(out)))
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        if not self.residual:
            return out
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            alive = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
            out = out * alive / keep
        return x + out


class MobileNetwork(nn.Module):
    """stem ConvBNAct 3×3 → blocks (``nn.Sequential`` of :class:`InvertedResidual`) → head 1×1
    ConvBNAct → global average pool → flatten → [dropout] → Linear.

    Args:
        in_channels: input channels.
        num_classes: outputs.
        stem: stem channels.
        blocks: the blocks, in order.
        head: head channels.
        act: activation of the stem and head.
        dropout: dropout rate before the classifier (0 for none).
    """

    def __init__(self, in_channels: int, num_classes: int, stem: int, blocks: list[nn.Module],
                 head: int, act: str, dropout: float = 0.0):
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem, 3, act=act)
        self.blocks = nn.Sequential(*blocks)
        last = blocks[-1].project[0].out_channels if blocks else stem
        self.head = ConvBNAct(last, head, 1, act=act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.head(self.blocks(self.stem(x)))))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.classifier(x)


def repeats(count: int, depth: float) -> int:
    """Blocks of a stage of ``count`` blocks at depth multiplier ``depth``: ``ceil(count · depth)``
    (EfficientNet's ``round_repeats``), at least 1."""
    return max(1, int(math.ceil(count * depth)))


def _build(stages, in_channels: int, width: float, depth: float, drop_path: float = 0.0) -> list[nn.Module]:
    """Blocks from ``(expand, out channels, repeats, first stride, kernels, act, se_ratio)`` rows;
    stochastic depth grows linearly with the block index to ``drop_path`` (EfficientNet)."""
    rows = []
    for expand, out, count, stride, kernels, act, se_ratio in stages:
        for i in range(repeats(count, depth)):
            rows.append((expand, scaled(out, width), stride if i == 0 else 1, kernels, act, se_ratio))
    blocks, channels = [], in_channels
    for index, (expand, out, stride, kernels, act, se_ratio) in enumerate(rows):
        rate = drop_path * index / len(rows)
        blocks.append(InvertedResidual(channels, out, expand, kernels, stride, act, se_ratio, rate))
        channels = out
    return blocks


def _check(in_shape, width, depth, drop_path=0.0, dropout=0.0) -> tuple[int, float, float, float, float]:
    """The input channels and the checked multipliers and rates every mobile factory takes."""
    channels, _, _ = chw(in_shape)
    return (channels, positive_float("width", width), positive_float("depth", depth),
            probability("drop_path", drop_path), probability("dropout", dropout))


# (expand t, channels c, repeats n, stride s) of Sandler et al. (2018), Table 2; the strides of
# the second stage (and the stem) are 1 here instead of 2, for 28×28 / 32×32 inputs.
_MOBILENETV2 = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))


@register("mobilenetv2")
def _mobilenetv2(in_shape, num_classes, *, width=0.5, depth=1.0, dropout=0.0):
    """MobileNetV2 (Sandler et al. 2018) for small images: inverted residual blocks, depthwise
    3×3, linear bottlenecks, ReLU6, BatchNorm; SAP init.

    Stem 3×3 conv of 32·width channels at stride 1, the seven stages of the paper's Table 2 with
    channels × ``width`` and repeats ``ceil(n · depth)``, strides 1, 1, 2, 2, 1, 2, 1 (the paper's
    stem and second stage stride 2 are 1 here), head 1×1 conv of 1280 channels (1280 · width when
    width > 1, as in the paper), global average pool, [dropout], Linear.

    Default (width 0.5, depth 1) on (1, 28, 28) with 10 classes: 696,970 parameters,
    21,093,696 multiply-accumulates per sample (``prunelab.core.metrics.count_flops``).

    Args:
        in_shape: (channels, height, width) of one input.
        num_classes: outputs.
        width: channel multiplier.
        depth: repeat multiplier.
        dropout: dropout before the classifier (the paper uses 0.2 on ImageNet).
    """
    channels, width, depth, _, dropout = _check(in_shape, width, depth, dropout=dropout)
    stages = [(t, c, n, s, (3,), "relu6", 0.0) for t, c, n, s in _MOBILENETV2]
    stem = scaled(32, width)
    blocks = _build(stages, stem, width, depth)
    head = scaled(1280, width) if width > 1.0 else 1280
    return sap_init(MobileNetwork(channels, num_classes, stem, blocks, head, "relu6", dropout))


# (expand, channels, repeats, stride, kernel) of EfficientNet-B0 (Tan & Le 2019, Table 1); SE 0.25
# of the block's input channels, SiLU. The stem and the second stage stride 2 are 1 here.
_EFFICIENTNET_B0 = ((1, 16, 1, 1, 3), (6, 24, 2, 1, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
                    (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))


@register("efficientnet-b0")
def _efficientnet_b0(in_shape, num_classes, *, width=0.5, depth=1.0, drop_path=0.0, dropout=0.0):
    """EfficientNet-B0 (Tan & Le 2019) for small images: MBConv blocks with squeeze-and-excitation
    (0.25 of the block input), SiLU (swish), BatchNorm; SAP init.

    Stem 3×3 conv of 32·width channels at stride 1, the seven stages of Table 1 with channels ×
    ``width`` and repeats ``ceil(n · depth)``, strides 1, 1, 2, 2, 1, 2, 1 (the paper's stem and
    second stage stride 2 are 1 here), head 1×1 conv of 1280·width channels, global average pool,
    [dropout], Linear. Stochastic depth is off by default; ``drop_path`` > 0 turns it on, the rate
    of block i of N being ``drop_path · i / N`` (the paper uses 0.2).

    Default (width 0.5, depth 1) on (1, 28, 28) with 10 classes: 1,066,568 parameters,
    26,723,304 multiply-accumulates per sample (``prunelab.core.metrics.count_flops``).

    Args:
        in_shape: (channels, height, width) of one input.
        num_classes: outputs.
        width: channel multiplier.
        depth: repeat multiplier.
        drop_path: stochastic depth rate of the last block (0 = off).
        dropout: dropout before the classifier (the paper uses 0.2).
    """
    channels, width, depth, drop_path, dropout = _check(in_shape, width, depth, drop_path, dropout)
    stages = [(t, c, n, s, (k,), "silu", 0.25) for t, c, n, s, k in _EFFICIENTNET_B0]
    stem = scaled(32, width)
    blocks = _build(stages, stem, width, depth, drop_path)
    return sap_init(MobileNetwork(channels, num_classes, stem, blocks, scaled(1280, width), "silu", dropout))


# MixNet-S (Tan & Le 2019, Figure 9 / the reference ``mixnet_builder``): (expand, channels,
# repeats, stride, kernels, activation, SE ratio of the block input). The reference's grouped
# 1×1 expansion / projection convs (two groups in some blocks) are plain 1×1 convs here, so any
# width multiplier works; the stem and the second stage stride 2 are 1 here.
_MIXNET_S = (
    (1, 16, 1, 1, (3,), "relu", 0.0),
    (6, 24, 1, 1, (3,), "relu", 0.0), (3, 24, 1, 1, (3,), "relu", 0.0),
    (6, 40, 1, 2, (3, 5, 7), "silu", 0.5), (6, 40, 3, 1, (3, 5), "silu", 0.5),
    (6, 80, 1, 2, (3, 5, 7), "silu", 0.25), (6, 80, 2, 1, (3, 5), "silu", 0.25),
    (6, 120, 1, 1, (3, 5, 7), "silu", 0.5), (3, 120, 2, 1, (3, 5, 7, 9), "silu", 0.5),
    (6, 200, 1, 2, (3, 5, 7, 9, 11), "silu", 0.5), (6, 200, 2, 1, (3, 5, 7, 9), "silu", 0.5),
)


@register("mixnet-s")
def _mixnet_s(in_shape, num_classes, *, width=0.5, depth=1.0, drop_path=0.0, dropout=0.0):
    """MixNet-S (Tan & Le 2019, "MixConv") for small images: MBConv blocks whose depthwise conv
    mixes kernel sizes (channels split into groups with 3×3, 5×5, 7×7, … kernels,
    :class:`MixedDepthwise`), squeeze-and-excitation, ReLU in the early blocks and swish (SiLU)
    later, BatchNorm; SAP init.

    Stem 3×3 conv of 16·width channels (ReLU) at stride 1, the blocks of the paper's MixNet-S with
    channels × ``width`` and repeats ``ceil(n · depth)``, strides 1, 1, 2, 2, 1, 2 per stage (the
    paper's stem and second stage stride 2 are 1 here), head 1×1 conv of 1536 channels (ReLU),
    global average pool, [dropout], Linear. The reference's two-group 1×1 convs are plain 1×1
    convs. ``drop_path`` as in ``efficientnet-b0`` (off by default).

    Default (width 0.5, depth 1) on (1, 28, 28) with 10 classes: 922,333 parameters,
    24,303,424 multiply-accumulates per sample (``prunelab.core.metrics.count_flops``).

    Args:
        in_shape: (channels, height, width) of one input.
        num_classes: outputs.
        width: channel multiplier.
        depth: repeat multiplier.
        drop_path: stochastic depth rate of the last block (0 = off).
        dropout: dropout before the classifier (the paper uses 0.2).
    """
    channels, width, depth, drop_path, dropout = _check(in_shape, width, depth, drop_path, dropout)
    stem = scaled(16, width)
    blocks = _build(_MIXNET_S, stem, width, depth, drop_path)
    return sap_init(MobileNetwork(channels, num_classes, stem, blocks, 1536, "relu", dropout))

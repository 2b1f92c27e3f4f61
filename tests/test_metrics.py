import pytest
import torch
from torch import nn

import prunelab
from prunelab.core.metrics import count_flops, summary


def test_flops_of_a_small_model_equal_a_hand_count(tiny_net):
    # conv 1->4, 3x3, padding 1 on 8x8: 8*8 positions x 4*1*9 weights = 2304 MACs
    # fc1 64->16: 1024; fc2 16->3: 48
    records = count_flops(tiny_net, (1, 8, 8))
    assert [(r["name"], r["flops"]) for r in records] == [("conv", 2304), ("fc1", 1024), ("fc2", 48)]
    s = summary(tiny_net, input_shape=(1, 8, 8))
    assert s["flops"] == 2304 + 1024 + 48
    assert s["theoretical_speedup"] == 1.0
    assert s["prunable"] == 36 + 1024 + 48
    assert s["params_total"] == (36 + 4) + (4 + 4) + (1024 + 16) + (48 + 3)


def test_nonzero_flops_and_compression(tiny_net):
    with torch.no_grad():
        tiny_net.conv.weight[:2] = 0  # 18 of 36 conv weights zero
        tiny_net.fc1.weight[:, :32] = 0  # 512 of 1024
    s = summary(tiny_net, input_shape=(1, 8, 8))
    assert s["flops_nonzero"] == 64 * 18 + 512 + 48
    assert s["prunable_nonzero"] == 18 + 512 + 48
    assert s["compression_ratio"] == pytest.approx(1108 / 578)
    assert s["theoretical_speedup"] == pytest.approx(3376 / (1152 + 512 + 48))
    assert s["sparsity"] == pytest.approx(530 / 1108)


def test_summary_uses_masks_when_given(tiny_net):
    masks = prunelab.prune(tiny_net, "magnitude", sparsity=0.75)
    s = summary(tiny_net, masks, (1, 8, 8))
    assert s["prunable_nonzero"] == masks.kept()
    assert s["compression_ratio"] == pytest.approx(masks.total() / masks.kept())
    assert "counted" in s and "Linear/Conv" in s["counted"]


def test_strided_conv_counts_output_positions():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2))  # 32x32 -> 15x15
    assert count_flops(conv, (3, 32, 32))[0]["flops"] == 15 * 15 * 8 * 3 * 9

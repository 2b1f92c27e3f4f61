"""N:M patterns (prunelab.core.patterns) and N:M magnitude / random pruning."""

import copy

import pytest
import torch
from torch import nn

import prunelab
from prunelab.core.patterns import (
    check_pattern_sparsity, is_nm, matrix_view, nm_group_counts, nm_keep_count, nm_mask, parse_pattern,
    pattern_name,
)
from prunelab.errors import ConfigError


def test_nm_mask_keeps_the_top_n_of_each_group_and_a_short_last_group_keeps_min_n_r():
    score = torch.tensor([[5., 1., 4., 2., 3., 9.],
                          [1., 2., 3., 4., 8., 7.]])
    assert nm_mask(score, (2, 4)).tolist() == [[True, False, True, False, True, True],
                                               [False, False, True, True, True, True]]
    assert nm_mask(score, (1, 4)).tolist() == [[True, False, False, False, False, True],
                                               [False, False, False, True, True, False]]
    assert nm_keep_count(torch.ones(2, 6, dtype=torch.bool), (2, 4)) == 8
    assert nm_keep_count(torch.ones(2, 6, dtype=torch.bool), (3, 4)) == 10   # 3 + min(3, 2) per row


def test_nm_mask_keeps_all_survivors_of_a_group_with_fewer_than_n():
    score = torch.tensor([[5., 1., 4., 2., 3., 9., 1., 1.]])
    allowed = torch.tensor([[False, False, False, True, True, True, True, False]])
    keep = nm_mask(score, (2, 4), allowed)
    assert keep.tolist() == [[False, False, False, True, True, True, False, False]]
    assert int(keep.sum()) == nm_keep_count(allowed, (2, 4)) == 3
    assert not bool((keep & ~allowed).any())
    assert is_nm(keep, (2, 4), exact=False) and not is_nm(keep, (2, 4))


def test_nm_mask_ties_keep_the_lower_column():
    assert nm_mask(torch.ones(1, 8), (2, 4)).tolist() == [[True, True, False, False] * 2]
    assert nm_mask(torch.tensor([[0., 3., 3., 3.]]), (2, 4)).tolist() == [[False, True, True, False]]


def test_is_nm_and_group_counts_on_hand_cases():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 0, 1],
                         [0, 1, 1, 0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    assert nm_group_counts(mask, (2, 4)).tolist() == [[2, 2, 1], [2, 2, 0]]
    assert is_nm(mask, (2, 4))                         # the short last group may keep fewer
    assert not is_nm(mask, (1, 4), exact=False)        # groups of two kept
    mask[0, 2] = True
    assert not is_nm(mask, (2, 4), exact=False)        # three in one group
    mask[0, :4] = False
    assert is_nm(mask, (2, 4), exact=False) and not is_nm(mask, (2, 4))


@pytest.mark.parametrize("bad", ["2:2", "0:4", "4:2", "a:b", "2:4:8", "2-4", (2,), (2.0, 4), (True, 4), 24,
                                 "1:257"])
def test_parse_pattern_refuses_anything_but_n_colon_m(bad):
    with pytest.raises(ConfigError, match="N:M"):
        parse_pattern(bad)


def test_parse_pattern_accepts_the_usual_forms_and_the_sparsity_must_match():
    assert parse_pattern(" 2:4 ") == parse_pattern((2, 4)) == parse_pattern([2, 4]) == (2, 4)
    assert parse_pattern(None) is None and pattern_name((4, 8)) == "4:8"
    check_pattern_sparsity((2, 4), 0.5)
    check_pattern_sparsity(None, 0.3)
    with pytest.raises(ConfigError, match="sparsity=0.5"):
        check_pattern_sparsity((4, 8), 0.6)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))


def _top_n_per_group(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Brute force: the n largest |w| of each group of m columns (ties to the lower column)."""
    keep = torch.zeros_like(weight, dtype=torch.bool)
    for r in range(weight.shape[0]):
        for c in range(0, weight.shape[1], m):
            group = weight[r, c:c + m].abs().tolist()
            order = sorted(range(len(group)), key=lambda i: (-group[i], i))[:n]
            for i in order:
                keep[r, c + i] = True
    return keep


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_two_four_is_exact_on_an_mlp_whatever_the_scope(scope):
    model = _mlp()
    dense = copy.deepcopy(model)
    masks = prunelab.prune(model, "magnitude", sparsity=0.5, pattern="2:4", scope=scope)
    for name in ("0.weight", "2.weight", "4.weight"):
        keep = masks[name]
        assert is_nm(keep, (2, 4)) and int(keep.sum()) == keep.numel() // 2
        assert torch.equal(keep, _top_n_per_group(dense.get_parameter(name).detach(), 2, 4))
        assert not model.get_parameter(name).detach()[~keep].any()
    assert masks.pruned() == masks.total() // 2


def test_magnitude_n_m_on_a_conv_follows_the_flattened_kernel_rows():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    weight = model[0].weight.detach().clone()
    masks = prunelab.prune(model, "magnitude", sparsity=0.5, pattern="4:8")
    keep = matrix_view(masks["0.weight"])                     # (8, 27): three full groups and 3 columns
    assert keep.shape == (8, 27) and is_nm(keep, (4, 8))
    assert int(keep.sum()) == nm_keep_count(torch.ones(8, 27, dtype=torch.bool), (4, 8)) == 8 * (3 * 4 + 3)
    assert torch.equal(keep, _top_n_per_group(matrix_view(weight), 4, 8))
    assert int(masks["3.weight"].sum()) == masks["3.weight"].numel() // 2


def test_a_second_n_m_call_keeps_masks_monotone():
    model = _mlp()
    first = prunelab.prune(model, "magnitude", sparsity=0.5, pattern="2:4")
    with torch.no_grad():                                     # weights move (as in retraining)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        first.apply(model)
    again = prunelab.prune(model, "magnitude", sparsity=0.5, masks=first, pattern="2:4")
    assert again.equal(first)                                 # exactly two survivors per group: kept
    tighter = prunelab.prune(model, "magnitude", sparsity=0.75, masks=again, pattern="1:4")
    for name, keep in tighter.items():
        assert not bool((keep & ~again[name]).any())
        assert is_nm(keep, (1, 4))
        assert int(keep.sum()) == keep.numel() // 4


def test_random_n_m_is_exact_and_seeded():
    masks = prunelab.prune(_mlp(), "random", sparsity=0.5, pattern="2:4", seed=4)
    assert all(is_nm(keep, (2, 4)) for keep in masks.values())
    assert masks.equal(prunelab.prune(_mlp(), "random", sparsity=0.5, pattern="2:4", seed=4))
    assert not masks.equal(prunelab.prune(_mlp(), "random", sparsity=0.5, pattern="2:4", seed=5))


def test_magnitude_pattern_refuses_a_contradicting_sparsity_and_bad_patterns():
    with pytest.raises(ConfigError, match="sparsity=0.5"):
        prunelab.prune(_mlp(), "magnitude", sparsity=0.9, pattern="2:4")
    with pytest.raises(ConfigError, match="N:M"):
        prunelab.methods.create("magnitude", pattern="4:2")
    assert prunelab.methods.create("magnitude", pattern=(2, 4)).hparams.pattern == "2:4"


@pytest.mark.filterwarnings("ignore::prunelab.core.prunable.CoverageWarning")
def test_magnitude_n_m_on_gpt2_conv1d_groups_the_input_dimension():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    weight = model.transformer.h[0].mlp.c_fc.weight.detach().clone()     # stored (d_in, d_out)
    masks = prunelab.prune(model, "magnitude", sparsity=0.5, pattern="2:4")
    keep = masks["transformer.h.0.mlp.c_fc.weight"]
    assert keep.shape == (32, 128) and is_nm(keep.T, (2, 4))
    assert torch.equal(keep.T, _top_n_per_group(weight.T, 2, 4))

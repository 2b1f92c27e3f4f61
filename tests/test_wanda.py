"""Wanda (prunelab.methods.layerwise.wanda): |W_ij| · ||X_j||₂ per output row, N:M, exact counts."""

import pytest
import torch
from torch import nn

import prunelab
from prunelab.core.patterns import is_nm
from prunelab.errors import ConfigError
from prunelab.methods.layerwise.driver import group_keep_counts, top_k_mask
from prunelab.methods.layerwise.wanda import row_keep_counts, wanda_mask


def _per_row_magnitude(weight, k):
    """Brute force: the k largest |w| of each row (ties to the lower column)."""
    keep = torch.zeros_like(weight, dtype=torch.bool)
    for r, row in enumerate(weight.abs().tolist()):
        for c in sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]:
            keep[r, c] = True
    return keep


def test_equal_input_norms_make_wanda_per_row_magnitude_pruning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    weight = model[0].weight.detach().clone()
    signs = torch.randint(0, 2, (64, 12), generator=torch.Generator().manual_seed(1)) * 2.0 - 1.0   # ||X_j|| = 8
    masks = prunelab.prune(model, "wanda", sparsity=0.75, calib=signs)
    assert torch.equal(masks["0.weight"], _per_row_magnitude(weight, 3))
    assert torch.equal(model[0].weight.detach(), weight * masks["0.weight"])        # no weight update


def test_input_norms_reweight_the_ranking_within_each_row():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                           [4.0, 3.0, 2.0, 1.0]])
    sq_norms = torch.tensor([16.0, 4.0, 1.0, 1.0])        # norms 4, 2, 1, 1: scores 4 4 3 4 / 16 6 2 1
    keep = wanda_mask(weight, sq_norms, 4)
    assert keep.tolist() == [[True, True, False, False], [True, True, False, False]]
    # One ranking of the layer: 16, 6 and two of the three 4s; the earliest 4 is pruned first.
    assert wanda_mask(weight, sq_norms, 4, comparison="layer").tolist() == [[False, True, False, True],
                                                                             [True, True, False, False]]


def test_row_keep_counts_spread_the_remainder_over_the_first_rows_with_room():
    assert row_keep_counts(torch.tensor([4, 4, 1]), 7).tolist() == [3, 3, 1]
    assert row_keep_counts(torch.tensor([10, 10, 10, 10]), 22).tolist() == [6, 6, 5, 5]
    assert row_keep_counts(torch.tensor([0, 5, 2]), 7).tolist() == [0, 5, 2]
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        survivors = torch.randint(0, 9, (7,), generator=g)
        n_keep = int(torch.randint(0, int(survivors.sum()) + 1, (), generator=g))
        assert row_keep_counts(survivors, n_keep).tolist() == group_keep_counts(survivors.tolist(), n_keep)


@pytest.mark.parametrize("n_keep", [0, 1, 30, 31, 59, 60])
def test_every_row_keeps_its_count_and_the_layer_keeps_exactly_n_keep(n_keep):
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(3))
    sq_norms = torch.rand(10, generator=torch.Generator().manual_seed(4))
    keep = wanda_mask(weight, sq_norms, n_keep)
    assert int(keep.sum()) == n_keep
    assert keep.sum(1).tolist() == row_keep_counts(torch.full((6,), 10), n_keep).tolist()
    scores = weight.abs() * sq_norms.sqrt()
    for r in range(6):        # the kept entries of a row are its highest scores
        k = int(keep[r].sum())
        assert torch.equal(keep[r], top_k_mask(scores[r], torch.ones(10, dtype=torch.bool), k))


def test_the_current_mask_is_respected_and_ties_keep_the_lower_column():
    weight = torch.ones(3, 8)
    current = torch.ones(3, 8, dtype=torch.bool)
    current[0, :6] = False                             # row 0 has two survivors only
    keep = wanda_mask(weight, torch.ones(8), 12, current)
    assert keep.sum(1).tolist() == [2, 5, 5] and not bool((keep & ~current).any())
    assert keep[1].tolist() == [True] * 5 + [False] * 3


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_n_m_masks_are_exact(pattern):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(50, 24) * torch.linspace(0.1, 2.0, 24)
    masks = prunelab.prune(model, "wanda", sparsity=0.5, pattern=pattern, calib=x, include_last=True)
    n, m = map(int, pattern.split(":"))
    for name, keep in masks.items():
        assert is_nm(keep, (n, m)) and int(keep.sum()) == keep.numel() // 2, name


def test_method_keeps_exact_counts_on_a_conv_and_holds_only_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 16, 4))
    method = prunelab.methods.create("wanda")
    masks = method.prune(model, None, 0.6, torch.randn(20, 3, 6, 6))
    assert int(masks["0.weight"].sum()) == round(0.4 * 135) and bool(masks["3.weight"].all())
    info = method.last_info[0]
    # one batch of rows and its square, then only the norms
    assert info["rows"] == 20 * 16 and info["bytes_held"] == 2 * 20 * 16 * 27 * 4 + 27 * 8


@pytest.mark.parametrize("bad", [{"comparison": "column"}, {"pattern": "2:2"}, {"mode": "x"}])
def test_bad_hyperparameters_are_config_errors(bad):
    with pytest.raises(ConfigError):
        prunelab.methods.create("wanda", **bad)


def test_wanda_mask_refuses_impossible_requests():
    with pytest.raises(ConfigError, match="cannot keep"):
        wanda_mask(torch.ones(2, 4), torch.ones(4), 9)
    with pytest.raises(ConfigError, match="norms"):
        wanda_mask(torch.ones(2, 4), torch.ones(3), 4)

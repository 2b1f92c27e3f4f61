"""PQ Index and Gini index: closed forms, invariances, edge cases, scopes, large-d accuracy."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import prunelab
from prunelab.errors import ConfigError, MaskError
from prunelab.core.pqi import (
    P_GRID,
    Q_GRID,
    gini_index,
    gini_index_model,
    grid_to_lists,
    pq_index,
    pq_index_grid,
    pq_index_grid_model,
    pq_index_model,
)

def f32_tol(p, q):
    """Error bound for float32 weights: float32 powers (~1 ulp), amplified by the 1/p, 1/q roots."""
    return 1e-7 * (1 / p + 1 / q)


PQ_PAIRS = [(0.5, 1.0), (1.0, 2.0), (0.1, 1.0), (0.3, 1.7), (1.0, 1.5), (2.0, 3.0)]


def reference(w, p, q, mask=None):
    """Definition 1 in float64 numpy: 1 - d^{1/q-1/p} ||w||_p / ||w||_q over the remaining entries."""
    a = np.abs(np.asarray(w, dtype=np.float64)).ravel()
    if mask is not None:
        a = a[np.asarray(mask).ravel()]
    d = a.size
    if d == 0 or not a.any():
        return 0.0
    return 1.0 - d ** (1 / q - 1 / p) * (a**p).sum() ** (1 / p) / (a**q).sum() ** (1 / q)


# -- closed forms -----------------------------------------------------------------------------------

@pytest.mark.parametrize("p,q", PQ_PAIRS)
@pytest.mark.parametrize("d", [1, 2, 7, 1000])
def test_constant_vector_is_zero(p, q, d):
    assert pq_index(torch.full((d,), 3.7, dtype=torch.float64), p, q) == pytest.approx(0.0, abs=1e-12)
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(d)[:d]  # |w| constant, signs mixed
    assert pq_index(0.25 * signs, p, q) == pytest.approx(0.0, abs=1e-12)
    assert pq_index(torch.full((d,), 3.7), p, q) == pytest.approx(0.0, abs=f32_tol(p, q))  # float32 work


@pytest.mark.parametrize("p,q", PQ_PAIRS)
@pytest.mark.parametrize("d", [2, 10, 4096])
def test_one_sparse_vector_reaches_the_maximum(p, q, d):
    w = torch.zeros(d, dtype=torch.float64)
    w[d // 3] = -5.0
    assert pq_index(w, p, q) == pytest.approx(1 - d ** (1 / q - 1 / p), rel=1e-12)
    assert pq_index(w.float(), p, q) == pytest.approx(1 - d ** (1 / q - 1 / p), abs=f32_tol(p, q))


@pytest.mark.parametrize("p,q", PQ_PAIRS)
@pytest.mark.parametrize("k,d", [(1, 4), (3, 10), (50, 1000), (999, 1000)])
def test_k_sparse_flat_vector_closed_form(p, q, k, d):
    # k equal entries and d-k zeros: I = 1 - (k/d)^{1/p - 1/q}
    w = torch.zeros(d, dtype=torch.float64)
    w[torch.randperm(d, generator=torch.Generator().manual_seed(k))[:k]] = 0.3
    assert pq_index(w, p, q) == pytest.approx(1 - (k / d) ** (1 / p - 1 / q), rel=1e-12, abs=1e-14)


def test_example_from_the_docstring():
    assert pq_index(torch.tensor([1.0, 0.0, 0.0, 0.0])) == 0.75


@pytest.mark.parametrize("p,q", PQ_PAIRS)
def test_matches_definition_and_stays_within_theorem_1_bounds(p, q):
    g = torch.Generator().manual_seed(1)
    for d in (3, 50, 2000):
        w = torch.randn(d, generator=g, dtype=torch.float64) ** 3
        value = pq_index(w, p, q)
        assert value == pytest.approx(reference(w.numpy(), p, q), abs=1e-12)
        assert 0.0 <= value <= 1 - d ** (1 / q - 1 / p)
        # float32 weights: float32 powers, float64 sums
        assert pq_index(w.float(), p, q) == pytest.approx(reference(w.float().numpy(), p, q), abs=f32_tol(p, q))


@pytest.mark.parametrize("p,q", PQ_PAIRS)
def test_invariant_to_scale_and_permutation(p, q):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(5000, generator=g, dtype=torch.float64)
    base = pq_index(w, p, q)
    for scale in (1e-3, 7.0, -2.5, 1e5):
        assert pq_index(scale * w, p, q) == pytest.approx(base, abs=1e-12)
    assert pq_index(w[torch.randperm(5000, generator=g)], p, q) == pytest.approx(base, abs=1e-12)
    assert pq_index(w.reshape(50, 100), p, q) == pytest.approx(base, abs=1e-15)


def test_extreme_magnitudes_do_not_overflow_or_underflow():
    w = torch.randn(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for p, q in ((0.5, 1.0), (1.0, 2.0), (0.2, 4.0)):
        base = pq_index(w, p, q)
        for scale in (1e-200, 1e-40, 1e40, 1e200):
            assert pq_index(w * scale, p, q) == pytest.approx(base, abs=1e-12)
    w32 = torch.randn(1000, generator=torch.Generator().manual_seed(4)) * 1e30  # |w|^4 > float32 max
    assert pq_index(w32, 1.0, 4.0) == pytest.approx(reference(w32.numpy(), 1.0, 4.0), abs=f32_tol(1.0, 4.0))


def test_low_precision_and_integer_inputs():
    w = torch.tensor([1.0, 2.0, 0.0, 4.0])
    expected = reference(w.numpy(), 0.5, 1.0)
    assert pq_index(w.half(), 0.5, 1.0) == pytest.approx(expected, abs=1e-7)
    assert pq_index(w.bfloat16(), 0.5, 1.0) == pytest.approx(expected, abs=1e-7)
    assert pq_index(torch.tensor([1, 2, 0, 4]), 0.5, 1.0) == pytest.approx(expected, abs=1e-12)


def test_large_d_against_float64():
    """25 M float32 weights: within 1e-7 of a float64 computation (float32 powers, float64 sums)."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(25_000_000, generator=g) * 0.01
    w[::1000] *= 50.0  # heavy tail, as trained weights have
    w[1::7] = 0.0  # and zeros (pruned weights left in place), which take the zero-filling path
    w64 = w.double().abs()
    for p, q, tol in ((0.5, 1.0, 2e-8), (1.0, 2.0, 2e-8), (0.1, 1.0, 2e-7)):
        ref = 1 - (w64.pow(p).mean() ** (1 / p) / w64.pow(q).mean() ** (1 / q)).item()
        assert pq_index(w, p, q) == pytest.approx(ref, abs=tol)
    assert pq_index(w.double(), 0.5, 1.0) == pytest.approx(
        1 - (w64.sqrt().mean() ** 2 / w64.mean()).item(), abs=1e-12)
    # nearly constant magnitudes: I ~ 2.5e-5 keeps its leading digits
    w = 1.0 + 0.01 * torch.randn(25_000_000, generator=g)
    w64 = w.double().abs()
    ref = 1 - (w64.sqrt().mean() ** 2 / w64.mean()).item()
    assert pq_index(w, 0.5, 1.0) == pytest.approx(ref, abs=2e-8)


# -- edge cases --------------------------------------------------------------------------------------

def test_edge_cases_are_defined_as_zero():
    assert pq_index(torch.zeros(0)) == 0.0  # d = 0
    assert pq_index(torch.zeros(10)) == 0.0  # all zeros (the paper's code gives NaN)
    assert pq_index(torch.randn(10), mask=torch.zeros(10, dtype=torch.bool)) == 0.0  # all masked
    assert pq_index(torch.tensor([0.0, 0.0, 3.0]), mask=torch.tensor([True, True, False])) == 0.0
    assert pq_index(torch.tensor([-2.0])) == 0.0  # d = 1: the bound 1 - 1^{...} is 0


@pytest.mark.parametrize("p,q", [(1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (-0.5, 1.0), (float("nan"), 1.0),
                                 (0.5, float("inf")), ("a", 1.0)])
def test_invalid_p_q_raise_config_error(p, q):
    with pytest.raises(ConfigError, match="0 < p < q|numbers"):
        pq_index(torch.randn(5), p, q)
    with pytest.raises(ConfigError):
        pq_index_model(nn.Linear(3, 2), p=p, q=q)


def test_mask_selects_the_remaining_weights_and_d_counts_them():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(40, 30, generator=g, dtype=torch.float64)
    mask = torch.rand(40, 30, generator=g) > 0.6
    # masked entries are ignored even when not zeroed
    assert pq_index(w, 0.5, 1.0, mask=mask) == pytest.approx(pq_index(w[mask], 0.5, 1.0), abs=1e-14)
    assert pq_index(w, 0.5, 1.0, mask=mask) == pytest.approx(reference(w.numpy(), 0.5, 1.0, mask.numpy()), abs=1e-12)
    # zeroing pruned weights but keeping them in d (no mask) gives a sparser, larger index
    assert pq_index(w * mask, 0.5, 1.0) > pq_index(w, 0.5, 1.0, mask=mask)
    with pytest.raises(MaskError, match="shape"):
        pq_index(w, mask=torch.ones(3, dtype=torch.bool))


# -- grid ----------------------------------------------------------------------------------------------

def test_grid_matches_single_values_and_marks_p_ge_q():
    assert P_GRID == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert Q_GRID == (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0)
    w = torch.randn(3000, generator=torch.Generator().manual_seed(7), dtype=torch.float64) ** 3
    grid = pq_index_grid(w)
    assert grid.shape == (10, 11) and grid.dtype == torch.float64
    for i, p in enumerate(P_GRID):
        for j, q in enumerate(Q_GRID):
            if p >= q:
                assert math.isnan(grid[i, j])
            else:
                assert grid[i, j].item() == pytest.approx(pq_index(w, p, q), abs=1e-13)
    assert int(torch.isnan(grid).sum()) == 1  # only p = q = 1
    lists = grid_to_lists(grid)
    assert lists[9][0] is None and lists[4][0] == pytest.approx(pq_index(w, 0.5, 1.0), abs=1e-13)
    with pytest.raises(ConfigError):
        pq_index_grid(w, ps=[], qs=[1.0])


# -- model level ------------------------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc1 = nn.Linear(12, 6)
        self.fc2 = nn.Linear(6, 4)


@pytest.fixture
def net_and_masks():
    torch.manual_seed(0)
    net = Net()
    g = torch.Generator().manual_seed(8)
    masks = prunelab.Masks({n: torch.rand(p.shape, generator=g) > 0.3 for n, p in prunelab.prunable_parameters(net).items()})
    masks["fc2.weight"][1] = False  # a neuron with nothing left
    return net, masks


def test_model_scopes_agree_with_the_tensor_function(net_and_masks):
    net, masks = net_and_masks
    params = dict(net.named_parameters())
    names = list(masks)
    assert names == ["conv.weight", "fc1.weight", "fc2.weight"]  # biases and BN never counted
    all_w = torch.cat([params[n].detach().reshape(-1) for n in names])
    all_m = torch.cat([masks[n].reshape(-1) for n in names])
    for p, q in ((0.5, 1.0), (1.0, 2.0)):
        g = pq_index_model(net, masks, p, q, "global")
        assert list(g) == ["global"]
        assert g["global"] == pytest.approx(pq_index(all_w, p, q, all_m), abs=1e-13)
        layer = pq_index_model(net, masks, p, q, "layer")
        assert list(layer) == names
        for n in names:
            assert layer[n] == pytest.approx(pq_index(params[n], p, q, masks[n]), abs=1e-13)
        neuron = pq_index_model(net, masks, p, q, "neuron")
        for n in names:
            rows = params[n].detach().reshape(params[n].shape[0], -1)
            mrows = masks[n].reshape(rows.shape)
            assert neuron[n].shape == (rows.shape[0],)
            expected = [pq_index(rows[i], p, q, mrows[i]) for i in range(rows.shape[0])]
            assert neuron[n].tolist() == pytest.approx(expected, abs=1e-13)
        assert neuron["fc2.weight"][1] == 0.0  # d = 0 for that neuron


def test_model_without_masks_uses_every_prunable_weight_and_state_dicts_work(net_and_masks):
    net, masks = net_and_masks
    params = dict(net.named_parameters())
    all_w = torch.cat([params[n].detach().reshape(-1) for n in masks])
    assert pq_index_model(net)["global"] == pytest.approx(pq_index(all_w), abs=1e-13)
    state = {n: p.detach() for n, p in net.named_parameters()}
    assert pq_index_model(state, masks, scope="layer") == pytest.approx(pq_index_model(net, masks, scope="layer"), abs=1e-15)


def test_model_grid_and_errors(net_and_masks):
    net, masks = net_and_masks
    grid = pq_index_grid_model(net, masks, "global")["global"]
    assert grid[4, 0].item() == pytest.approx(pq_index_model(net, masks, 0.5, 1.0)["global"], abs=1e-13)
    neuron = pq_index_grid_model(net, masks, "neuron")
    assert neuron["fc1.weight"].shape == (10, 11, 6)
    assert neuron["fc1.weight"][9, 10].tolist() == pytest.approx(
        pq_index_model(net, masks, 1.0, 2.0, "neuron")["fc1.weight"].tolist(), abs=1e-13)
    with pytest.raises(ConfigError, match="scope"):
        pq_index_model(net, masks, scope="channel")
    bad = prunelab.Masks({"fc1.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(MaskError):
        pq_index_model(net, bad)
    with pytest.raises(MaskError):
        pq_index_model(net, prunelab.Masks({"nope.weight": torch.ones(3, dtype=torch.bool)}))


def test_reexported_from_metrics():
    assert prunelab.core.metrics.pq_index is pq_index
    assert prunelab.core.metrics.pq_index_model is pq_index_model
    assert prunelab.core.metrics.gini_index is gini_index


# -- Gini ------------------------------------------------------------------------------------------

def test_gini_closed_forms():
    assert gini_index(torch.full((9,), -2.0)) == pytest.approx(0.0, abs=1e-15)
    w = torch.zeros(8)
    w[3] = 1.5
    assert gini_index(w) == pytest.approx(1 - 1 / 8)
    assert gini_index(torch.tensor([4.0, -1.0, 3.0, 2.0])) == pytest.approx(0.25)  # sum (2k-N-1)c / (N sum c) = 10/40
    assert gini_index(torch.zeros(0)) == 0.0 and gini_index(torch.zeros(5)) == 0.0
    v = torch.randn(500, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert gini_index(v * 1e3) == pytest.approx(gini_index(v), abs=1e-12)
    # Hurley-Rickard form: 1 - 2 sum (c_k/||c||_1) (N - k + 1/2)/N
    c = np.sort(np.abs(v.numpy().astype(np.float64)))
    n = c.size
    hr = 1 - 2 * np.sum(c / c.sum() * (n - np.arange(1, n + 1) + 0.5) / n)
    assert gini_index(v) == pytest.approx(hr, abs=1e-12)


def test_gini_masks_and_scopes(net_and_masks):
    net, masks = net_and_masks
    w = torch.tensor([5.0, 1.0, 1.0, 1.0])
    assert gini_index(w, mask=torch.tensor([False, True, True, True])) == pytest.approx(0.0, abs=1e-15)
    params = dict(net.named_parameters())
    layer = gini_index_model(net, masks, "layer")
    for n in masks:
        assert layer[n] == pytest.approx(gini_index(params[n], masks[n]), abs=1e-13)
    neuron = gini_index_model(net, masks, "neuron")
    rows = params["fc1.weight"].detach()
    assert neuron["fc1.weight"].tolist() == pytest.approx(
        [gini_index(rows[i], masks["fc1.weight"][i]) for i in range(6)], abs=1e-13)
    assert neuron["fc2.weight"][1] == 0.0
    all_w = torch.cat([params[n].detach().reshape(-1) for n in masks])
    all_m = torch.cat([masks[n].reshape(-1) for n in masks])
    assert gini_index_model(net, masks)["global"] == pytest.approx(gini_index(all_w, all_m), abs=1e-13)


def test_neuron_scope_of_a_depthwise_conv_is_one_filter_per_channel():
    # Depthwise 3x3 over 3 channels: a neuron is a channel's own 9 weights.
    conv = torch.nn.Conv2d(3, 3, 3, groups=3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0].fill_(1.0)              # constant filter: I = 0
        conv.weight[1, 0, 0, 0] = 2.0          # 1-sparse filter: I = 1 - 9^(1/q - 1/p)
        conv.weight[2, 0, 0, :] = torch.tensor([1.0, 1.0, 4.0])
    model = torch.nn.Sequential(conv)
    index = pq_index_model(model, p=0.5, q=1.0, scope="neuron")["0.weight"]
    assert index.shape == (3,)
    assert index[0].item() == pytest.approx(0.0, abs=1e-12)
    assert index[1].item() == pytest.approx(1 - 9 ** (1 / 1.0 - 1 / 0.5), rel=1e-9)
    # Three non-zeros 1, 1, 4 among 9: I = 1 - 9^(1 - 2) · (Σ√|w|)² / Σ|w| = 1 - (1/9) · 16 / 6.
    assert index[2].item() == pytest.approx(1 - 16 / 54, rel=1e-9)

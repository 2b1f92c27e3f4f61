"""Layer-wise capture, im2col and the layer-wise driver (prunelab.methods.layerwise.driver)."""

import pytest
import torch
from torch import nn

import prunelab
from prunelab.data import Split
from prunelab.errors import ConfigError, MethodError
from prunelab.methods.layerwise.driver import (
    capture, default_layers, im2col, keep_count, output_rows, prune_layers, top_k_mask,
    weight_matrix,
)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def _inputs(n=64, shape=(1, 3, 4), seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 5, 3),
    nn.Conv2d(3, 5, (3, 2), stride=2, padding=1, dilation=(1, 2)),
    nn.Conv2d(3, 5, 3, padding="same"),
    nn.Conv1d(3, 5, 3, stride=2, padding=1),
])
def test_im2col_rows_times_weight_equal_conv_output(conv):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 9, 8) if isinstance(conv, nn.Conv2d) else torch.randn(4, 3, 11)
    rows = im2col(conv, x)
    expected = output_rows(conv, conv(x))
    got = rows @ weight_matrix(conv).T + conv.bias
    assert rows.shape == (expected.shape[0], weight_matrix(conv).shape[1])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_capture_linear_gives_inputs_and_preactivations():
    model = _mlp()
    x = _inputs()
    data = capture(model, "3.weight", x)
    hidden = torch.relu(model[1](x.flatten(1)))
    torch.testing.assert_close(data.inputs, hidden)
    torch.testing.assert_close(data.outputs, model[3](hidden))
    assert (data.n_samples, data.rows_total) == (64, 64)
    assert data.nbytes == 64 * 10 * 4 + 64 * 8 * 4


def test_capture_subsamples_matching_rows_and_reports_bytes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(20, 1, 8, 8)
    data = capture(model, "0.weight", x, max_samples=100, batch_size=7, seed=3)
    assert data.rows_total == 20 * 36
    assert data.inputs.shape == (100, 9) and data.outputs.shape == (100, 4)
    assert data.nbytes == 100 * (9 + 4) * 4
    # Rows of inputs and outputs are the same positions: output = patch @ W.T + b.
    torch.testing.assert_close(data.outputs, data.inputs @ weight_matrix(model[0]).T + model[0].bias,
                               rtol=1e-5, atol=1e-5)
    again = capture(model, "0.weight", x, max_samples=100, batch_size=20, seed=3)
    assert torch.equal(again.inputs, data.inputs)   # the subsample does not depend on batching
    other = capture(model, "0.weight", x, max_samples=100, seed=4)
    assert not torch.equal(other.inputs, data.inputs)


def test_sequential_mode_feeds_pruned_inputs_parallel_mode_original_ones():
    x = _inputs(32)
    seen = {}

    def solve_zero_first(problem):
        seen.setdefault(problem.data.name, []).append(problem.data)
        mask = top_k_mask(problem.weight.abs(), problem.mask, problem.n_keep)
        return problem.weight * mask, problem.bias, mask, {}

    for mode in ("parallel", "sequential"):
        model = _mlp()
        reference = _mlp()
        masks = prunelab.Masks.ones(model)
        prune_layers(model, masks, 0.7, x, solve_zero_first, mode=mode)
    parallel, sequential = seen["3.weight"]
    hidden_dense = torch.relu(reference[1](x.flatten(1)))
    torch.testing.assert_close(parallel.inputs, hidden_dense)
    assert not torch.allclose(sequential.inputs, hidden_dense)
    # Targets always come from the unpruned network.
    torch.testing.assert_close(sequential.outputs, parallel.outputs)


def test_prune_layers_default_leaves_last_layer_and_counts_exactly():
    model = _mlp()
    last = model[5].weight.detach().clone()
    masks = prunelab.Masks.ones(model)
    assert default_layers(model, list(masks)) == ["1.weight", "3.weight"]
    assert default_layers(model, list(masks), include_last=True) == list(masks)

    def solve(problem):
        mask = top_k_mask(problem.weight.abs(), problem.mask, problem.n_keep)
        return problem.weight * mask, problem.bias, mask, {"note": 1}

    new, infos = prune_layers(model, masks, 0.75, _inputs(), solve)
    assert int(new["1.weight"].sum()) == 30 and int(new["3.weight"].sum()) == 20
    assert bool(new["5.weight"].all()) and torch.equal(model[5].weight, last)
    assert [i["layer"] for i in infos] == ["1.weight", "3.weight"]
    assert infos[0]["kept"] == 30 and infos[0]["bytes_held"] == 64 * (12 + 10) * 4


def test_prune_layers_rejects_bad_input():
    model = _mlp()
    masks = prunelab.Masks.ones(model)
    noop = lambda p: (p.weight, p.bias, p.mask, {})  # noqa: E731
    with pytest.raises(ConfigError, match="not prunable"):
        prune_layers(model, masks, 0.5, _inputs(), noop, layers=["2.weight"])
    with pytest.raises(ConfigError, match="mode"):
        prune_layers(model, masks, 0.5, _inputs(), noop, mode="cascade")
    with pytest.raises(ConfigError, match="sparsity"):
        prune_layers(model, masks, 1.0, _inputs(), noop)
    with pytest.raises(ConfigError, match="empty"):
        capture(model, "1.weight", _inputs()[:0])
    reflect = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten())
    with pytest.raises(MethodError, match="padding_mode"):
        capture(reflect, "0.weight", torch.randn(2, 2, 5, 5))


def test_capture_of_a_grouped_conv_gives_every_groups_patches():
    torch.manual_seed(0)
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten())
    x = torch.randn(2, 2, 5, 5)
    data = capture(grouped, "0.weight", x)
    assert data.inputs.shape == (18, 2 * 9) and data.outputs.shape == (18, 4)   # 2 samples x 3x3 positions
    weight, bias = grouped[0].weight.detach().reshape(4, 9), grouped[0].bias.detach()
    # output channels 0-1 use the patch columns of input channel 0, channels 2-3 those of channel 1
    by_group = torch.cat([data.inputs[:, :9] @ weight[:2].T, data.inputs[:, 9:] @ weight[2:].T], 1) + bias
    assert torch.allclose(by_group, data.outputs, atol=1e-5)


def test_keep_count_and_top_k_mask_are_exact():
    assert keep_count(100, 100, 0.9) == 10
    assert keep_count(100, 5, 0.9) == 5      # never revives
    score = torch.tensor([[3.0, 1.0, 2.0], [2.0, 5.0, 0.5]])
    allowed = torch.tensor([[True, True, True], [True, False, True]])
    mask = top_k_mask(score, allowed, 3)
    assert mask.tolist() == [[True, False, True], [True, False, False]]  # tie 2.0: lower index


def _conv_and_linear_twins():
    """A conv whose kernel covers its whole input and the Linear layer computing the same map."""
    torch.manual_seed(1)
    conv = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6, 3))
    lin = nn.Sequential(nn.Flatten(), nn.Linear(18, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        lin[1].weight.copy_(conv[0].weight.reshape(6, 18))
        lin[1].bias.copy_(conv[0].bias)
        lin[3].load_state_dict(conv[3].state_dict())
    return conv, lin


@pytest.mark.parametrize("method,hparams", [
    ("lobs", {}),
    ("lobs", {"update": "oneshot"}),
    ("nettrim", {"search_steps": 2, "search_iters": 20, "max_iters": 60}),
    ("feta", {"search_steps": 2, "step": 0.01, "batch_size": 50}),
    ("hard-threshold", {}),
])
def test_conv_through_im2col_prunes_like_the_equivalent_linear(method, hparams):
    conv, lin = _conv_and_linear_twins()
    x = torch.rand(400, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    calib = Split(x, torch.zeros(400, dtype=torch.int64))
    mask_conv = prunelab.methods.create(method, **hparams).prune(conv, None, 0.6, calib)
    mask_lin = prunelab.methods.create(method, **hparams).prune(lin, None, 0.6, calib)
    assert torch.equal(mask_conv["0.weight"].reshape(6, 18), mask_lin["1.weight"])
    torch.testing.assert_close(conv[0].weight.reshape(6, 18), lin[1].weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv[0].bias, lin[1].bias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method,hparams", [
    ("lobs", {}), ("nettrim", {"search_steps": 2, "search_iters": 20, "max_iters": 40}),
    ("feta", {"search_steps": 2}),
])
def test_layers_without_bias_are_pruned_without_inventing_one(method, hparams):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 16, 5, bias=False), nn.ReLU(), nn.Linear(5, 2))
    x = torch.rand(50, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    masks = prunelab.methods.create(method, **hparams).prune(model, None, 0.5, Split(x, torch.zeros(50)))
    assert int(masks["0.weight"].sum()) == 14 and int(masks["3.weight"].sum()) == 120
    assert model[0].bias is None and model[3].bias is None


def test_conv_with_many_positions_is_pruned_on_its_patches():
    from prunelab.methods.layerwise.lobs import lobs_prune_layer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 25, 2))
    x = torch.randn(30, 2, 5, 5)
    patches = im2col(model[0], x)
    expected_w, expected_b, expected_mask = lobs_prune_layer(
        patches, weight_matrix(model[0]).clone(), model[0].bias.detach().clone(), 24)
    masks = prunelab.methods.create("lobs").prune(model, None, 1 - 24 / 72, Split(x, torch.zeros(30)))
    assert torch.equal(masks["0.weight"].reshape(4, 18), expected_mask)
    torch.testing.assert_close(weight_matrix(model[0]), expected_w)
    torch.testing.assert_close(model[0].bias.detach(), expected_b)


@pytest.mark.parametrize("method", ["feta", "nettrim", "lobs", "hard-threshold"])
def test_layers_hyperparameter_accepts_cli_json_forms(method):
    assert prunelab.methods.create(method, layers="fc1.weight").hparams.layers == ("fc1.weight",)
    hparams = prunelab.methods.create(method, layers=["fc1.weight", "fc2.weight"]).hparams
    assert hparams.layers == ("fc1.weight", "fc2.weight")
    hash(hparams)
    with pytest.raises(ConfigError, match="layers"):
        prunelab.methods.create(method, layers=3)

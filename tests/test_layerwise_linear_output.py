"""FeTa and Net-Trim on layers without a ReLU (``output="linear"``): the whole output is fitted.

The default ``output="relu"`` fits post-ReLU outputs (FeTa) or the positive outputs only with the
others kept ≤ 0 (Net-Trim), the papers' programs for a ReLU layer. A layer whose output is used
as it is (every Linear layer of a transformer) needs the whole output: FeTa's convex lasso case
and Net-Trim's last-layer program.
"""

import copy

import pytest
import torch
from torch import nn

import prunelab
from prunelab.errors import ConfigError
from prunelab.harness.spec import RunSpec
from prunelab.methods.layerwise.feta import FetaHparams
from prunelab.methods.layerwise.feta_solver import CURVATURE_BOUND, feta_lipschitz, feta_objective, feta_solve
from prunelab.methods.layerwise.nettrim import NetTrimHparams, nettrim_constraints, nettrim_solve


@pytest.fixture(scope="module")
def sparse_layer():
    """A linear layer whose trained weights are a sparse W* (|w| in [0.5, 1.5]) plus dense noise
    (0.01), with a bias of -3: 86 % of the outputs are negative, and a neuron is positive on as
    few as 11 of the 160 rows, fewer than its 32 inputs."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(160, 32, generator=g)
    support = torch.rand(8, 32, generator=g) < 0.25
    magnitude = (0.5 + torch.rand(8, 32, generator=g)) * torch.sign(torch.randn(8, 32, generator=g))
    W = torch.where(support, magnitude, 0.0)
    noise = 0.01 * torch.randn(8, 32, generator=g)
    return X, W + noise, torch.full((8,), -3.0), support


def _prune_linear_layer(name, sparse_layer, output):
    """``(mask, relative error of the whole output, method)`` for one pruned layer at |W*|'s count."""
    X, weight, bias, support = sparse_layer
    layer = nn.Linear(32, 8)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    target = layer(X).detach()
    method = prunelab.methods.create(name, output=output, include_last=True)
    masks = method.prune(nn.Sequential(layer), None, 1 - int(support.sum()) / support.numel(), X)
    with torch.no_grad():
        error = float((layer(X) - target).norm() / target.norm())
    return masks["0.weight"], error, method


def test_the_sparse_layer_has_mostly_negative_outputs(sparse_layer):
    X, weight, bias, support = sparse_layer
    outputs = X @ weight.T + bias
    assert int(support.sum()) == 60
    assert 0.8 < float((outputs <= 0).float().mean()) < 0.9
    assert int((outputs > 0).sum(0).min()) < 32


def test_feta_linear_output_recovers_the_support_and_the_whole_output(sparse_layer):
    support = sparse_layer[3]
    mask, error, _ = _prune_linear_layer("feta", sparse_layer, "linear")
    assert int(mask.sum()) == 60
    assert torch.equal(mask, support)
    assert error < 0.02                        # the dense noise left out: 0.012
    relu_mask, relu_error, _ = _prune_linear_layer("feta", sparse_layer, "relu")
    assert int(relu_mask.sum()) == 60
    assert not torch.equal(relu_mask, support)
    assert relu_error > 20 * error             # the negative outputs are not fitted: 0.42


def test_nettrim_linear_output_is_the_last_layer_program(sparse_layer):
    support = sparse_layer[3]
    mask, error, method = _prune_linear_layer("nettrim", sparse_layer, "linear")
    info = method.last_info[0]
    assert int(mask.sum()) == 60
    assert torch.equal(mask, support)
    # ||X̃w − a|| ≤ ε||a|| over every output (no debiasing by default, so the bound is tight).
    assert error <= info["epsilon"] * (1 + 1e-3) and error < 0.101
    assert info["fit_after_cut"] == pytest.approx(error, rel=1e-5)
    assert info["leak_after_cut"] is None
    relu_mask, relu_error, _ = _prune_linear_layer("nettrim", sparse_layer, "relu")
    assert int(relu_mask.sum()) == 60
    assert relu_error > 3 * error              # negative outputs only kept ≤ 0: 0.36


def test_feta_solver_linear_output_fits_negative_outputs_exactly(sparse_layer):
    X, weight, bias, _ = sparse_layer
    Y = X @ weight.T + bias
    result = feta_solve(X, Y, 0.0, output="linear", step_rule="lipschitz", min_steps=50, record_objective=True)
    assert (result.weight - weight).abs().max() < 1e-3
    assert (result.bias - bias).abs().max() < 1e-3
    assert result.objective[-1] < 1e-6 * result.objective[0]
    # The paper's objective clamps the targets at 0 and cannot fit the negative outputs.
    relu = feta_solve(X, Y, 0.0, output="relu", step_rule="lipschitz", min_steps=50)
    assert ((X @ relu.weight.T + relu.bias) - Y).norm() > 0.3 * Y.norm()


def test_feta_linear_objective_and_lipschitz_are_those_of_the_lasso(sparse_layer):
    X, weight, bias, _ = sparse_layer
    Y = torch.randn(160, 8, generator=torch.Generator().manual_seed(3))
    expected = float((X @ weight.T + bias - Y).pow(2).sum()) / 160 + 0.1 * float(weight.abs().sum())
    assert feta_objective(X, Y, weight, bias, lam=0.1, output="linear") == pytest.approx(expected, rel=1e-6)
    tilde = torch.cat((X, torch.ones(160, 1)), 1).double()
    top = float(torch.linalg.eigvalsh(tilde.T @ tilde / 160)[-1])
    assert feta_lipschitz(X, curvature=1.0) == pytest.approx(2 * top, rel=1e-4)
    assert feta_lipschitz(X) == pytest.approx(2 * CURVATURE_BOUND * top, rel=1e-4)


def test_nettrim_solver_linear_output_meets_the_constraint_on_every_output(sparse_layer):
    X, weight, bias, _ = sparse_layer
    outputs = X @ weight.T + bias
    result = nettrim_solve(X, outputs, 0.05, output="linear", rho=10.0, max_iters=2000, tol=1e-5)
    fit, leak = nettrim_constraints(X, outputs, result.weight, result.bias, output="linear")
    assert float(fit.max()) <= 0.05 * (1 + 2e-3)
    assert bool(torch.isinf(leak).all())       # no inactive set
    relu = nettrim_solve(X, outputs, 0.05, output="relu", rho=10.0, max_iters=2000, tol=1e-5)
    relu_fit, _ = nettrim_constraints(X, outputs, relu.weight, relu.bias, output="linear")
    assert float(relu_fit.max()) > 0.2


def test_bad_output_is_refused():
    with pytest.raises(ConfigError, match="output must be one of"):
        FetaHparams(output="gelu")
    with pytest.raises(ConfigError, match="output must be one of"):
        NetTrimHparams(output="auto")
    X = torch.randn(20, 3)
    with pytest.raises(ConfigError, match="output"):
        feta_solve(X, X, 0.0, output="softmax")
    with pytest.raises(ConfigError, match="output"):
        nettrim_solve(X, X, 0.1, output="softmax")


@pytest.mark.parametrize("method", ["feta", "nettrim"])
def test_default_output_leaves_the_run_hash_unchanged(method):
    plain = RunSpec("synthetic", "mlp", method, 0.5)
    assert RunSpec("synthetic", "mlp", method, 0.5, hparams={"output": "relu"}).hash == plain.hash
    assert RunSpec("synthetic", "mlp", method, 0.5, hparams={"output": "linear"}).hash != plain.hash


@pytest.fixture(scope="module")
def tiny_gpt():
    """A one-block gpt, 1,024 calibration tokens, and every block matrix's inputs on them."""
    torch.manual_seed(0)
    model = prunelab.models.create("gpt", (16,), 256, layers=1, width=32, heads=2)
    calib = torch.randint(0, 256, (64, 16), generator=torch.Generator().manual_seed(0))
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    inputs = {}
    hooks = [modules[n].register_forward_hook(lambda m, args, out, n=n: inputs.__setitem__(n, args[0].detach()))
             for n in names]
    with torch.no_grad():
        model(calib)
    for hook in hooks:
        hook.remove()
    return model, calib, inputs


def _layer_errors(dense, pruned, inputs):
    """Relative error of each block matrix's output on the dense model's inputs to it."""
    dense_modules, pruned_modules = dict(dense.named_modules()), dict(pruned.named_modules())
    with torch.no_grad():
        return {n: float((pruned_modules[n](x) - dense_modules[n](x)).norm() / dense_modules[n](x).norm())
                for n, x in inputs.items()}


# A cheaper FeTa schedule (the defaults take ~8 s here); both outputs get the same.
_CHEAP = {"feta": {"outer_iters": 2, "epochs": 2}, "nettrim": {}}


@pytest.mark.parametrize("name", ["feta", "nettrim"])
def test_linear_output_prunes_every_gpt_block_matrix_with_lower_output_error(name, tiny_gpt):
    dense, calib, inputs = tiny_gpt
    assert sorted(inputs) == ["blocks.0.attn.proj", "blocks.0.attn.qkv", "blocks.0.mlp.fc", "blocks.0.mlp.proj"]
    errors = {}
    for output in ("relu", "linear"):
        model = copy.deepcopy(dense)
        method = prunelab.methods.create(name, output=output, include_last=True, **_CHEAP[name])
        masks = method.prune(model, None, 0.5, calib)
        params = dict(model.named_parameters())
        for layer in inputs:
            keep = masks[layer + ".weight"]
            assert int(keep.sum()) == keep.numel() // 2, layer
            assert not bool(params[layer + ".weight"].detach()[~keep].any())
        errors[output] = _layer_errors(dense, model, inputs)
    for layer in inputs:
        assert errors["linear"][layer] < errors["relu"][layer], (layer, errors)
    # The residual projections have the most outputs of either sign to lose.
    assert errors["linear"]["blocks.0.attn.proj"] < 0.5 * errors["relu"]["blocks.0.attn.proj"]

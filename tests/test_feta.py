"""FeTa (difference-of-convex layer-wise pruning) and the paper's histogram hard thresholding."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab.data import Split
from prunelab.errors import ConfigError
from prunelab.methods.layerwise.feta import _dsq, feta_lipschitz, feta_objective, feta_solve, feta_tau_guess
from prunelab.methods.layerwise.feta_solver import CURVATURE_BOUND
from prunelab.methods.hard_threshold import histogram_threshold


@pytest.fixture(scope="module")
def layer():
    """A ReLU layer with known weights: inputs in [0, 1] (like pixels), post-ReLU targets."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(2000, 20, generator=g)
    W = torch.randn(6, 20, generator=g) * 0.5
    b = torch.randn(6, generator=g) * 0.5
    return X, W, b, torch.relu(X @ W.T + b)


FAST = dict(step=0.05, batch_size=100)   # N = 2000 gives 20 steps per epoch; η = 1e-3 is too slow
QUICK = dict(min_steps=10, batch_size=100)   # the method on 600 rows: 10 steps per epoch, η = 1/L̂


def test_sigmoid_gradient_is_the_true_derivative_even_where_the_official_code_breaks():
    # The official grad_apr returns sigmoid(1) ≈ 0.731 for θz ≥ 10 (a misused ``and``); the true
    # derivative of ρ_θ(z)² there is 2ρ_θ(z) · 1.
    z = torch.tensor([-3.0, -0.2, 0.0, 0.3, 1.0, 2.5, 5.0], dtype=torch.float64, requires_grad=True)
    (F.softplus(z, beta=10.0) ** 2).sum().backward()
    torch.testing.assert_close(_dsq(z.detach(), 10.0), z.grad)
    assert _dsq(torch.tensor([5.0]), 10.0).item() == pytest.approx(2 * 5.0, rel=1e-6)


def test_objective_decreases_over_dca_iterations(layer):
    X, W, b, Y = layer
    for tau in (0.0, 1e-4, 1e-3):
        history = feta_solve(X, Y, tau, outer_iters=6, record_objective=True, **FAST).objective
        assert len(history) == 7
        assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(history, history[1:]))
        assert history[-1] < 0.5 * history[0]


def test_tau_zero_reconstructs_the_layer_outputs(layer):
    X, W, b, Y = layer
    result = feta_solve(X, Y, 0.0, outer_iters=20, record_objective=True, **FAST)
    # It minimises the softplus surrogate at least as well as the true weights do ...
    assert result.objective[-1] <= feta_objective(X, Y, W, b)
    # ... and reproduces the ReLU outputs up to the surrogate's bias (θ = 10: ~2.5 %).
    error = (torch.relu(X @ result.weight.T + result.bias) - Y).norm() / Y.norm()
    assert error < 0.03
    sharp = feta_solve(X, Y, 0.0, theta=30.0, outer_iters=20, **FAST)
    error = (torch.relu(X @ sharp.weight.T + sharp.bias) - Y).norm() / Y.norm()
    assert error < 0.006


def test_larger_tau_gives_sparser_solutions_and_support_is_respected(layer):
    X, W, b, Y = layer
    counts = [int((feta_solve(X, Y, tau, **FAST).weight != 0).sum()) for tau in (1e-4, 1e-3, 1e-2)]
    assert counts[0] > counts[1] > counts[2]
    support = torch.rand(6, 20, generator=torch.Generator().manual_seed(1)) < 0.5
    result = feta_solve(X, Y, 0.0, support=support, **FAST)
    assert bool((result.weight[~support] == 0).all())
    assert bool((result.weight[support] != 0).all())


def test_solve_is_deterministic_and_warm_start_is_used(layer):
    X, W, b, Y = layer
    one = feta_solve(X, Y, 1e-4, seed=3, **FAST)
    two = feta_solve(X, Y, 1e-4, seed=3, **FAST)
    assert torch.equal(one.weight, two.weight) and torch.equal(one.bias, two.bias)
    warm = feta_solve(X, Y, 0.0, outer_iters=1, epochs=1, init_weight=W, init_bias=b,
                      record_objective=True, **FAST)
    assert warm.objective[0] == pytest.approx(feta_objective(X, Y, W, b), rel=1e-5)


def test_shrink_bias_follows_the_official_prox(layer):
    X, W, b, Y = layer
    kept = feta_solve(X, Y, 0.05, **FAST)
    shrunk = feta_solve(X, Y, 0.05, shrink_bias=True, **FAST)
    assert shrunk.bias.abs().sum() < kept.bias.abs().sum()


# F at τ = 1e-5 (λ = 1e-2) of the layer fixture, converged: the official rule run 300 times longer
# (step 1e-3, 3000 steps per epoch) and the default rule (η = 1/L̂, 30 steps) both reach it.
CONVERGED_F = 0.31014


def test_few_rows_stall_the_official_rule_and_the_lipschitz_step_with_min_steps_converges(layer):
    # N = 2000, b = 200: the official m = N/b gives 10 steps per epoch at η = 1e-3 = 0.013/L.
    X, W, b, Y = layer
    lam = 1e-5 / 1e-3

    def objective(**kwargs):
        result = feta_solve(X, Y, 1e-5, **kwargs)
        return feta_objective(X, Y, result.weight, result.bias, lam=lam), result
    official, _ = objective()
    fixed_step, _ = objective(step_rule="lipschitz")
    converged, result = objective(step_rule="lipschitz", min_steps=30)
    assert official > 2.2 * CONVERGED_F
    assert CONVERGED_F < fixed_step < 1.02 * CONVERGED_F
    assert converged == pytest.approx(CONVERGED_F, rel=2e-4)   # the same λ: the same optimum
    assert result.step == pytest.approx(1.0 / feta_lipschitz(X), rel=1e-12) and result.tau == 1e-5


def test_min_steps_is_a_floor_on_the_official_steps_per_epoch(layer):
    X, W, b, Y = layer   # N // b = 20 with FAST's b = 100
    runs = [feta_solve(X, Y, 1e-4, outer_iters=1, min_steps=m, **FAST) for m in (0, 20, 21)]
    assert torch.equal(runs[0].weight, runs[1].weight)
    assert not torch.equal(runs[1].weight, runs[2].weight)


def test_lipschitz_bound_is_the_curvature_bound_times_the_top_eigenvalue(layer):
    X = layer[0]
    ones = torch.cat([X, torch.ones(len(X), 1)], 1).double()
    top = torch.linalg.eigvalsh(ones.T @ ones / len(X)).max().item()
    assert feta_lipschitz(X) == pytest.approx(2 * CURVATURE_BOUND * top, rel=1e-5)
    assert feta_lipschitz(torch.zeros(5, 3)) == pytest.approx(2 * CURVATURE_BOUND)   # the bias column
    # ρ'² + ρρ'' (half the second derivative of ρ_θ²) peaks at 1.0453 for every θ.
    z = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    for theta in (1.0, 10.0, 30.0):
        s = torch.sigmoid(theta * z)
        peak = (s * s + F.softplus(z, beta=theta) * theta * s * (1 - s)).max().item()
        assert 1.045 < peak <= CURVATURE_BOUND


def test_a_solve_of_some_units_gives_those_rows_of_the_full_solve(layer):
    X, W, b, Y = layer
    support = torch.rand(6, 20, generator=torch.Generator().manual_seed(2)) < 0.7
    full = feta_solve(X, Y, 1e-4, support=support, step_rule="lipschitz", seed=5)
    units = torch.tensor([1, 4, 5])
    part = feta_solve(X, Y, 1e-4, support=support, step_rule="lipschitz", seed=5, units=units)
    assert part.weight.shape == (3, 20)
    # Equal up to the rounding of products over fewer columns.
    torch.testing.assert_close(part.weight, full.weight[units], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(part.bias, full.bias[units], rtol=1e-4, atol=1e-5)
    assert torch.equal(part.weight != 0, full.weight[units] != 0)


def test_tau_guess_is_monotone_in_the_count(layer):
    X, W, b, Y = layer
    out = X @ W.T + b
    guesses = [feta_tau_guess(X, out, W, k) for k in (100, 60, 20)]
    assert guesses[0] < guesses[1] < guesses[2]


def _mlp_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(),
                          nn.Linear(10, 3))
    x = torch.rand(600, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    return model, Split(x, torch.zeros(600, dtype=torch.int64))


@pytest.mark.parametrize("polish", [0, 3])
def test_feta_method_reaches_exact_sparsity_on_hidden_layers(polish):
    model, calib = _mlp_and_data()
    last = model[5].weight.detach().clone()
    method = prunelab.methods.create("feta", polish_epochs=polish, **QUICK)
    masks = method.prune(model, None, 0.8, calib)
    assert int(masks["1.weight"].sum()) == round(0.2 * 192)
    assert int(masks["3.weight"].sum()) == round(0.2 * 120)
    assert bool(masks["5.weight"].all()) and torch.equal(model[5].weight, last)
    assert bool((model[1].weight[~masks["1.weight"]] == 0).all())
    assert [i["layer"] for i in method.last_info] == ["1.weight", "3.weight"]
    assert all(i["tau"] > 0 and i["solves"] >= 1 for i in method.last_info)


def test_probes_on_some_units_then_the_rest_give_the_full_solve_at_the_chosen_tau():
    model, calib = _mlp_and_data()
    X = calib.x.flatten(1)
    Y = torch.relu(model[1](X)).detach()
    method = prunelab.methods.create("feta", probe_units=4, polish_epochs=0, min_steps=10)
    masks = method.prune(model, None, 0.75, calib)
    info = method.last_info[0]
    assert int(masks["1.weight"].sum()) == 48 and info["solves"] == len(info["probes"]) >= 1
    full = feta_solve(X, Y, info["tau"], step_rule="lipschitz", min_steps=10)
    torch.testing.assert_close(model[1].weight, full.weight * masks["1.weight"], rtol=1e-4, atol=1e-5)
    assert info["solution_nonzeros"] == int((full.weight != 0).sum())


def test_feta_prunes_among_survivors_and_fixed_tau_keeps_the_nonzeros():
    model, calib = _mlp_and_data()
    first = prunelab.methods.create("hard-threshold", exact=True).prune(model, None, 0.5)
    masks = prunelab.methods.create("feta", search_steps=2, **QUICK).prune(model, first, 0.75, calib)
    assert bool((masks["1.weight"] <= first["1.weight"]).all())
    assert int(masks["1.weight"].sum()) == 48
    model, calib = _mlp_and_data()
    method = prunelab.methods.create("feta", tau=(1e-3, 2e-3), **QUICK)
    masks = method.prune(model, None, 0.5, calib)
    assert torch.equal(masks["1.weight"], model[1].weight != 0)
    assert [i["tau"] for i in method.last_info] == [1e-3, 2e-3]


def test_feta_rejects_bad_input():
    model, calib = _mlp_and_data()
    with pytest.raises(ConfigError, match="calibration"):
        prunelab.methods.create("feta").prune(model, None, 0.5, None)
    with pytest.raises(ConfigError, match="init"):
        prunelab.methods.create("feta", init="zeros")
    with pytest.raises(ConfigError, match="tau"):
        prunelab.methods.create("feta", tau=-1.0)
    with pytest.raises(ConfigError, match="step_rule"):
        prunelab.methods.create("feta", step_rule="adaptive")
    with pytest.raises(ConfigError, match="min_steps"):
        prunelab.methods.create("feta", min_steps=-1)
    with pytest.raises(ConfigError, match="no hyperparameter"):
        prunelab.methods.create("feta", lambda_=1.0)


# ---- hard thresholding (the FeTa paper's baseline) --------------------------------------------

def test_histogram_threshold_is_the_hand_computed_bin_edge():
    # |w| = 0, 1, ..., 99: 100 bins of width 0.99, one value each. The CDF reaches 0.5 in bin 49,
    # whose left edge 49 * 0.99 = 48.51 is the threshold: 49 weights go, sparsity 0.49 < 0.5.
    values = torch.arange(100, dtype=torch.float32)
    assert histogram_threshold(values, 0.5) == pytest.approx(48.51, abs=1e-9)
    assert int((values < histogram_threshold(values, 0.5)).sum()) == 49
    assert histogram_threshold(values, 0.0) == 0.0


def test_histogram_threshold_matches_the_numpy_recipe():
    w = torch.randn(300, 100, generator=torch.Generator().manual_seed(0)).abs()
    for p in (0.5, 0.7, 0.9, 0.95):
        hist, edges = np.histogram(w.double().numpy().reshape(-1), bins=100)
        reference = edges[np.nonzero(np.cumsum(hist) / hist.sum() >= p)[0][0]]
        assert histogram_threshold(w, p) == pytest.approx(reference, rel=1e-12)


def test_hard_threshold_method_prunes_hidden_layers_approximately_or_exactly():
    model, _ = _mlp_and_data()
    method = prunelab.methods.create("hard-threshold")
    masks = method.prune(model, None, 0.9)
    for info in method.last_info:
        assert 0.8 < info["sparsity"] <= 0.9
    assert bool(masks["5.weight"].all())
    model, _ = _mlp_and_data()
    masks = prunelab.methods.create("hard-threshold", exact=True).prune(model, None, 0.9)
    assert int(masks["1.weight"].sum()) == round(0.1 * 192)
    assert int(masks["3.weight"].sum()) == round(0.1 * 120)
    assert int((model[1].weight != 0).sum()) == round(0.1 * 192)

"""Net-Trim (convex layer-wise pruning, ADMM)."""

import pytest
import torch
from torch import nn

import prunelab
from prunelab.data import Split
from prunelab.errors import ConfigError
from prunelab.methods.layerwise.nettrim import nettrim_constraints, nettrim_solve


@pytest.fixture(scope="module")
def layer():
    """A ReLU layer with sparse true weights (30 % non-zero)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 30, generator=g)
    W = torch.randn(8, 30, generator=g) * (torch.rand(8, 30, generator=g) < 0.3)
    b = torch.randn(8, generator=g) * 0.1
    return X, W, b, X @ W.T + b


@pytest.mark.parametrize("epsilon", [0.02, 0.1, 0.3])
def test_solution_satisfies_the_constraints(layer, epsilon):
    X, W, b, outputs = layer
    start = torch.randn(8, 30, generator=torch.Generator().manual_seed(1))
    result = nettrim_solve(X, outputs, epsilon, weight=start, rho=10.0, max_iters=2000, tol=1e-5)
    fit, leak = nettrim_constraints(X, outputs, result.weight, result.bias)
    # Active samples fit within ε (relative), inactive ones stay at or below 0, to tolerance.
    assert float(fit.max()) <= epsilon * (1 + 2e-3)
    assert float(leak.max()) <= 1e-3
    # The true weights are feasible, so the ℓ1 minimiser's norm cannot exceed theirs.
    assert result.weight.abs().sum() <= W.abs().sum() * (1 + 1e-3)


def test_looser_epsilon_gives_smaller_l1_norm(layer):
    X, W, b, outputs = layer
    norms = [nettrim_solve(X, outputs, eps, rho=10.0, max_iters=1500, tol=1e-5).weight.abs().sum().item()
             for eps in (0.02, 0.2, 0.6)]
    assert norms[0] > norms[1] > norms[2]
    # At ε = 1 the zero weights are feasible and optimal.
    assert nettrim_solve(X, outputs, 1.0, rho=10.0, max_iters=500).weight.abs().max() < 1e-3


def test_mask_and_warm_start(layer):
    X, W, b, outputs = layer
    mask = W != 0
    result = nettrim_solve(X, outputs, 0.05, mask=mask, max_iters=300)
    assert bool((result.weight[~mask] == 0).all())
    resumed = nettrim_solve(X, outputs, 0.05, mask=mask, state=result.state, max_iters=10, tol=0.0)
    assert resumed.iters == 10
    torch.testing.assert_close(resumed.weight, result.weight, rtol=0.05, atol=0.02)


def _mlp_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(300, 20, generator=torch.Generator().manual_seed(1))
    return model, Split(x, torch.zeros(300, dtype=torch.int64))


def test_method_reaches_exact_sparsity_and_reports_constraints():
    model, calib = _mlp_and_data()
    method = prunelab.methods.create("nettrim", search_steps=4, search_iters=30, max_iters=100,
                                    epsilon_max=1.0)
    masks = method.prune(model, None, 0.75, calib)
    assert int(masks["0.weight"].sum()) == 80 and int(masks["2.weight"].sum()) == 32
    assert bool(masks["4.weight"].all())
    assert int((model[0].weight != 0).sum()) <= 80
    info = method.last_info[0]
    assert {"epsilon", "fit_after_cut", "leak_after_cut", "iters"} <= set(info)
    assert len(info["probes"]) == 5


def test_method_prunes_among_survivors_without_search():
    model, calib = _mlp_and_data()
    first = prunelab.methods.create("hard-threshold", exact=True).prune(model, None, 0.5)
    masks = prunelab.methods.create("nettrim", search_steps=0, max_iters=50).prune(
        model, first, 0.8, calib)
    assert bool((masks["0.weight"] <= first["0.weight"]).all())
    assert int(masks["0.weight"].sum()) == 64


def test_nettrim_rejects_bad_input(layer):
    X, W, b, outputs = layer
    with pytest.raises(ConfigError, match="epsilon"):
        nettrim_solve(X, outputs, 0.0)
    with pytest.raises(ConfigError, match="epsilon_min"):
        prunelab.methods.create("nettrim", epsilon_min=1.0, epsilon_max=0.5)
    model, _ = _mlp_and_data()
    with pytest.raises(ConfigError, match="calibration"):
        prunelab.methods.create("nettrim").prune(model, None, 0.5)


def test_least_squares_refit_recovers_the_true_weights_on_their_support(layer):
    from prunelab.methods.layerwise.nettrim import least_squares_refit

    X, W, b, outputs = layer
    weight, bias = least_squares_refit(X, outputs, W != 0)
    torch.testing.assert_close(weight, W, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bias, b, rtol=1e-4, atol=1e-4)
    model, calib = _mlp_and_data()
    masks = prunelab.methods.create("nettrim", search_steps=0, max_iters=50, refit=True).prune(
        model, None, 0.75, calib)
    assert int(masks["0.weight"].sum()) == 80
    assert bool((model[0].weight[~masks["0.weight"]] == 0).all())


def test_next_epsilon_secant_inside_a_bracket_and_capped_steps_outside():
    from prunelab.methods.layerwise.nettrim import next_epsilon

    # Bracket: count 400 at ε = 0.1, 100 at ε = 0.4; log-count linear in log ε → 200 at ε = 0.2.
    probes = [{"epsilon": 0.1, "nonzeros": 400}, {"epsilon": 0.4, "nonzeros": 100}]
    assert next_epsilon(probes, 200, 1e-3, 1.0) == pytest.approx(0.2)
    # Kept inside the middle 80 % of the bracket (log scale).
    assert next_epsilon(probes, 399, 1e-3, 1.0) == pytest.approx(0.1 * 4 ** 0.1)
    # One probe far above the request: at most ×4 per step.
    assert next_epsilon([{"epsilon": 0.1, "nonzeros": 10_000}], 10, 1e-3, 1.0) == pytest.approx(0.4)
    # Too sparse already at the smallest ε: nothing left to try.
    assert next_epsilon([{"epsilon": 1e-3, "nonzeros": 5}], 10, 1e-3, 1.0) is None
    assert next_epsilon([{"epsilon": 1.0, "nonzeros": 50}], 10, 1e-3, 1.0) is None


def test_over_relaxation_reaches_the_plain_admm_solution(layer):
    X, W, b, outputs = layer
    plain = nettrim_solve(X, outputs, 0.1, rho=10.0, max_iters=1500, tol=0.0, alpha=1.0)
    relaxed = nettrim_solve(X, outputs, 0.1, rho=10.0, max_iters=1500, tol=0.0, alpha=1.6)
    # Same convex program: same ℓ1 optimum and support; the relaxed iterate is closer to feasible.
    assert float(relaxed.weight.abs().sum()) == pytest.approx(float(plain.weight.abs().sum()), rel=1e-3)
    assert bool(((relaxed.weight.abs() > 1e-3) == (plain.weight.abs() > 1e-3)).all())
    assert relaxed.primal < plain.primal


def test_state_columns_round_trip(layer):
    X, W, b, outputs = layer
    state = nettrim_solve(X, outputs, 0.1, max_iters=20).state
    index = torch.tensor([1, 4, 6])
    part = state.columns(index)
    assert part.w.shape == (31, 3) and part.z.shape == (500, 3) and part.rho.shape == (3,)
    fresh = nettrim_solve(X, outputs, 0.1, max_iters=1).state
    fresh.set_columns(index, part)
    torch.testing.assert_close(fresh.w[:, index], state.w[:, index], rtol=0, atol=0)
    torch.testing.assert_close(fresh.u[:, index], state.u[:, index], rtol=0, atol=0)


def test_search_on_a_subset_of_neurons_keeps_exact_counts():
    model, calib = _mlp_and_data()
    method = prunelab.methods.create("nettrim", search_neurons=6, search_iters=30, max_iters=60)
    masks = method.prune(model, None, 0.75, calib)
    assert int(masks["0.weight"].sum()) == 80 and int(masks["2.weight"].sum()) == 32
    first, second = method.last_info
    assert first["searched_neurons"] == 6 and second["searched_neurons"] == 6
    # Every probe lies in the search range and the chosen ε is one of them.
    for info in (first, second):
        assert all(1e-3 <= p["epsilon"] <= 1.0 for p in info["probes"])
        assert info["epsilon"] in [p["epsilon"] for p in info["probes"]]


def test_new_hparams_are_checked():
    with pytest.raises(ConfigError, match="alpha"):
        prunelab.methods.create("nettrim", alpha=2.0)
    with pytest.raises(ConfigError, match="search_neurons"):
        prunelab.methods.create("nettrim", search_neurons=0)
    X = torch.randn(50, 4)
    with pytest.raises(ConfigError, match="alpha"):
        nettrim_solve(X, X @ torch.randn(3, 4).T, 0.1, alpha=0.0)


def test_default_search_never_probes_beyond_epsilon_max():
    model, calib = _mlp_and_data()
    method = prunelab.methods.create("nettrim")
    method.prune(model, None, 0.95, calib)
    probes = [p["epsilon"] for info in method.last_info for p in info["probes"]]
    assert max(probes) == pytest.approx(0.3) and all(e <= 0.3 + 1e-12 for e in probes)

"""Iterative pruning (OS, LT, SAP): exact counts, monotone masks, exact rewinding, the harness API."""

import math

import numpy as np
import pytest
import torch

import prunelab
from prunelab import data as pdata
from prunelab import methods, models
from prunelab.core.checkpoints import load_checkpoint
from prunelab.errors import ConfigError
from prunelab.core.masks import Masks
from prunelab.methods.base import MethodContext
from prunelab.methods.iterative import (
    FixedFractionHparams,
    SAPHparams,
    fixed_fraction_masks,
    iterate,
    keep_count,
    paper_train_config,
    prune_lowest,
    sap_masks,
    sap_prune_count,
    sap_retained,
)
from prunelab.core.pqi import pq_index_model
from prunelab.training.loop import Callback, TrainConfig

FAST = TrainConfig(epochs=1, batch_size=250, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                   weight_decay=5e-4, schedule="cosine", clip_grad_norm=1.0)


@pytest.fixture(scope="module")
def digits():
    return pdata.load("digits")


def small_mlp(ds, seed=0, hidden=(32, 16)):
    torch.manual_seed(seed)
    return models.create("mlp", ds.in_shape, ds.num_classes, hidden=hidden)


class RoundLog:
    """on_round hook: keeps a copy of every round's masks and weights."""

    def __init__(self):
        self.masks, self.states, self.records = [], [], []

    def __call__(self, rec, model, masks):
        self.records.append(rec)
        self.masks.append(masks.clone())
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})


class StartOfRound(Callback):
    """Keeps the model state at the start of every training (i.e. right after the rewind)."""

    def __init__(self, capture_step=None):
        self.starts, self.capture_step, self.at_step = [], capture_step, None

    def on_train_begin(self, state):
        self.starts.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})

    def on_batch_end(self, state):
        if len(self.starts) == 1 and state.step == self.capture_step:
            self.at_step = {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def assert_monotone(mask_list):
    for before, after in zip(mask_list, mask_list[1:]):
        for n in before:
            assert not bool((after[n] & ~before[n]).any()), "a pruned weight came back"


# -- counts -----------------------------------------------------------------------------------------

def test_keep_count_follows_the_geometric_schedule():
    assert [keep_count(1000, 0.2, t) for t in range(8)] == [1000, 800, 640, 512, 410, 328, 262, 210]
    assert keep_count(43520, 0.2, 3) == round(0.512 * 43520)
    assert keep_count(7, 0.5, 1) == 4  # halves round up
    assert keep_count(10, 0.2, 100) == 0


def test_sap_count_with_the_paper_setting_is_the_pq_index():
    for d, pqi in ((1000, 0.3), (43520, 0.118757), (7, 0.999), (12345, 0.0), (10, 0.95)):
        assert sap_prune_count(d, pqi, 0.5, 1.0, eta_r=0.0, gamma=1.0, beta=0.9) == math.floor(d * min(pqi, 0.9))
    assert sap_prune_count(0, 0.4, 0.5, 1.0) == 0
    vec = sap_prune_count(torch.tensor([100, 0, 50]), torch.tensor([0.25, 0.5, 0.95]), 0.5, 1.0)
    assert vec.tolist() == [25, 0, 45]


def test_sap_count_general_formula():
    d, pqi = 1000, 0.2
    # p = 1, q = 2: retained fraction (1 - I)^2 -> prune 1 - 0.64 = 36 %
    assert sap_prune_count(d, pqi, 1.0, 2.0) == 360
    assert sap_retained(d, pqi, 1.0, 2.0) == pytest.approx(640.0)
    # eta_r and gamma: r = d (1+eta)^{-q/(q-p)} (1-I)^{qp/(q-p)}, c = floor(d min(gamma (1 - r/d), beta))
    p, q, eta, gamma, beta = 0.5, 1.0, 0.1, 1.2, 0.9
    r = d * (1 + eta) ** (-q / (q - p)) * (1 - pqi) ** (q * p / (q - p))
    assert sap_retained(d, pqi, p, q, eta) == pytest.approx(r)
    assert sap_prune_count(d, pqi, p, q, eta, gamma, beta) == math.floor(d * min(gamma * (1 - r / d), beta))
    assert sap_prune_count(d, 0.9, p, q, eta, gamma=5.0, beta=0.9) == 900  # capped by beta
    with pytest.raises(ConfigError):
        sap_prune_count(d, pqi, 1.0, 1.0)


# -- masks -------------------------------------------------------------------------------------------

def test_prune_lowest_is_exact_with_ties_and_scopes():
    scores = {"a": torch.ones(4, 5), "b": torch.arange(6.0).reshape(2, 3)}
    masks = Masks({"a": torch.ones(4, 5, dtype=torch.bool), "b": torch.tensor([[True, False, True], [True, True, True]])})
    new = prune_lowest(scores, masks, 7, "global")
    assert new.kept() == masks.kept() - 7
    assert new["b"].tolist() == [[False, False, True], [True, True, True]]  # b's 0 is the smallest
    assert new["a"].reshape(-1).tolist() == [False] * 6 + [True] * 14  # ties: earliest first
    layer = prune_lowest(scores, masks, {"a": 3, "b": 100}, "layer")
    assert layer["a"].sum() == 17 and layer["b"].sum() == 0  # a count over the unit prunes all of it
    neuron = prune_lowest(scores, masks, {"a": torch.tensor([0, 1, 2, 5]), "b": torch.tensor([1, 2])}, "neuron")
    assert neuron["a"].sum(dim=1).tolist() == [5, 4, 3, 0]
    assert neuron["b"].tolist() == [[False, False, True], [False, False, True]]
    for m in (new, layer, neuron):
        assert_monotone([masks, m])


@pytest.mark.parametrize("scope", ["global", "layer", "neuron"])
def test_fixed_fraction_counts_are_exact_every_round(scope):
    g = torch.Generator().manual_seed(0)
    weights = {"w1": torch.randn(37, 23, generator=g), "w2": torch.randn(11, 5, 3, generator=g)}
    masks = Masks({n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()})
    history = [masks]
    for t in range(1, 9):
        masks = fixed_fraction_masks(weights, masks, 0.2, t, scope)
        history.append(masks)
        if scope == "global":
            assert masks.kept() == keep_count(851 + 165, 0.2, t)
        elif scope == "layer":
            assert [int(m.sum()) for m in masks.values()] == [keep_count(851, 0.2, t), keep_count(165, 0.2, t)]
        else:
            assert set(masks["w1"].sum(dim=1).tolist()) == {keep_count(23, 0.2, t)}
            assert set(masks["w2"].reshape(11, -1).sum(dim=1).tolist()) == {keep_count(15, 0.2, t)}
    assert_monotone(history)
    # with fixed scores the survivors are the largest magnitudes of the unit
    if scope == "global":
        flat = torch.cat([w.abs().reshape(-1) for w in weights.values()])
        keep = torch.cat([m.reshape(-1) for m in masks.values()])
        assert flat[keep].min() > flat[~keep].max()


@pytest.mark.parametrize("scope", ["global", "layer", "neuron"])
def test_sap_masks_prune_the_formula_count_per_unit(scope):
    g = torch.Generator().manual_seed(1)
    weights = {"w1": torch.randn(20, 30, generator=g) ** 3, "w2": torch.randn(10, 20, generator=g)}
    masks = Masks({n: torch.rand(w.shape, generator=g) > 0.2 for n, w in weights.items()})
    new, info = sap_masks(weights, masks, 1.0, 2.0, 0.0, 1.0, 0.9, scope)
    assert_monotone([masks, new])
    pqi = pq_index_model(weights, masks, 1.0, 2.0, scope)
    if scope == "global":
        expected = sap_prune_count(masks.kept(), pqi["global"], 1.0, 2.0)
        assert masks.kept() - new.kept() == expected == info["pruned"]
        assert info["pqi"] == pqi["global"] and info["d"] == masks.kept()
    elif scope == "layer":
        for n in masks:
            assert int(masks[n].sum() - new[n].sum()) == sap_prune_count(int(masks[n].sum()), pqi[n], 1.0, 2.0)
    else:
        for n in masks:
            d = masks[n].reshape(masks[n].shape[0], -1).sum(dim=1)
            got = d - new[n].reshape(d.shape[0], -1).sum(dim=1)
            assert got.tolist() == sap_prune_count(d, pqi[n], 1.0, 2.0).tolist()


# -- the driver on a real trained model --------------------------------------------------------------

def test_first_sap_round_prunes_floor_d_times_pqi_of_the_trained_dense_model(digits):
    """Acceptance: eta_r = 0, gamma = 1, p = 0.5, q = 1 -> c_0 = floor(d min(I, beta))."""
    log = RoundLog()
    net = small_mlp(digits, hidden=(128, 256))  # the paper's MLP shape, on 8x8 digits
    res = iterate(net, digits, "sap", rounds=2, epochs=1, train_config=FAST, on_round=log)
    dense = log.states[0]
    names = list(res.masks)
    d = sum(dense[n].numel() for n in names)
    assert d == 64 * 128 + 128 * 256 + 256 * 10
    # I recomputed independently (float64 numpy) from the trained dense weights
    a = np.concatenate([dense[n].double().abs().numpy().ravel() for n in names])
    ref = 1 - d ** (1 / 1.0 - 1 / 0.5) * (np.sqrt(a).sum() ** 2) / a.sum()
    assert res.rounds[0]["pqi"] == pytest.approx(ref, abs=1e-8)  # float32 powers, float64 sums
    assert 0.02 < ref < 0.9  # a trained model, not a degenerate one
    c = math.floor(d * min(res.rounds[0]["pqi"], 0.9))
    assert res.rounds[1]["pruned"] == c
    assert res.rounds[1]["kept"] == d - c
    # ... and they are the c smallest |w| of the dense trained weights
    keep = np.concatenate([log.masks[1][n].numpy().ravel() for n in names])
    assert a[keep].min() >= a[~keep].max()
    # round 2 uses the retrained weights' own PQ Index
    assert res.rounds[2]["pruned"] == math.floor((d - c) * min(res.rounds[1]["pqi"], 0.9))
    assert_monotone(log.masks)
    # records carry what the paper logs
    rec = res.rounds[1]
    for key in ("density", "pqi", "pqi_layer", "pqi_grid", "gini", "pruned_val_top1", "pruned_test_top1",
                "val_top1", "test_top1", "seconds_train", "seconds_prune", "pruned_pqi"):
        assert rec[key] is not None, key
    assert len(rec["pqi_grid"]) == 10 and len(rec["pqi_grid"][0]) == 11
    assert rec["pqi_grid"][4][0] == pytest.approx(rec["pqi"], abs=1e-12)
    assert rec["prune_info"]["pqi"] == res.rounds[0]["pqi"]


@pytest.mark.parametrize("schedule", ["os", "lt"])
def test_os_and_lt_densities_follow_0_8_power_t_in_counts(digits, schedule):
    log = RoundLog()
    res = iterate(small_mlp(digits), digits, schedule, rounds=5, epochs=1, train_config=FAST, on_round=log)
    total = res.masks.total()
    assert [r["kept"] for r in res.rounds] == [keep_count(total, 0.2, t) for t in range(6)]
    assert res.densities()[3] == pytest.approx(keep_count(total, 0.2, 3) / total)
    assert_monotone(log.masks)
    names = list(res.masks)
    dense = torch.cat([log.states[0][n].abs().reshape(-1) for n in names])
    for t in range(1, 6):
        keep = torch.cat([log.masks[t][n].reshape(-1) for n in names])
        if schedule == "os":  # every mask is the top-k of the dense weights
            assert dense[keep].min() >= dense[~keep].max()
        else:  # LT: the top-k (among survivors) of the weights retrained in round t-1
            prev = torch.cat([log.states[t - 1][n].abs().reshape(-1) for n in names])
            before = torch.cat([log.masks[t - 1][n].reshape(-1) for n in names])
            assert prev[keep].min() >= prev[before & ~keep].max()
    if schedule == "lt":  # LT and OS differ after the first round
        dense_rank = dense.argsort(descending=True)[: keep_count(total, 0.2, 5)]
        final = torch.cat([res.masks[n].reshape(-1) for n in names])
        assert not bool(final[dense_rank].all())


def test_rewind_init_restores_exact_initial_values(digits):
    net = small_mlp(digits)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    starts = StartOfRound()
    log = RoundLog()
    iterate(net, digits, "lt", rounds=3, epochs=1, train_config=FAST, callbacks=[starts], on_round=log)
    assert len(starts.starts) == 4
    for t in range(1, 4):
        state, masks = starts.starts[t], log.masks[t]
        for k, v in init.items():
            if k in masks:
                assert torch.equal(state[k], v * masks[k]), k
                assert torch.equal(state[k][masks[k]], v[masks[k]])
            else:  # biases (and any buffers) too
                assert torch.equal(state[k], v), k
        assert not torch.equal(log.states[t]["fc1.weight"], state["fc1.weight"])  # it did train


def test_rewind_to_iteration_k_and_fine_tuning(digits):
    k = 3
    starts = StartOfRound(capture_step=k)
    log = RoundLog()
    iterate(small_mlp(digits), digits, "sap", rounds=2, epochs=1, train_config=FAST, rewind="k",
            rewind_step=k, callbacks=[starts], on_round=log)
    assert starts.at_step is not None
    for t in (1, 2):
        for key, v in starts.at_step.items():
            expected = v * log.masks[t][key] if key in log.masks[t] else v
            assert torch.equal(starts.starts[t][key], expected), key
    # rewind="none": round t starts from round t-1's trained weights, pruned
    starts, log = StartOfRound(), RoundLog()
    iterate(small_mlp(digits), digits, "lt", rounds=2, epochs=1, train_config=FAST, rewind="none",
            callbacks=[starts], on_round=log)
    for t in (1, 2):
        for key, v in log.states[t - 1].items():
            expected = v * log.masks[t][key] if key in log.masks[t] else v
            assert torch.equal(starts.starts[t][key], expected), key
    with pytest.raises(ConfigError, match="beyond"):
        iterate(small_mlp(digits), digits, "lt", rounds=1, epochs=1, train_config=FAST, rewind="k", rewind_step=10_000)


def test_pruned_accuracy_is_the_source_weights_under_the_new_mask(digits):
    log = RoundLog()
    res = iterate(small_mlp(digits), digits, "os", rounds=2, epochs=1, train_config=FAST, on_round=log,
                  record_grid=False)
    model = small_mlp(digits)
    for t in (1, 2):
        model.load_state_dict(log.states[0])  # OS: the dense trained weights
        log.masks[t].apply(model)
        acc = prunelab.evaluate(model, digits.test)["top1"]
        assert res.rounds[t]["pruned_test_top1"] == acc
    assert "pqi_grid" not in res.rounds[1]
    assert res.info["pruned_scores"]["test"]["top1"] == res.rounds[2]["pruned_test_top1"]


def test_target_caps_and_stops(digits):
    res = iterate(small_mlp(digits), digits, "os", rounds=10, epochs=1, train_config=FAST, target=0.5)
    total = res.masks.total()
    kept = [r["kept"] for r in res.rounds]
    assert kept == [keep_count(total, 0.2, t) for t in range(4)] + [round(0.5 * total)]
    assert res.info["reached_target"] and res.rounds[-1]["prune_info"]["capped_at_target"]
    assert res.info["rounds_run"] == 4


def test_checkpoints_every_round(digits, tmp_path):
    res = iterate(small_mlp(digits), digits, "sap", rounds=1, epochs=1, train_config=FAST,
                  checkpoint_dir=tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["round_000.safetensors", "round_001.safetensors"]
    ckpt = load_checkpoint(tmp_path / "run" / "round_001.safetensors")
    assert ckpt.masks.equal(res.masks)
    assert ckpt.meta["metrics"]["kept"] == res.rounds[1]["kept"]
    assert ckpt.meta["extra"]["schedule"] == "sap"
    assert pq_index_model(ckpt.model, ckpt.masks)["global"] == pytest.approx(res.rounds[1]["pqi"], abs=1e-12)


@pytest.mark.parametrize("scope", ["layer", "neuron"])
def test_sap_scopes_run_end_to_end(digits, scope):
    res = iterate(small_mlp(digits), digits, "sap", rounds=1, epochs=1, train_config=FAST, scope=scope,
                  record_grid=False)
    assert 0 < res.rounds[1]["pruned"] < res.masks.total()
    assert set(res.rounds[1]["prune_info"]["layers"]) == set(res.masks)
    if scope == "neuron":
        assert set(res.rounds[1]["pqi_neuron_mean"]) == set(res.masks)


# -- configuration and the harness --------------------------------------------------------------------

def test_bad_configuration_is_a_config_error(digits):
    net = small_mlp(digits)
    for kwargs, match in (
        (dict(schedule="imp"), "schedule"),
        (dict(schedule="sap", p=1.0, q=1.0), "0 < p < q"),
        (dict(schedule="os", rate=0.0), "rate"),
        (dict(schedule="sap", beta=0.0), "beta"),
        (dict(schedule="sap", gamma=-1.0), "gamma"),
        (dict(schedule="sap", rewind="start"), "rewind"),
        (dict(schedule="lt", scope="filter"), "scope"),
        (dict(schedule="lt", eta_r=0.1), "no hyperparameter"),
        (dict(schedule="lt", target=1.0), "target"),
    ):
        with pytest.raises(ConfigError, match=match):
            iterate(net, digits, rounds=1, epochs=1, **kwargs)
    with pytest.raises(ConfigError, match="epochs"):
        iterate(net, digits, "lt", rounds=1)
    no_val = pdata.load("digits", val_size=0)
    with pytest.raises(ConfigError, match="validation"):
        iterate(net, no_val, "lt", rounds=1, epochs=1)
    with pytest.raises(ConfigError):
        methods.create("sap", rounds=-1)


def test_paper_recipe_defaults():
    cfg = paper_train_config(200)
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.batch_size,
            cfg.schedule, cfg.clip_grad_norm, cfg.epochs) == ("sgd", 0.1, 0.9, True, 5e-4, 250, "cosine", 1.0, 200)
    assert SAPHparams().beta == 0.9 and (SAPHparams().p, SAPHparams().q, SAPHparams().eta_r, SAPHparams().gamma) == (0.5, 1.0, 0.0, 1.0)
    assert FixedFractionHparams().rate == 0.2 and FixedFractionHparams().rewind == "init"


def test_registered_methods_run_through_the_harness_contract(digits):
    for name in ("os", "lt", "sap"):
        assert methods.get(name).family == "iterative"
    factory = lambda: small_mlp(digits)  # noqa: E731
    dense = factory()
    prunelab.train(dense, digits, FAST, select_best=True)
    ctx = MethodContext(data=digits, model_factory=factory, init_state=factory().state_dict(), dense_model=dense,
                        target=0.0, train_config=FAST, retrain_config=FAST.replace(epochs=2), seed=0, log=lambda m: None)
    outcome = methods.create("sap", rounds=2, record_grid=False).run(ctx)
    rounds = outcome.traces["rounds"]
    assert len(rounds) == 3 and rounds[0]["reused_dense"]
    assert rounds[0]["test_top1"] == prunelab.evaluate(dense, digits.test)["top1"]
    assert outcome.phase_times["train"] < 0.5 * outcome.phase_times["retrain"]
    assert outcome.masks.kept() == rounds[-1]["kept"]
    assert outcome.info["pruned_scores"]["val"]["top1"] == rounds[-1]["pruned_val_top1"]
    assert outcome.info["retrain_config"]["epochs"] == 2
    # the final model carries its masks
    for n, m in outcome.masks.items():
        assert not bool(dict(outcome.model.named_parameters())[n][~m].any())
    # the first pruning decision used the harness's dense model
    d = outcome.masks.total()
    pqi = pq_index_model(dense, None, 0.5, 1.0)["global"]
    assert rounds[1]["pruned"] == math.floor(d * min(pqi, 0.9))


# -- command line -------------------------------------------------------------------------------------

def test_cli_iterate_then_pqi(tmp_path, capsys):
    import json

    from prunelab.cli.main import main

    out = tmp_path / "lt"
    rc = main(["iterate", "--pruning-schedule", "lt", "--dataset", "digits", "--val-size", "0.1", "--model", "mlp",
               "--model-arg", "hidden=[32, 16]", "--rounds", "2", "--epochs", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads((out / "rounds.json").read_text())
    total = summary["rounds"][0]["total"]
    assert [r["kept"] for r in summary["rounds"]] == [keep_count(total, 0.2, t) for t in range(3)]
    assert sorted(p.name for p in out.glob("round_*.safetensors")) == [f"round_00{t}.safetensors" for t in range(3)]
    capsys.readouterr()
    assert main(["pqi", str(out / "round_002.safetensors"), "--json", "--grid"]) == 0
    shown = json.loads(capsys.readouterr().out)
    ckpt = load_checkpoint(out / "round_002.safetensors")
    assert shown["global"] == pytest.approx(pq_index_model(ckpt.model, ckpt.masks)["global"], abs=1e-12)
    assert shown["global"] == pytest.approx(summary["rounds"][2]["pqi"], abs=1e-12)
    assert shown["kept"] == keep_count(total, 0.2, 2)
    assert set(shown["layers"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert shown["grid"]["values"][4][0] == pytest.approx(shown["global"], abs=1e-12)
    assert main(["pqi", str(out / "round_002.safetensors"), "--scope", "neuron"]) == 0
    text = capsys.readouterr().out
    assert "fc2.weight" in text and "global: PQ Index" in text
    assert main(["pqi", str(out / "round_002.safetensors"), "--p", "2", "--q", "1"]) == 2
    assert "0 < p < q" in capsys.readouterr().err
    assert main(["pqi", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["iterate", "--pruning-schedule", "sap", "--dataset", "digits", "--rounds", "1", "--epochs", "1",
                 "--sap-beta", "2", "--out", str(tmp_path / "x")]) == 2
    assert "beta" in capsys.readouterr().err

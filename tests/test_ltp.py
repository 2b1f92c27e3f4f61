"""Learned Threshold Pruning (prunelab.methods.ltp): soft masks, gradients, the trail, the method."""

from __future__ import annotations

import copy
import json
import math
import pickle

import pytest
import torch
from torch import nn

from prunelab import data as data_mod
from prunelab import methods, models
from prunelab.errors import ConfigError, MethodError
from prunelab.methods.base import MethodContext
from prunelab.methods.ltp import (
    LTP,
    LTPCallback,
    LTPStallWarning,
    SoftThresholdModel,
    Trail,
    TrailEntry,
    _SoftThreshold,
    hard_mask,
    learn_thresholds,
    lower_thresholds_to,
    recalibrate_batchnorm,
    soft_mask,
    temperature_of,
)
from prunelab.training.loop import TrainConfig, evaluate, train

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def synthetic():
    return data_mod.load("synthetic", in_shape=(1, 8, 8), num_classes=10, n_train=600, n_test=200)


@pytest.fixture(scope="module")
def pretrained(synthetic):
    model = mlp()
    train(model, synthetic, TrainConfig(epochs=4, optimizer="adam", lr=3e-3, batch_size=64), progress=False)
    return model


# -- the soft mask -------------------------------------------------------------------------------
def test_soft_mask_equals_hard_mask_as_temperature_goes_to_zero():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 40, generator=g, dtype=torch.float64)
    tau = float((w * w).median())
    keep = (w * w - tau).abs() > 1e-6  # entries exactly at the threshold have no limit
    for temperature in (1e-9, 1e-12):
        soft = soft_mask(w, tau, temperature)
        assert torch.equal(soft[keep], hard_mask(w, tau)[keep].double())
    assert torch.equal(hard_mask(w, tau), w * w > tau)


def test_wrapped_model_in_training_mode_matches_hard_mask_at_tiny_temperature(pretrained):
    wrapped = SoftThresholdModel(copy.deepcopy(pretrained), temperature=1e-9, threshold_init_quantile=0.5)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    soft_out = wrapped.train()(x)
    hard_out = wrapped.eval()(x)
    hard_model, masks = wrapped.hard_model()
    assert torch.allclose(soft_out, hard_out, atol=1e-6)
    assert torch.allclose(hard_model(x), hard_out, atol=1e-6)
    assert masks.sparsity() == pytest.approx(0.5, abs=0.01)


def test_temperature_is_t0_times_population_variance_of_magnitudes():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(2))
    expected = 0.3 * w.abs().var(correction=0)
    assert float(temperature_of(w, 0.3)) == pytest.approx(float(expected), rel=1e-5)
    assert float(temperature_of(torch.zeros(5, 5), 0.3)) > 0  # no division by zero


def test_threshold_init_quantile_prunes_that_fraction_of_every_layer(pretrained):
    wrapped = SoftThresholdModel(copy.deepcopy(pretrained), threshold_init_quantile=0.3)
    for name, layer in wrapped.hard_masks().per_layer().items():
        assert layer["sparsity"] == pytest.approx(0.3, abs=1.0 / layer["total"] + 1e-9), name
    assert torch.all(SoftThresholdModel(copy.deepcopy(pretrained)).thresholds() == 0)


# -- gradients ------------------------------------------------------------------------------------
def _reference(w, tau, temperature, exact):
    """v and Σm with plain autograd; Eq. 14 as the detach trick (m constant in w)."""
    m = torch.sigmoid(((w if exact else w.detach()) ** 2 - tau) / temperature)
    return w * m, m.sum()


@pytest.mark.parametrize("exact", [True, False])
def test_fused_function_matches_plain_autograd(exact):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(9, 7, generator=g, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(9, 7, generator=g, dtype=torch.float64)
    v, count = _SoftThreshold.apply(w, tau, 0.4, exact)
    v_ref, count_ref = _reference(w, tau, 0.4, exact)
    assert torch.allclose(v, v_ref) and torch.allclose(count, count_ref)
    grads = torch.autograd.grad((v * upstream).sum() + 0.7 * count, (w, tau))
    grads_ref = torch.autograd.grad((v_ref * upstream).sum() + 0.7 * count_ref, (w, tau))
    assert torch.allclose(grads[0], grads_ref[0]) and torch.allclose(grads[1], grads_ref[1])


def test_exact_gradient_passes_gradcheck():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _SoftThreshold.apply(a, b, 0.3, True), (w, tau))


def test_approx_gradient_is_the_mask_eq14():
    w = torch.tensor([[0.1, -0.8], [1.5, 0.4]], requires_grad=True)
    tau = torch.tensor(0.2)
    v, _ = _SoftThreshold.apply(w, tau, 0.05, False)
    v.sum().backward()
    assert torch.allclose(w.grad, soft_mask(w.detach(), tau, 0.05))


def test_threshold_gradient_nonzero_in_band_and_l0_pushes_threshold_up(pretrained):
    wrapped = SoftThresholdModel(copy.deepcopy(pretrained), temperature=0.5, threshold_init_quantile=0.2)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(6))
    assert wrapped.transition_fraction() > 0.05
    task = nn.functional.cross_entropy(wrapped.train()(x), y)
    (grad_task,) = torch.autograd.grad(task, wrapped.relative_thresholds, retain_graph=True)
    (grad_l0,) = torch.autograd.grad(wrapped.penalty("l0"), wrapped.relative_thresholds)
    assert torch.all(grad_task != 0)
    assert torch.all(grad_l0 < 0)  # descent raises every τ, so more weights are pruned
    before = wrapped.thresholds().detach().clone()
    optimizer = torch.optim.SGD([wrapped.relative_thresholds], lr=0.1)
    wrapped(x)
    optimizer.zero_grad()
    wrapped.penalty("l0").backward()
    optimizer.step()
    assert torch.all(wrapped.thresholds().detach() > before)


def test_threshold_gradient_vanishes_without_weights_in_the_band(pretrained):
    # τ far below every w²: no weight is near the threshold, σ' underflows to 0.
    wrapped = SoftThresholdModel(copy.deepcopy(pretrained), temperature=1e-4)
    with torch.no_grad():
        wrapped.relative_thresholds.fill_(-10.0)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    loss = wrapped.train()(x).square().mean() + wrapped.penalty("l0")
    (grad,) = torch.autograd.grad(loss, wrapped.relative_thresholds)
    assert wrapped.transition_fraction() == 0
    assert torch.all(grad == 0)


def test_penalties_are_normalised_by_the_number_of_prunable_weights(pretrained):
    model = copy.deepcopy(pretrained)
    wrapped = SoftThresholdModel(model, temperature=1e-3)
    weights = [model[1].weight, model[3].weight]
    n = sum(w.numel() for w in weights)
    assert wrapped.total() == n
    with torch.no_grad():
        assert float(wrapped.penalty("l1")) == pytest.approx(float(sum(w.abs().sum() for w in weights)) / n, rel=1e-5)
        assert float(wrapped.penalty("l2")) == pytest.approx(float(sum((w * w).sum() for w in weights)) / n, rel=1e-5)
    with torch.no_grad():
        wrapped.relative_thresholds.fill_(-1e3)  # everything kept: soft density 1
    wrapped.train()(torch.zeros(2, 1, 8, 8))
    assert wrapped.penalty("l0").item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ConfigError):
        wrapped.penalty("l3")


# -- the wrapper ---------------------------------------------------------------------------------
def test_wrapper_leaves_the_model_plain_and_copies_after_a_forward(pretrained):
    model = copy.deepcopy(pretrained)
    names = [n for n, _ in model.named_parameters()]
    wrapped = SoftThresholdModel(model)
    wrapped.train()(torch.randn(4, 1, 8, 8))
    assert [n for n, _ in model.named_parameters()] == names
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert not model._forward_pre_hooks and not any(m._forward_pre_hooks for m in model.modules())
    clone = copy.deepcopy(wrapped)
    restored = pickle.loads(pickle.dumps(wrapped))
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(clone.eval()(x), wrapped.eval()(x))
    assert torch.allclose(restored.eval()(x), wrapped.eval()(x))


def test_parameter_groups_give_thresholds_their_own_learning_rate(pretrained):
    wrapped = SoftThresholdModel(copy.deepcopy(pretrained))
    groups = wrapped.parameter_groups(threshold_lr=0.25)
    assert groups[1]["params"] == [wrapped.relative_thresholds]
    assert groups[1]["lr"] == 0.25 and groups[1]["weight_decay"] == 0.0
    assert all(p is not wrapped.relative_thresholds for p in groups[0]["params"])
    assert len(groups[0]["params"]) == len(list(pretrained.parameters()))


def test_bad_arguments_raise_clear_errors(pretrained):
    with pytest.raises(ConfigError):
        SoftThresholdModel(copy.deepcopy(pretrained), temperature=0)
    with pytest.raises(ConfigError):
        SoftThresholdModel(copy.deepcopy(pretrained), gradient="fast")
    with pytest.raises(ConfigError):
        SoftThresholdModel(copy.deepcopy(pretrained), threshold_init_quantile=1.0)
    with pytest.raises(MethodError):
        SoftThresholdModel(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError):
        LTPCallback(SoftThresholdModel(copy.deepcopy(pretrained)), penalty_weight=1.0, penalty="l5")
    with pytest.raises(ConfigError):
        methods.create("ltp", temperature=-1.0)
    with pytest.raises(ConfigError):
        methods.create("ltp", no_such_option=1)


# -- the trail -----------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient", ["approx", "exact"])
def test_compression_along_the_trail_never_decreases(synthetic, gradient):
    # A standard run: the method's default λ, T₀, threshold lr and LTP-phase optimizer.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    train(model, synthetic, TrainConfig(epochs=4, optimizer="adam", lr=3e-3, batch_size=64), progress=False)
    hp = LTP.Hparams()
    trail, wrapped = learn_thresholds(
        model, synthetic, TrainConfig(epochs=8, optimizer=hp.optimizer, lr=hp.lr, batch_size=64),
        penalty_weight=hp.penalty_weight, temperature=hp.temperature, threshold_lr=hp.threshold_lr,
        threshold_momentum=hp.threshold_momentum, gradient=gradient, log=lambda line: None)
    compressions = [e.compression for e in trail]
    assert [e.epoch for e in trail] == list(range(9))
    assert compressions[0] == 1.0
    assert all(b >= a for a, b in zip(compressions, compressions[1:])), compressions
    assert compressions[-1] > 5.0
    for entry in trail:
        assert 0 <= entry.transition_fraction <= 1 and not math.isnan(entry.val_top1)
        assert entry.masks.total() / max(1, entry.masks.kept()) == pytest.approx(entry.compression)
    json.dumps(trail.records())  # JSON-able


def test_threshold_momentum_is_off_by_default_and_settable(pretrained):
    wrapped = SoftThresholdModel(copy.deepcopy(pretrained))
    optimizer = torch.optim.SGD(wrapped.parameter_groups(threshold_lr=1.0), lr=0.1, momentum=0.9)
    assert optimizer.param_groups[0]["momentum"] == 0.9 and optimizer.param_groups[1]["momentum"] == 0.0
    groups = wrapped.parameter_groups(threshold_lr=1.0, threshold_momentum=0.5)
    assert groups[1]["momentum"] == 0.5


def test_trail_entry_restores_its_hard_masked_weights(pretrained, synthetic):
    trail, _ = learn_thresholds(
        copy.deepcopy(pretrained), synthetic, TrainConfig(epochs=2, optimizer="sgd", lr=0.02, batch_size=64),
        penalty_weight=2.0, temperature=0.5, threshold_lr=1.0, log=lambda line: None)
    entry = trail[-1]
    model = mlp(seed=9)
    masks = entry.restore(model)
    assert masks.equal(entry.masks)
    for name, mask in masks.items():
        assert torch.all(model.get_parameter(name)[~mask] == 0)
    assert evaluate(model, synthetic.val)["top1"] == pytest.approx(entry.val_top1)


def test_trail_saved_to_disk_restores_without_memory_copies(pretrained, synthetic, tmp_path):
    trail, _ = learn_thresholds(
        copy.deepcopy(pretrained), synthetic, TrainConfig(epochs=1, optimizer="sgd", lr=0.02, batch_size=64),
        penalty_weight=2.0, temperature=0.5, threshold_lr=1.0, keep_states=False, checkpoint_dir=tmp_path,
        log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ltp_epoch000.safetensors", "ltp_epoch001.safetensors"]
    model = mlp(seed=9)
    masks = trail[-1].restore(model)
    assert masks.equal(trail[-1].masks)
    assert evaluate(model, synthetic.val)["top1"] == pytest.approx(trail[-1].val_top1)


def _entry(epoch, compression, accuracy):
    return TrailEntry(epoch=epoch, step=epoch * 10, compression=compression, sparsity=1 - 1 / compression,
                      val_top1=accuracy, val_loss=0.0, transition_fraction=0.1, thresholds={},
                      temperatures={}, layer_sparsity={}, soft_density=0.5)


def test_pick_by_target_compression_or_accuracy_floor():
    trail = Trail([_entry(0, 1.0, 0.90), _entry(1, 12.0, 0.89), _entry(2, 25.0, 0.88),
                   _entry(3, 41.0, 0.87), _entry(4, 60.0, 0.80)])
    assert trail.pick(target_compression=20).epoch == 2  # smallest compression >= target
    assert trail.pick(target_compression=41).epoch == 3  # exactly the target counts
    assert trail.pick(min_accuracy=0.87).epoch == 3  # most compressed meeting the floor
    assert trail.pick(target_compression=20, min_accuracy=0.875).epoch == 2
    with pytest.raises(MethodError, match="compression >= 100"):
        trail.pick(target_compression=100)
    assert trail.pick(target_compression=100, strict=False).epoch == 4
    with pytest.raises(MethodError):
        trail.pick(min_accuracy=0.95)
    assert trail.pick(min_accuracy=0.95, strict=False).epoch == 0
    with pytest.raises(ConfigError):
        trail.pick()
    with pytest.raises(MethodError):
        Trail().pick(target_compression=2)


def test_stop_at_compression_ends_training_at_the_target(pretrained, synthetic):
    trail, wrapped = learn_thresholds(
        copy.deepcopy(pretrained), synthetic, TrainConfig(epochs=6, optimizer="sgd", lr=0.02, batch_size=64),
        penalty_weight=2.0, temperature=0.5, threshold_lr=1.0, stop_at_compression=2.0, check_every=1,
        log=lambda line: None)
    last = trail[-1]
    assert last.partial and last.compression >= 2.0
    assert all(e.compression < 2.0 for e in trail[:-1])
    assert last.step < 6 * 10  # 540 samples / 64 = 9 steps per epoch: stopped early


def test_collapsed_transition_band_warns(pretrained, synthetic):
    lines = []
    with pytest.warns(LTPStallWarning, match="stalled"):
        learn_thresholds(copy.deepcopy(pretrained), synthetic,
                         TrainConfig(epochs=1, optimizer="sgd", lr=0.01, batch_size=64),
                         penalty_weight=1.0, temperature=1e-6, threshold_lr=1e-3, log=lines.append)
    assert any(line.startswith("warning: LTP pruning has stalled") for line in lines)


def test_batchnorm_model_trains_with_ltp():
    ds = data_mod.load("synthetic", in_shape=(1, 8, 8), num_classes=10, n_train=300, n_test=100)
    torch.manual_seed(0)
    model = models.create("cnn", (1, 8, 8), 10, widths=(4, 8))  # Conv → BN → ReLU per block
    train(model, ds, TrainConfig(epochs=2, optimizer="adam", lr=3e-3, batch_size=50), progress=False)
    for penalty in ("l0", "l1", "l2"):
        trail, wrapped = learn_thresholds(
            copy.deepcopy(model), ds, TrainConfig(epochs=2, optimizer="sgd", lr=0.03, batch_size=50),
            penalty=penalty, penalty_weight=3.0, log=lambda line: None)
        assert len(trail) == 3 and all(math.isfinite(e.val_loss) for e in trail)
        assert wrapped.names == ["conv1.weight", "conv2.weight", "fc.weight"]
        assert int(wrapped.model.bn1.num_batches_tracked) == 2 * 6 + 2 * 6  # BN ran in training mode
        assert all(torch.isfinite(p).all() for p in wrapped.parameters())
    assert trail[-1].compression >= 1.0
    assert all(e.bn_recalibrated for e in trail)


def test_recalibrate_batchnorm_estimates_exact_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU()).eval()
    model[1].running_mean.fill_(5.0)
    x = torch.randn(64, 1, 6, 6)
    assert recalibrate_batchnorm(model, x, batch_size=16)
    features = model[0](x).detach()
    assert torch.allclose(model[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training
    assert int(model[1].num_batches_tracked) == 4
    assert not recalibrate_batchnorm(mlp(), torch.randn(4, 1, 8, 8))


# -- the registered method --------------------------------------------------------------------
def _context(synthetic, pretrained, target, epochs=4):
    return MethodContext(
        data=synthetic, model_factory=mlp, init_state=mlp().state_dict(), dense_model=copy.deepcopy(pretrained),
        target=target, train_config=TrainConfig(epochs=2),
        retrain_config=TrainConfig(epochs=epochs, optimizer="sgd", lr=0.02, batch_size=64), seed=0,
        log=lambda line: None)


def test_registered_as_a_training_method():
    assert "ltp" in methods.registry.list()
    assert methods.get("ltp") is LTP and LTP.family == "training"


def test_run_reaches_the_target_then_fine_tunes_within_the_budget(pretrained, synthetic):
    method = methods.create("ltp", penalty_weight=2.0, temperature=0.5, threshold_lr=1.0)
    outcome = method.run(_context(synthetic, pretrained, target=0.5))
    info = outcome.info
    assert info["target_reached"] and info["picked_compression"] >= 2.0
    assert info["ltp_epochs"] + info["finetune_epochs"] == 4 and info["finetune_epochs"] >= 1
    assert outcome.masks.sparsity() >= 0.5
    for name, mask in outcome.masks.items():
        assert torch.all(outcome.model.get_parameter(name)[~mask] == 0)
    assert len(outcome.traces["finetune"]) == info["finetune_epochs"]
    json.dumps({"traces": outcome.traces, "info": info})


def test_run_falls_back_to_the_most_compressed_entry_when_the_target_is_out_of_reach(pretrained, synthetic):
    method = methods.create("ltp", penalty_weight=0.1, temperature=0.5, threshold_lr=0.01, epochs=2,
                            match_target=False)
    outcome = method.run(_context(synthetic, pretrained, target=0.99))
    assert not outcome.info["target_reached"] and outcome.info["filled_fraction"] == 0.0
    assert outcome.info["picked_compression"] == max(e["compression"] for e in outcome.traces["trail"])
    assert outcome.masks.sparsity() < 0.99


def test_run_fills_to_the_target_by_global_magnitude_when_the_trail_falls_short(pretrained, synthetic):
    method = methods.create("ltp", penalty_weight=0.1, temperature=0.5, threshold_lr=0.01, epochs=2)
    outcome = method.run(_context(synthetic, pretrained, target=0.99))
    info, masks = outcome.info, outcome.masks
    assert not info["target_reached"]
    total = masks.total()
    assert total - masks.kept() == round(0.99 * total)   # exactly the target
    picked_kept = total / info["picked_compression"]
    assert info["filled_fraction"] == pytest.approx((picked_kept - masks.kept()) / total)
    assert info["filled_fraction"] > 0
    assert info["picked_compression"] == max(e["compression"] for e in outcome.traces["trail"])
    for name, mask in masks.items():
        assert torch.all(outcome.model.get_parameter(name)[~mask] == 0)


def _flat(x):
    return [v for row in x for v in (row if isinstance(row, list) else [row])]


def test_lower_thresholds_to_revives_by_ratio_to_the_layer_threshold():
    weights = {"a": torch.tensor([3.0, 1.9, 1.5, 0.5]), "b": torch.tensor([[5.0, 3.5], [2.0, 0.0]]),
               "c": torch.tensor([0.1, 0.0])}
    taus = {"a": 4.0, "b": 16.0, "c": 0.0}
    # w²/τ: a 2.25, 0.9025, 0.5625, 0.0625; b 1.5625, 0.765625, 0.25, 0; c (τ = 0): 0.1 kept always, 0 pruned
    current = [(weights[n] ** 2 > taus[n]).tolist() for n in weights]
    assert [sum(map(bool, _flat(c))) for c in current] == [1, 1, 1]      # 7 of 10 pruned now
    masks = lower_thresholds_to(weights, taus, prune=5)         # revive the two best ratios: a[1], b[0, 1]
    assert masks["a"].tolist() == [True, True, False, False]
    assert masks["b"].tolist() == [[True, True], [False, False]]
    assert masks["c"].tolist() == [True, False]
    assert masks.total() - masks.kept() == 5
    nearly_all = lower_thresholds_to(weights, taus, prune=1)    # of the two zero scores the earlier goes
    assert nearly_all.kept() == 9 and not nearly_all["b"][1, 1] and nearly_all["c"][1]
    same = lower_thresholds_to(weights, taus, prune=7)          # no change: the current hard masks
    assert [same[n].tolist() for n in weights] == current


def test_run_lowers_thresholds_to_match_a_target_the_trail_jumped_past(pretrained, synthetic):
    # thresholds that jump far past a low target before the first check (step 3: 2.8x for 1.43x)
    kwargs = dict(penalty_weight=2.0, temperature=0.5, threshold_lr=1.0, check_every=3)
    outcome = methods.create("ltp", **kwargs).run(_context(synthetic, pretrained, target=0.3))
    info, masks = outcome.info, outcome.masks
    total = masks.total()
    assert info["target_reached"] and info["picked_compression"] > 1.02 / 0.7
    assert total - masks.kept() == round(0.3 * total)            # exactly the target
    assert info["revived_fraction"] == pytest.approx(masks.kept() / total - 1 / info["picked_compression"])
    assert info["revived_fraction"] > 0 and info["filled_fraction"] == 0.0
    for name, mask in masks.items():
        assert torch.all(outcome.model.get_parameter(name)[~mask] == 0)
    # the same run without matching keeps the overshoot
    loose = methods.create("ltp", match_target=False, **kwargs).run(_context(synthetic, pretrained, target=0.3))
    assert loose.info["revived_fraction"] == 0.0
    assert loose.masks.total() / loose.masks.kept() == pytest.approx(info["picked_compression"])


def test_run_needs_a_dense_model(pretrained, synthetic):
    ctx = _context(synthetic, pretrained, target=0.5)
    ctx.dense_model = None
    with pytest.raises(MethodError, match="dense"):
        methods.create("ltp").run(ctx)
    with pytest.raises(ConfigError, match="at least one epoch"):
        methods.create("ltp", min_finetune_epochs=4).run(_context(synthetic, pretrained, target=0.5))

"""Gradual magnitude pruning (prunelab.methods.gmp): the cubic schedule, the callback, the method."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from prunelab import data as data_mod
from prunelab import methods
from prunelab.errors import ConfigError, MethodError
from prunelab.core.masks import Masks
from prunelab.methods.base import MethodContext
from prunelab.methods.gmp import GMP, GradualMagnitudePruning, cubic_sparsity
from prunelab.training.loop import Callback, TrainConfig, train

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def synthetic():
    # 540 training samples / batch 60 = 9 steps per epoch
    return data_mod.load("synthetic", in_shape=(1, 8, 8), num_classes=10, n_train=600, n_test=100)


class MaskLog(Callback):
    """Snapshots the loop's masks after every step."""

    def __init__(self):
        self.snapshots = []

    def on_batch_end(self, state):
        self.snapshots.append((state.step, state.masks.clone()))


def test_cubic_schedule_values():
    assert cubic_sparsity(0, 0.1, 0.9, 10, 50) == 0.1
    assert cubic_sparsity(10, 0.1, 0.9, 10, 50) == 0.1
    assert cubic_sparsity(30, 0.1, 0.9, 10, 50) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5 ** 3)
    assert cubic_sparsity(40, 0.1, 0.9, 10, 50) == pytest.approx(0.9 - 0.8 * 0.25 ** 3)
    assert cubic_sparsity(50, 0.1, 0.9, 10, 50) == 0.9
    assert cubic_sparsity(99, 0.1, 0.9, 10, 50) == 0.9
    values = [cubic_sparsity(t, 0.0, 0.8, 0, 100) for t in range(101)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # the cubic prunes fast early and slowly late: the first half does 7/8 of the work
    assert values[50] == pytest.approx(0.8 * 7 / 8)


def test_events_fall_on_the_schedule_and_reach_exact_counts(synthetic):
    model = mlp()
    masks = Masks.ones(model)
    gmp = GradualMagnitudePruning(final_sparsity=0.8, initial_sparsity=0.1, begin_step=4, end_step=25, frequency=5)
    log = MaskLog()
    train(model, synthetic, TrainConfig(epochs=4, batch_size=60, lr=0.05), masks=masks, callbacks=[gmp, log],
          progress=False)
    total = masks.total()
    assert [e["step"] for e in gmp.events] == [4, 9, 14, 19, 24, 25]  # the last event moved to end_step
    for event in gmp.events:
        assert event["target"] == pytest.approx(cubic_sparsity(event["step"], 0.1, 0.8, 4, 25))
        assert event["sparsity"] == round(event["target"] * total) / total  # magnitude prunes exactly
    assert masks.sparsity() == round(0.8 * total) / total
    # monotone masks: nothing pruned ever comes back
    for (_, before), (_, after) in zip(log.snapshots, log.snapshots[1:]):
        assert all(torch.all(after[n] <= before[n]) for n in before)
    assert log.snapshots[2][1].sparsity() == 0.0 and log.snapshots[3][1].sparsity() > 0.09
    for name, mask in masks.items():
        assert torch.all(model.get_parameter(name)[~mask] == 0)


def test_layer_scope_prunes_every_layer_to_the_target(synthetic):
    model = mlp()
    masks = Masks.ones(model)
    gmp = GradualMagnitudePruning(final_sparsity=0.75, begin_step=0, end_step=9, frequency=3, scope="layer")
    train(model, synthetic, TrainConfig(epochs=1, batch_size=60, lr=0.05), masks=masks, callbacks=[gmp],
          progress=False)
    for name, layer in masks.per_layer().items():
        assert layer["sparsity"] == round(0.75 * layer["total"]) / layer["total"], name


def test_final_sparsity_enforced_when_training_ends_early(synthetic):
    model = mlp()
    masks = Masks.ones(model)
    lines = []
    gmp = GradualMagnitudePruning(final_sparsity=0.6, begin_step=0, end_step=1000, frequency=4, log=lines.append)
    train(model, synthetic, TrainConfig(epochs=1, batch_size=60, lr=0.05), masks=masks, callbacks=[gmp],
          progress=False)
    assert masks.sparsity() == pytest.approx(round(0.6 * masks.total()) / masks.total())
    assert lines and "before the schedule's end step" in lines[0]


def test_callback_needs_masks_in_the_loop(synthetic):
    with pytest.raises(MethodError, match="Masks.ones"):
        train(mlp(), synthetic, TrainConfig(epochs=1, batch_size=60),
              callbacks=[GradualMagnitudePruning(0.5, end_step=5)], progress=False)


@pytest.mark.parametrize("kwargs", [
    dict(final_sparsity=1.0), dict(final_sparsity=0.5, initial_sparsity=0.6),
    dict(final_sparsity=0.5, begin_step=10, end_step=5), dict(final_sparsity=0.5, frequency=0),
    dict(final_sparsity=0.5, scope="row"),
])
def test_bad_schedules_raise_config_errors(kwargs):
    with pytest.raises(ConfigError):
        GradualMagnitudePruning(**kwargs)


def test_bad_hparams_raise_config_errors():
    for kwargs in (dict(start="middle"), dict(begin_fraction=0.8, end_fraction=0.5), dict(frequency=0),
                   dict(epochs=0), dict(scope="row"), dict(unknown=1)):
        with pytest.raises(ConfigError):
            methods.create("gmp", **kwargs)


def _context(synthetic, dense, target):
    init = mlp(seed=1)
    return MethodContext(
        data=synthetic, model_factory=lambda: mlp(seed=5), init_state=copy.deepcopy(init.state_dict()),
        dense_model=dense, target=target, train_config=TrainConfig(epochs=3, batch_size=60, lr=0.05),
        retrain_config=TrainConfig(epochs=2, batch_size=60, lr=0.05), seed=0, log=lambda line: None)


def test_registered_as_a_training_method():
    assert "gmp" in methods.registry.list() and methods.get("gmp") is GMP and GMP.family == "training"


@pytest.mark.parametrize("start", ["dense", "init"])
def test_run_reaches_the_target_exactly(synthetic, start):
    dense = mlp()
    train(dense, synthetic, TrainConfig(epochs=2, batch_size=60, lr=0.05), progress=False)
    outcome = methods.create("gmp", start=start, frequency=2).run(_context(synthetic, dense, target=0.9))
    masks = outcome.masks
    assert masks.sparsity() == round(0.9 * masks.total()) / masks.total()
    for name, mask in masks.items():
        assert torch.all(outcome.model.get_parameter(name)[~mask] == 0)
    steps = outcome.info["epochs"] * 9
    assert outcome.info["end_step"] == round(0.75 * steps)
    assert outcome.traces["pruning"][-1]["sparsity"] == masks.sparsity()
    assert len(outcome.traces["epochs"]) == (2 if start == "dense" else 3)
    json.dumps({"traces": outcome.traces, "info": outcome.info})


def test_default_frequency_gives_about_twenty_events(synthetic):
    dense = mlp()
    ctx = _context(synthetic, dense, target=0.8)
    ctx.retrain_config = TrainConfig(epochs=12, batch_size=60, lr=0.05)  # 108 steps, pruning until 81
    outcome = methods.create("gmp").run(ctx)
    assert outcome.info["frequency"] == 4 and outcome.info["end_step"] == 81
    assert [e["step"] for e in outcome.traces["pruning"]] == list(range(0, 81, 4)) + [81]


def test_run_from_dense_needs_a_dense_model(synthetic):
    with pytest.raises(MethodError, match="dense"):
        methods.create("gmp").run(_context(synthetic, None, target=0.5))


def test_step_range_in_optimizer_steps_overrides_the_fractions(synthetic):
    dense = mlp()
    ctx = _context(synthetic, dense, target=0.8)
    ctx.retrain_config = TrainConfig(epochs=12, batch_size=60, lr=0.05)  # 108 steps
    outcome = methods.create("gmp", begin_step=10, end_step=50, frequency=10).run(ctx)
    assert outcome.info["begin_step"] == 10 and outcome.info["end_step"] == 50
    assert [e["step"] for e in outcome.traces["pruning"]] == [10, 20, 30, 40, 50]
    assert outcome.traces["pruning"][0]["target"] == 0.0 and outcome.traces["pruning"][-1]["target"] == 0.8
    assert outcome.traces["pruning"][1]["target"] == pytest.approx(cubic_sparsity(20, 0.0, 0.8, 10, 50))
    with pytest.raises(ConfigError, match="the run.s 18 optimizer steps"):
        methods.create("gmp", end_step=200).run(_context(synthetic, dense, target=0.8))
    with pytest.raises(ConfigError, match="end_step must be an integer"):
        methods.create("gmp", end_step=-1)

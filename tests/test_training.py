import math

import pytest
import torch
from torch import nn

import prunelab
from prunelab.errors import ConfigError
from prunelab.training.loop import Callback, TrainConfig, evaluate, lr_factor_fn, train


def test_training_learns_and_is_deterministic(tiny_net, tiny_data):
    import copy

    other = copy.deepcopy(tiny_net)
    config = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-2, seed=7)
    s1 = train(tiny_net, tiny_data, config, val=tiny_data, progress=False)
    s2 = train(other, tiny_data, config, val=tiny_data, progress=False)
    for a, b in zip(tiny_net.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert s1.history == [{**h, "seconds": s1.history[i]["seconds"]} for i, h in enumerate(s2.history)]
    assert s1.history[-1]["val_top1"] > 0.9
    assert len(s1.history) == 3 and s1.step == 3 * 8


def test_evaluate_top1_top5():
    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5, 6],   # label 0: top-1 hit
        [1.0, 9, 8, 7, 6, 5, 4],   # label 2: ranked 2nd -> top-5 hit only
        [9.0, 8, 7, 6, 5, 4, 3],   # label 6: ranked 7th -> miss
    ])
    model = nn.Embedding(3, 7)
    with torch.no_grad():
        model.weight.copy_(logits)
    metrics = evaluate(model, (torch.arange(3), torch.tensor([0, 2, 6])))
    assert metrics["top1"] == pytest.approx(1 / 3)
    assert metrics["top5"] == pytest.approx(2 / 3)
    assert metrics["n"] == 3


def test_schedules_hand_values():
    cfg = TrainConfig(epochs=2, lr=0.1, schedule="cosine")
    f = lr_factor_fn(cfg, 10)
    assert f(0) == 1.0 and f(10) == pytest.approx(0.5) and f(20) == pytest.approx(0.0)
    f = lr_factor_fn(TrainConfig(epochs=4, schedule="step", step_epochs=1, gamma=0.5), 5)
    assert [f(s) for s in (0, 4, 5, 10, 19)] == [1, 1, 0.5, 0.25, 0.125]
    f = lr_factor_fn(TrainConfig(epochs=2, schedule="linear"), 10)
    assert f(5) == pytest.approx(0.75)
    f = lr_factor_fn(TrainConfig(epochs=30, lr=1e-3, schedule="inverse"), 200)
    assert f(1000) == pytest.approx(1 / (1 + 1e-3 / 30 * 1000))


def test_scheduler_reaches_optimizer(tiny_net, tiny_data):
    state = train(tiny_net, tiny_data, TrainConfig(epochs=2, batch_size=64, schedule="step", step_epochs=1, gamma=0.1, lr=0.1), progress=False)
    assert state.history[0]["lr"] == pytest.approx(0.01)
    assert state.history[1]["lr"] == pytest.approx(0.001)


def test_callbacks_and_extra_loss(tiny_net, tiny_data):
    events = []

    class Recorder(Callback):
        def on_train_begin(self, state):
            events.append("begin")

        def on_epoch_end(self, state):
            events.append(("epoch", state.history[-1]["epoch"]))

        def extra_loss(self, state):
            return 0.0 * sum(p.sum() for p in state.model.parameters()) + 1.0

        def on_train_end(self, state):
            events.append("end")

    import copy

    plain_net = copy.deepcopy(tiny_net)
    config = TrainConfig(epochs=2, batch_size=128)
    state = train(tiny_net, tiny_data, config, callbacks=[Recorder()], progress=False)
    assert events == ["begin", ("epoch", 1), ("epoch", 2), "end"]
    assert state.step == 4 and len(state.history) == 2
    # A constant extra term changes neither the updates nor the recorded (task) loss.
    plain = train(plain_net, tiny_data, config, progress=False)
    for a, b in zip(tiny_net.parameters(), plain_net.parameters()):
        assert torch.equal(a, b)
    assert [h["train_loss"] for h in state.history] == [h["train_loss"] for h in plain.history]


class _GradRecorder(Callback):
    """Records every parameter's gradient after each step (the loop zeroes them only at the next)."""

    def __init__(self):
        self.grads = []

    def on_batch_end(self, state):
        self.grads.append({n: p.grad.clone() for n, p in state.model.named_parameters()})


class _WeightPenalty(_GradRecorder):
    """Adds c·||fc1.weight||² to the loss."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def extra_loss(self, state):
        return self.c * state.model.fc1.weight.pow(2).sum()


def test_extra_loss_adds_its_gradient_and_only_its_gradient(tiny_net, tiny_data):
    import copy

    c = 0.25
    config = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", momentum=0.0, lr=0.1)
    plain_net = copy.deepcopy(tiny_net)
    w0 = tiny_net.fc1.weight.detach().clone()
    plain, penalised = _GradRecorder(), _WeightPenalty(c)
    train(plain_net, tiny_data, config, callbacks=[plain], progress=False)
    train(tiny_net, tiny_data, config, callbacks=[penalised], progress=False)
    first_plain, first_penalised = plain.grads[0], penalised.grads[0]
    # d(c·||w||²)/dw = 2c·w, added to the task gradient of the same (identically ordered) batch.
    torch.testing.assert_close(first_penalised["fc1.weight"] - first_plain["fc1.weight"], 2 * c * w0,
                               rtol=1e-5, atol=1e-6)
    for name, grad in first_plain.items():
        if name != "fc1.weight":
            assert torch.equal(first_penalised[name], grad), name
    assert tiny_net.fc1.weight.norm() < plain_net.fc1.weight.norm()  # the penalty shrinks what it acts on


def test_gradient_clipping_bounds_the_update(tiny_net, tiny_data):
    import copy

    before = copy.deepcopy(tiny_net)
    cfg = TrainConfig(epochs=1, batch_size=256, optimizer="sgd", momentum=0.0, lr=1.0, clip_grad_norm=1e-3)
    train(tiny_net, tiny_data, cfg, progress=False)
    with torch.no_grad():
        delta = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(tiny_net.parameters(), before.parameters())))
    assert float(delta) <= 1e-3 + 1e-7


def test_select_best_restores_best_epoch(tiny_net, tiny_data):
    state = train(tiny_net, tiny_data, TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=1e-2),
                  val=tiny_data, select_best=True, progress=False)
    best = max(h["val_top1"] for h in state.history)
    assert evaluate(tiny_net, tiny_data)["top1"] == pytest.approx(best)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=-1)
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})


def test_progress_bar_is_shown_only_when_asked(tiny_net, tiny_data, capsys, monkeypatch):
    config = TrainConfig(epochs=1, batch_size=128)
    train(tiny_net, tiny_data, config, progress=True, label="warm-up")
    assert "warm-up" in capsys.readouterr().err
    monkeypatch.setenv("PRUNELAB_PROGRESS", "1")
    train(tiny_net, tiny_data, config, label="quiet")  # stderr is no terminal here: no bar
    assert "quiet" not in capsys.readouterr().err

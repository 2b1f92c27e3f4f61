"""gRDA optimizer (prunelab.methods.grda.optim), directional pruning method, valley check, their CLI."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from prunelab.errors import ConfigError, PrunelabError
from prunelab.methods.grda.optim import GRDA, grda_param_groups, soft_threshold_

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Conv + BN + Linear: weights, biases and norm parameters, 2 classes on 1x6x6 inputs."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).flatten(1))


def batches(steps: int, seed: int = 1, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(steps)]


def loss_step(model, optimizer, x, y, scheduler=None):
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------------------------
# the update rule


def test_c_zero_is_bit_identical_to_sgd_after_100_steps():
    model_sgd, model_grda = TinyNet(), TinyNet()
    sgd = torch.optim.SGD(model_sgd.parameters(), lr=0.05, momentum=0.0)
    grda = GRDA(model_grda.parameters(), lr=0.05, c=0.0, mu=0.6)
    for x, y in batches(100):
        loss_step(model_sgd, sgd, x, y)
        loss_step(model_grda, grda, x, y)
    assert params_equal(model_sgd, model_grda)
    # plain SGD keeps no accumulator: a = w while the threshold is 0
    assert all("accumulator" not in s for s in grda.state.values())


def test_c_zero_group_is_sgd_also_with_a_scheduler_beside_a_thresholded_group():
    model_sgd, model_grda = TinyNet(), TinyNet()
    sgd = torch.optim.SGD(model_sgd.parameters(), lr=0.1)
    groups = [{"params": list(model_grda.parameters()), "c": 0.0}]
    grda = GRDA(groups, lr=0.1, c=0.3, mu=0.7)
    lambda_ = lambda step: 1.0 / (1.0 + 0.03 * step)  # noqa: E731
    s1 = torch.optim.lr_scheduler.LambdaLR(sgd, lambda_)
    s2 = torch.optim.lr_scheduler.LambdaLR(grda, lambda_)
    for x, y in batches(100):
        loss_step(model_sgd, sgd, x, y, s1)
        loss_step(model_grda, grda, x, y, s2)
    assert params_equal(model_sgd, model_grda)


class ReferenceGRDA:
    """The update written out per parameter, exactly as the official ``grda_pytorch.py`` computes it."""

    def __init__(self, params, c, mu):
        self.params = list(params)
        self.c, self.mu = c, mu
        self.acc = [p.detach().clone() for p in self.params]
        self.ell = [0.0 for _ in self.params]
        self.n = [0 for _ in self.params]

    @torch.no_grad()
    def step(self, lr):
        for i, p in enumerate(self.params):
            self.n[i] += 1
            n = self.n[i]
            self.acc[i] -= lr * p.grad
            self.ell[i] += self.c * lr ** (self.mu + 0.5) * (n**self.mu - (n - 1) ** self.mu)
            a = self.acc[i]
            p.copy_(torch.sign(a) * torch.clamp(torch.abs(a) - self.ell[i], min=0.0))


@pytest.mark.parametrize("scheduled", [False, True])
def test_100_steps_match_the_reference_update(scheduled):
    c, mu, lr0 = 0.05, 0.6, 0.1
    model, ref_model = TinyNet(), TinyNet()
    opt = GRDA(model.parameters(), lr=lr0, c=c, mu=mu)
    factor = (lambda step: 0.5 ** (step // 30)) if scheduled else (lambda step: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    ref = ReferenceGRDA(ref_model.parameters(), c, mu)
    for step, (x, y) in enumerate(batches(100)):
        loss_step(model, opt, x, y, sched)
        ref_model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(ref_model(x), y).backward()
        ref.step(lr0 * factor(step))
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    for p, a, ell in zip(model.parameters(), ref.acc, ref.ell):
        torch.testing.assert_close(opt.state[p]["accumulator"], a, rtol=0, atol=1e-6)
        assert opt.state[p]["threshold"] == pytest.approx(ell, rel=1e-12)
    # the threshold really bites: some weights are exact zeros
    assert sum(int((p == 0).sum()) for p in model.parameters()) > 0


def test_threshold_has_the_closed_form_for_constant_lr():
    c, mu, lr = 0.004, 0.55, 0.1
    p = nn.Parameter(torch.zeros(5))
    opt = GRDA([p], lr=lr, c=c, mu=mu)
    g = torch.Generator().manual_seed(0)
    for n in range(1, 1001):
        p.grad = torch.randn(5, generator=g)
        opt.step()
        if n in (1, 2, 10, 1000):
            closed = c * lr**0.5 * (n * lr) ** mu
            assert opt.state[p]["threshold"] == pytest.approx(closed, rel=1e-12)
            assert opt.state[p]["step"] == n


def test_accumulator_starts_at_the_weights_at_construction():
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.005]))
    opt = GRDA([p], lr=0.1, c=0.1, mu=0.5)
    with torch.no_grad():
        p.fill_(7.0)   # changed after construction: ignored, a_0 was taken before
    p.grad = torch.zeros(3)
    opt.step()
    ell = 0.1 * 0.1**1.0 * 1.0   # c γ^{μ+½} (1^μ - 0^μ)
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - ell, -2.0 + ell, 0.0]), rtol=0, atol=1e-7)


def test_parameter_without_grad_is_skipped_and_its_counter_stays():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = GRDA([a, b], lr=0.1, c=0.1, mu=0.6)
    a.grad = torch.ones(3)
    opt.step()
    opt.step()
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 0
    assert torch.equal(b.detach(), torch.ones(3))


def test_both_threshold_paths_equal_the_formula_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    accs = [torch.randn(50, generator=g) * 0.1, torch.randn(4, 5, generator=g)]
    thresholds = [0.05, 0.7]
    expected = [torch.sign(a) * torch.clamp(a.abs() - t, min=0) for a, t in zip(accs, thresholds)]
    for foreach in (False, True):
        out = [torch.empty_like(a) for a in accs]
        soft_threshold_(out, accs, thresholds, foreach=foreach)
        assert all(torch.equal(o, e) for o, e in zip(out, expected))


def _run(model, opt, sched, data):
    for x, y in data:
        loss_step(model, opt, x, y, sched)


def test_resume_from_a_saved_state_at_step_50_is_bit_identical_at_step_100():
    data = batches(100, seed=5)

    def make(model):
        opt = GRDA(grda_param_groups(model, 0.1, 0.05, 0.6), lr=0.1, c=0.05, mu=0.6)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.02 * step))

    straight = TinyNet()
    opt, sched = make(straight)
    _run(straight, opt, sched, data)

    first = TinyNet()
    opt1, sched1 = make(first)
    _run(first, opt1, sched1, data[:50])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict(), "sched": sched1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)   # no pickle of arbitrary objects needed

    resumed = TinyNet(seed=123)   # a different init: everything must come from the saved state
    opt2, sched2 = make(resumed)
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    _run(resumed, opt2, sched2, data[50:])

    assert params_equal(straight, resumed)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        s, r = opt.state[p], opt2.state[q]
        assert s["step"] == r["step"] == 100 and s["threshold"] == r["threshold"]
        assert ("accumulator" in s) == ("accumulator" in r)
        if "accumulator" in s:
            assert torch.equal(s["accumulator"], r["accumulator"])


@pytest.mark.parametrize("kwargs", [
    {"lr": -0.1}, {"lr": float("nan")}, {"lr": "0.1"}, {"c": -1e-3}, {"c": float("inf")},
    {"mu": 0.0}, {"mu": -0.5}, {"mu": True},
])
def test_invalid_hyperparameters_raise_config_error(kwargs):
    hp = {"lr": 0.1, "c": 0.01, "mu": 0.6, **kwargs}
    with pytest.raises(ConfigError) as err:
        GRDA(TinyNet().parameters(), **hp)
    assert isinstance(err.value, PrunelabError) and "GRDA" in str(err.value)


def test_invalid_group_hyperparameters_raise_config_error():
    model = TinyNet()
    with pytest.raises(ConfigError, match="param group 0"):
        GRDA([{"params": model.fc.parameters(), "c": -1.0}], lr=0.1, c=0.01, mu=0.6)
    opt = GRDA(model.fc.parameters(), lr=0.1, c=0.01, mu=0.6)
    with pytest.raises(ConfigError, match="param group 1"):
        opt.add_param_group({"params": model.conv.parameters(), "mu": -2})


def test_sparsity_rises_with_mu():
    fractions = []
    for mu in (0.4, 0.6, 0.8, 1.0):
        model = TinyNet()
        opt = GRDA(model.parameters(), lr=0.1, c=0.05, mu=mu)
        for x, y in batches(60, seed=7):
            loss_step(model, opt, x, y)
        zeros = sum(int((p == 0).sum()) for p in model.parameters())
        fractions.append(zeros / sum(p.numel() for p in model.parameters()))
    assert fractions == sorted(fractions) and len(set(fractions)) == 4
    assert fractions[0] < 0.3 and fractions[-1] > 0.7   # measured: 0.247 ... 0.720


def test_param_groups_put_biases_and_norm_in_a_plain_sgd_group():
    model = TinyNet()
    groups = grda_param_groups(model, lr=0.1, c=0.01, mu=0.55)
    by_name = {g["name"]: g for g in groups}
    assert [id(p) for p in by_name["thresholded"]["params"]] == [id(model.conv.weight), id(model.fc.weight)]
    assert {id(p) for p in by_name["plain"]["params"]} == {
        id(model.conv.bias), id(model.norm.weight), id(model.norm.bias), id(model.fc.bias)}
    assert by_name["plain"]["c"] == 0.0 and by_name["thresholded"]["c"] == 0.01
    opt = GRDA(groups, lr=0.1, c=0.01, mu=0.55)
    assert "accumulator" not in opt.state[model.fc.bias] and "accumulator" in opt.state[model.fc.weight]

    everything = grda_param_groups(model, 0.1, 0.01, 0.55, threshold_all=True)
    assert len(everything) == 1 and len(everything[0]["params"]) == 6
    model.norm.weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in grda_param_groups(model, 0.1, 0.01, 0.55)) == 5
    assert len(grda_param_groups(model, 0.1, 0.01, 0.55, exclude_last=True)[0]["params"]) == 1


# ---------------------------------------------------------------------------------------------
# directional pruning method


def test_cifar_schedule():
    from prunelab.methods.grda.method import cifar_lr_factor, cifar_schedule

    assert [cifar_lr_factor(p) for p in (0.0, 0.5, 0.95, 1.0)] == [1.0, 1.0, 0.01, 0.01]
    assert cifar_lr_factor(0.9) == pytest.approx(0.01, rel=1e-12)
    assert cifar_lr_factor(0.7) == pytest.approx(1 - 0.2 / 0.4 * 0.99)
    fn = cifar_schedule(epochs=10, steps_per_epoch=3)
    assert [fn(s) for s in (0, 17)] == [1.0, 1.0]   # epochs 0..5: progress <= 0.5
    assert fn(18) == fn(20) == pytest.approx(1 - 0.1 / 0.4 * 0.99)   # epoch 6: one value per epoch
    assert fn(29) == pytest.approx(0.01, rel=1e-12)


def _tiny_data():
    from prunelab import data

    return data.load("synthetic", in_shape=(1, 6, 6), num_classes=3, n_train=240, n_test=60, val_size=60)


def _context(dataset, epochs=3, target=0.5):
    from prunelab.methods.base import MethodContext
    from prunelab.training.loop import TrainConfig

    factory = lambda: TinyNet(seed=0)  # noqa: E731
    return MethodContext(
        data=dataset, model_factory=factory, init_state=factory().state_dict(), dense_model=None,
        target=target, train_config=TrainConfig(epochs=epochs, batch_size=32, lr=0.1),
        retrain_config=TrainConfig(epochs=0), seed=0, log=lambda line: None,
    )


def test_method_is_registered_and_returns_nonzero_masks_and_traces():
    from prunelab import methods
    from prunelab.core.masks import Masks

    method = methods.create("grda", c=0.05, mu=0.7, lr=None)   # None: the budget's lr (0.1)
    assert method.family == "training"
    outcome = method.run(_context(_tiny_data(), epochs=3))
    epochs = outcome.traces["epochs"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all({"sparsity", "sparsity_all", "lr", "val_top1"} <= set(r) for r in epochs)
    # ℓ only grows and the cifar schedule ends at 1 % of the lr
    assert epochs[0]["sparsity"] > 0 and epochs[-1]["lr"] == pytest.approx(0.1 * 0.01)
    assert outcome.masks.equal(Masks.from_nonzero(outcome.model))
    assert outcome.masks.sparsity() == pytest.approx(outcome.info["sparsity"])
    assert outcome.info["sparsity"] == epochs[-1]["sparsity"]
    # biases and BN are plain SGD by default: fewer zeros counted over all parameters
    assert outcome.info["sparsity_all"] < outcome.info["sparsity"]
    assert outcome.phase_times["train"] > 0 and outcome.info["lr"] == 0.1
    json.dumps(outcome.info), json.dumps(outcome.traces)


def test_method_with_c_zero_is_the_plain_sgd_baseline():
    from prunelab import methods

    outcome = methods.create("grda", c=0.0, schedule="constant").run(_context(_tiny_data(), epochs=1))
    assert outcome.info["sparsity"] == 0.0 and outcome.masks.sparsity() == 0.0


def test_method_hparams_are_validated():
    from prunelab import methods

    for bad in ({"schedule": "cosine-ish"}, {"mu": 0}, {"c": -1}, {"epochs": -1}, {"search_epochs": 0}):
        with pytest.raises(ConfigError):
            methods.create("grda", **bad)


def test_search_c_bisects_towards_the_target():
    from prunelab.methods.grda.method import search_c
    from prunelab.training.loop import TrainConfig

    result = search_c(lambda: TinyNet(seed=0), _tiny_data(), mu=0.6, target_sparsity=0.5,
                      config=TrainConfig(lr=0.1, batch_size=32), epochs=1, iterations=6, tolerance=0.05)
    trials = result["trials"]
    assert 1 <= len(trials) <= 6
    assert result["c"] == min(trials, key=lambda t: abs(t["sparsity"] - 0.5))["c"]
    assert abs(result["sparsity"] - 0.5) <= 0.05
    # sparsity is increasing in c across the trials
    ordered = sorted(trials, key=lambda t: t["c"])
    assert [t["sparsity"] for t in ordered] == sorted(t["sparsity"] for t in ordered)
    with pytest.raises(ConfigError):
        search_c(lambda: TinyNet(), _tiny_data(), 0.6, 1.5)


# ---------------------------------------------------------------------------------------------
# valley


def test_interpolation_is_exact_at_the_ends_and_linear_in_between():
    from prunelab.reproductions.chao.valley import interpolate_state

    a, b = TinyNet(seed=0), TinyNet(seed=1)
    b.norm.running_mean.fill_(2.0)
    b.norm.num_batches_tracked.fill_(9)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(interpolate_state(sa, sb, 0.0)[k], sa[k]) for k in sa)
    assert all(torch.equal(interpolate_state(sa, sb, 1.0)[k], sb[k]) for k in sa if k != "norm.num_batches_tracked")
    mid = interpolate_state(sa, sb, 0.25)
    torch.testing.assert_close(mid["fc.weight"], 0.75 * sa["fc.weight"] + 0.25 * sb["fc.weight"])
    torch.testing.assert_close(mid["norm.running_mean"], torch.full((4,), 0.5))   # buffers too
    assert int(mid["norm.num_batches_tracked"]) == int(sa["norm.num_batches_tracked"])
    with pytest.raises(ConfigError):
        interpolate_state(sa, {k: v for k, v in sb.items() if k != "fc.bias"}, 0.5)


def test_valley_barrier_and_plot(tmp_path):
    from prunelab.training.loop import evaluate
    from prunelab.reproductions.chao.valley import alphas_grid, barrier, plot_valley, valley

    dataset = _tiny_data()
    a, b = TinyNet(seed=0).eval(), TinyNet(seed=1).eval()
    assert alphas_grid(4, extend=0.25) == [-0.25, 0.0, 0.25, 0.75, 1.0, 1.25]
    results = valley(a, b, {"train": dataset.train, "test": dataset.test}, alphas_grid(5))
    assert [r["alpha"] for r in results] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert results[0]["test_loss"] == pytest.approx(evaluate(a, dataset.test)["loss"], rel=1e-6)
    assert results[-1]["train_top1"] == evaluate(b, dataset.train)["top1"]
    flat = [{"alpha": r["alpha"], "train_loss": 1.0 + r["alpha"]} for r in results]
    assert barrier(flat) == pytest.approx(0.0)
    bump = [dict(r, train_loss=r["train_loss"] + (0.5 if r["alpha"] == 0.5 else 0)) for r in flat]
    assert barrier(bump) == pytest.approx(0.5)
    out = plot_valley(results, tmp_path / "sub" / "valley.png", title="A to B")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "sub").iterdir()) == [out]   # no temp file left


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_grda_train_and_study_valley(tmp_path, capsys):
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.cli.main import main

    common = ["--dataset", "synthetic", "--val-size", "0.1", "--model", "mlp", "--epochs", "1", "--lr", "0.1",
              "--quiet"]
    sgd, grda = tmp_path / "sgd.safetensors", tmp_path / "grda.safetensors"
    assert main(["grda", "train", *common, "--c", "0", "-o", str(sgd)]) == 0
    assert main(["grda", "train", *common, "--c", "0.1", "--mu", "0.6", "-o", str(grda)]) == 0
    a, b = load_checkpoint(sgd), load_checkpoint(grda)
    # the same seeded initialisation: the SGD run has no zero weights, the gRDA run has many
    assert a.masks.sparsity() == 0.0 and 0.1 < b.masks.sparsity() < 1.0
    assert b.meta["extra"]["grda"]["c"] == 0.1 and len(b.meta["extra"]["history"]) == 1

    png, out = tmp_path / "v.png", tmp_path / "v.json"
    assert main(["study", "valley", str(sgd), str(grda), "--points", "3", "--extend", "0.5",
                 "--plot", str(png), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["alpha"] for r in report["results"]] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert set(report["barrier"]) == {"train", "test"}
    assert png.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()

    assert main(["grda", "train", *common, "--mu", "0", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "mu must be > 0" in capsys.readouterr().err
    assert main(["study", "valley", str(sgd), str(tmp_path / "missing.safetensors")]) == 2
    assert main(["study", "valley", str(sgd), str(grda), "--splits", "train,nope"]) == 2


def test_method_search_with_full_runs_lands_on_the_target():
    from prunelab import methods

    method = methods.create("grda", search=True, search_epochs=None, search_iterations=8, mu=0.6, lr=0.1)
    outcome = method.run(_context(_tiny_data(), epochs=2, target=0.5))
    trials = outcome.traces["search"]
    chosen = min(trials, key=lambda t: abs(t["sparsity"] - 0.5))
    # the final run is the chosen trial again (same init, same batches): identical sparsity
    assert outcome.info["c"] == chosen["c"] and outcome.info["sparsity"] == chosen["sparsity"]
    assert abs(outcome.info["sparsity"] - 0.5) <= 0.01
    assert outcome.phase_times["search"] > 0

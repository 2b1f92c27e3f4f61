"""RunSpec hashing and validation, the harness (one-shot and own-loop methods), the dense cache."""

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import prunelab.methods as methods
from prunelab.errors import ConfigError
from prunelab.harness.runner import RunSpec, canonical_options, dense_path, run, sweep, validate_all
from prunelab.core.masks import Masks
from prunelab.methods.base import MethodOutcome, OneShotMethod, TrainingMethod
from prunelab.harness.store import Store
from prunelab.training.loop import train

DATA = {"in_shape": [1, 8, 8], "n_train": 300, "n_test": 120, "val_size": 0.2}
MODEL = {"hidden": [24, 16]}
DENSE = {"epochs": 2, "optimizer": "adam", "lr": 0.01, "batch_size": 64}
RETRAIN = {"epochs": 1, "optimizer": "adam", "lr": 0.002, "batch_size": 64}


def spec(method="magnitude", target=0.5, seed=0, **kw):
    base = dict(dataset="synthetic", model="mlp", method=method, target=target, seed=seed, data_kwargs=DATA,
                model_kwargs=MODEL, dense=DENSE, retrain=RETRAIN)
    base.update(kw)
    return RunSpec(**base)


# --------------------------------------------------------------------------- hashing

@dataclass(frozen=True)
class _HpV1:
    alpha: float = 0.5
    mode: str = "a"


@dataclass(frozen=True)
class _HpV2:  # V1 plus a new hyperparameter whose default changes nothing
    alpha: float = 0.5
    mode: str = "a"
    new_knob: int = 3


def _fake_method(hparams_cls):
    class Fake(OneShotMethod):
        Hparams = hparams_cls
        name = "fake-hash"

        def prune(self, model, masks=None, sparsity=0.5, calib=None):
            return Masks.ones(model)

    return Fake


def test_adding_a_defaulted_hparam_keeps_hashes(monkeypatch):
    monkeypatch.setitem(methods._REGISTRY, "fake-hash", _fake_method(_HpV1))
    before_default = spec("fake-hash").hash
    before_custom = spec("fake-hash", hparams={"alpha": 0.25, "mode": "b"}).hash
    monkeypatch.setitem(methods._REGISTRY, "fake-hash", _fake_method(_HpV2))
    assert spec("fake-hash").hash == before_default
    assert spec("fake-hash", hparams={"alpha": 0.25, "mode": "b"}).hash == before_custom
    # Setting the new knob to its default is the same run; another value is a new run.
    assert spec("fake-hash", hparams={"new_knob": 3}).hash == before_default
    assert spec("fake-hash", hparams={"new_knob": 4}).hash != before_default


def test_canonical_form_drops_defaults_and_widens_ints():
    defaults = {"alpha": 0.5, "betas": (0.9, 0.999), "name": "x"}
    assert canonical_options({"alpha": 0.5, "betas": [0.9, 0.999], "name": "x"}, defaults, "opt") == {}
    assert canonical_options({"alpha": 1}, defaults, "opt") == {"alpha": 1.0}
    assert json.dumps(canonical_options({"alpha": 1}, defaults, "opt")) == '{"alpha": 1.0}'
    with pytest.raises(ConfigError, match="unknown opt 'beta'"):
        canonical_options({"beta": 1}, defaults, "opt")


def test_hash_is_canonical_and_sensitive():
    s = spec()
    assert spec(hparams={"scope": "global"}).hash == s.hash          # explicit default
    assert spec(dense={**DENSE, "momentum": 0.9}).hash == s.hash     # TrainConfig default
    assert spec(dense={**DENSE, "lr": 0.01}).hash == s.hash
    assert spec(retrain={**RETRAIN, "lr": 2e-3}).hash == s.hash
    assert spec(model_kwargs={"hidden": (24, 16)}).hash == s.hash    # tuple == list
    assert len({s.hash, spec(target=0.75).hash, spec(seed=1).hash, spec(hparams={"scope": "layer"}).hash,
                spec(dense={**DENSE, "epochs": 3}).hash, spec(retrain={**RETRAIN, "epochs": 2}).hash,
                spec(method="random").hash, spec(calib_size=10).hash}) == 8


def test_hash_golden_and_process_independent():
    s = RunSpec("fashion-mnist", "lenet-300-100", "magnitude", 0.9, seed=1, hparams={"scope": "layer"},
                dense={"epochs": 8, "optimizer": "adam", "lr": 1e-3}, retrain={"epochs": 2})
    canonical = ('{"dataset":"fashion-mnist","dense":{"epochs":8,"lr":0.001,"optimizer":"adam"},'
                 '"hparams":{"scope":"layer"},"method":"magnitude","model":"lenet-300-100",'
                 '"retrain":{"epochs":2},"seed":1,"target":0.9}')
    assert json.dumps(s.canonical(), sort_keys=True, separators=(",", ":")) == canonical
    import hashlib

    assert s.hash == hashlib.sha256(canonical.encode()).hexdigest()
    code = ("from prunelab.harness.runner import RunSpec; print(RunSpec('fashion-mnist','lenet-300-100','magnitude',0.9,"
            "seed=1,hparams={'scope':'layer'},dense={'epochs':8,'optimizer':'adam','lr':1e-3},"
            "retrain={'epochs':2}).hash)")
    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == s.hash, out.stderr


def test_spec_copies_its_dicts_and_round_trips():
    hp = {"scope": "layer"}
    s = spec(hparams=hp)
    h = s.hash
    hp["scope"] = "global"
    assert s.hash == h and s.hparams == {"scope": "layer"}
    again = RunSpec.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s and again.hash == h
    assert s.label == "magnitude(scope=layer)" and spec().label == "magnitude"
    # random's mask seed following the run seed is not a separate variant
    assert spec("random", seed=2, hparams={"seed": 2}).label == "random"


@pytest.mark.parametrize("kw, message", [
    (dict(method="no-such-method"), "unknown method 'no-such-method'"),
    (dict(target=1.0), r"target sparsity 1.0 is outside \[0, 1\)"),
    (dict(target=-0.1), "outside"),
    (dict(target=float("nan")), "outside"),
    (dict(dense={**DENSE, "epochs": 0}), "at least 1 epoch"),
    (dict(retrain={**RETRAIN, "epochs": -1}), "epochs must be an integer >= 0"),
    (dict(dense={**DENSE, "lr": 0}), "lr must be a positive number"),
    (dict(dense={**DENSE, "batch_size": 0}), "batch_size"),
    (dict(dense={**DENSE, "seed": 3}), "RunSpec.seed"),
    (dict(dense={**DENSE, "epochz": 3}), "epochz"),
    (dict(hparams={"scop": "layer"}), "scop"),
    (dict(hparams={"scope": "diagonal"}), "diagonal"),
    (dict(dataset="nope"), "unknown dataset"),
    (dict(model="nope"), "unknown model"),
    (dict(seed=-1), "seed"),
    (dict(calib_size=0), "calib_size"),
])
def test_bad_specs_are_rejected_with_one_line(kw, message):
    with pytest.raises(ConfigError, match=message) as info:
        spec(**kw).validate()
    assert "\n" not in str(info.value)


def test_bad_spec_in_a_sweep_is_rejected_before_training(tmp_path):
    specs = [spec(), spec(target=0.75), spec(target=1.5)]
    with Store(tmp_path) as store:
        with pytest.raises(ConfigError, match=r"run 3 \(magnitude at target 1.5\)"):
            sweep(specs, store)
        assert len(store) == 0
    assert not (tmp_path / "dense").exists()
    assert len(validate_all([spec(), spec(), spec(target=0.75)])) == 2  # duplicates dropped


# --------------------------------------------------------------------------- the harness

def test_oneshot_run_records_the_protocol(tmp_path):
    with Store(tmp_path) as store:
        first = run(spec(target=0.5), store)
        second = run(spec(target=0.75), store)
        m = first.metrics
        assert first.family == "oneshot" and not first.dense_cached and second.dense_cached
        # magnitude prunes exactly round(target * n) prunable weights
        n = m["prunable"]
        assert m["prunable_nonzero"] == n - round(0.5 * n)
        assert second.metrics["prunable_nonzero"] == n - round(0.75 * n)
        assert m["compression_ratio"] == pytest.approx(n / m["prunable_nonzero"])
        assert m["theoretical_speedup"] == pytest.approx(m["flops"] / m["flops_nonzero"])
        for phase in ("dense", "pruned", "final"):
            for split in ("val", "test"):
                assert 0 <= m[f"{phase}_{split}_top1"] <= m[f"{phase}_{split}_top5"] <= 1
        # both runs start from the same dense model; its time is the original training time
        assert second.metrics["dense_test_top1"] == m["dense_test_top1"]
        assert second.phase_times["dense_train"] == first.phase_times["dense_train"] > 0
        assert set(first.phase_times) == {"dense_train", "prune", "retrain"}
        assert m["time_total"] == pytest.approx(first.phase_times["prune"] + first.phase_times["retrain"])
        assert [r["epoch"] for r in first.traces["retrain"]] == [1]
        assert first.traces["retrain"][0]["sparsity"] == pytest.approx(0.5, abs=1e-3)
        # stored once; running the same spec again returns the stored result untouched
        again = run(spec(target=0.5), store)
        assert len(store) == 2 and again.metrics == first.metrics
        assert first.info["counted"] and "git_sha" in first.info


def test_runs_are_deterministic(tmp_path):
    results = []
    for sub in ("a", "b"):
        with Store(tmp_path / sub) as store:
            results.append(run(spec(target=0.75, seed=3), store).metrics)
    for key in ("dense_test_top1", "pruned_val_loss", "final_test_top1", "final_val_loss", "prunable_nonzero"):
        assert results[0][key] == results[1][key]


def test_dense_cache_is_reused_and_repaired(tmp_path):
    with Store(tmp_path) as store:
        run(spec(target=0.5), store)
        path = dense_path(spec(), tmp_path)
        assert path.exists() and [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
        mtime = path.stat().st_mtime_ns
        assert run(spec(target=0.6), store).dense_cached and path.stat().st_mtime_ns == mtime
        path.write_bytes(b"garbage")  # a damaged cache entry is retrained, not trusted
        lines = []
        r = run(spec(target=0.7), store, log=lines.append)
        assert not r.dense_cached and any("unreadable" in line for line in lines)
        assert r.metrics["dense_test_top1"] == store.results()[0].metrics["dense_test_top1"]


class _OwnLoop(TrainingMethod):
    """A training-time method: fine-tunes the dense model with a magnitude mask, epoch by epoch."""

    @dataclass(frozen=True)
    class Hparams:
        epochs: int = 2

    seen = {}

    def run(self, ctx):
        import time

        self.seen.update(target=ctx.target, seed=ctx.seed, init_equal=all(
            torch.equal(v, ctx.model_factory().state_dict()[k]) for k, v in ctx.init_state.items()))
        model = ctx.dense_model
        masks = methods.create("magnitude").prune(model, None, ctx.target)
        t0 = time.perf_counter()
        trace = []
        for epoch in range(self.hparams.epochs):
            train(model, ctx.data, ctx.retrain_config.replace(epochs=1), masks=masks, progress=False)
            trace.append({"epoch": epoch + 1, "sparsity": masks.sparsity(), "pq_index": 0.1 * epoch})
        return MethodOutcome(model=model, masks=masks, traces={"epochs": trace}, info={"note": "own loop"},
                             phase_times={"train": time.perf_counter() - t0})


def test_own_loop_methods_get_a_context_and_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setitem(methods._REGISTRY, "own-loop", _OwnLoop)
    with Store(tmp_path) as store:
        r = run(spec("own-loop", target=0.8, seed=2), store)
    assert _OwnLoop.seen == {"target": 0.8, "seed": 2, "init_equal": True}
    assert r.family == "training"
    assert r.metrics["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert r.metrics["pruned_test_top1"] is None and r.metrics["final_test_top1"] is not None
    assert [row["epoch"] for row in r.traces["epochs"]] == [1, 2]
    assert r.info["note"] == "own loop" and r.phase_times["train"] > 0
    assert {"dense_train", "train"} <= set(r.phase_times)


def test_failing_run_is_logged_and_the_sweep_goes_on(tmp_path, monkeypatch):
    class Broken(OneShotMethod):
        Hparams = _HpV1

        def prune(self, model, masks=None, sparsity=0.5, calib=None):
            raise RuntimeError("boom")

    monkeypatch.setitem(methods._REGISTRY, "broken", Broken)
    with Store(tmp_path) as store:
        outcome = sweep([spec("broken"), spec()], store)
        assert len(outcome.failures) == 1 and "RuntimeError: boom" in outcome.failures[0][1]
        assert len(store) == 1 and len(outcome.results) == 1
    assert "RuntimeError: boom" in (tmp_path / "errors.log").read_text()

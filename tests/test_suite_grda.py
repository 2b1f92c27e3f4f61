"""The ``grda`` suites: the grid of SGD, gRDA at every μ and magnitude + retraining, and one tiny suite run through the harness."""

import pytest

from prunelab.errors import ConfigError
from prunelab.harness.runner import sweep, validate_all
from prunelab.harness.store import Store
from prunelab.reproductions.chao.suite import FULL, MUS, build
from prunelab.harness.suites import get_suite, registry

DATA = {"in_shape": [1, 8, 8], "n_train": 256, "n_test": 64, "val_size": 0.25}


def test_grda_suites_are_registered():
    assert {"grda", "grda-short"} <= set(registry.list())


def test_grda_suite_grid():
    suite = get_suite("grda")
    specs = validate_all(suite.specs)
    assert len(specs) == 2 * (1 + len(MUS) + 4)
    for model in ("mlp", "lenet5"):
        mine = [s for s in specs if s.model == model]
        grda = [s for s in mine if s.method == "grda"]
        sgd = [s for s in grda if s.hparams["c"] == 0.0]
        assert len(sgd) == 1
        assert sorted(s.hparams["mu"] for s in grda if s.hparams["c"] > 0) == list(MUS)
        # one c, one lr, one length and schedule for SGD and every gRDA run
        assert {s.hparams["c"] for s in grda} == {0.0, FULL["c"]}
        assert {(s.hparams["lr"], s.hparams["epochs"], s.hparams["schedule"]) for s in grda} == \
            {(FULL["lr"], FULL["epochs"], "cifar")}
        magnitude = [s for s in mine if s.method == "magnitude"]
        assert [s.target for s in magnitude] == [0.5, 0.75, 0.9, 0.95]
        for s in magnitude:  # equal total epochs, plain SGD in both phases
            dense, retrain = s.dense_config(), s.retrain_config()
            assert dense.epochs + retrain.epochs == FULL["epochs"]
            assert retrain.epochs == FULL["retrain"]
            assert (dense.momentum, retrain.momentum, dense.weight_decay, retrain.weight_decay) == (0, 0, 0, 0)
            assert dense.lr == retrain.lr == FULL["lr"]
    assert [s.model_kwargs for s in specs if s.model == "mlp"][0] == {"hidden": [512]}


def test_grda_suite_rejects_bad_retraining_length():
    with pytest.raises(ConfigError, match="0 < retrain < epochs"):
        build("x", None, lr=0.05, c=0.01, epochs=3, retrain=3)


def test_tiny_grda_suite_runs_through_the_harness(tmp_path):
    suite = build("tiny", "synthetic", lr=0.1, c=0.05, epochs=3, retrain=1,
                  models=[("mlp", {"hidden": [32]})], data_kwargs=DATA, batch_size=32)
    with Store(tmp_path) as store:
        report = sweep(suite.specs, store, keep_going=False)
    assert not report.failures and len(report.results) == 9
    by = {(r.spec.method, r.spec.hparams.get("c"), r.spec.hparams.get("mu"), r.spec.target): r for r in report.results}
    assert by[("grda", 0.0, None, 0.0)].metrics["sparsity"] == 0.0
    grda = [by[("grda", 0.05, mu, 0.0)] for mu in MUS]
    sparsities = [r.metrics["sparsity"] for r in grda]
    assert 0 < sparsities[0] and all(a < b for a, b in zip(sparsities, sparsities[1:]))  # grows with mu
    assert all(len(r.traces["epochs"]) == 3 for r in grda)
    for target in (0.5, 0.75, 0.9, 0.95):
        r = by[("magnitude", None, None, target)]
        assert r.metrics["sparsity"] == pytest.approx(target, abs=1 / (64 * 32 + 32 * 10))  # one weight of 2368
        assert len(r.traces["retrain"]) == 1

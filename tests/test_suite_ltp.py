from prunelab.suites import get_suite


def test_ltp_suite_shape_and_validity():
    suite = get_suite("ltp")
    for spec in suite.specs:
        spec.validate()
    lenet = [s for s in suite.specs if s.model in ("lenet-300-100", "lenet5")]
    # per model: 3 LTP runs (one per target) + GMP and magnitude at 3 targets each
    assert len(lenet) == 2 * (3 + 3 + 3)
    ltp_targets = sorted((s.hparams["penalty_weight"], s.target) for s in lenet if s.method == "ltp" and s.model == "lenet5")
    assert ltp_targets == [(1.0, 0.95), (3.0, 0.975), (15.0, 0.99)]
    bn = [s for s in suite.specs if s.model == "cnn"]
    assert sorted(s.hparams["penalty"] for s in bn) == ["l0", "l1", "l2"]
    assert all(s.hparams["stop_at_target"] is False for s in bn)
    # equal retraining budgets for every compared method
    assert len({tuple(sorted(s.retrain.items())) for s in lenet}) == 1

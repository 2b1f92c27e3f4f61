"""The `ltp` reproduction suite: its specs, and its report writer on a tiny fake result set."""

import dataclasses
import json

import pytest

from prunelab.errors import ConfigError
from prunelab.harness.runner import RunResult, RunSpec, validate_all
from prunelab.harness.store import Store
from prunelab.reproductions.azarian.suite import (
    BN_STUDY,
    PLANS,
    TARGETS,
    check_acceptance,
    collect,
    ltp_specs,
    main,
    write_ltp_results,
)
from prunelab.harness.suites import get_suite


def test_ltp_suite_shape_and_validity():
    suite = get_suite("ltp")
    specs = validate_all(suite.specs)  # every spec valid, none duplicated
    assert len(specs) == len(suite.specs)
    for plan in PLANS:
        runs = [s for s in specs if s.model == plan.model]
        # LTP, GMP and magnitude at every target (+ the trail run where the plan has one, + extra seeds)
        assert len(runs) == 3 * len(TARGETS) + (plan.trail is not None) \
            + 3 * len(plan.extra_seeds) * len(plan.extra_seed_targets)
        extra = [s for s in runs if s.seed != 0]
        assert sorted({s.seed for s in extra}) == sorted(plan.extra_seeds)
        assert all(s.target in plan.extra_seed_targets and s.hparams.get("stop_at_target") is not False for s in extra)
        compared = [s for s in runs if s.hparams.get("stop_at_target") is not False and s.seed == 0]
        assert sorted(s.target for s in compared if s.method == "ltp") == list(TARGETS)
        assert sorted(s.target for s in compared if s.method == "gmp") == list(TARGETS)
        assert sorted(s.target for s in compared if s.method == "magnitude") == list(TARGETS)
        # equal epochs: one retraining budget and one dense model for every compared method
        assert len({json.dumps(s.retrain, sort_keys=True) for s in runs}) == 1
        assert len({json.dumps(s.dense, sort_keys=True) for s in runs}) == 1
        assert all(s.hparams.get("epochs") is None for s in runs)  # nobody gets extra epochs
    bn = [s for s in specs if s.model == "cnn"]
    assert len(bn) == 2 * len(BN_STUDY)
    assert sorted((s.model_kwargs["batch_norm"], s.hparams["penalty"]) for s in bn) == sorted(
        (flag, p) for flag in (True, False) for p, _ in BN_STUDY)
    assert all(s.hparams["stop_at_target"] is False for s in bn)
    l300 = next(p for p in PLANS if p.model == "lenet-300-100")
    assert l300.extra_seeds == (1, 2) and l300.extra_seed_targets == TARGETS  # 3 seeds at every target
    assert {s.dataset for s in specs} == {"fashion-mnist"}
    assert "scaled down" in suite.notes and "validation" in suite.notes
    assert get_suite("ltp", "digits").specs[0].dataset == "digits"


def test_specs_take_smaller_plans():
    plan = dataclasses.replace(PLANS[0], extra_seeds=())
    specs = ltp_specs("digits", plans=(plan,), targets=(0.95,), bn_study=(("l0", 1.0),), data_kwargs={"limit": 10})
    assert [(s.model, s.method) for s in specs] == [(plan.model, "ltp"), (plan.model, "gmp"), (plan.model, "magnitude"),
                                                    (plan.model, "ltp"), ("cnn", "ltp"), ("cnn", "ltp")]
    assert {s.data_kwargs["limit"] for s in specs} == {10}
    assert ltp_specs(plans=(), bn_study=()) == []
    seeded = ltp_specs(plans=(dataclasses.replace(plan, trail=None, extra_seeds=(3,), extra_seed_targets=(0.99,)),),
                       targets=(0.95,), bn_study=())
    assert [(s.method, s.target, s.seed) for s in seeded] == [
        ("ltp", 0.95, 0), ("gmp", 0.95, 0), ("magnitude", 0.95, 0), ("ltp", 0.99, 3), ("gmp", 0.99, 3),
        ("magnitude", 0.99, 3)]


# -- the writer on fabricated results ---------------------------------------------------------------

DENSE = {"epochs": 2, "optimizer": "adam", "lr": 1e-3}
RETRAIN = {"epochs": 3, "optimizer": "adam", "lr": 3e-3}


def _result(model, method, target, test, val, hp=None, traces=None, info=None, kwargs=None, compression=None,
            seed=0, dense_test=0.895):
    spec = RunSpec(dataset="fashion-mnist", model=model, method=method, target=target, hparams=hp or {}, seed=seed,
                   model_kwargs=kwargs or {}, dense=DENSE, retrain=RETRAIN)
    comp = compression if compression is not None else 1 / (1 - target)
    metrics = {"compression_ratio": comp, "sparsity": 1 - 1 / comp, "final_val_top1": val, "final_test_top1": test,
               "dense_val_top1": 0.90, "dense_test_top1": dense_test, "time_total": 1.0}
    return RunResult(spec=spec, hash=spec.hash, family="oneshot" if method == "magnitude" else "training",
                     metrics=metrics, phase_times={}, dense_cached=True, traces=traces or {}, info=info or {})


def _trail(sparsities, accs):
    return [{"epoch": i, "step": 10 * i, "compression": 1 / (1 - s), "sparsity": s, "val_top1": a, "partial": False,
             "transition_fraction": 0.1} for i, (s, a) in enumerate(zip(sparsities, accs))]


def _ltp(model, target, test, lam, trail=None, seed=0, dense_test=0.895, **hp):
    trail = trail or _trail([0, target / 2, target], [0.9, 0.89, 0.88])
    return _result(model, "ltp", target, test, test + 0.005, hp={"penalty_weight": lam, **hp}, seed=seed,
                   dense_test=dense_test,
                   traces={"trail": trail, "finetune": [{"epoch": 1, "val_top1": 0.885}, {"epoch": 2, "val_top1": 0.887}]},
                   info={"picked_epoch": 2, "ltp_epochs": 2, "finetune_epochs": 1, "target_reached": True})


@pytest.fixture
def fake_store(tmp_path):
    m = "lenet-300-100"
    results = [
        _ltp(m, 0.95, 0.892, 1.0), _ltp(m, 0.975, 0.887, 3.0), _ltp(m, 0.99, 0.870, 15.0),
        _ltp(m, 0.99, 0.860, 3.0, trail=_trail([0, 0.9, 0.97, 0.99], [0.9, 0.89, 0.88, 0.86]), stop_at_target=False),
        _result(m, "magnitude", 0.95, 0.885, 0.89), _result(m, "magnitude", 0.975, 0.874, 0.88),
        _result(m, "magnitude", 0.99, 0.845, 0.85),
    ]
    for t, acc in ((0.95, 0.889), (0.975, 0.888), (0.99, 0.862)):
        path = [{"epoch": 1, "sparsity": t / 2, "val_top1": 0.89}, {"epoch": 2, "sparsity": t, "val_top1": acc}]
        results.append(_result(m, "gmp", t, acc, acc, hp={"end_fraction": 0.5},
                               traces={"epochs": path, "pruning": [{"step": 1, "target": t, "sparsity": t}]}))
    results.append(_result("lenet5", "gmp", 0.95, 0.90, 0.90))  # a model with GMP only: no LTP cell
    # a second seed at 40x (its own dense model): LTP 1.2 points below its dense, 0.1 above GMP
    results += [_ltp(m, 0.975, 0.880, 3.0, seed=1, dense_test=0.892), _result(m, "gmp", 0.975, 0.879, 0.88, seed=1),
                _result(m, "magnitude", 0.975, 0.870, 0.87, seed=1)]
    for bn in (True, False):
        for penalty, grow in (("l0", True), ("l1", False), ("l2", False)):
            sp = [0, 0.5, 0.8, 0.9, 0.95] if grow else [0, 0.5, 0.55, 0.55, 0.55]
            results.append(_result("cnn", "ltp", 0.9, 0.8, 0.812 if grow else 0.8,
                                   kwargs={"widths": [4, 4, 4, 4], "batch_norm": bn},
                                   hp={"penalty": penalty, "penalty_weight": 1.0, "stop_at_target": False},
                                   traces={"trail": _trail(sp, [0.8] * 5)},
                                   info={"picked_epoch": 3 if grow else 2, "ltp_epochs": 4, "finetune_epochs": 1,
                                         "picked_compression": 10.0 if grow else 1 / 0.45}))
    with Store(tmp_path / "runs") as store:
        for r in results:
            assert store.put(r)
        store.record_suite("ltp", "desc", "LeNet-5 scaled down.", len(results))
    return tmp_path / "runs"


def test_collect_and_checks_on_fake_results(fake_store):
    with Store(fake_store) as store:
        collected = collect(store.results())
    lenet = collected["models"]["lenet-300-100"]
    assert [row["target"] for row in lenet["rows"]] == list(TARGETS)
    assert all(set(row) >= {"ltp", "gmp", "magnitude"} for row in lenet["rows"])
    assert len(lenet["trail_runs"]) == 1 and lenet["trail_runs"][0]["hparams"]["stop_at_target"] is False
    assert lenet["rows"][2]["ltp"]["hparams"]["penalty_weight"] == 15.0  # the comparison run, not the trail run
    assert lenet["rows"][0]["gmp"]["path"][-1]["sparsity"] == 0.95
    assert [(e["batch_norm"], e["penalty"]) for e in collected["bn_study"]] == [
        (True, "l0"), (True, "l1"), (True, "l2"), (False, "l0"), (False, "l1"), (False, "l2")]
    checks = check_acceptance(collected)
    rows = checks["models"]["lenet-300-100"]["rows"]
    assert [round(100 * r["ltp_minus_gmp"], 2) for r in rows] == [0.3, -0.1, 0.8]
    assert all(r["within_gmp"] for r in rows)
    # seed 0: 88.7 vs dense 89.5 (-0.8); seed 1: 88.0 vs 89.2 (-1.2); the verdict is on the mean (-1.0)
    head = checks["headline"]
    assert round(100 * head["ltp_minus_dense"], 2) == -0.8 and head["seeds"] == [0, 1]
    assert round(100 * head["ltp_minus_dense_mean"], 2) == -1.0 and head["holds"] is True
    assert round(100 * rows[1]["ltp_minus_gmp_mean"], 2) == 0.0 and rows[1]["within_gmp_mean"] is True
    assert rows[0]["seeds"] == [0] and rows[0]["within_dense_mean"] == rows[0]["within_dense"]
    assert checks["models"]["lenet-300-100"]["max_compression_within_dense"] == pytest.approx(40.0)
    assert checks["models"]["lenet5"]["ltp_within_gmp_everywhere"] is None
    growth = {(g["batch_norm"], g["penalty"]): g["keeps_increasing"] for g in checks["bn_study"]}
    assert growth == {(b, p): p == "l0" for b in (True, False) for p in ("l0", "l1", "l2")}
    # a stricter bar flips the verdicts
    strict = check_acceptance(collected, gap_to_dense=0.005, gap_to_gmp=0.0)
    assert strict["headline"]["holds"] is False
    assert check_acceptance(collected, gap_to_dense=0.009)["headline"]["holds"] is False  # seed 0 alone would pass
    # with two seeds the 40x verdict is on their mean (0.0), which a zero gap still allows, although
    # seed 0 alone (-0.1) would miss it
    strict_40 = strict["models"]["lenet-300-100"]["rows"][1]
    assert strict_40["several_seeds"] and strict_40["within_gmp"] is False and strict_40["verdict_gmp"] is True
    assert strict["models"]["lenet-300-100"]["ltp_within_gmp_everywhere"] is True
    assert check_acceptance(collected, gap_to_gmp=-0.0005)["models"]["lenet-300-100"]["ltp_within_gmp_everywhere"] is False


def test_writer_writes_report_figures_and_json(fake_store, tmp_path, monkeypatch):
    dest = tmp_path / "out"
    assert main([str(fake_store), "--dest", str(dest)]) == 0
    names = sorted(p.name for p in (dest / "figures").iterdir())
    assert names == ["bn-study.png", "trail-lenet-300-100.png", "trail-lenet5.png"]
    for name in names:
        assert (dest / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads((dest / "ltp_results.json").read_text())
    assert payload["suite"] == "ltp"
    assert payload["checks"]["headline"]["holds"] is True
    assert len(payload["bn_study"]) == 6 and len(payload["bn_study"][0]["trail"]) == 5
    report = (dest / "report.md").read_text()
    assert "| 20× | 89.20 (89.70) | 88.90 (88.90) | 88.50 (89.00) | +0.30 | -0.30 | λ=1, 2 / 1 |" in report
    # two seeds at 40x: mean ± sample sd of test (mean val), deltas on the means
    assert ("| 40× | 88.35 ± 0.49 (88.85), n=2 | 88.35 ± 0.64 (88.40), n=2 | 87.20 ± 0.28 (87.50), n=2 | +0.00 "
            "| -1.00 | λ=3, 2 / 1 |") in report
    assert "40×: +0.00 (mean of 2 seeds)" in report
    assert "LeNet-5 scaled down." in report
    assert "![trail](figures/trail-lenet-300-100.png)" in report
    assert "![BN study](figures/bn-study.png)" in report
    assert "| yes | L0 | 1 | 1.0× → 2.0× → 5.0× → 10× → 20× |" in report
    assert "| 80.0 / 80.0 / 80.0 / 80.0 / 80.0 | 4.00× | yes | 10× (epoch 3): 81.2 % |" in report  # the fine-tuned pick
    assert "4 epochs of thresholds each from the dense model, no stop, then 1 fine-tune epoch(s)" in report
    assert "| no | L2 | 1 |" in report and "| 2.2× (epoch 2): 80.0 % |" in report
    assert "**holds**" in report
    assert "Seeds 0, 1 at 40× (each seed its own dense model)" in report
    assert "mean over seeds 0, 1: -1.00, seed 0: -0.80 points (needs ≥ -1.0 on the mean): **holds**" in report
    # the default destination is the store's own directory (figures already checked: skip drawing)
    monkeypatch.setattr("prunelab.reproductions.azarian.report.draw_figures", lambda collected: [])
    paths = write_ltp_results(fake_store)
    assert paths["report"] == fake_store / "report.md" and paths["report"].is_file()


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="holds no results.sqlite"):
        write_ltp_results(tmp_path)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunelab: error: ") and "prunelab bench --suite ltp" in err and len(err.splitlines()) == 1
    with Store(tmp_path / "empty"):
        pass
    with pytest.raises(ConfigError, match="no completed LTP"):
        write_ltp_results(tmp_path / "empty")

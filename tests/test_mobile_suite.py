"""The `mobile` suite: its specs, the LTP − GMP verdict and the least-pruned layers on hand-made
results, the report writer, and one tiny end-to-end sweep."""

import dataclasses
import json
import math

import pytest

from prunelab.errors import ConfigError
from prunelab.harness.runner import RunResult, RunSpec, validate_all
from prunelab.harness.store import Store
from prunelab.harness.suites import get_suite
from prunelab.reproductions.mobile.collect import collect
from prunelab.reproductions.mobile.protocol import DATA_KWARGS, DENSE, LTP_LAMBDA, MODEL_KWARGS, RETRAIN, MobilePlan
from prunelab.reproductions.mobile.report import main, method_table, write_mobile_report
from prunelab.reproductions.mobile.suite import method_hparams, mobile_specs
from prunelab.reproductions.mobile.verdict import (
    edge_verdict, kind_sparsity, layer_kind, least_pruned, model_verdicts, overall_verdict,
)

MODELS = ("mobilenetv2", "efficientnet-b0", "mixnet-s")
TARGETS = (0.5, 0.75, 0.875)


def test_suite_specs_are_the_grid_with_equal_budgets():
    specs = validate_all(get_suite("mobile").specs)
    assert len(specs) == len(get_suite("mobile").specs) == 27
    assert [(s.model, s.target, s.method) for s in specs] == [
        (m, t, method) for m in MODELS for t in TARGETS for method in ("ltp", "gmp", "magnitude")]
    assert {s.seed for s in specs} == {0} and {s.dataset for s in specs} == {"fashion-mnist"}
    for s in specs:
        assert s.model_kwargs == {"width": 0.25, "depth": 0.5}
        assert s.data_kwargs == {"normalize": "unit", "limit": 4000, "val_size": 1000}
        assert s.dense == DENSE and s.retrain == RETRAIN and s.prunable == {}
        assert s.dense["epochs"] == 6 and s.retrain["epochs"] == 3 and s.retrain["eval_batch_size"] == 128
    hp = {(s.method, s.target): s.hparams for s in specs if s.model == "mixnet-s"}
    assert hp == {**{("ltp", t): {"gradient": "exact", "penalty_weight": lam} for t, lam in LTP_LAMBDA.items()},
                  **{("gmp", t): {"end_fraction": 0.5, "scope": "layer"} for t in TARGETS},
                  **{("magnitude", t): {"scope": "layer"} for t in TARGETS}}
    assert LTP_LAMBDA == {0.5: 1.0, 0.75: 3.0, 0.875: 10.0}
    # nobody gets extra epochs: every method spends the retraining budget
    assert all("epochs" not in s.hparams for s in specs)


def test_three_seed_suite_extends_the_one_seed_suite():
    three = validate_all(get_suite("mobile-3seeds").specs)
    assert len(three) == 81 and [s.seed for s in three[::27]] == [0, 1, 2]
    assert [s.hash for s in three[:27]] == [s.hash for s in get_suite("mobile").specs]  # one folder shares them
    assert get_suite("mobile", "digits").specs[0].dataset == "digits"
    small = mobile_specs("synthetic", models=(MobilePlan("mixnet-s", {"width": 0.1}),), targets=(0.5,), seeds=(4,),
                         methods=("gmp",), data_kwargs={"n_train": 10})
    assert [(s.model, s.method, s.target, s.seed, s.model_kwargs, s.data_kwargs) for s in small] == [
        ("mixnet-s", "gmp", 0.5, 4, {"width": 0.1}, {"n_train": 10})]
    assert method_hparams("ltp", 0.5, {0.5: 7}) == {"gradient": "exact", "penalty_weight": 7.0}


# --------------------------------------------------------------------------- the verdict

def test_edge_verdict_on_hand_made_scores():
    one = edge_verdict({0: 0.79}, {0: 0.78, 1: 0.5})
    assert one == {"seeds": [0], "differences": {0: 0.79 - 0.78}, "mean": 0.79 - 0.78, "sd": None, "noise": 0.02,
                   "verdict": "unclear"}
    # One seed: a gap beyond the fixed 2-point margin is an edge.
    assert edge_verdict({0: 0.80}, {0: 0.77})["verdict"] == "LTP ahead"
    assert edge_verdict({0: 0.60}, {0: 0.75})["verdict"] == "GMP ahead"
    ahead = edge_verdict({0: 0.70, 1: 0.72, 2: 0.71}, {0: 0.60, 1: 0.61, 2: 0.62})
    diffs = [0.70 - 0.60, 0.72 - 0.61, 0.71 - 0.62]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert ahead["differences"] == dict(enumerate(diffs)) and ahead["mean"] == mean and ahead["sd"] == sd
    assert ahead["noise"] == 2.0 * sd / math.sqrt(3) and ahead["verdict"] == "LTP ahead"
    assert round(100 * ahead["noise"], 2) == 1.15
    # the same gap in GMP's favour
    assert edge_verdict({0: 0.60, 1: 0.61, 2: 0.62}, {0: 0.70, 1: 0.72, 2: 0.71})["verdict"] == "GMP ahead"
    # a mean of +0.33 points against a noise of ±1.76: unclear
    noisy = edge_verdict({0: 0.80, 1: 0.82, 2: 0.78}, {0: 0.80, 1: 0.80, 2: 0.79})
    assert noisy["verdict"] == "unclear" and round(100 * noisy["mean"], 2) == 0.33 and round(100 * noisy["noise"], 2) == 1.76
    # a stricter noise bound makes it an edge; a seed missing for one method is left out; None scores too
    assert edge_verdict({0: 0.80, 1: 0.82, 2: 0.78}, {0: 0.80, 1: 0.80, 2: 0.79}, noise_factor=0.1)["verdict"] == "LTP ahead"
    assert edge_verdict({0: 0.8, 1: 0.9, 2: None}, {1: 0.7, 2: 0.7})["seeds"] == [1]
    assert edge_verdict({}, {0: 0.7})["verdict"] == "not measured"


def _cells(ltp: dict, gmp: dict) -> dict:
    return {"ltp": {t: {s: {"test_top1": v} for s, v in by_seed.items()} for t, by_seed in ltp.items()},
            "gmp": {t: {s: {"test_top1": v} for s, v in by_seed.items()} for t, by_seed in gmp.items()}}


def test_model_and_overall_verdicts():
    ahead = {0: 0.9, 1: 0.91, 2: 0.92}
    behind = {0: 0.8, 1: 0.8, 2: 0.81}
    yes = model_verdicts(_cells({0.5: ahead, 0.875: ahead}, {0.5: behind, 0.875: behind}))
    assert list(yes["targets"]) == [0.5, 0.875] and yes["keeps_edge"] == "yes"
    no = model_verdicts(_cells({0.5: ahead, 0.875: behind}, {0.5: behind, 0.875: ahead}))
    assert [v["verdict"] for v in no["targets"].values()] == ["LTP ahead", "GMP ahead"] and no["keeps_edge"] == "no"
    one_seed = model_verdicts(_cells({0.5: {0: 0.81}}, {0.5: {0: 0.8}, 0.75: {0: 0.5}}))  # 0.75: GMP only
    assert list(one_seed["targets"]) == [0.5] and one_seed["keeps_edge"] == "unclear"
    assert model_verdicts({"gmp": {}})["keeps_edge"] == "unclear"
    assert overall_verdict({"a": yes, "b": yes}) == "yes"
    assert overall_verdict({"a": no, "b": no}) == "no"
    assert overall_verdict({"a": yes, "b": no, "c": one_seed}) == "mixed"
    assert overall_verdict({"a": yes, "b": one_seed}) == "unclear"
    assert overall_verdict({}) == "unclear"


# --------------------------------------------------------------------------- the least-pruned layers

LAYERS = [
    {"name": "stem.0.weight", "shape": [8, 1, 3, 3], "params": 72, "nonzero": 72, "sparsity": 0.0},
    {"name": "blocks.0.depthwise.convs.0.weight", "shape": [8, 1, 3, 3], "params": 72, "nonzero": 36, "sparsity": 0.5},
    {"name": "blocks.0.se.reduce.weight", "shape": [2, 8, 1, 1], "params": 16, "nonzero": 16, "sparsity": 0.0},
    {"name": "blocks.0.project.0.weight", "shape": [4, 8, 1, 1], "params": 32, "nonzero": 8, "sparsity": 0.75},
    {"name": "head.0.weight", "shape": [1280, 4, 1, 1], "params": 5120, "nonzero": 256, "sparsity": 0.95},
    {"name": "classifier.weight", "shape": [10, 1280], "params": 12800, "nonzero": 3200, "sparsity": 0.75},
]


def test_layer_kinds_of_the_three_networks():
    from collections import Counter

    from prunelab import models
    from prunelab.core.prunable import prunable_parameters

    counts = {}
    for name in MODELS:
        params = prunable_parameters(models.create(name, (1, 28, 28), 10, **MODEL_KWARGS))
        counts[name] = dict(Counter(layer_kind(k, tuple(p.shape)) for k, p in params.items()))
    assert counts == {"mobilenetv2": {"stem": 1, "depthwise": 11, "pointwise": 22, "classifier": 1},
                      "efficientnet-b0": {"stem": 1, "depthwise": 10, "SE": 20, "pointwise": 20, "classifier": 1},
                      "mixnet-s": {"stem": 1, "depthwise": 31, "pointwise": 24, "SE": 18, "classifier": 1}}
    # by shape alone, when the name says nothing
    assert [layer_kind("w", s) for s in ((8, 1, 5, 5), (8, 4, 1, 1), (8, 4, 3, 3), (10, 4))] == [
        "depthwise", "pointwise", "other", "other"]


def test_least_pruned_and_kind_sparsity_on_hand_made_layers():
    assert least_pruned(LAYERS, 3) == [
        {"name": "stem.0.weight", "kind": "stem", "sparsity": 0.0, "params": 72},
        {"name": "blocks.0.se.reduce.weight", "kind": "SE", "sparsity": 0.0, "params": 16},   # tie: network order
        {"name": "blocks.0.depthwise.convs.0.weight", "kind": "depthwise", "sparsity": 0.5, "params": 72}]
    assert [x["name"] for x in least_pruned(LAYERS, 10)][3:] == [
        "blocks.0.project.0.weight", "classifier.weight", "head.0.weight"]
    assert kind_sparsity(LAYERS) == {
        "stem": {"layers": 1, "params": 72, "nonzero": 72, "sparsity": 0.0},
        "depthwise": {"layers": 1, "params": 72, "nonzero": 36, "sparsity": 0.5},
        "pointwise": {"layers": 2, "params": 5152, "nonzero": 264, "sparsity": 1 - 264 / 5152},
        "SE": {"layers": 1, "params": 16, "nonzero": 16, "sparsity": 0.0},
        "classifier": {"layers": 1, "params": 12800, "nonzero": 3200, "sparsity": 0.75}}
    assert list(kind_sparsity(LAYERS)) == ["stem", "depthwise", "pointwise", "SE", "classifier"]


# --------------------------------------------------------------------------- the report on fake results

def _result(model, method, target, test, seed=0, layers=(), info=None, dense=(0.85, 100.0), kwargs=MODEL_KWARGS,
            compression=None):
    spec = RunSpec("fashion-mnist", model, method, target, seed=seed, hparams=method_hparams(method, target),
                   model_kwargs=dict(kwargs), data_kwargs=dict(DATA_KWARGS), dense=DENSE, retrain=RETRAIN)
    metrics = {"final_test_top1": test, "final_val_top1": test + 0.01, "compression_ratio": compression or 1 / (1 - target),
               "sparsity": target, "time_total": 20.0 + 10 * seed, "dense_test_top1": dense[0],
               "dense_val_top1": dense[0] + 0.005, "time_dense_train": dense[1], "params_total": 206722,
               "flops": 4_750_000}
    return RunResult(spec=spec, hash=spec.hash, family="oneshot" if method == "magnitude" else "training",
                     metrics=metrics, phase_times={}, dense_cached=True, traces={}, layers=list(layers),
                     info={"git_sha": "abc", "torch": "2", "threads": 2, "device": "cpu", **(info or {})})


SCORES = {  # test top-1 per target and seed: LTP ahead at 2x and 8x, unclear at 4x
    "ltp": {0.5: (0.84, 0.85, 0.86), 0.75: (0.80, 0.82, 0.78), 0.875: (0.70, 0.72, 0.71)},
    "gmp": {0.5: (0.83, 0.84, 0.85), 0.75: (0.80, 0.80, 0.79), 0.875: (0.60, 0.61, 0.62)},
    "magnitude": {0.5: (0.82, 0.82, 0.82), 0.75: (0.70, 0.70, 0.70), 0.875: (0.10, 0.10, 0.10)},
}


@pytest.fixture
def fake_results():
    dense = {0: (0.85, 100.0), 1: (0.86, 110.0), 2: (0.84, 120.0)}
    results = [_result("mobilenetv2", m, t, v, seed=s, dense=dense[s], layers=LAYERS if (m, t, s) == ("ltp", 0.875, 0) else ())
               for m, by_t in SCORES.items() for t, values in by_t.items() for s, v in enumerate(values)]
    results += [_result("efficientnet-b0", "ltp", 0.875, 0.79, info={"target_reached": False, "filled_fraction": 0.05},
                        compression=7.5),
                _result("efficientnet-b0", "gmp", 0.875, 0.82),
                _result("lenet5", "ltp", 0.875, 0.9, kwargs={})]   # not a mobile network: left out
    return results


def test_collect_and_tables(fake_results):
    collected = collect(r for r in fake_results if r.spec.model != "lenet5")
    mob = collected["mobilenetv2"]
    assert list(collected) == ["mobilenetv2", "efficientnet-b0"] and list(mob["cells"]) == ["ltp", "gmp", "magnitude"]
    assert mob["dense"] == {0: {"val_top1": 0.855, "test_top1": 0.85, "seconds": 100.0, "params": 206722, "macs": 4750000},
                            1: {"val_top1": 0.865, "test_top1": 0.86, "seconds": 110.0, "params": 206722, "macs": 4750000},
                            2: {"val_top1": 0.845, "test_top1": 0.84, "seconds": 120.0, "params": 206722, "macs": 4750000}}
    assert list(mob["ltp_layers"]) == [0] and mob["ltp_layers"][0][1]["nonzero"] == 36
    assert method_table(mob) == (["method", "2×", "4×", "8×"], [
        ["LTP", "85.00 ± 1.00 (n=3)", "80.00 ± 2.00 (n=3)", "71.00 ± 1.00 (n=3)"],
        ["GMP", "84.00 ± 1.00 (n=3)", "79.67 ± 0.58 (n=3)", "61.00 ± 1.00 (n=3)"],
        ["magnitude + retrain", "82.00 ± 0.00 (n=3)", "70.00 ± 0.00 (n=3)", "10.00 ± 0.00 (n=3)"]])
    assert method_table(mob, seconds=True)[1][0] == ["LTP", "30", "30", "30"]   # mean of 20, 30, 40 s
    assert method_table(collected["efficientnet-b0"])[1] == [["LTP", "79.00 † at 7.5×"], ["GMP", "82.00"]]


def test_report_states_the_verdict_and_the_least_pruned_layers(tmp_path, fake_results):
    paths = write_mobile_report(tmp_path, results=fake_results)
    assert paths["markdown"] == tmp_path / "mobile" / "report.md" and paths["figures"] == []
    md = paths["markdown"].read_text()
    assert "Does LTP keep its edge over GMP on these networks? **unclear**" in md
    assert "| mobilenetv2 | +1.00 (LTP ahead) | +0.33 (unclear) | +10.00 (LTP ahead) | unclear |" in md
    assert "| efficientnet-b0 |  |  | -3.00 (GMP ahead) | no |" in md
    assert "| 8× | +10.00 | 0: +10.00, 1: +11.00, 2: +9.00 | ±1.15 | LTP ahead |" in md
    assert "| 8× | -3.00 | 0: -3.00 | ±2.00 | GMP ahead (one seed) |" in md
    assert "test top-1 **85.00 ± 1.00 %** over 3 seeds" in md and "trained in **110 s** on average" in md
    assert "206,722 parameters, 4.75 M multiply-accumulates per image" in md
    assert ("kept 2 of its 6 layers entirely dense; the 5 least-pruned layers are `stem.0.weight` (stem, 0.0 % pruned, 72 weights), `blocks.0.se.reduce.weight` "
            "(SE, 0.0 % pruned, 16 weights), `blocks.0.depthwise.convs.0.weight` (depthwise, 50.0 % pruned, 72 weights)") in md
    assert "by kind: stem 1, SE 1, depthwise 1, pointwise 1, classifier 1" in md
    assert "| pointwise | 2 | 5,152 | 94.9 |" in md and "| head.0.weight | pointwise | 5,120 | 95.0 |" in md
    assert "No LTP run at 8×" not in md.split("## efficientnet-b0")[0]
    assert "lenet5" not in md
    payload = json.loads(paths["json"].read_text())
    assert payload["overall"] == "unclear"
    assert payload["models"]["mobilenetv2"]["verdict"]["keeps_edge"] == "unclear"
    assert payload["models"]["mobilenetv2"]["least_pruned"]["0"][0]["name"] == "stem.0.weight"
    assert paths["html"].is_file()


def test_report_command_and_bench_hook(tmp_path, fake_results):
    with pytest.raises(ConfigError, match="run `prunelab bench --suite mobile"):
        write_mobile_report(tmp_path)
    # a run of another study in the same store (GMP at global scope): the suite's own run is reported
    other = _result("mobilenetv2", "gmp", 0.875, 0.30)
    other = dataclasses.replace(other, spec=dataclasses.replace(other.spec, hparams={"end_fraction": 0.5}))
    other = dataclasses.replace(other, hash=other.spec.hash)
    with Store(tmp_path) as store:
        for r in [other] + fake_results:
            store.put(r)
        store.record_suite("mobile", "desc", "Scaled down.", len(fake_results))
    assert main([str(tmp_path), "--dest", str(tmp_path / "again")]) == 0
    payload = json.loads((tmp_path / "again" / "mobile_results.json").read_text())
    assert [r["test_top1"] for r in payload["models"]["mobilenetv2"]["cells"]["gmp"]["0.875"].values()] == [0.60, 0.61, 0.62]
    md = (tmp_path / "again" / "report.md").read_text()
    assert "Suite `mobile`: desc. Scaled down." in md and md.startswith("# LTP vs GMP") and "29 runs" in md
    # the hook `prunelab bench --suite mobile` and `prunelab report` call after the generic report
    assert get_suite("mobile").report(tmp_path)["markdown"] == tmp_path / "mobile" / "report.md"
    assert get_suite("mobile-3seeds").report(tmp_path)["json"] == tmp_path / "mobile" / "mobile_results.json"
    with pytest.raises(ConfigError, match="holds no completed LTP, GMP or magnitude run"):
        write_mobile_report(tmp_path, results=[r for r in fake_results if r.spec.model == "lenet5"])


# --------------------------------------------------------------------------- a tiny real sweep

def test_tiny_sweep_end_to_end(tmp_path):
    from prunelab.harness.runner import sweep

    budget = {"optimizer": "adam", "lr": 3e-3, "batch_size": 64, "eval_batch_size": 128}
    tiny = ("mobilenetv2", "efficientnet-b0")   # MixNet's many small convs cost 2x the other two together
    specs = mobile_specs("synthetic", models=tuple(MobilePlan(m, {"width": 0.25, "depth": 0.25}) for m in tiny),
                         targets=(0.875,), dense={**budget, "epochs": 1}, retrain={**budget, "epochs": 2},
                         data_kwargs={"in_shape": [1, 8, 8], "n_train": 128, "n_test": 64, "val_size": 64,
                                      "normalize": "none"}, ltp_lambda={0.875: 30.0})
    with Store(tmp_path) as store:
        report = sweep(specs, store, keep_going=False)
    assert len(report.results) == 6 and not report.failures
    for r in report.results:
        assert r.metrics["time_total"] > 0 and r.metrics["time_dense_train"] > 0 and r.layers
        if r.spec.method != "ltp":   # GMP and magnitude: every layer pruned to the target, exactly
            assert all(x["nonzero"] == x["params"] - round(0.875 * x["params"]) for x in r.layers), r.label
    paths = write_mobile_report(tmp_path, results=report.results)
    md = paths["markdown"].read_text()
    for model in tiny:
        assert f"## {model}" in md
    assert md.count(" (one seed) |") == 2 and md.count("least-pruned layers are") == 2

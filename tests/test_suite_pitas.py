"""The `pitas` reproduction suite: its specs, the time-to-target rule, and its report on fake results."""

import json
import math
import subprocess
import sys

import pytest

from prunelab.errors import ConfigError
from prunelab.harness.runner import RunResult, RunSpec, validate_all
from prunelab.harness.store import Store
from prunelab.reproductions.pitas.suite import (
    GAPS,
    METHODS,
    MODELS,
    RETRAIN_TARGET,
    TARGETS,
    check_claims,
    collect,
    pitas_specs,
    time_to_target,
    write_pitas_report,
)
from prunelab.harness.suites import get_suite, registry


def test_registered_suite_builds_the_specs():
    assert "pitas" in registry.list()
    suite = get_suite("pitas")
    specs = validate_all(suite.specs)  # all valid, none duplicated
    assert len(specs) == len(suite.specs) == len(MODELS) * len(METHODS) * len(TARGETS)
    assert {s.model for s in specs} == {"fc", "lenet5"} and {s.dataset for s in specs} == {"fashion-mnist"}
    assert {s.method for s in specs} == {"hard-threshold", "magnitude", "feta", "nettrim", "lobs"}
    assert {s.data_kwargs["normalize"] for s in specs} == {"unit"} and {s.seed for s in specs} == {0}
    for plan in MODELS:
        mine = [s for s in specs if s.model == plan.model]
        assert len({json.dumps(s.dense, sort_keys=True) for s in mine}) == 1  # one dense model per network
        assert {s.calib_size for s in mine} == {plan.calib_size}
        for s in mine:
            # only the 90 % runs are retrained (experiment 3); the others measure accuracy without retraining
            assert s.retrain["epochs"] == (plan.retrain_epochs if s.target == RETRAIN_TARGET else 0)
            assert {k: v for k, v in s.retrain.items() if k != "epochs"} == {k: v for k, v in s.dense.items()
                                                                             if k != "epochs"}
    fc = next(s for s in specs if s.model == "fc")
    assert fc.dense == {"optimizer": "adam", "lr": 1e-3, "batch_size": 300, "schedule": "inverse", "epochs": 30}
    assert next(s for s in specs if s.model == "lenet5" and s.method == "lobs").hparams["update"] == "oneshot"
    assert next(s for s in specs if s.model == "fc" and s.method == "lobs").hparams == {}
    assert sorted({s.target for s in specs}) == list(TARGETS)
    assert "Scaled down" in suite.notes and callable(suite.report)
    assert get_suite("pitas", "digits").specs[0].dataset == "digits"


def test_one_line_adds_a_method_and_the_retrain_target_is_always_run():
    methods = METHODS + (("random", "random", {"scope": "layer"}),)
    specs = pitas_specs(models=MODELS[:1], methods=methods, targets=(0.5,))
    assert [(s.method, s.target) for s in specs][-2:] == [("random", 0.5), ("random", RETRAIN_TARGET)]
    assert [s.retrain["epochs"] for s in specs[-2:]] == [0, MODELS[0].retrain_epochs]


def test_suite_module_is_cheap_to_import():
    code = "import sys, prunelab.reproductions.pitas.suite; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


TRACE = [{"epoch": 1, "val_top1": 0.80, "seconds": 1.0}, {"epoch": 2, "val_top1": 0.87, "seconds": 1.5},
         {"epoch": 3, "val_top1": 0.885, "seconds": 1.0}, {"epoch": 4, "val_top1": 0.895, "seconds": 1.0},
         {"epoch": 5, "val_top1": 0.897, "seconds": 1.0}]


def test_time_to_target_on_a_hand_made_trace():
    t = time_to_target(TRACE, dense_top1=0.9, pruned_top1=0.5, prune_seconds=2.0, gaps=(0.1, 0.5, 1, 2, 5, 50))
    # 0.895 is exactly 0.5 point below 0.9: reached at epoch 4, after 2 s of pruning + 4.5 s of retraining
    assert (t["0.5"]["epoch"], t["0.5"]["seconds"], t["0.5"]["retrain_seconds"]) == (4, 6.5, 4.5)
    assert (t["1"]["epoch"], t["1"]["seconds"]) == (4, 6.5)
    assert (t["2"]["epoch"], t["2"]["seconds"]) == (3, 5.5)
    assert (t["5"]["epoch"], t["5"]["seconds"]) == (2, 4.5)
    assert (t["50"]["epoch"], t["50"]["seconds"], t["50"]["retrain_seconds"]) == (0, 2.0, 0.0)  # already after pruning
    miss = t["0.1"]
    assert not miss["reached"] and miss["epoch"] is None and miss["seconds"] is None
    assert miss["epochs_run"] == 5 and miss["seconds_at_least"] == 7.5
    assert t["2"]["top1"] == 0.885 and t["2"]["threshold"] == pytest.approx(0.88)
    assert time_to_target([], 0.9, None, 1.0, gaps=(1,))["1"]["reached"] is False


# --------------------------------------------------------------------------- a tiny fake result set

_PRUNED = {"hard-threshold": 0.40, "magnitude": 0.55, "feta": 0.80, "nettrim": 0.45, "lobs": 0.86}
_PRUNE_S = {"hard-threshold": 0.01, "magnitude": 0.02, "feta": 10.0, "nettrim": 200.0, "lobs": 0.5}
# validation top-1 per retraining epoch (dense val 0.90; thresholds 0.895, 0.89, 0.88, 0.85)
_CURVES = {"hard-threshold": [0.86, 0.885, 0.89], "magnitude": [0.85, 0.88, 0.886], "feta": [0.87, 0.88, 0.885],
           "nettrim": [0.86, 0.87, 0.88], "lobs": [0.88, 0.884, 0.889]}


def _fake(method: str, target: float, model: str = "fc") -> RunResult:
    retrained = target == RETRAIN_TARGET
    spec = RunSpec("fashion-mnist", model, method, target, data_kwargs={"normalize": "unit"},
                   dense={"epochs": 1}, retrain={"epochs": 3 if retrained else 0})
    pruned = _PRUNED[method] + (0.9 - target) * 0.5
    metrics = {"dense_val_top1": 0.90, "dense_test_top1": 0.89, "pruned_val_top1": pruned, "pruned_test_top1": pruned - 0.01,
               "final_val_top1": _CURVES[method][-1] if retrained else pruned, "final_test_top1": 0.87 if retrained else pruned,
               "sparsity": target * 0.99, "compression_ratio": 1 / (1 - target * 0.99),
               "theoretical_speedup": 1 / (1 - target * 0.99), "time_prune": _PRUNE_S[method],
               "time_retrain": 3.0 if retrained else 0.0, "time_dense_train": 30.0, "num_classes": 10}
    traces = {"retrain": [{"epoch": i + 1, "val_top1": v, "seconds": 1.0, "train_loss": 0.3}
                          for i, v in enumerate(_CURVES[method])]} if retrained else {}
    layers = [{"name": "fc1.weight", "params": 900, "nonzero": round(900 * (1 - target))},
              {"name": "fc2.weight", "params": 100, "nonzero": round(100 * (1 - target))},
              {"name": "fc3.weight", "params": 10, "nonzero": 10}]
    return RunResult(spec=spec, hash=spec.hash, family="oneshot", metrics=metrics,
                     phase_times={"dense_train": 30.0, "prune": _PRUNE_S[method], "retrain": metrics["time_retrain"]},
                     dense_cached=True, traces=traces, layers=layers, info={"git_sha": "abc", "torch": "2", "threads": 1})


@pytest.fixture
def fake_results():
    return [_fake(method, t) for _, method, _ in METHODS for t in (0.5, RETRAIN_TARGET)]


BENCH = {"n": 5000, "d_out": 100, "sparsity": 0.9, "results": {
    "feta": {"runs": [{"d_in": 256, "wall_s": 1.0}, {"d_in": 1024, "wall_s": 4.0}], "growth_exponents": [1.0]},
    "nettrim": {"runs": [{"d_in": 256, "wall_s": 30.0}, {"d_in": 1024, "wall_s": 480.0}], "growth_exponents": [2.0]},
    "lobs": {"runs": [{"d_in": 256, "wall_s": 5.0}, {"d_in": 1024, "skipped": True, "estimated_wall_s": 320.0}],
             "growth_exponents": []}}}


def test_collect_and_claims_on_fake_results(fake_results):
    collected = collect(fake_results)
    fc = collected["fc"]
    assert list(fc["methods"]) == [name for name, _, _ in METHODS]
    assert fc["dense"]["val_top1"] == 0.90
    ht = fc["methods"]["hard thresholding"]
    assert [p["target"] for p in ht["points"]] == [0.5, RETRAIN_TARGET]
    assert ht["points"][1]["sparsity_hidden"] == pytest.approx(0.9)
    to2 = ht["retrain"]["time_to"]["2"]
    assert (to2["reached"], to2["epoch"], to2["seconds"]) == (True, 2, pytest.approx(2.01))
    claims = check_claims(collected, BENCH)
    speed = claims["feta_speed"]
    assert speed["models"]["fc"]["Net-Trim"]["median_ratio"] == pytest.approx(20.0)
    assert speed["models"]["fc"]["L-OBS"]["median_ratio"] == pytest.approx(0.05)
    assert speed["bench"]["L-OBS"]["1024"] == {"ratio": 80.0, "feta_s": 4.0, "other_s": 320.0, "estimated": True}
    assert speed["bench"]["Net-Trim"]["256"]["ratio"] == 30.0
    assert speed["holds"] is False and speed["orders"] == pytest.approx(math.log10(0.05))
    total = claims["ht_total_time"]["fc"]
    assert total["0.5"]["holds"] is None and total["0.5"]["ranking"] == []  # nobody within 0.5 point
    assert total["1"]["holds"] is True and total["1"]["not_reached"] == ["magnitude", "FeTa", "Net-Trim", "L-OBS"]
    # L-OBS (0.5 s to prune) is within 2 points after one epoch, before HT's second epoch
    assert total["2"]["holds"] is False and total["2"]["first"] == "L-OBS"
    assert [r["method"] for r in total["5"]["ranking"]] == ["L-OBS", "hard thresholding", "magnitude", "FeTa", "Net-Trim"]
    assert total["5"]["ranking"][0]["epoch"] == 0  # L-OBS was within 5 points right after pruning
    assert [total[g]["threshold_first"] for g in ("0.5", "1", "2", "5")] == [None, True, False, False]


def test_report_has_the_three_sections(tmp_path, fake_results):
    bench = tmp_path / "bench_layerwise.json"
    bench.write_text(json.dumps(BENCH))
    paths = write_pitas_report(tmp_path, dest=tmp_path / "out", results=fake_results)  # finds OUTDIR/bench_layerwise.json
    md = paths["markdown"].read_text()
    for title in ("## 1. Accuracy without retraining vs sparsity", "## 2. Prune time",
                  "## 3. Total time to recover at 90% sparsity", "## The paper's claims"):
        assert title in md
    assert "| hard thresholding | 59.00 | 39.00 |" in md  # pruned test top-1 at 50 % and 90 %
    assert "not reached in 3 epochs" in md and "| hard thresholding | 0.010 | 40.00 | not reached" in md
    assert "3.01 (3) | 2.01 (2) | 1.01 (1) |" in md
    assert "HT first at 1 of 3 reachable gaps, a data-free threshold (HT or global magnitude) first at 1" in md
    assert "d_in=1024" in md and "~320.0 (skipped, estimate)" in md
    for fig in paths["figures"]:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/{fig.name}" in md
    assert len(paths["figures"]) == 3
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 3 and "src=\"figures/" not in page
    payload = json.loads(paths["json"].read_text())
    assert payload["models"]["fc"]["methods"]["FeTa"]["retrain"]["time_to"]["5"]["epoch"] == 1
    assert payload["claims"]["ht_total_time"]["fc"]["1"]["holds"] is True


def test_bench_and_report_commands_write_the_suite_report(tmp_path, fake_results):
    from prunelab.harness.report import write_report

    with Store(tmp_path) as store:
        for r in fake_results:
            store.put(r)
        store.record_suite("pitas", "d", "n", len(fake_results))
    write_report(tmp_path)  # what `prunelab bench --suite pitas` and `prunelab report` call
    assert (tmp_path / "report.md").is_file() and (tmp_path / "pitas" / "report.md").is_file()
    assert (tmp_path / "pitas" / "pitas_results.json").is_file()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="run `prunelab bench --suite pitas"):
        write_pitas_report(tmp_path)

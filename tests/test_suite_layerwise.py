"""The `layerwise` suite: its specs, the run spec's prunable rule, its report on fake results, and a tiny real run."""

import dataclasses
import json
import subprocess
import sys

import pytest

from prunelab import methods
from prunelab.errors import ConfigError
from prunelab.harness.runner import RunResult, RunSpec, validate_all
from prunelab.harness.store import Store
from prunelab.harness.suites import get_suite, registry
from prunelab.reproductions.layerwise.collect import collect, method_name
from prunelab.reproductions.layerwise.report import table_model
from prunelab.reproductions.layerwise.suite import (
    CALIB_SIZE,
    METHODS,
    MODELS,
    PATTERN,
    TARGETS,
    Method,
    ModelPlan,
    layerwise_specs,
    write_layerwise_report,
)

PATTERN_METHODS = {"magnitude", "lobs", "sparsegpt", "wanda"}


def test_registered_suite_has_every_method_target_and_pattern_run():
    assert "layerwise" in registry.list()
    suite = get_suite("layerwise")
    specs = suite.specs
    per_model = len(METHODS) * len(TARGETS) + len(PATTERN_METHODS)
    assert len(specs) == len(MODELS) * per_model == 96
    assert len({json.dumps(s.to_dict(), sort_keys=True) for s in specs}) == len(specs)
    assert [s.model for s in specs[::per_model]] == ["fc", "lenet5", "mlp"]
    assert {s.method for s in specs} == {"magnitude", "hard-threshold", "feta", "nettrim", "lobs", "sparsegpt", "wanda"}
    assert {s.calib_size for s in specs} == {CALIB_SIZE} == {4096}
    assert {s.data_kwargs["normalize"] for s in specs} == {"unit"} and {s.seed for s in specs} == {0}
    assert {s.retrain["epochs"] for s in specs} == {1}
    for s in specs:   # the retraining is the dense recipe, one epoch
        assert {k: v for k, v in s.retrain.items() if k != "epochs"} == {k: v for k, v in s.dense.items() if k != "epochs"}
    patterned = [s for s in specs if "pattern" in s.hparams]
    assert len(patterned) == 3 * len(PATTERN_METHODS) and {s.method for s in patterned} == PATTERN_METHODS
    assert {(s.hparams["pattern"], s.target) for s in patterned} == {(PATTERN, 0.5)} == {("2:4", 0.5)}
    unstructured = [s for s in specs if "pattern" not in s.hparams]
    assert sorted({s.target for s in unstructured}) == [0.5, 0.7, 0.9, 0.95]
    # magnitude prunes the same layers as the others: per layer, the classifier left out by the run's rule
    for s in specs:
        assert (s.hparams.get("scope"), s.prunable) == (("layer", {"exclude_last": True}) if s.method == "magnitude"
                                                         else (None, {}))
    mlp = [s for s in specs if s.model == "mlp"]
    assert {json.dumps(s.model_kwargs) for s in mlp} == {'{"hidden": [1024, 1024]}'}
    assert {s.dense["epochs"] for s in mlp} == {5} and {s.dense["optimizer"] for s in mlp} == {"adam"}
    assert {s.dense["epochs"] for s in specs if s.model == "fc"} == {30}
    nettrim = {s.model: s.hparams for s in specs if s.method == "nettrim"}
    assert nettrim["fc"] == nettrim["mlp"] == {} and nettrim["lenet5"] == {"max_samples": 2000}
    assert "4096" in suite.description and callable(suite.report)
    assert get_suite("layerwise", "digits").specs[0].dataset == "digits"


def test_every_spec_is_valid():
    if "pattern" not in {f.name for f in dataclasses.fields(methods.get("magnitude").Hparams)}:
        pytest.skip("magnitude has no pattern hyperparameter yet")
    assert len(validate_all(get_suite("layerwise").specs)) == 96


def test_one_line_adds_a_method_and_only_pattern_methods_get_the_pattern():
    table = METHODS + (Method("random", "random", {"scope": "layer"}),)
    specs = layerwise_specs(models=MODELS[:1], methods=table, targets=(0.5,), pattern="4:8")
    assert [(s.method, s.target) for s in specs][-1:] == [("random", 0.5)]
    assert [(s.method, s.hparams.get("pattern")) for s in specs if s.hparams.get("pattern")] == [
        ("magnitude", "4:8"), ("lobs", "4:8"), ("sparsegpt", "4:8"), ("wanda", "4:8")]
    assert not any("pattern" in s.hparams for s in layerwise_specs(models=MODELS[:1], pattern=None))


def test_prunable_keeps_old_hashes_and_is_checked():
    base = dict(dataset="digits", model="fc", method="magnitude", target=0.5, hparams={"scope": "layer"},
                calib_size=256, retrain={"epochs": 1})
    # the hash this spec had before run specs had a prunable field
    old = "06aa8a05bfa71697aee74732c6af036fe36bb6174bcf0563d059a057599dfb0d"
    assert RunSpec(**base).hash == RunSpec(**base, prunable={"exclude_last": False}).hash == old
    assert RunSpec(**base, prunable={"exclude_last": False}).prunable_rule() is None
    spec = RunSpec(**base, prunable={"exclude_last": True})
    assert spec.hash != old and spec.label == "magnitude(scope=layer)[exclude_last=true]"
    assert RunSpec.from_dict(spec.to_dict()).hash == spec.hash
    assert spec.prunable_rule().exclude_last is True
    with pytest.raises(ConfigError, match="unknown prunable-rule option 'exlude_last'"):
        RunSpec(**base, prunable={"exlude_last": True}).validate()
    with pytest.raises(ConfigError, match="prunable exclude must be a list"):
        RunSpec(**base, prunable={"exclude": 3}).validate()
    with pytest.raises(ConfigError, match="one-shot methods"):
        RunSpec(**{**base, "method": "gmp", "hparams": {}}, prunable={"exclude_last": True}).validate()


def test_suite_module_is_cheap_to_import():
    code = "import sys, prunelab.reproductions.layerwise.suite; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- a tiny fake result set

_PRUNED = {"magnitude": 0.60, "lobs": 0.80}


def _fake(method: str, target: float, pattern: str | None = None, model: str = "fc") -> RunResult:
    entry = next(m for m in METHODS if m.method == method)
    hp = {**entry.hparams, **({"pattern": pattern} if pattern else {})}
    spec = RunSpec("fashion-mnist", model, method, target, hparams=hp, data_kwargs={"normalize": "unit"},
                   dense={"epochs": 1}, retrain={"epochs": 1}, calib_size=4096, prunable=dict(entry.prunable))
    pruned = _PRUNED[method] - (target - 0.5) - (0.05 if pattern else 0.0)
    prune_s = {"magnitude": 0.002, "lobs": 1.5}[method] * (2 if pattern else 1)
    metrics = {"dense_val_top1": 0.90, "dense_test_top1": 0.89, "pruned_val_top1": pruned + 0.01,
               "pruned_test_top1": pruned, "final_val_top1": 0.88, "final_test_top1": 0.87, "sparsity": target * 0.9,
               "time_prune": prune_s, "time_retrain": 2.0, "time_dense_train": 30.0}
    return RunResult(spec=spec, hash=spec.hash, family="oneshot", metrics=metrics,
                     phase_times={"dense_train": 30.0, "prune": prune_s, "retrain": 2.0}, dense_cached=True,
                     traces={"retrain": [{"epoch": 1, "val_top1": 0.88, "seconds": 2.0}]}, layers=[],
                     info={"git_sha": "abc", "torch": "2", "threads": 2, "device": "cpu", "prune_peak_kind": "rss",
                           "prune_peak_bytes": None if method == "magnitude" and not pattern else 3_100_000})


@pytest.fixture
def fake_results():
    return ([_fake(m, t) for m in ("magnitude", "lobs") for t in (0.5, 0.9)] + [_fake("lobs", 0.5, "2:4"),
            _fake("lobs", 0.9, model="lenet5")])


def test_collect_and_table_on_fake_results(fake_results):
    assert [method_name(r.spec) for r in fake_results] == ["magnitude"] * 2 + ["L-OBS"] * 4
    assert method_name(RunSpec("digits", "fc", "magnitude", 0.5)) == "magnitude"  # no prunable rule: not the line
    collected = collect(fake_results)
    assert list(collected) == ["fc", "lenet5"] and list(collected["fc"]["methods"]) == ["magnitude", "L-OBS"]
    lobs = collected["fc"]["methods"]["L-OBS"]
    assert [p["target"] for p in lobs["points"]] == [0.5, 0.9] and [p["pattern"] for p in lobs["pattern"]] == ["2:4"]
    assert lobs["hparams"] == {} and lobs["points"][1]["peak_bytes"] == 3_100_000
    header, rows = table_model(collected["fc"])
    assert header == ["method", "50 %", "90 %", "2:4", "prune s (90 %)", "peak memory (90 %)", "prune s (2:4)",
                      "peak memory (2:4)"]
    # magnitude has no 2:4 run here: empty cells; its 90 % peak was not measurable: "–"
    assert rows == [["magnitude", "60.00 → 87.00", "20.00 → 87.00", "", "0.002", "–", "", ""],
                    ["L-OBS", "80.00 → 87.00", "40.00 → 87.00", "75.00 → 87.00", "1.50", "3.1 MB", "3.00", "3.1 MB"]]
    assert table_model(collected["lenet5"])[1] == [["L-OBS", "40.00 → 87.00", "1.50", "3.1 MB"]]


def test_report_writes_tables_figures_and_json(tmp_path, fake_results):
    paths = write_layerwise_report(tmp_path, dest=tmp_path / "out", results=fake_results)
    md = paths["markdown"].read_text()
    assert "| L-OBS | 80.00 → 87.00 | 40.00 → 87.00 | 75.00 → 87.00 | 1.50 | 3.1 MB | 3.00 | 3.1 MB |" in md
    assert "4096 calibration images" in md and "dense test top-1 89.00 %" in md
    assert len(paths["figures"]) == 2
    for fig in paths["figures"]:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/{fig.name}" in md
    assert paths["html"].read_text().count("data:image/png;base64,") == 2
    payload = json.loads(paths["json"].read_text())
    assert payload["models"]["fc"]["methods"]["L-OBS"]["pattern"][0]["pruned_test_top1"] == pytest.approx(0.75)


def test_bench_and_report_commands_write_the_suite_report(tmp_path, fake_results):
    from prunelab.harness.report import write_report

    with Store(tmp_path) as store:
        for r in fake_results:
            store.put(r)
        store.record_suite("layerwise", "d", "n", len(fake_results))
    write_report(tmp_path)   # what `prunelab bench --suite layerwise` and `prunelab report` call
    assert (tmp_path / "report.md").is_file() and (tmp_path / "layerwise" / "report.md").is_file()
    out = subprocess.run([sys.executable, "-m", "prunelab.reproductions.layerwise", str(tmp_path), "--dest",
                          str(tmp_path / "again")], capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / "again" / "layerwise_results.json").is_file()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="run `prunelab bench --suite layerwise"):
        write_layerwise_report(tmp_path)


# --------------------------------------------------------------------------- a tiny real run

def test_tiny_run_prunes_the_hidden_layers_and_records_peak_memory(tmp_path):
    from prunelab.harness.runner import sweep

    plan = ModelPlan("fc", {"epochs": 2, "optimizer": "adam", "lr": 1e-2, "batch_size": 50}, retrain_epochs=1,
                     calib_size=128, kwargs={"hidden": [16, 16]})
    table = (METHODS[0], next(m for m in METHODS if m.method == "lobs"))
    specs = layerwise_specs("synthetic", models=[plan], methods=table, targets=(0.5,),
                            data_kwargs={"n_train": 500, "n_test": 200, "normalize": "none"})
    with Store(tmp_path) as store:
        report = sweep(specs, store, keep_going=False)
    assert [r.label for r in report.results] == ["magnitude(scope=layer)[exclude_last=true]",
                                                 "magnitude(pattern=2:4, scope=layer)[exclude_last=true]",
                                                 "lobs", "lobs(pattern=2:4)"]
    for r in report.results:
        # every layer but the classifier loses exactly half its weights; the classifier stays dense
        assert [(x["name"], x["params"], x["nonzero"]) for x in r.layers] == [
            ("fc1.weight", 1024, 512), ("fc2.weight", 256, 128), ("fc3.weight", 160, 160)]
        assert r.metrics["sparsity"] == pytest.approx(640 / 1440)
        assert len(r.traces["retrain"]) == 1 and r.metrics["final_test_top1"] is not None
        if sys.platform.startswith("linux"):
            assert r.info["prune_peak_kind"] == "rss" and r.info["prune_peak_bytes"] >= 0
    # (Whether the peak is above zero depends on what the allocator freed before: a small run may
    # reuse memory the process already holds. tests/test_peak_memory.py checks the reading itself.)
    header, rows = table_model(collect(report.results)["fc"])
    assert header[1:3] == ["50 %", "2:4"] and [row[0] for row in rows] == ["magnitude", "L-OBS"]
    paths = write_layerwise_report(tmp_path)
    assert "| L-OBS | " in paths["markdown"].read_text()

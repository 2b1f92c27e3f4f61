"""The `pqi` reproduction suite: its specs, and its figures and claim checks on a tiny real run."""

import json
import math

import pytest

from prunelab import data as pdata
from prunelab.errors import ConfigError
from prunelab.harness.runner import RunSpec, run, validate_all
from prunelab.methods.iterative import keep_count, paper_train_config
from prunelab.harness.store import Store
from prunelab.reproductions.diao.suite import (
    EPOCHS,
    ROUNDS,
    SCHEDULES,
    collect,
    display_name,
    paper_budget,
    pqi_specs,
    swings,
    write_pqi_results,
)
from prunelab.harness.suites import get_suite, registry
from prunelab.training.loop import TrainConfig

GLOBAL = ["OS-0.2", "LT-0.2", "SAP(0.5,1)", "SAP(1,2)"]


def test_registered_suite_has_the_reproduction_shape():
    assert "pqi" in registry.list()
    suite = get_suite("pqi")
    specs = validate_all(suite.specs)  # every spec is valid, none duplicated
    assert len(specs) == len(suite.specs) == 2 * 4 + 2
    by_model = {}
    for s in specs:
        by_model.setdefault(s.model, []).append(display_name(s))
    assert [name for name, _, _ in SCHEDULES] == GLOBAL
    assert by_model == {"linear": GLOBAL, "mlp": GLOBAL + ["SAP(0.5,1) neuron", "SAP(0.5,1) layer"]}
    assert {s.dataset for s in specs} == {"fashion-mnist"} and {s.seed for s in specs} == {0}
    assert {s.target for s in specs} == {0.0}  # iterative methods then run every round
    assert {s.hparams["rounds"] for s in specs} == {ROUNDS}
    assert all(s.dense == s.retrain == paper_budget(EPOCHS) for s in specs)
    sap12 = next(s for s in specs if display_name(s) == "SAP(1,2)")
    assert sap12.canonical()["hparams"] == {"p": 1.0, "q": 2.0, "rounds": ROUNDS}  # η_r = 0, γ = 1, β = 0.9
    assert "T=30" in suite.notes and "E=200" in suite.notes  # the report says budgets were scaled down
    assert get_suite("pqi", "digits").specs[0].dataset == "digits"


def test_budget_is_the_paper_recipe():
    assert TrainConfig.from_dict({**paper_budget(7), "seed": 3}) == paper_train_config(7, seed=3)


def test_specs_take_a_smaller_budget():
    specs = pqi_specs("digits", rounds=2, epochs=1, models=("linear",), scope_model=None, data_kwargs={"limit": 100})
    assert [display_name(s) for s in specs] == GLOBAL
    assert {s.hparams["rounds"] for s in specs} == {2} and {s.dense["epochs"] for s in specs} == {1}
    assert {s.data_kwargs["limit"] for s in specs} == {100}
    assert len(pqi_specs(seeds=(0, 1))) == 20
    with pytest.raises(ConfigError, match="scope_model 'mlp' is not among"):
        pqi_specs(models=("linear",))


def test_display_names():
    def name(method, **hp):
        return display_name(RunSpec(dataset="digits", model="linear", method=method, target=0.0, hparams=hp))

    assert name("os") == "OS-0.2" and name("lt", rate=0.5) == "LT-0.5"
    assert name("sap") == "SAP(0.5,1)" and name("sap", p=1, q=2, scope="layer") == "SAP(1,2) layer"
    assert name("sap", eta_r=0.001, gamma=1.2) == "SAP(0.5,1,0.001,1.2)"
    assert name("magnitude", scope="layer") == "magnitude(scope=layer)"


def test_swings_name_the_phases_above_the_tolerance():
    phases = swings([0.30, 0.25, 0.20, 0.205, 0.30, 0.45, 0.44, 0.10], tolerance=0.01)
    assert [(p["direction"], p["start"], p["end"]) for p in phases] == [("down", 0, 2), ("up", 2, 5), ("down", 5, 7)]
    assert (phases[1]["from"], phases[1]["to"]) == (0.20, 0.45)
    assert swings([0.3, 0.305, 0.298], tolerance=0.01) == []
    assert [p["direction"] for p in swings([0.1, 0.2, 0.3])] == ["up"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """Every schedule of the suite, 3 rounds × 1 epoch of a linear model on digits (~2 s)."""
    out = tmp_path_factory.mktemp("pqi")
    ds = pdata.load("digits")
    with Store(out) as store:
        for spec in pqi_specs("digits", rounds=3, epochs=1, models=("linear",), scope_model="linear"):
            run(spec, store, dataset=ds)
    return out


def test_the_harness_runs_every_round_and_the_checks_hold(tiny_store):
    with Store(tiny_store) as store:
        collected = collect(store.results())
    runs = collected["linear"]
    assert list(runs) == GLOBAL + ["SAP(0.5,1) neuron", "SAP(0.5,1) layer"]
    assert all([r["round"] for r in run_["rounds"]] == [0, 1, 2, 3] for run_ in runs.values())
    total = runs["OS-0.2"]["rounds"][0]["total"]
    assert total == 64 * 10
    assert [r["kept"] for r in runs["LT-0.2"]["rounds"]] == [keep_count(total, 0.2, t) for t in range(4)]

    paths = write_pqi_results(tiny_store)
    payload = json.loads(paths["json"].read_text())
    checks = payload["checks"]["linear"]
    first = checks["i_first_prune"]
    sap = runs["SAP(0.5,1)"]["rounds"]
    assert first["pruned"] == sap[0]["kept"] - sap[1]["kept"] == math.floor(total * sap[0]["pqi"])
    assert first["holds"] and first["pqi_dense"] == sap[0]["pqi_0.5_1"]  # the grid cell is the recorded index
    assert checks["ii_fixed_fraction"]["holds"]
    assert checks["ii_fixed_fraction"]["runs"]["OS-0.2"]["kept"] == [640, 512, 410, 328]
    assert set(checks["iv_pqi_trajectory"]["runs"]) >= set(GLOBAL)
    assert set(checks["v_low_density"]["runs"]) == {"SAP(0.5,1)", "SAP(0.5,1) neuron", "SAP(0.5,1) layer", "SAP(1,2)"}
    assert [p.name for p in paths["figures"]] == ["pqi-density.png", "pqi-accuracy-vs-density.png", "pqi-index.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths["figures"])
    summary = paths["summary"].read_text()
    assert "| SAP(1,2) | 3 |" in summary and "(i) SAP(0.5,1) first round" in summary


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="holds no results.sqlite"):
        write_pqi_results(tmp_path)

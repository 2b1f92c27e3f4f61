"""The ``lm`` / ``lm-quick`` suites: their specs, the claims' verdicts, and a tiny end-to-end run with its report."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import pytest

from prunelab.errors import ConfigError
from prunelab.harness import suites
from prunelab.harness.runner import dense_key
from prunelab.reproductions.lm import claims
from prunelab.reproductions.lm.protocol import GRDA, QUICK
from prunelab.reproductions.lm.suite import OVERRIDES_ENV, lm_specs


def _count(specs):
    return Counter((s.method, s.hparams.get("scope"), s.hparams.get("pattern") is not None) for s in specs)


def test_lm_specs_counts_and_contents():
    specs = lm_specs()
    assert len(specs) == 45
    assert {s.dataset for s in specs} == {"text"} and {s.model for s in specs} == {"gpt"}
    assert _count(specs) == {
        ("magnitude", "global", False): 3 + 3, ("magnitude", "layer", False): 3, ("magnitude", "layer", True): 1,
        ("random", None, False): 3, ("random", None, True): 1, ("hard-threshold", None, False): 3,
        ("feta", None, False): 3, ("nettrim", None, False): 3, ("lobs", None, False): 3, ("lobs", None, True): 1,
        ("sparsegpt", None, False): 3, ("sparsegpt", None, True): 1, ("wanda", None, False): 3,
        ("wanda", None, True): 1, ("os", None, False): 1, ("lt", None, False): 1, ("sap", None, False): 1,
        ("gmp", None, False): 3, ("ltp", None, False): 3, ("grda", None, False): 1}
    assert sorted({s.target for s in specs if s.method == "feta"}) == [0.5, 0.7, 0.9]
    assert {s.target for s in specs if s.hparams.get("pattern")} == {0.5}
    assert {s.hparams["pattern"] for s in specs if s.hparams.get("pattern")} == {"2:4"}
    layerwise = [s for s in specs if s.method in ("hard-threshold", "feta", "nettrim", "lobs", "sparsegpt", "wanda")]
    assert all(s.hparams["include_last"] is True and s.calib_size == 64 for s in layerwise)
    iterative = [s for s in specs if s.method in ("os", "lt", "sap")]
    assert [(s.target, s.hparams["rounds"], s.hparams["rewind"]) for s in iterative] == [(0.9, 4, "none")] * 3
    assert all(s.hparams["epochs"] == 2 for s in specs if s.method in ("gmp", "ltp"))
    # every AdamW run shares one dense model; gRDA and SGD + magnitude share the SGD one
    sgd = [s for s in specs if s.dense["optimizer"] == "sgd"]
    assert [s.method for s in sgd] == ["grda", "magnitude", "magnitude", "magnitude"]
    assert len({json.dumps(dense_key(s), sort_keys=True) for s in sgd}) == 1
    assert len({json.dumps(dense_key(s), sort_keys=True) for s in specs if s not in sgd}) == 1
    grda = sgd[0]
    assert grda.target == 0.0 and grda.hparams["epochs"] == 8 + 1 and grda.dense["epochs"] == 8
    assert grda.dense["momentum"] == 0.0 and grda.retrain["optimizer"] == "sgd"
    assert {s.dense["epochs"] for s in specs if s not in sgd} == {12}
    assert len({s.hash for s in specs}) == 45


def test_lm_quick_specs_and_overrides():
    specs = lm_specs(QUICK)
    assert len(specs) == 10
    assert [s.method for s in specs] == ["magnitude", "hard-threshold", "feta", "sparsegpt", "sparsegpt", "wanda",
                                         "os", "sap", "gmp", "ltp"]
    assert [s.hparams.get("pattern") for s in specs if s.method in ("sparsegpt", "wanda")] == [None, "2:4", None]
    # lm's corpus and dense recipe: one dense cache entry serves both suites.
    assert {s.data_kwargs["max_bytes"] for s in specs} == {524_288}
    assert {json.dumps(s.dense, sort_keys=True) for s in specs} == {json.dumps(lm_specs()[0].dense, sort_keys=True)}
    assert [s.hparams["rounds"] for s in specs if s.method in ("os", "sap")] == [2, 2]
    assert [s.hparams.get("penalty_weight") for s in specs if s.method == "ltp"] == [10.0]
    assert all(s.dense["optimizer"] == "adamw" for s in specs)   # no gRDA family
    two = lm_specs(QUICK, seeds=(0, 1), data_kwargs={"max_bytes": 5000}, model_kwargs={"width": 32},
                   dense={"epochs": 1}, retrain={"epochs": 2}, calib_size=4, targets=(0.5,))
    assert len(two) == 2 * 10 and [s.seed for s in two].count(1) == 10
    assert {s.data_kwargs["max_bytes"] for s in two} == {5000} and {s.data_kwargs["context"] for s in two} == {128}
    assert {s.model_kwargs["width"] for s in two} == {32}
    assert {s.target for s in two if s.method in ("os", "gmp", "feta")} == {0.5}
    assert {s.hparams["seed"] for s in two if s.method == "feta"} == {0, 1}
    with pytest.raises(ConfigError, match="targets"):
        lm_specs(targets=(0.9, 1.0))


def test_registered_suites_read_overrides(monkeypatch):
    assert len(suites.get_suite("lm")) == 45 and len(suites.get_suite("lm-quick")) == 10
    monkeypatch.setenv(OVERRIDES_ENV, json.dumps({"dense": {"epochs": 1}, "seeds": [3]}))
    suite = suites.get_suite("lm-quick")
    assert {s.seed for s in suite.specs} == {3} and {s.dense["epochs"] for s in suite.specs} == {1}
    assert suite.report is not None and OVERRIDES_ENV in suite.notes
    monkeypatch.setenv(OVERRIDES_ENV, '{"dense": ')
    with pytest.raises(ConfigError, match=OVERRIDES_ENV):
        suites.get_suite("lm")
    monkeypatch.setenv(OVERRIDES_ENV, '{"epochs": 1}')
    with pytest.raises(ConfigError, match="keys among"):
        suites.get_suite("lm")


# --------------------------------------------------------------------------- verdicts on hand-made rows

def _pt(target, final=None, pruned=None, sparsity=None, rounds=None):
    return {"target": target, "pattern": None, "sparsity": target if sparsity is None else sparsity,
            "final_test_bpb": final, "pruned_test_bpb": pruned, "rounds": rounds}


def _setup(methods, sgd_dense=None):
    return {"methods": {name: {"family": "x", "points": pts, "pattern": []} for name, pts in methods.items()},
            "sgd_dense": sgd_dense, "dense": None}


def test_interpolate():
    assert claims.interpolate([(0.0, 2.0), (0.5, 3.0), (0.9, 5.0)], 0.7) == pytest.approx(4.0)
    assert claims.interpolate([(0.5, 3.0), (0.0, 2.0)], 0.25) == pytest.approx(2.5)
    assert claims.interpolate([(0.0, 2.0), (0.5, 3.0)], 0.6) is None
    assert claims.interpolate([], 0.1) is None


def test_claim_feta_verdicts():
    holds = _setup({"FeTa": [_pt(0.5, pruned=2.0), _pt(0.9, pruned=3.0)],
                    "hard thresholding": [_pt(0.5, pruned=2.5), _pt(0.9, pruned=3.02)]})
    assert claims.claim_feta(holds)["verdict"] == claims.HOLDS
    fails = _setup({"FeTa": [_pt(0.5, pruned=2.5)], "hard thresholding": [_pt(0.5, pruned=2.0)]})
    assert claims.claim_feta(fails)["verdict"] == claims.FAILS
    mixed = _setup({"FeTa": [_pt(0.5, pruned=2.0), _pt(0.9, pruned=3.5)],
                    "hard thresholding": [_pt(0.5, pruned=2.5), _pt(0.9, pruned=3.0)]})
    assert claims.claim_feta(mixed)["verdict"] == claims.UNCLEAR
    tie = _setup({"FeTa": [_pt(0.5, pruned=2.0)], "hard thresholding": [_pt(0.5, pruned=2.005)]})
    assert claims.claim_feta(tie)["verdict"] == claims.UNCLEAR
    missing = _setup({"FeTa": [_pt(0.5, pruned=2.0)]})
    assert claims.claim_feta(missing)["verdict"] == claims.UNCLEAR
    assert "FeTa 2.000 vs hard thresholding 2.500" in claims.claim_feta(holds)["detail"]


def test_claim_ltp_verdicts():
    setup = _setup({"LTP": [_pt(0.5, 2.0), _pt(0.9, 2.5)], "GMP": [_pt(0.5, 2.1), _pt(0.9, 2.6), _pt(0.7, 2.2)]})
    result = claims.claim_ltp(setup)
    assert result["verdict"] == claims.HOLDS and [r["target"] for r in result["rows"]] == [0.5, 0.9]
    assert claims.claim_ltp(_setup({"LTP": [_pt(0.9, 2.7)], "GMP": [_pt(0.9, 2.6)]}))["verdict"] == claims.FAILS
    assert claims.claim_ltp(_setup({}))["verdict"] == claims.UNCLEAR


def test_claim_grda_interpolates_the_baseline():
    base = [_pt(0.5, 2.4, sparsity=0.5), _pt(0.9, 3.0, sparsity=0.9)]
    setup = _setup({"gRDA": [_pt(0.0, 2.5, sparsity=0.7)], "SGD + magnitude": base}, sgd_dense={"test_bpb": 2.2})
    result = claims.claim_grda(setup)
    assert result["at"] == pytest.approx(2.7) and result["verdict"] == claims.HOLDS
    setup["methods"]["gRDA"]["points"] = [_pt(0.0, 2.8, sparsity=0.7)]
    assert claims.claim_grda(setup)["verdict"] == claims.FAILS
    setup["methods"]["gRDA"]["points"] = [_pt(0.0, 2.1, sparsity=0.25)]
    result = claims.claim_grda(setup)      # between plain SGD (0, 2.2) and 50 % (2.4)
    assert result["at"] == pytest.approx(2.3) and result["verdict"] == claims.HOLDS
    setup["methods"]["gRDA"]["points"] = [_pt(0.0, 2.1, sparsity=0.95)]
    assert claims.claim_grda(setup)["verdict"] == claims.UNCLEAR      # beyond the baseline's range
    assert claims.claim_grda(_setup({}))["verdict"] == claims.UNCLEAR


def _rounds(pqi, densities, bpbs):
    return [{"round": i, "pqi": p, "density": d, "test_bpb": b} for i, (p, d, b) in enumerate(zip(pqi, densities, bpbs))]


def test_claim_pqi_shape_and_sap():
    dens = [1.0, 0.5, 0.25, 0.125, 0.1]
    setup = _setup({
        "OS": [_pt(0.9, 3.0, sparsity=0.9, rounds=_rounds([0.30, 0.20, 0.15, 0.25, 0.30], dens, [2, 2.2, 2.4, 2.8, 3.0]))],
        "LT": [_pt(0.9, 2.9, sparsity=0.9, rounds=_rounds([0.30, 0.22, 0.18, 0.20, 0.28], dens, [2, 2.1, 2.3, 2.7, 2.9]))],
        "SAP": [_pt(0.9, 2.2, sparsity=0.75, rounds=_rounds([0.30, 0.25, 0.20, 0.26], [1.0, 0.6, 0.4, 0.25],
                                                             [2, 2.05, 2.1, 2.2]))]})
    result = claims.claim_pqi(setup)
    assert result["verdict"] == claims.HOLDS and result["sap_verdict"] == claims.HOLDS
    assert result["sap_vs"]["OS"] == pytest.approx(2.4) and result["sap_vs"]["LT"] == pytest.approx(2.3)
    assert result["shapes"]["OS"]["phases"] == ["down", "up"]
    setup["methods"]["OS"]["points"][0]["rounds"] = _rounds([0.3, 0.2, 0.1, 0.05, 0.01], dens, [2, 2.2, 2.4, 2.8, 3.0])
    assert claims.claim_pqi(setup)["verdict"] == claims.UNCLEAR    # one falls only, two fall then rise
    setup["methods"]["SAP"]["points"][0]["final_test_bpb"] = 2.5
    assert claims.claim_pqi(setup)["sap_verdict"] == claims.FAILS
    empty = claims.claim_pqi(_setup({}))
    assert empty["verdict"] == claims.UNCLEAR and empty["sap_verdict"] == claims.UNCLEAR


# --------------------------------------------------------------------------- end to end on a tiny corpus

def test_lm_quick_smoke_runs_and_reports(tmp_path):
    pytest.importorskip("matplotlib")
    from prunelab.harness.runner import sweep
    from prunelab.harness.store import Store
    from prunelab.reproductions.lm.report import write_lm_report

    data_dir = tmp_path / "text"
    data_dir.mkdir()
    words = ["def", "return", "self", "import", "class", "for", "in", "if", "x", "(", "):", "\n", "    "]
    for i in range(6):
        (data_dir / f"m{i}.py").write_text(" ".join(words[(i * 7 + j * j) % len(words)] for j in range(400)))
    with_grda = dataclasses.replace(QUICK, grda=dataclasses.replace(GRDA, magnitude_targets=(0.9,)))
    specs = lm_specs(with_grda, data_kwargs={"context": 16, "max_bytes": 4000, "eval_bytes": 800},
                     model_kwargs={"layers": 1, "width": 16, "heads": 2}, dense={"epochs": 1}, calib_size=8)
    keep = {("magnitude", False, "adamw"), ("sparsegpt", True, "adamw"), ("os", False, "adamw"),
            ("gmp", False, "adamw"), ("grda", False, "sgd"), ("magnitude", False, "sgd")}
    chosen = [s for s in specs if (s.method, "pattern" in s.hparams, s.dense["optimizer"]) in keep]
    assert len(chosen) == 6
    out = tmp_path / "out"
    with Store(out) as store:
        report = sweep(chosen, store, data_dir=str(data_dir))
    assert report.failures == [] and len(report.results) == 6
    paths = write_lm_report(out, data_dir=str(data_dir))
    text = paths["markdown"].read_text()
    assert paths["markdown"] == out / "lm" / "report.md" and len(paths["figures"]) == 3
    assert all(p.is_file() for p in paths["figures"])
    for needle in ("gpt, dense (AdamW)", "order-2 byte n-gram", "SGD + magnitude", "| OS | iterative |",
                   "## Claims", "FeTa beats hard thresholding"):
        assert needle in text
    payload = json.loads(paths["json"].read_text())
    (setup,) = payload["setups"].values()
    assert set(setup["methods"]) == {"magnitude (global)", "SparseGPT", "OS", "GMP", "gRDA", "SGD + magnitude"}
    assert setup["methods"]["SparseGPT"]["pattern"][0]["sparsity"] == pytest.approx(0.5)
    assert setup["methods"]["magnitude (global)"]["points"][0]["sparsity"] == 2765 / 3072   # round(0.9 x 3072) pruned
    dense = setup["dense"]
    assert dense["test_bpb"] == pytest.approx(math.log2(dense["test_ppl"]))
    (ngram,) = payload["ngram"].values()
    assert ngram["order"] == 2 and ngram["test_bpb"] > 0
    (verdicts,) = payload["claims"].values()
    assert [c["verdict"] for c in verdicts][0] == claims.UNCLEAR    # no FeTa / hard thresholding run here
    assert [c["verdict"] for c in verdicts][2] == claims.UNCLEAR    # no LTP run here
    assert (out / "lm" / "ngram.json").is_file()
    # Runs and the report say exactly which text they used.
    from prunelab import data as data_mod
    manifest = data_mod.load("text", data_dir=str(data_dir), context=16, max_bytes=4000,
                             eval_bytes=800).info["tokens"]["manifest_hash"]
    assert {r.info["data_tokens"]["manifest_hash"] for r in report.results} == {manifest}
    assert f"manifest SHA-256 {manifest[:16]}" in text

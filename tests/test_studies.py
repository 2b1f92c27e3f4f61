"""The Pitas et al. depth and latent-dimensionality studies, PCA restriction and the
Levina–Bickel intrinsic-dimension estimator."""

import argparse
import copy
import json
import math

import pytest
import torch

from prunelab import data as data_module
from prunelab import models
from prunelab.reproductions.pitas import latent, studies, thresholding
from prunelab.cli.main import build_parser, main
from prunelab.cli.studies import study_subparsers
from prunelab.data import Split
from prunelab.errors import ConfigError, PrunelabError
from prunelab.reproductions.pitas.intrinsic_dim import fit_pca, knn_distances, levina_bickel
from prunelab.core.masks import prunable_parameters
from prunelab.training.loop import evaluate

SMOKE = studies.StudyBudget(seeds=(0, 1), epochs=1, train_limit=200, eval_samples=100, sparsities=(0.0, 0.5, 0.9))


@pytest.fixture
def tiny_conv6():
    torch.manual_seed(0)
    return models.create("conv6", (1, 8, 8), 3, widths=[2, 3, 4], dense=[8, 6]).eval()


@pytest.fixture(scope="module")
def synthetic():
    return data_module.load("synthetic", in_shape=(1, 8, 8), num_classes=3, n_train=240, n_test=120, val_size=0)


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.95])
def test_single_layer_masks_are_exact_and_touch_nothing_else(tiny_conv6, sparsity):
    names = list(prunable_parameters(tiny_conv6))
    before = copy.deepcopy(tiny_conv6.state_dict())
    for i, name in enumerate(names, start=1):
        masks = studies.depth_masks(tiny_conv6, [i], sparsity)
        assert list(masks) == names
        for other in names:
            n = masks[other].numel()
            pruned = n - int(masks[other].sum())
            assert pruned == (round(sparsity * n) if other == name else 0), (name, other)
        # the pruned weights are the smallest magnitudes of their layer
        w = dict(tiny_conv6.named_parameters())[name].detach().abs()
        keep = masks[name]
        if sparsity > 0:  # every layer keeps at least one weight at 95 %, so both sides are non-empty
            assert w[~keep].max() <= w[keep].min()
    for key, value in tiny_conv6.state_dict().items():
        assert torch.equal(value, before[key]), "depth_masks must not modify the model"


@pytest.mark.parametrize("first", [1, 4, 7, 9])
def test_layers_from_i_masks_are_exact_and_applying_them_leaves_earlier_layers(tiny_conv6, first):
    names = list(prunable_parameters(tiny_conv6))
    masks = studies.depth_masks(tiny_conv6, range(first, len(names) + 1), 0.7)
    model = copy.deepcopy(tiny_conv6)
    masks.apply(model)
    params, original = dict(model.named_parameters()), dict(tiny_conv6.named_parameters())
    for j, name in enumerate(names, start=1):
        n = masks[name].numel()
        if j >= first:
            assert n - int(masks[name].sum()) == round(0.7 * n)
            assert int((params[name] == 0).sum()) >= round(0.7 * n)
        else:
            assert bool(masks[name].all())
            assert torch.equal(params[name], original[name])
    for name, p in model.named_parameters():  # biases are never touched
        if name not in names:
            assert torch.equal(p, original[name])


def test_resolve_layers_by_index_and_name(tiny_conv6):
    assert studies.resolve_layers(tiny_conv6, [1, "fc1", "conv2.weight", 1]) == ["conv1.weight", "conv2.weight", "fc1.weight"]
    with pytest.raises(ConfigError, match="out of range"):
        studies.resolve_layers(tiny_conv6, [10])
    with pytest.raises(ConfigError, match="not a prunable layer"):
        studies.resolve_layers(tiny_conv6, ["relu1"])


def test_histogram_method_is_used_when_installed(tiny_conv6):
    from prunelab import methods

    assert methods.get("hard-threshold")  # the paper's histogram thresholding is part of prunelab
    names = list(prunable_parameters(tiny_conv6))
    per_layer = studies.layer_threshold_masks(tiny_conv6, 0.5, method="histogram")
    assert list(per_layer) == names  # the classifier too
    pruned = [keep.numel() - int(keep.sum()) for keep in per_layer.values()]
    # the histogram rule prunes at most the target fraction (the crossing bin survives)
    assert all(0 <= p <= round(0.5 * keep.numel()) for p, keep in zip(pruned, per_layer.values()))
    assert sum(pruned) > 0
    masks = studies.depth_masks(tiny_conv6, [9], 0.5, method="histogram")
    assert torch.equal(masks["fc3.weight"], per_layer["fc3.weight"])
    assert all(bool(masks[n].all()) for n in names[:-1])
    with pytest.raises(ConfigError, match="unknown hard-thresholding method"):
        studies.depth_masks(tiny_conv6, [3], 0.5, method="l1")


def test_histogram_method_is_reported_clearly_when_missing(tiny_conv6, monkeypatch):
    monkeypatch.setattr(thresholding, "HISTOGRAM_NAMES", ("no-such-histogram-method",))
    with pytest.raises(PrunelabError, match="histogram"):
        studies.depth_masks(tiny_conv6, [3], 0.5, method="histogram")


def test_suffix_evaluation_equals_a_full_forward_and_restores_weights(tiny_conv6):
    g = torch.Generator().manual_seed(1)
    split = Split(torch.randn(300, 1, 8, 8, generator=g), torch.randint(0, 3, (300,), generator=g))
    evaluator = studies.MaskedEvaluator(tiny_conv6, split, batch_size=64)
    assert evaluator.children, "conv6 is a Sequential: the fast path must be taken"
    before = copy.deepcopy(tiny_conv6.state_dict())
    names = list(prunable_parameters(tiny_conv6))
    # positions in an order that moves the cache forwards and back again
    for first in (5, 2, 9, 1, 6):
        masks = studies.depth_masks(tiny_conv6, range(first, len(names) + 1), 0.6)
        chosen = {n: masks[n] for n in names[first - 1 :]}
        reference = copy.deepcopy(tiny_conv6)
        masks.apply(reference)
        assert evaluator.top1(chosen) == evaluate(reference, split)["top1"]
    assert evaluator.top1({}) == evaluate(tiny_conv6, split)["top1"]
    for key, value in tiny_conv6.state_dict().items():
        assert torch.equal(value, before[key])


# --------------------------------------------------------------------------- depth study


def test_depth_study_rows_and_additive_prediction(synthetic):
    res = studies.run_depth_study(synthetic, "mlp", {"hidden": [16, 12]}, budget=SMOKE, log=None)
    L, S = 3, 3
    assert [l["name"] for l in res["layers"]] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert [l["remaining"] for l in res["layers"]] == [2, 1, 0]
    assert len(res["rows"]) == len(SMOKE.seeds) * L * S * 2
    for r in res["rows"]:
        if r["sparsity"] == 0.0:
            assert r["drop"] == 0.0 and r["achieved"] == 0.0
        if r["mode"] == "single":
            n = res["layers"][r["layer"] - 1]["numel"]
            assert r["achieved"] == pytest.approx(round(r["sparsity"] * n) / n)
    # "layers >= last" is "only the last layer"
    last = {(r["seed"], r["sparsity"], r["mode"]): r["top1"] for r in res["rows"] if r["layer"] == L}
    assert len(last) == 2 * len(SMOKE.seeds) * S
    for (seed, s, mode), acc in last.items():
        if mode == "from":
            assert acc == last[(seed, s, "single")]
    # the additive prediction from layer 1 is the mean over seeds of the per-seed sum of single drops
    single = {(r["seed"], r["layer"], r["sparsity"]): r["drop"] for r in res["rows"] if r["mode"] == "single"}
    add = next(a for a in res["additive"] if a["layer"] == 1 and a["sparsity"] == 0.9)
    expected = sum(sum(single[(seed, l, 0.9)] for l in (1, 2, 3)) for seed in SMOKE.seeds) / len(SMOKE.seeds)
    assert add["predicted_mean"] == pytest.approx(expected)
    assert add["layers_pruned"] == 3
    assert set(res["claims"]) >= {"remaining_depth_single", "remaining_depth_joint", "additive", "text"}
    json.dumps(res)  # JSON-able


def _fake_depth(drops_by_layer, joint_by_layer, dense=0.9):
    summary, additive = [], []
    L = len(drops_by_layer)
    for i, (d, j) in enumerate(zip(drops_by_layer, joint_by_layer), start=1):
        for mode, v in (("single", d), ("from", j)):
            summary.append({"mode": mode, "layer": i, "name": f"l{i}", "remaining": L - i, "sparsity": 0.9,
                            "drop_mean": v, "drop_std": 0.0, "top1_mean": 0.5, "n": 1})
        additive.append({"layer": i, "layers_pruned": L - i + 1, "sparsity": 0.9, "measured_mean": j,
                         "predicted_mean": sum(drops_by_layer[i - 1 :]), "measured_std": 0, "predicted_std": 0})
    layers = [{"index": i, "name": f"l{i}", "numel": 100 * i, "remaining": L - i} for i in range(1, L + 1)]
    return {"sparsities": [0.9], "summary": summary, "additive": additive, "layers": layers,
            "dense": [{"seed": 0, "top1": dense}], "dataset": {"num_classes": 10}}


def test_assess_depth_verdicts():
    # the last layer (remaining depth 0) is left out of the verdict, as in the paper
    holds = studies.assess_depth(_fake_depth([9.0, 5.0, 2.0, 30.0], [60.0, 45.0, 40.0, 30.0]))
    single = holds["remaining_depth_single"]
    assert single["verdict"] == "holds" and single["spearman"] == pytest.approx(1.0)
    assert single["spearman_with_last"] == pytest.approx(-0.2) and single["verdict_with_last"] == "inconclusive"
    assert single["spearman_vs_layer_size"] == pytest.approx(0.2)
    add = holds["additive"]
    assert add["sparsity"] == 0.9 and add["ceiling"] == pytest.approx(80.0)
    assert add["verdict"] == "underestimates the joint drop"
    assert add["by_sparsity"]["0.9"]["mean_gap"] == pytest.approx(((60 - 46) + (45 - 37) + (40 - 32)) / 3)
    assert add["by_sparsity"]["0.9"]["under"] == 3 and add["by_sparsity"]["0.9"]["above_ceiling"] == 0
    against = studies.assess_depth(_fake_depth([1.0, 2.0, 5.0, 9.0], [17.0, 16.0, 14.0, 9.0]))
    assert against["remaining_depth_single"]["verdict"] == "contradicted"
    assert against["additive"]["verdict"] == "matches the joint drop within 1 point"
    flat = studies.assess_depth(_fake_depth([0.2, 0.0, 0.4, 0.1], [0.5, 0.4, 0.4, 0.1]))
    assert flat["remaining_depth_single"]["verdict"].startswith("inconclusive")


def test_assess_depth_does_not_rank_differences_within_seed_noise():
    res = _fake_depth([6.4, 5.0, 27.7], [51.0, 45.5, 27.7])
    for r in res["summary"]:
        r["n"], r["drop_std"] = 3, 2.0  # two standard errors of a mean: 2 * 2 / sqrt(3) = 2.3 points
    single = studies.assess_depth(res)["remaining_depth_single"]
    assert single["spearman"] == pytest.approx(1.0)
    assert single["verdict"].startswith("inconclusive") and "2.3" in single["verdict"]
    for r in res["summary"]:
        r["drop_std"] = 1.0  # 1.2 points: now 1.4 points apart is a ranking
    assert studies.assess_depth(res)["remaining_depth_single"]["verdict"] == "holds"


def test_assess_depth_additive_skips_sparsities_whose_prediction_passes_the_ceiling():
    low = _fake_depth([10.0, 8.0, 5.0], [40.0, 20.0, 5.0], dense=0.8)      # prediction 23 < ceiling 70
    high = _fake_depth([60.0, 50.0, 40.0], [70.0, 70.0, 40.0], dense=0.8)  # prediction 150 > ceiling 70
    for part in ("summary", "additive"):
        for r in low[part]:
            r["sparsity"] = 0.8
    merged = dict(high, sparsities=[0.8, 0.9], summary=low["summary"] + high["summary"],
                  additive=low["additive"] + high["additive"])
    add = studies.assess_depth(merged)["additive"]
    assert add["sparsity"] == 0.8 and add["verdict"] == "underestimates the joint drop"
    assert add["by_sparsity"]["0.8"]["mean_gap"] == pytest.approx(((40 - 23) + (20 - 13)) / 2)
    assert add["by_sparsity"]["0.9"]["above_ceiling"] == 2 and add["by_sparsity"]["0.9"]["over"] == 2


# --------------------------------------------------------------------------- PCA


@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_pca_k_reconstruction_has_rank_k(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(60, 2, 4, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 3, generator=g, dtype=torch.float64)
    pca = fit_pca(x)
    rec = pca.restrict(x, k)
    assert rec.shape == x.shape and rec.dtype == x.dtype
    centred = rec.reshape(60, -1) - pca.mean
    assert int(torch.linalg.matrix_rank(centred)) == k
    # projecting twice changes nothing (a projection), and k = d is the identity
    assert torch.allclose(pca.restrict(rec, k), rec, atol=1e-10)
    assert torch.equal(pca.restrict(x, 24), x)
    assert 0 < pca.explained(k) <= pca.explained(min(k + 1, 24)) <= 1


def test_pca_rejects_bad_k_and_shapes():
    pca = fit_pca(torch.randn(10, 5))
    for k in (0, 6, 2.5, True):
        with pytest.raises(ConfigError, match="components"):
            pca.restrict(torch.randn(3, 5), k)
    with pytest.raises(ConfigError, match="5-dimensional"):
        pca.restrict(torch.randn(3, 4), 2)
    with pytest.raises(ConfigError, match="at least 2"):
        fit_pca(torch.randn(1, 5))


# --------------------------------------------------------------------------- intrinsic dimension


def test_knn_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g)
    got = knn_distances(x[:20], x, 5, exclude_self=True, chunk=6)
    full = torch.cdist(x[:20].double(), x.double())
    full[torch.arange(20), torch.arange(20)] = math.inf
    assert torch.allclose(got, full.sort(1).values[:, :5], atol=1e-9)


@pytest.mark.parametrize("d", [2, 5, 10])
def test_levina_bickel_recovers_the_dimension_of_an_embedded_cube(d):
    """Uniform samples of a d-cube, rotated into 30 dimensions: the estimate is within 15 % of d.

    On a cube the estimate is biased low by the edges (neighbourhoods of 10-20 points reach the
    faces), more so as d grows: about 2.0, 4.7 and 8.7 here with 20 000 points.
    """
    g = torch.Generator().manual_seed(100 + d)
    cube = torch.rand(20000, d, generator=g, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    x = (cube @ rotation[:d] + 3.0).float()
    est = levina_bickel(x, k1=10, k2=20, n_query=1000, n_reference=20000, seed=0)
    assert abs(est["dimension"] - d) <= 0.15 * d, est["dimension"]
    assert est["n_query"] == 1000 and est["skipped_duplicates"] == 0
    assert sorted(est["per_k"]) == list(range(10, 21))


def test_levina_bickel_skips_duplicates_and_checks_arguments():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 3, generator=g)
    x = torch.cat([x, x[:50]])  # 50 exact duplicates
    est = levina_bickel(x, n_query=450, n_reference=450)
    assert est["skipped_duplicates"] > 0 and est["n_query"] + est["skipped_duplicates"] == 450
    assert 2.3 < est["dimension"] < 3.5
    with pytest.raises(ConfigError, match="k1"):
        levina_bickel(x, k1=1, k2=5)
    with pytest.raises(ConfigError, match="too few"):
        levina_bickel(x[:15], k1=5, k2=20)


# --------------------------------------------------------------------------- latent study


def test_latent_study_fits_pca_on_the_training_split_only(synthetic, monkeypatch):
    seen = []
    real = latent.fit_pca
    monkeypatch.setattr(latent, "fit_pca", lambda x: seen.append(x) or real(x))
    budget = studies.StudyBudget(seeds=(0,), epochs=1, train_limit=None, eval_samples=100, sparsities=(0.0, 0.5, 0.9))
    res = studies.run_latent_study(synthetic, "fc", {"hidden": [16, 16]}, ks=(2, 8, 64), budget=budget,
                                   id_k=(5, 8), id_samples=(100, 240), log=None)
    assert len(seen) == 1 and seen[0] is synthetic.train.x
    assert res["ks"] == [2, 8, 64] and res["layer"] == "fc1.weight"
    assert len(res["rows"]) == 3 * 1 * 3
    for r in res["rows"]:
        if r["sparsity"] == 0.0:
            assert r["drop"] == 0.0
        assert r["achieved"] == pytest.approx(round(r["sparsity"] * 64 * 16) / (64 * 16))
    versions = {v["k"]: v for v in res["versions"]}
    assert versions[64]["explained_variance"] == pytest.approx(1.0)
    assert versions[2]["intrinsic_dim"] < 3.0 < versions[64]["intrinsic_dim"]
    assert "test set" in " ".join(res["notes"])
    with pytest.raises(ConfigError, match="components"):
        studies.run_latent_study(synthetic, "fc", ks=(0, 5), budget=budget, log=None)


def test_assess_latent_verdict():
    summary = [{"k": k, "sparsity": 0.9, "drop_mean": d, "drop_std": 0.0, "top1_mean": 0.8, "n": 3}
               for k, d in ((10, 2.0), (50, 6.0), (100, 9.0))]
    res = {"sparsities": [0.9], "summary": summary, "layer": "fc1.weight",
           "versions": [{"k": 10, "intrinsic_dim": 5.0}, {"k": 50, "intrinsic_dim": 8.0}, {"k": 100, "intrinsic_dim": 9.5}]}
    claims = studies.assess_latent(res)
    assert claims["vs_k"]["verdict"] == "holds" and claims["vs_intrinsic_dim"]["spearman"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- files and CLI


def test_write_results_replaces_runs_with_the_same_key(synthetic, tmp_path):
    budget = SMOKE.replace(seeds=(0,))
    res = studies.run_depth_study(synthetic, "mlp", {"hidden": [8]}, budget=budget, log=None)
    path, fig = studies.write_results(res, tmp_path)
    assert path == tmp_path / "studies" / "depth.json"
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    studies.write_results(res, tmp_path)
    other = studies.run_depth_study(synthetic, "mlp", {"hidden": [6]}, budget=budget, log=None)
    studies.write_results(other, tmp_path, figure=False)
    stored = json.loads(path.read_text())
    assert stored["study"] == "depth" and len(stored["runs"]) == 2
    assert stored["runs"][0]["figure"] == str(fig.relative_to(tmp_path))
    assert not list((tmp_path / "studies").glob(".*tmp*"))


def test_study_group_is_shared_with_other_modules():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    other = sub.add_parser("study").add_subparsers(dest="x")  # as another module would create it
    other.add_parser("valley")
    nested = study_subparsers(sub)
    assert nested is other and sub.choices["study"]._study_subparsers is other
    assert study_subparsers(sub) is other
    names = set(build_parser()._subparsers._group_actions[0].choices["study"]._study_subparsers.choices)
    assert {"depth", "latent"} <= names


def test_cli_depth_and_latent_write_files(tmp_path, capsys):
    common = ["--dataset", "synthetic", "--budget", "smoke", "--train-limit", "150", "--eval-samples", "80",
              "--out", str(tmp_path), "--quiet", "--no-figure"]
    assert main(["study", "depth", "--model", "mlp", "--model-arg", "hidden=[8]", *common]) == 0
    assert main(["study", "latent", "--model", "fc", "--model-arg", "hidden=[8,8]", "--k", "3", "full",
                 "--id-k", "5", "8", *common]) == 0
    out = capsys.readouterr().out
    assert "claim (1)" in out and "claim (2)" in out
    latent = json.loads((tmp_path / "studies" / "latent.json").read_text())["runs"][0]
    assert latent["ks"] == [3, 64]


@pytest.mark.parametrize("argv, message", [
    (["study", "depth", "--dataset", "synthetic"], "name a model"),
    (["study", "depth", "--model", "mlp", "--budget", "huge"], "unknown --budget"),
    (["study", "depth", "--model", "mlp", "--sparsities", "0.5,1.2"], "fractions in [0, 1)"),
    (["study", "latent", "--model", "fc", "--dataset", "synthetic", "--k", "ten"], "integers or 'full'"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_run_pitas_studies_writes_both_studies(tmp_path, monkeypatch):
    monkeypatch.setitem(studies.BUDGETS, "tiny", studies.StudyBudget(
        seeds=(0,), epochs=1, train_limit=120, eval_samples=60, sparsities=(0.0, 0.9)))
    out = studies.run_pitas_studies(tmp_path, dataset="synthetic", budget="tiny", ks=(4, 100), log=None)
    assert [r["study"] for r in out] == ["depth", "depth", "latent"]
    depth = json.loads((tmp_path / "studies" / "depth.json").read_text())["runs"]
    assert sorted(r["model"]["name"] for r in depth) == ["conv6", "fc"]
    latent = json.loads((tmp_path / "studies" / "latent.json").read_text())["runs"]
    assert latent[0]["ks"] == [4, 64]  # clipped to the input size
    assert len(list((tmp_path / "studies").glob("*.png"))) == 3
    with pytest.raises(ConfigError, match="budget"):
        studies.run_pitas_studies(tmp_path, dataset="synthetic", budget="huge", log=None)


def test_bench_pitas_studies_writes_a_self_contained_report(tmp_path, monkeypatch, capsys):
    import base64

    png = tmp_path / "fig.png"
    png.write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="))
    fake = [{"study": "depth", "model": {"name": "conv6"}, "dataset": {"name": "fashion-mnist"},
             "claims": {"text": "claim (1) holds"}, "figure": str(png)}]
    monkeypatch.setattr(studies, "run_pitas_studies", lambda out, dataset, **kw: fake)
    assert main(["bench", "--suite", "pitas-studies", "--out", str(tmp_path / "o")]) == 0
    page = (tmp_path / "o" / "studies" / "report.html").read_text()
    assert "claim (1) holds" in page and "data:image/png;base64," in page and "http" not in page
    assert "depth study: conv6 on fashion-mnist" in (tmp_path / "o" / "studies" / "report.md").read_text()

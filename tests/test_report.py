"""Reports: exact mean ± std tables, self-contained HTML, Markdown with figure files, `prunelab report`."""

import base64
import re

import pytest

from prunelab.cli.main import main
from prunelab.errors import ConfigError
from prunelab.harness.runner import RunResult, RunSpec
from prunelab.harness.report import text_table, write_report
from prunelab.harness.store import Store

PNG = b"\x89PNG\r\n\x1a\n"


def _result(method, target, seed, final, pruned=None, hparams=None, traces=None, family="oneshot", phases=None):
    spec = RunSpec("synthetic", "mlp", method, target, seed=seed, hparams=hparams or {}, dense={"epochs": 1})
    keep = 1 - target
    metrics = {"sparsity": target, "compression_ratio": 1 / keep, "theoretical_speedup": 1 / keep * 0.9,
               "dense_test_top1": 0.9, "dense_val_top1": 0.91, "pruned_test_top1": pruned,
               "final_test_top1": final, "final_test_top5": min(1.0, final + 0.05), "final_val_top1": final + 0.01,
               "time_dense_train": 3.0, "time_prune": 0.5, "time_retrain": 1.5, "time_total": 2.0, "num_classes": 10}
    return RunResult(spec=spec, hash=spec.hash, family=family, metrics=metrics,
                     phase_times=phases or {"dense_train": 3.0, "prune": 0.5, "retrain": 1.5}, dense_cached=seed > 0,
                     traces=traces if traces is not None else {"retrain": [{"epoch": 1, "val_top1": final}]},
                     info={"counted": "prunable = Linear/Conv weights", "git_sha": "abc123", "torch": "2.13.0",
                           "data_source": "synthetic(...)"})


@pytest.fixture
def outdir(tmp_path):
    with Store(tmp_path) as store:
        for seed, (a, b) in enumerate([(0.80, 0.70), (0.82, 0.74)]):
            store.put(_result("magnitude", 0.5, seed, a, pruned=a - 0.1))
            store.put(_result("magnitude", 0.9, seed, b, pruned=b - 0.3))
            store.put(_result("random", 0.5, seed, a - 0.2, pruned=0.3, hparams={"seed": seed}))
        rounds = [{"round": r, "density": 0.8 ** r, "pq_index": 0.3 - 0.01 * r, "val_top1": 0.8, "layers": {"a": 1}}
                  for r in range(4)]
        store.put(_result("sap", 0.9, 0, 0.77, traces={"rounds": rounds}, family="iterative",
                          phases={"dense_train": 3.0, "train": 4.0, "prune": 0.2}))
        store.record_suite("mini", "a tiny suite", "budgets tiny", 7)
    return tmp_path


def test_markdown_table_is_mean_and_sample_std(outdir):
    html_path, md_path = write_report(outdir)
    md = md_path.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| magnitude | 0.9 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # final test top-1 over seeds: 0.70, 0.74 -> 72.00 ± 2.83 (sample std = 0.04 / sqrt 2)
    assert cells[:3] == ["magnitude", "0.9", "2"]
    assert cells[3:8] == ["90.00 ± 0.00", "10.00× ± 0.00", "9.00× ± 0.00", "42.00 ± 2.83", "72.00 ± 2.83"]
    assert "| sap | 0.9 | 1 | 90.00 | 10.00× | 9.00× | – | 77.00 |" in md
    assert "| random | 0.5 | 2 |" in md  # random(seed=run seed) is one method
    assert "Suite `mini`: a tiny suite. budgets tiny." in md
    # every figure the Markdown names exists as a PNG
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert len(links) == 5  # compression, speedup, phase times, retraining curves, the sap trace
    for link in links:
        assert (outdir / link).read_bytes().startswith(PNG)


def test_html_is_self_contained(outdir):
    html_path, _ = write_report(outdir, title="My report")
    page = html_path.read_text()
    assert "<title>My report</title>" in page
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:
        assert base64.b64decode(s.split(",", 1)[1]).startswith(PNG)
    assert "<th>final test top-1</th>" in page and "<td>72.00 ± 2.83</td>" in page
    assert "Dense model (2 seeds): test top-1 90.00 ± 0.00 %" in page


def test_text_table(outdir):
    with Store(outdir) as store:
        text = text_table(store)
    assert "synthetic / mlp: final test top-1 (%)" in text
    assert re.search(r"magnitude\s+81\.00 ± 1\.41\s+72\.00 ± 2\.83", text)
    assert re.search(r"sap\s+–\s+77\.00", text)


def test_report_command(outdir, tmp_path, capsys):
    assert main(["report", str(outdir)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no results.sqlite" in capsys.readouterr().err
    with Store(tmp_path / "none"):
        pass
    with pytest.raises(ConfigError, match="no completed run"):
        write_report(tmp_path / "none")


SUITE = """
dataset = "synthetic"
models = [{name = "mlp", kwargs = {hidden = [16, 8]}}]
targets = [0.5, 0.9]
seeds = [0, 1]
data_kwargs = {in_shape = [1, 8, 8], n_train = 200, n_test = 100}
dense = {epochs = 2, optimizer = "adam", lr = 0.01, batch_size = 50}
retrain = {epochs = 1, optimizer = "adam", lr = 0.002, batch_size = 50}
"""


def test_bench_end_to_end(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(SUITE)
    out = tmp_path / "out"
    assert main(["bench", "--suite", str(path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "suite tiny: 12 runs (0 already in" in captured.err
    assert "12 runs done" in captured.err and "report:" in captured.err
    assert re.search(r"magnitude\(scope=layer\)\s+\d", captured.out)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # no own-loop trace: 3 figures + retraining curves
    with Store(out) as store:
        assert len(store) == 12 and store.check() == []
        assert store.suites()["tiny"]["runs"] == 12
    # a rerun skips everything
    assert main(["bench", "--suite", str(path), "--out", str(out), "--no-report"]) == 0
    assert "0 runs done" in capsys.readouterr().err


def test_models_built_with_different_arguments_get_separate_tables():
    import dataclasses

    from prunelab.harness.report import group_results

    plain = _result("magnitude", 0.5, 0, 0.8)
    narrow = dataclasses.replace(plain, spec=dataclasses.replace(plain.spec, model_kwargs={"hidden": [8], "bias": False}))
    groups = group_results([plain, narrow, plain])
    assert list(groups) == [("synthetic", "mlp"), ("synthetic", 'mlp(bias=false, hidden=[8])')]
    assert [len(r) for by in groups.values() for r in by["magnitude"].values()] == [2, 1]

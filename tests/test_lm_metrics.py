"""Language-model metrics: perplexity and bits per byte from the loss, in the harness, store,
reports and CLI, for token data only (image data keep exactly their old scores)."""

import math
import sqlite3

import pytest
import torch

from prunelab import models
from prunelab.cli.main import main
from prunelab.core.checkpoints import load_checkpoint
from prunelab.core.metrics import lm_scores
from prunelab.data import Dataset, Split
from prunelab.errors import ConfigError
from prunelab.harness.dense import score_names, split_scores, with_lm_scores
from prunelab.harness.report import text_table, write_report
from prunelab.harness.runner import RunSpec, run
from prunelab.harness.store import SCHEMA_VERSION, Store

CONTEXT = 16
TOKENS = {"unit": "byte", "bytes_per_token": 1.0, "vocab": 256, "manifest_hash": "0" * 64}


# --------------------------------------------------------------------------- lm_scores

def test_lm_scores_values():
    assert lm_scores(math.log(2)) == {"ppl": 2.0, "bpb": 1.0}
    assert lm_scores(0.0) == {"ppl": 1.0, "bpb": 0.0}
    three = lm_scores(3.0)
    assert three["ppl"] == math.exp(3.0) and three["bpb"] == 3.0 / math.log(2)
    assert lm_scores(math.log(16), bytes_per_token=4.0)["bpb"] == pytest.approx(1.0, abs=1e-15)
    assert lm_scores(torch.tensor(math.log(4), dtype=torch.float64))["bpb"] == 2.0   # a one-element tensor
    assert lm_scores(1000.0) == {"ppl": math.inf, "bpb": 1000.0 / math.log(2)}   # exp overflows
    assert lm_scores(None) == {"ppl": None, "bpb": None}
    assert lm_scores(float("nan")) == {"ppl": None, "bpb": None}
    for bad in (0, -1.0, "x", float("nan")):
        with pytest.raises(ConfigError, match="bytes_per_token must be a positive number"):
            lm_scores(1.0, bytes_per_token=bad)


# --------------------------------------------------------------------------- data and model

def _windows(n: int, seed: int) -> Split:
    """``n`` windows of a repetitive byte stream (learnable), ``y`` = ``x`` shifted by one."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.tensor(list(b"the cat sat on the mat. ") * 40, dtype=torch.int64)
    starts = torch.randint(0, len(stream) - CONTEXT - 1, (n,), generator=g)
    x = torch.stack([stream[s: s + CONTEXT] for s in starts])
    y = torch.stack([stream[s + 1: s + CONTEXT + 1] for s in starts])
    return Split(x, y)


def _token_data(tokens=TOKENS) -> Dataset:
    info = {} if tokens is None else {"tokens": dict(tokens)}
    return Dataset("text", _windows(96, 0), _windows(24, 1), _windows(24, 2), (CONTEXT,), 256, "test windows", info)


def _gpt():
    torch.manual_seed(0)
    return models.create("gpt", (CONTEXT,), 256, layers=1, width=32, heads=2)


def test_split_scores_of_token_data_add_exact_ppl_and_bpb():
    scores = split_scores(_gpt(), _token_data(), 32)
    for split in ("val", "test"):
        block = scores[split]
        assert set(block) == {"top1", "top5", "loss", "ppl", "bpb"}
        assert block["bpb"] == block["loss"] / math.log(2)
        assert block["ppl"] == math.exp(block["loss"])
        assert 0 <= block["top1"] <= block["top5"] <= 1
    # bytes per token divides: two bytes a token halve the bits per byte
    halved = split_scores(_gpt(), _token_data({**TOKENS, "bytes_per_token": 2.0}), 32)
    assert halved["test"]["bpb"] == scores["test"]["loss"] / math.log(2) / 2.0
    assert halved["test"]["loss"] == scores["test"]["loss"]


def test_other_data_keep_exactly_their_scores():
    data = _token_data(tokens=None)
    plain = split_scores(_gpt(), data, 32)
    assert set(plain["val"]) == set(plain["test"]) == {"top1", "top5", "loss"}
    assert score_names(data) == ("top1", "top5", "loss")
    assert score_names(_token_data()) == ("top1", "top5", "loss", "ppl", "bpb")
    assert with_lm_scores(plain, data) is plain
    # a cached score block written before bpb existed gains it from its loss
    old = {"val": {"top1": 0.5, "top5": 0.9, "loss": math.log(2)}, "test": {"top1": 0.5, "top5": 0.9, "loss": 0.0}}
    new = with_lm_scores(old, _token_data())
    assert new["val"]["bpb"] == 1.0 and new["val"]["ppl"] == 2.0 and new["test"]["bpb"] == 0.0
    assert "bpb" not in old["val"]   # not modified in place


# --------------------------------------------------------------------------- harness, store, report

def _spec(target: float) -> RunSpec:
    return RunSpec("text", "gpt", "magnitude", target, model_kwargs={"layers": 1, "width": 32, "heads": 2},
                   dense={"epochs": 1, "batch_size": 32, "lr": 3e-3, "eval_batch_size": 32},
                   retrain={"epochs": 1, "batch_size": 32, "lr": 1e-3, "eval_batch_size": 32}, calib_size=32)


def test_harness_run_on_token_data_stores_and_reports_bits_per_byte(tmp_path):
    data = _token_data()
    with Store(tmp_path) as store:
        first = run(_spec(0.5), store, dataset=data)
        second = run(_spec(0.8), store, dataset=data)   # the dense model now comes from the cache
        rows = store._conn.execute("SELECT final_val_bpb, final_test_bpb FROM runs ORDER BY rowid").fetchall()
    assert second.dense_cached and not first.dense_cached
    m = first.metrics
    for phase in ("dense", "pruned", "final"):
        for split in ("val", "test"):
            loss = m[f"{phase}_{split}_loss"]
            assert m[f"{phase}_{split}_bpb"] == loss / math.log(2)
            assert m[f"{phase}_{split}_ppl"] == math.exp(loss)
    assert second.metrics["dense_test_bpb"] == m["dense_test_bpb"]
    assert m["final_test_bpb"] < m["pruned_test_bpb"]   # retraining at 50% recovers some of the loss
    assert rows == [(m["final_val_bpb"], m["final_test_bpb"]),
                    (second.metrics["final_val_bpb"], second.metrics["final_test_bpb"])]
    retrain = first.traces["retrain"]
    assert len(retrain) == 1 and retrain[0]["val_bpb"] == retrain[0]["val_loss"] / math.log(2)

    html, md_path = write_report(tmp_path)
    md = md_path.read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[6:10] == ["pruned test bpb", "final test bpb", "final test ppl", "final val bpb"]
    assert "top-1" not in header
    row = next(line for line in md.splitlines() if line.startswith("| magnitude | 0.5 |"))
    row_cells = [c.strip() for c in row.strip("|").split("|")]
    assert row_cells[7:9] == [f"{m['final_test_bpb']:.3f}", f"{m['final_test_ppl']:.2f}"]
    assert f"test bits per byte {m['dense_test_bpb']:.3f}, perplexity {m['dense_test_ppl']:.2f}" in md
    assert "bits per byte vs compression" in md and "scored by bits per byte" in md
    with Store(tmp_path) as store:
        text = text_table(store)
    assert "final test bits per byte (lower is better) by target sparsity" in text
    assert f"{m['final_test_bpb']:.3f}" in text


def test_an_iterative_method_on_token_data_gets_bpb_in_every_phase(tmp_path):
    spec = RunSpec("text", "gpt", "lt", 0.5, hparams={"rounds": 1, "rate": 0.5, "epochs": 1},
                   model_kwargs={"layers": 1, "width": 32, "heads": 2},
                   dense={"epochs": 1, "batch_size": 32, "eval_batch_size": 32},
                   retrain={"epochs": 1, "batch_size": 32, "eval_batch_size": 32})
    with Store(tmp_path) as store:
        result = run(spec, store, dataset=_token_data())
    m = result.metrics
    assert result.family == "iterative"
    for phase in ("dense", "pruned", "final"):   # pruned: the method's own scores, before retraining
        assert m[f"{phase}_test_bpb"] == m[f"{phase}_test_loss"] / math.log(2)
        assert m[f"{phase}_val_ppl"] == math.exp(m[f"{phase}_val_loss"])


def test_an_image_report_keeps_top1_and_its_bpb_columns_are_null(tmp_path):
    from test_report import _result   # the image results of the report tests

    with Store(tmp_path) as store:
        store.put(_result("magnitude", 0.5, 0, 0.8, pruned=0.7))
    _, md_path = write_report(tmp_path)
    md = md_path.read_text()
    assert "| final test top-1 |" in md and "bpb" not in md and "bits per byte" not in md
    with Store(tmp_path) as store:
        row = store._conn.execute("SELECT final_test_top1, final_test_bpb FROM runs").fetchone()
    assert row == (0.8, None)


# --------------------------------------------------------------------------- store migration

_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    hash TEXT PRIMARY KEY, dataset TEXT NOT NULL, model TEXT NOT NULL, method TEXT NOT NULL,
    label TEXT NOT NULL, family TEXT NOT NULL, target REAL NOT NULL, seed INTEGER NOT NULL,
    sparsity REAL, compression_ratio REAL, theoretical_speedup REAL, final_val_top1 REAL,
    final_test_top1 REAL, n_trace_rows INTEGER NOT NULL, spec_json TEXT NOT NULL,
    result_json TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE traces (
    run_hash TEXT NOT NULL REFERENCES runs(hash), trace TEXT NOT NULL, idx INTEGER NOT NULL,
    row_json TEXT NOT NULL, PRIMARY KEY (run_hash, trace, idx)
);
INSERT INTO meta VALUES ('schema', '1');
"""


def _old_store(outdir):
    """A schema-1 store holding one run (written as the prunelab before bits per byte wrote it)."""
    from test_report import _result

    old = _result("magnitude", 0.5, 0, 0.8, pruned=0.7, traces={})
    d = old.to_dict(with_traces=False)
    import json

    con = sqlite3.connect(outdir / "results.sqlite")
    con.executescript(_SCHEMA_1)
    con.execute("INSERT INTO runs VALUES (?, 'synthetic', 'mlp', 'magnitude', 'magnitude', 'oneshot', 0.5, 0, "
                "0.5, 2.0, 1.8, 0.81, 0.8, 0, ?, ?, 0.0)",
                (old.hash, json.dumps(old.spec.to_dict()), json.dumps(d)))
    con.commit()
    con.close()
    return old


def test_a_schema_1_store_gains_the_bpb_columns_when_opened(tmp_path):
    old = _old_store(tmp_path)
    with Store(tmp_path) as store:
        columns = [info[1] for info in store._conn.execute("PRAGMA table_info(runs)")]
        assert columns[-2:] == ["final_val_bpb", "final_test_bpb"]
        assert store._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
        assert store._conn.execute("SELECT final_test_top1, final_val_bpb, final_test_bpb FROM runs").fetchall() \
            == [(0.8, None, None)]
        assert [r.hash for r in store.results()] == [old.hash]
        lm = run(_spec(0.5), store, dataset=_token_data())   # a new run is written into the migrated table
        rows = store._conn.execute("SELECT hash, final_test_top1, final_test_bpb FROM runs ORDER BY rowid").fetchall()
    assert SCHEMA_VERSION == 2
    assert rows == [(old.hash, 0.8, None), (lm.hash, lm.metrics["final_test_top1"], lm.metrics["final_test_bpb"])]
    with Store(tmp_path) as store:   # opening it again changes nothing
        assert len(store) == 2 and store.check() == []


# --------------------------------------------------------------------------- CLI

def test_cli_train_eval_info_print_and_store_bits_per_byte(tmp_path, capsys):
    from prunelab import data

    if "text" not in data.registry.list():
        pytest.skip("the text data set is not registered")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"f{i}.txt").write_text("the cat sat on the mat.\n" * (60 + 10 * i))
    ckpt = tmp_path / "gpt.safetensors"
    common = ["--data-dir", str(corpus), "--data-option", f"context={CONTEXT}"]
    assert main(["train", "--model", "gpt", "--model-arg", "layers=1", "--model-arg", "width=32",
                 "--model-arg", "heads=2", "--dataset", "text", *common, "--epochs", "1", "--quiet",
                 "--out", str(ckpt)]) == 0
    out = capsys.readouterr().out
    metrics = load_checkpoint(ckpt).meta["metrics"]
    for split in ("val", "test"):
        scores = metrics[split]
        assert scores["bpb"] == scores["loss"] / math.log(2) and scores["ppl"] == math.exp(scores["loss"])
    test = metrics["test"]
    line = (f"test: loss {test['loss']:.4f} nats/token  perplexity {test['ppl']:.2f}  bits per byte {test['bpb']:.4f}  "
            f"top-1 per token {test['top1']:.2%}  (n={test['n']} sequences)")
    assert line in out.splitlines()
    assert main(["eval", str(ckpt), *common]) == 0
    assert capsys.readouterr().out.splitlines() == [line]
    assert main(["info", str(ckpt)]) == 0
    info = capsys.readouterr().out
    assert f"language model: context {CONTEXT} tokens, vocabulary 256 (unit byte, bytes per token 1)" in info
    assert line in info.splitlines()

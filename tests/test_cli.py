import dataclasses
import subprocess
import sys

import pytest
import torch

from prunelab import methods
from prunelab.core.checkpoints import load_checkpoint
from prunelab.cli.main import main


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def trained(tmp_path, capsys):
    path = tmp_path / "dense.safetensors"
    code, out, err = run(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "3", "--quiet", "--out", str(path)], capsys)
    assert code == 0, err
    return path


def test_train_prune_eval_info(trained, tmp_path, capsys):
    pruned = tmp_path / "pruned.safetensors"
    code, out, err = run(["prune", str(trained), "--method", "magnitude", "--sparsity", "0.8", "--hparam", "scope=layer",
                          "--retrain-epochs", "1", "--quiet", "--out", str(pruned)], capsys)
    assert code == 0, err
    ckpt = load_checkpoint(pruned)
    assert ckpt.masks.pruned() == sum(round(0.8 * m.numel()) for m in ckpt.masks.values())
    assert ckpt.meta["extra"]["pruning"]["hparams"] == {"scope": "layer"}
    code, out, err = run(["eval", str(pruned)], capsys)
    assert code == 0 and out.startswith("test: top-1")
    code, out, err = run(["info", str(pruned)], capsys)
    assert code == 0 and "sparsity 80.00%" in out and "counted:" in out
    code, out, err = run(["info"], capsys)
    assert "magnitude (oneshot)" in out and "lenet5" in out and "fashion-mnist" in out


@pytest.mark.parametrize("args,needle", [
    (["train", "--model", "nope", "--dataset", "digits", "--out", "x"], "unknown model"),
    (["train", "--model", "mlp", "--dataset", "nope", "--out", "x"], "nope"),
    (["prune", "MISSING.safetensors", "--sparsity", "0.5", "--out", "x"], "no such checkpoint"),
    (["prune", "MISSING.safetensors", "--sparsity", "1.5", "--out", "x"], "[0, 1)"),
    (["frobnicate"], "invalid choice"),
    (["info", "nosuch"], "nor a method name (methods: feta, gmp"),
    (["train", "--model", "mlp"], "required"),
])
def test_bad_input_exits_2_with_one_line(args, needle, capsys):
    code, out, err = run(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_unknown_method_and_damaged_checkpoint(trained, tmp_path, capsys):
    code, _, err = run(["prune", str(trained), "--method", "nope", "--sparsity", "0.5", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown method 'nope'" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(trained.read_bytes()[:100])
    code, _, err = run(["info", str(bad)], capsys)
    assert code == 2 and "bad.safetensors" in err and err.count("\n") == 1


def test_console_entry_point_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "prunelab", "prune", "x.safetensors", "--sparsity", "2", "--out", "y"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("prunelab: error:") and "Traceback" not in proc.stderr


def test_info_method_lists_every_hyperparameter_with_default_and_description(capsys):
    code, out, err = run(["info", "ltp"], capsys)
    assert code == 0, err
    assert out.startswith("ltp (training): Learned Threshold Pruning")
    assert "  match_target = True\n      bring the picked entry to the target" in out
    assert "  penalty_weight = 3.0\n      λ, weight of the penalty" in out
    assert max(len(line) for line in out.splitlines()) <= 100
    code, out, _ = run(["info", "sap"], capsys)   # fields inherited from the base dataclass
    assert "  rounds = 30\n      T, the number of pruning rounds" in out and "  beta = 0.9\n      β in (0, 1]" in out


def test_every_hyperparameter_of_every_method_is_documented():
    for name in methods.registry.list():
        docs = methods.hparam_docs(name)
        assert set(docs) == {f.name for f in dataclasses.fields(methods.get(name).Hparams)}
        assert [f for f, d in docs.items() if not d["doc"]] == [], name

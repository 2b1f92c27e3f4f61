"""``prunelab ltp``: learned threshold pruning of a checkpoint from the command line."""

import json

import pytest

from prunelab.core.checkpoints import load_checkpoint
from prunelab.cli.main import main


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("ltp") / "dense.safetensors"
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "15", "--quiet", "--out", str(path)]) == 0
    return path


def test_ltp_to_an_exact_target_with_fine_tune(dense, tmp_path, capsys):
    out_path = tmp_path / "ltp.safetensors"
    code, out, err = run(["ltp", str(dense), "--target-compression", "2", "--exact", "--epochs", "4",
                          "--penalty-weight", "2", "--check-every", "2", "--finetune-epochs", "2", "--quiet",
                          "-o", str(out_path)], capsys)
    assert code == 0, err
    ckpt = load_checkpoint(out_path)
    assert ckpt.masks.total() - ckpt.masks.kept() == round(0.5 * ckpt.masks.total())   # exactly 2x
    pruning = ckpt.meta["extra"]["pruning"]
    assert pruning["method"] == "ltp" and pruning["trail"][0]["epoch"] == 0 and pruning["trail"][0]["compression"] == 1
    assert pruning["trail"][-1]["partial"] and pruning["picked_step"] == pruning["trail"][-1]["step"]
    metrics = ckpt.meta["metrics"]
    assert metrics["filled_fraction"] == 0 and metrics["revived_fraction"] > 0    # it went past 2x, then back
    assert "compression  val top-1" in out and "saved" in out


def test_ltp_json_trail_and_trail_dir(dense, tmp_path, capsys):
    code, out, err = run(["ltp", str(dense), "--epochs", "2", "--penalty-weight", "2", "--json",
                          "--trail-dir", str(tmp_path / "trail"), "-o", str(tmp_path / "o.safetensors")], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert [r["epoch"] for r in payload["trail"]] == [0, 1, 2]
    assert payload["picked"] == payload["trail"][-1]                # no rule: the last entry
    assert sorted(p.name for p in (tmp_path / "trail").iterdir()) == [
        "ltp_epoch000.safetensors", "ltp_epoch001.safetensors", "ltp_epoch002.safetensors"]
    assert payload["compression_ratio"] == pytest.approx(payload["picked"]["compression"])


@pytest.mark.parametrize("extra,needle", [
    (["--min-accuracy", "1.0", "--epochs", "1"], "no trail entry has val top-1 >= 1 ("),
    (["--exact"], "--exact needs --target-compression"),
    (["--target-compression", "0.5"], "argument --target-compression: expected a compression ratio >= 1"),
    (["--min-accuracy", "89"], "a fraction in [0, 1]"),
])
def test_ltp_bad_input_exits_2_with_one_line(dense, tmp_path, capsys, extra, needle):
    out_path = tmp_path / "never.safetensors"
    code, _, err = run(["ltp", str(dense), *extra, "--quiet", "-o", str(out_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert "no trail entry" not in needle or err.rstrip().endswith("; --trail-dir keeps every trail network")
    assert not out_path.exists()


def test_ltp_refuses_a_pruned_checkpoint(dense, tmp_path, capsys):
    pruned = tmp_path / "pruned.safetensors"
    assert main(["prune", str(dense), "--sparsity", "0.5", "--quiet", "-o", str(pruned)]) == 0
    code, _, err = run(["ltp", str(pruned), "-o", str(tmp_path / "x.safetensors")], capsys)
    assert code == 2 and "already pruned" in err

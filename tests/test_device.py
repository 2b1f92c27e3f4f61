"""Where things compute: ``--device`` on the command line, the harness's ``device=``, the GPU check.

The device tests run on the CPU always and on CUDA too when a GPU is present.
"""

import argparse
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import prunelab.methods as methods
from prunelab.cli.main import build_parser, main
from prunelab.cli.options import command_device, resolve_device, train_config
from prunelab.core.checkpoints import load_checkpoint
from prunelab.errors import ConfigError
from prunelab.harness.runner import RunSpec, run, sweep
from prunelab.harness.store import Store
from prunelab.methods.base import MethodOutcome, TrainingMethod
from prunelab.training import distributed

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
ROOT = Path(__file__).resolve().parents[1]

#: Every command that computes, and so takes --device.
COMPUTING = {("train",), ("prune",), ("eval",), ("demo",), ("bench",), ("iterate",), ("ltp",), ("grda", "train"),
             ("grda", "search"), ("study", "valley")}


def _cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _commands(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


# --------------------------------------------------------------------------- resolving a device

def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(" CPU ")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("bogus", "cuda:x", "gpu", "cuda:-1", ""):
        with pytest.raises(ConfigError, match="unknown device"):
            resolve_device(bad)


@NO_CUDA
def test_cuda_without_cuda_says_why_and_what_to_pass():
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ConfigError, match=r"CUDA is not available \(.*\); use --device cpu"):
            resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_index_past_the_last_is_refused():
    count = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=f"has {count} GPU"):
        resolve_device(f"cuda:{count}")


def test_under_torchrun_the_rank_keeps_its_device(monkeypatch):
    monkeypatch.setattr(distributed, "is_active", lambda: True)
    monkeypatch.setattr(distributed, "device", lambda: torch.device("cuda", 1))
    for name in ("auto", "cuda", "cuda:1"):
        assert command_device(argparse.Namespace(device=name)) == torch.device("cuda", 1)
    assert command_device(argparse.Namespace()) == torch.device("cuda", 1)
    for name in ("cpu", "cuda:0"):
        with pytest.raises(ConfigError, match="NCCL: every rank computes on cuda:LOCAL_RANK"):
            command_device(argparse.Namespace(device=name))
    monkeypatch.setattr(distributed, "device", lambda: torch.device("cpu"))
    assert command_device(argparse.Namespace(device="cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="gloo: every rank computes on the CPU"):
        command_device(argparse.Namespace(device="cuda"))


# --------------------------------------------------------------------------- the command line

def test_every_computing_command_takes_device_with_default_auto():
    found = set()
    for command, parser in _commands(build_parser()):
        for action in parser._actions:
            if "--device" in action.option_strings:
                found.add(command)
                assert action.default == "auto", command
    assert found == COMPUTING


@pytest.mark.parametrize("argv", [
    ["train", "--model", "mlp", "--dataset", "digits", "-o", "x"],
    ["bench", "--suite", "quick"],
    ["grda", "train", "-o", "x"],
])
def test_an_unknown_device_exits_2_with_one_line(argv, capsys):
    code, out, err = _cli([*argv, "--device", "bogus"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("prunelab: error: ") and "unknown device 'bogus'" in err


@NO_CUDA
@pytest.mark.parametrize("argv", [
    ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "-o", "never.safetensors"],
    ["demo", "--epochs", "1"],
])
def test_cuda_without_cuda_exits_2_with_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli([*argv, "--device", "cuda"], capsys)
    assert code == 2 and out == "" and list(tmp_path.iterdir()) == []
    assert err.count("\n") == 1 and err.startswith("prunelab: error: --device cuda: CUDA is not available")


@pytest.mark.parametrize("device", DEVICES)
def test_train_prune_eval_on_a_device_write_device_independent_checkpoints(device, tmp_path, capsys):
    dense, pruned = tmp_path / "dense.safetensors", tmp_path / "pruned.safetensors"
    code, _, err = _cli(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet",
                         "--device", device, "--amp", "bf16", "-o", str(dense)], capsys)
    assert code == 0, err
    ckpt = load_checkpoint(dense)
    assert ckpt.meta["extra"]["device"] == str(resolve_device(device)) and ckpt.meta["extra"]["train"]["amp"] == "bf16"
    assert {p.device.type for p in ckpt.model.parameters()} == {"cpu"}
    code, _, err = _cli(["prune", str(dense), "--sparsity", "0.75", "--retrain-epochs", "1", "--quiet",
                         "--device", device, "-o", str(pruned)], capsys)
    assert code == 0, err
    ckpt = load_checkpoint(pruned)
    assert ckpt.masks.pruned() == round(0.75 * ckpt.masks.total())
    params = dict(ckpt.model.named_parameters())
    assert all(int(torch.count_nonzero(params[n][~m])) == 0 for n, m in ckpt.masks.items())
    code, out, err = _cli(["eval", str(pruned), "--device", device], capsys)
    assert code == 0 and out.startswith("test: top-1"), err


# --------------------------------------------------------------------------- mixed precision options

def test_amp_is_an_option_wherever_training_is_and_reaches_the_config(capsys):
    parser = build_parser()
    for argv, prefix in [(["train", "--model", "mlp", "-o", "x", "--amp", "bf16"], ""),
                         (["prune", "c", "--sparsity", "0.5", "-o", "x", "--retrain-amp", "bf16"], "retrain_"),
                         (["ltp", "c", "-o", "x", "--finetune-amp", "bf16"], "finetune_"),
                         (["grda", "train", "-o", "x", "--amp", "bf16"], ""),
                         (["iterate", "--pruning-schedule", "os", "-o", "x", "--amp", "bf16"], "")]:
        assert train_config(parser.parse_args(argv), prefix).amp == "bf16", argv
    assert train_config(parser.parse_args(["demo"])).amp == "none"
    code, _, err = _cli(["train", "--model", "mlp", "--amp", "fp32", "-o", "x"], capsys)
    assert code == 2 and "argument --amp: invalid choice: 'fp32'" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- the harness

DATA = {"in_shape": [1, 8, 8], "n_train": 240, "n_test": 80, "val_size": 0.25}
BUDGET = {"epochs": 1, "optimizer": "adam", "lr": 0.01, "batch_size": 64}


def _spec(method="magnitude", **kw):
    return RunSpec(dataset="synthetic", model="mlp", method=method, target=0.6, data_kwargs=DATA,
                   model_kwargs={"hidden": [16]}, dense=BUDGET, retrain=BUDGET, **kw)


class _SeesDevice(TrainingMethod):
    """Records where the harness puts the context's models, then prunes the dense model."""

    @dataclass(frozen=True)
    class Hparams:
        pass

    seen = {}

    def run(self, ctx):
        fresh = ctx.model_factory()
        self.seen.update(device=ctx.device, fresh={p.device for p in fresh.parameters()},
                         dense={p.device for p in ctx.dense_model.parameters()},
                         init_equal=all(torch.equal(v, fresh.state_dict()[k]) for k, v in ctx.init_state.items()))
        masks = methods.create("magnitude").prune(ctx.dense_model, None, ctx.target)
        return MethodOutcome(model=ctx.dense_model, masks=masks)


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_on_a_device_matches_its_spec_and_records_the_device(device, tmp_path, monkeypatch):
    monkeypatch.setitem(methods._REGISTRY, "sees-device", _SeesDevice)
    wanted = resolve_device(device)
    with Store(tmp_path / "a") as store:
        result = run(_spec(), store, device=device)
        own = run(_spec("sees-device"), store, device=wanted)
    assert result.hash == _spec().hash and result.info["device"] == str(wanted)
    assert result.metrics["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert _SeesDevice.seen == {"device": wanted, "fresh": {wanted}, "dense": {wanted}, "init_equal": True}
    assert own.info["device"] == str(wanted)


def test_the_device_is_not_part_of_a_run_and_cpu_changes_no_number(tmp_path):
    with Store(tmp_path / "default") as store:
        default = run(_spec(), store)
    with Store(tmp_path / "cpu") as store:
        on_cpu = run(_spec(), store, device="cpu")
        assert run(_spec(), store, device="cpu").hash == on_cpu.hash
        assert sweep([_spec()], store, device="cpu").skipped == [on_cpu.hash]   # stored: not redone
    assert default.hash == on_cpu.hash and default.info["device"] == on_cpu.info["device"] == "cpu"
    timing = {k for k in default.metrics if k.startswith("time_")}
    assert {k: v for k, v in default.metrics.items() if k not in timing} == \
        {k: v for k, v in on_cpu.metrics.items() if k not in timing}


def test_a_bad_device_fails_before_any_run(tmp_path):
    with Store(tmp_path) as store:
        with pytest.raises(ConfigError, match="unknown device 'nowhere'"):
            sweep([_spec()], store, device="nowhere")
        assert store.hashes() == set()


# --------------------------------------------------------------------------- benchmarks/gpu_check.py

def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_runs_every_path_on_the_cpu(capsys):
    code = _gpu_check().main(["--device", "cpu", "--quick"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] is True and report["failed"] == [], report.get("failed")
    assert report["device"] == "cpu" and report["torch"] == torch.__version__
    checks = report["checks"]
    assert set(checks) == {"train_amp", "magnitude", "lobs_calib", "ltp", "grda", "gmp", "export_latency",
                           "gpt2_lm", "compile_masks"}
    assert checks["magnitude"]["after_prune"]["sparsity_exact"] and checks["magnitude"]["after_retrain"]["pruned_are_zero"]
    assert checks["magnitude"]["after_retrain"]["param_devices"] == ["cpu"]
    assert checks["ltp"]["run_device"] == "cpu" and checks["gmp"]["sparsity_exact"] and checks["ltp"]["sparsity_exact"]
    assert checks["compile_masks"]["wrapper_matches_module"] and checks["compile_masks"]["backend"] == "eager"
    assert checks["gpt2_lm"]["ok"] in (True, None)
    assert all(isinstance(c["seconds"], float) for c in checks.values())


def test_gpu_check_records_a_failing_check_and_goes_on(monkeypatch):
    module = _gpu_check()

    def broken(self):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(module.Checks, "lobs_calib", broken)
    report = module.run_checks("cpu", quick=True, only=["lobs_calib", "magnitude"])
    assert report["ok"] is False and report["failed"] == ["lobs_calib"]
    assert report["checks"]["lobs_calib"]["error"] == "RuntimeError: kernel exploded"
    assert report["checks"]["magnitude"]["ok"] is True


@NO_CUDA
def test_gpu_check_without_the_device_says_so_in_json(capsys):
    code = _gpu_check().main(["--device", "cuda", "--quick"])
    report = json.loads(capsys.readouterr().out)
    assert code == 2 and report["ok"] is False and "CUDA is not available" in report["error"]

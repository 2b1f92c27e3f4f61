"""Command-line options generated from dataclasses, and the parser's assembly."""

import argparse
import dataclasses
import importlib

import pytest

from prunelab.cli.main import build_parser, main
from prunelab.cli.options import add_dataclass_options, dataclass_from_args, option_name, train_config
from prunelab.training.loop import OPTIMIZERS, SCHEDULES, TrainConfig

TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed"]


@dataclasses.dataclass(frozen=True)
class Toy:
    """A toy configuration.

    Attributes:
        count: how many (a 100% sure
            integer).
        rate: a rate.
        flag: switch it on.
        pair: two numbers.
        limit: an optional cap.
        mode: one of three.
    """

    count: int = 3
    rate: float = 0.5
    flag: bool = False
    pair: tuple[float, float] = (1.0, 2.0)
    limit: float | None = None
    mode: str = dataclasses.field(default="a", metadata={"choices": ("a", "b", "c")})


def _parser(**kwargs):
    p = argparse.ArgumentParser()
    add_dataclass_options(p, Toy, **kwargs)
    return p


def test_dataclass_options_types_defaults_and_help():
    p = _parser()
    args = p.parse_args([])
    assert dataclass_from_args(Toy, args) == Toy()
    args = p.parse_args(["--count", "7", "--rate", "1e-3", "--flag", "--pair", "3", "4", "--limit", "2.5", "--mode", "c"])
    assert dataclass_from_args(Toy, args) == Toy(7, 1e-3, True, (3.0, 4.0), 2.5, "c")
    assert dataclass_from_args(Toy, p.parse_args(["--limit", "none", "--no-flag"])).limit is None
    text = p.format_help()
    assert "how many (a 100% sure integer) (default: 3)" in " ".join(text.split())
    assert "--flag, --no-flag" in text and "{a,b,c}" in text
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "d"])


def test_dataclass_options_prefix_defaults_only_and_fixed():
    p = _parser(prefix="second-", defaults={"count": 9}, only=("count", "mode"))
    args = p.parse_args(["--second-mode", "b"])
    assert args.second_count == 9 and not hasattr(args, "second_rate")
    assert dataclass_from_args(Toy, args, "second_", rate=0.25) == Toy(count=9, rate=0.25, mode="b")
    assert option_name("retrain-", "batch_size") == "--retrain-batch-size"
    with pytest.raises(TypeError, match="no field"):
        _parser(defaults={"nope": 1})


def _commands(parser, path=()):
    """(command path, parser) for every command, nested ones too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def _options(parser) -> dict:
    return {s: a for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("command,prefix", [
    (("train",), ""), (("prune",), "retrain-"), (("demo",), ""), (("demo",), "retrain-"), (("iterate",), ""),
    (("ltp",), ""), (("ltp",), "finetune-"),
])
def test_every_training_field_is_an_option(command, prefix):
    parsers = dict(_commands(build_parser()))
    options = _options(parsers[command])
    assert [f for f in TRAIN_FIELDS if option_name(prefix, f) not in options] == []


def test_one_meaning_per_training_option_name():
    """Wherever --epochs, --schedule, ... appear, they set that TrainConfig field (same choices)."""
    choices = {"optimizer": tuple(OPTIMIZERS), "schedule": tuple(SCHEDULES)}
    for command, parser in _commands(build_parser()):
        options = _options(parser)
        for prefix in ("", "retrain-", "finetune-"):
            for field in TRAIN_FIELDS:
                action = options.get(option_name(prefix, field))
                if action is None:
                    continue
                assert action.dest == (prefix + field).replace("-", "_"), (command, field)
                if field in choices:
                    assert tuple(action.choices) == choices[field], (command, field)


def _config(argv, prefix=""):
    args = build_parser().parse_args(argv)
    return train_config(args, prefix)


def test_per_command_training_defaults_are_kept():
    assert _config(["train", "--model", "mlp", "-o", "x"]) == TrainConfig(epochs=10, optimizer="adam", lr=1e-3)
    assert _config(["prune", "c", "--sparsity", "0.5", "-o", "x"], "retrain_") == \
        TrainConfig(epochs=0, optimizer="adam", lr=5e-4)
    assert _config(["demo"]) == TrainConfig(epochs=8, optimizer="adam", lr=1e-3)
    assert _config(["demo"], "retrain_") == TrainConfig(epochs=2, optimizer="adam", lr=5e-4)
    assert _config(["iterate", "--pruning-schedule", "lt", "-o", "x"]) == TrainConfig(
        epochs=5, batch_size=250, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="cosine", clip_grad_norm=1.0)
    assert _config(["ltp", "c", "-o", "x"]) == TrainConfig(epochs=8, optimizer="sgd", lr=0.03)
    assert _config(["ltp", "c", "-o", "x"], "finetune_") == TrainConfig(epochs=0, optimizer="adam", lr=3e-3)
    assert _config(["grda", "train", "-o", "x", "--seed", "4"]).replace(momentum=0.0) == \
        TrainConfig(epochs=15, lr=0.05, momentum=0.0, seed=4)


def test_options_reach_the_config():
    config = _config(["train", "--model", "mlp", "-o", "x", "--optimizer", "sgd", "--nesterov", "--betas", "0.8", "0.9",
                      "--schedule", "step", "--step-epochs", "3", "--gamma", "0.5", "--clip-grad-norm", "2",
                      "--eval-batch-size", "64", "--seed", "3"])
    assert config == TrainConfig(epochs=10, optimizer="sgd", lr=1e-3, nesterov=True, betas=(0.8, 0.9),
                                 schedule="step", step_epochs=3, gamma=0.5, clip_grad_norm=2.0,
                                 eval_batch_size=64, seed=3)


@pytest.mark.parametrize("argv,needle", [
    (["iterate", "--schedule", "sap", "-o", "x"], "invalid choice: 'sap'"),
    (["train", "--model", "mlp", "--optimizer", "rmsprop", "-o", "x"], "invalid choice: 'rmsprop'"),
    (["prune", "c", "--sparsity", "0.5", "--hparam", "scope", "-o", "x"], "--hparam expects NAME=VALUE"),
    (["train", "--model", "mlp", "--model-arg", "=3", "-o", "x"], "--model-arg expects NAME=VALUE"),
    (["train", "--model", "mlp", "--nesterov", "-o", "x"], "nesterov needs optimizer 'sgd'"),
    (["train", "--model", "mlp", "--clip-grad-norm", "lots", "-o", "x"], "--clip-grad-norm"),
])
def test_bad_options_exit_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunelab: error:") and err.count("\n") == 1 and needle in err


def test_a_listed_extension_that_does_not_exist_is_an_error(monkeypatch):
    cli_main = importlib.import_module("prunelab.cli.main")   # the package's ``main`` attribute is the function
    monkeypatch.setattr(cli_main, "EXTENSIONS", (*cli_main.EXTENSIONS, "no_such_command_group"))
    with pytest.raises(ImportError, match="no_such_command_group"):
        build_parser()

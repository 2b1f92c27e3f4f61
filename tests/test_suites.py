"""Suites in code and in files, the one-line method registration, and `prunelab bench` input checks."""

import json
from dataclasses import dataclass

import pytest

import prunelab.methods as methods
from prunelab.harness import suites
from prunelab.cli.main import main
from prunelab.errors import ConfigError
from prunelab.harness.runner import validate_all
from prunelab.core.masks import Masks
from prunelab.methods.base import OneShotMethod
from prunelab.harness.suites import TARGETS, get_suite, load_suite_file, method_entries


def test_targets_are_the_protocol_operating_points():
    assert [round(1 / (1 - t)) for t in TARGETS] == [2, 4, 8, 16, 32]


def test_quick_suite_shape():
    suite = get_suite("quick")
    specs = validate_all(suite.specs)  # every spec of the shipped suite is valid
    assert len(specs) == len(suite.specs)
    assert {s.dataset for s in specs} == {"fashion-mnist"} and {s.model for s in specs} == {"lenet-300-100"}
    assert {s.seed for s in specs} == {0}
    labels = suite.methods()
    assert labels[:3] == ["magnitude", "magnitude(scope=layer)", "random"]  # baselines first
    for label in labels[:3]:
        assert sorted(s.target for s in specs if s.label == label) == list(TARGETS)
    dense = {json.dumps(s.dense, sort_keys=True) for s in specs}
    retrain = {json.dumps(s.retrain, sort_keys=True) for s in specs}
    assert len(dense) == 1 and len(retrain) == 1  # one budget for every method
    assert json.loads(dense.pop())["epochs"] == 8 and json.loads(retrain.pop())["epochs"] == 2
    assert get_suite("quick", "digits").specs[0].dataset == "digits"
    # every registered method is in the quick suite (one line in SUITE_METHODS or in its class)
    assert set(methods.registry.list()) <= {s.method for s in specs}


def test_standard_suite_shape():
    suite = get_suite("standard")
    specs = suite.specs
    assert {s.seed for s in specs} == {0, 1, 2} and {s.model for s in specs} == {"lenet-300-100", "lenet5"}
    per_cell = len(specs) // 6
    assert per_cell == len([s for s in specs if s.seed == 1 and s.model == "lenet5"])
    # random pruning draws its mask with the run seed, and stays one method in tables
    rand = [s for s in specs if s.method == "random"]
    assert {s.hparams["seed"] for s in rand} == {0, 1, 2} and {s.label for s in rand} == {"random"}


@dataclass(frozen=True)
class _Hp:
    strength: float = 1.0


class _Listed(OneShotMethod):
    Hparams = _Hp
    suite_hparams = {"quick": [{"strength": 2.0}, {}]}  # the one line a method adds

    def prune(self, model, masks=None, sparsity=0.5, calib=None):
        return Masks.ones(model)


class _Plain(OneShotMethod):
    Hparams = _Hp

    def prune(self, model, masks=None, sparsity=0.5, calib=None):
        return Masks.ones(model)


class _OwnTargets(OneShotMethod):
    Hparams = _Hp
    suite_hparams = {"quick": {}, "paper": {"strength": 3.0}}
    suite_targets = {"quick": [0.9]}

    def prune(self, model, masks=None, sparsity=0.5, calib=None):
        return Masks.ones(model)


def test_methods_join_suites_with_one_line(monkeypatch):
    monkeypatch.setitem(methods._REGISTRY, "listed", _Listed)
    monkeypatch.setitem(methods._REGISTRY, "own-targets", _OwnTargets)
    entries = method_entries("quick")
    assert ("listed", {"strength": 2.0}, None) in entries and ("listed", {}, None) in entries
    assert ("own-targets", {}, (0.9,)) in entries
    assert ("own-targets", {}, None) in method_entries("standard")  # standard falls back to quick's entry
    assert method_entries("paper", baselines=False) == [("own-targets", {"strength": 3.0}, None)]
    quick = get_suite("quick")
    assert [s.target for s in quick.specs if s.method == "own-targets"] == [0.9]
    assert sorted(s.target for s in quick.specs if s.label == "listed(strength=2)") == list(TARGETS)
    # the table in suites.py is the other one-line place; a method's own entry wins over it
    monkeypatch.setitem(methods._REGISTRY, "plain", _Plain)
    monkeypatch.setitem(suites.SUITE_METHODS, "quick", [("plain", {"strength": 5.0}, [0.5]),
                                                        ("listed", {"strength": 7.0})])
    labels = get_suite("quick").methods()
    assert "plain(strength=5)" in labels and "listed(strength=7)" not in labels
    assert [s.target for s in get_suite("quick").specs if s.method == "plain"] == [0.5]


def test_misspelt_suite_entries_are_errors(monkeypatch):
    # a method the table names but nobody registered is an error naming the entry and the known methods
    monkeypatch.setitem(suites.SUITE_METHODS, "quick", [("magnitdue", {"scope": "layer"})])
    with pytest.raises(ConfigError, match=r"SUITE_METHODS\['quick'\] entry \('magnitdue'.*not registered; "
                                          r"known methods: .*magnitude"):
        get_suite("quick")
    # so is a hyperparameter the method does not have, in the table ...
    monkeypatch.setitem(suites.SUITE_METHODS, "quick", [("magnitude", {"scpoe": "layer"})])
    with pytest.raises(ConfigError, match=r"'magnitude' has no hyperparameter 'scpoe'; known: .*scope"):
        method_entries("quick")
    # ... or in a method's own suite_hparams
    monkeypatch.setitem(suites.SUITE_METHODS, "quick", [])
    monkeypatch.setitem(methods._REGISTRY, "misspelt", _Misspelt)
    with pytest.raises(ConfigError, match=r"_Misspelt.suite_hparams\['quick'\]: .*no hyperparameter 'strenght'"):
        method_entries("quick")


class _Misspelt(_Plain):
    suite_hparams = {"quick": {"strenght": 2.0}}


def test_suite_registry(monkeypatch):
    assert {"quick", "standard"} <= set(suites.registry.list())
    assert "quick" in suites.registry and "nope" not in suites.registry
    monkeypatch.setattr(suites.registry, "_entries", dict(suites.registry._entries))
    with pytest.raises(ConfigError, match="suite 'quick' is registered twice"):
        suites.register_suite("quick")(lambda dataset=None: suites.Suite("other"))
    suites.register_suite("tiny-registered")(lambda dataset=None: [])
    assert get_suite("tiny-registered") == suites.Suite("tiny-registered")


TOML = """
name = "mini"
dataset = "synthetic"
models = ["mlp", {name = "linear"}]
targets = [0.5, 0.9]
seeds = [0, 1]
data_kwargs = {in_shape = [1, 8, 8], n_train = 200, n_test = 50}
dense = {epochs = 1, optimizer = "adam", lr = 0.01}
retrain = {epochs = 1}

[[methods]]
name = "magnitude"
hparams = {scope = "layer"}
targets = [0.75]
"""


def test_toml_and_json_suite_files(tmp_path):
    path = tmp_path / "mini.toml"
    path.write_text(TOML)
    suite = load_suite_file(path)
    # 2 seeds x 2 models x (3 baselines x 2 targets + the layer-magnitude entry at its own target)
    assert suite.name == "mini" and len(suite.specs) == 2 * 2 * (3 * 2 + 1)
    assert len(validate_all(suite.specs)) == len(suite.specs)
    layer = [s for s in suite.specs if s.label == "magnitude(scope=layer)" and s.model == "mlp" and s.seed == 0]
    assert sorted(s.target for s in layer) == [0.5, 0.75, 0.9]
    assert {s.dense["epochs"] for s in suite.specs} == {1} and suite.specs[0].data_kwargs["n_train"] == 200
    as_json = tmp_path / "mini.json"
    as_json.write_text(json.dumps({"dataset": "synthetic", "models": ["linear"], "targets": [0.5],
                                   "baselines": False, "methods": ["random", {"name": "magnitude"}]}))
    js = load_suite_file(as_json)
    assert js.name == "mini" and [s.label for s in js.specs] == ["random", "magnitude"]
    assert load_suite_file(path, dataset="digits").specs[0].dataset == "digits"


@pytest.mark.parametrize("name, text, message", [
    ("missing.toml", None, "cannot read suite file"),
    ("bad.toml", "targets = [0.5,", "is not valid TOML"),
    ("bad.json", "{", "is not valid JSON"),
    ("keys.toml", 'dataset = "digits"\ncolour = 1', "unknown key"),
    ("nodata.toml", "targets = [0.5]", "set dataset"),
    ("types.toml", 'dataset = "digits"\ntargets = 0.5', "targets must be a list"),
    ("method.toml", 'dataset = "digits"\n[[methods]]\nnom = "x"', "each method is a name"),
    ("empty.toml", 'dataset = "digits"\nbaselines = false', "no methods"),
    ("x.yaml", "dataset: digits", "YAML"),
    ("x.txt", "", "unknown format"),
])
def test_bad_suite_files_are_one_line_errors(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    try:
        import yaml  # noqa: F401

        if name.endswith(".yaml"):
            pytest.skip("PyYAML installed: YAML suites load")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=message) as info:
        load_suite_file(path)
    assert "\n" not in str(info.value)


def test_unknown_suite_name():
    with pytest.raises(ConfigError, match="unknown suite 'nope'.*quick"):
        suites.resolve("nope")


def _bench(tmp_path, capsys, *args):
    status = main(["bench", "--out", str(tmp_path / "out"), *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("text, message", [
    ('dataset = "digits"\ntargets = [1.5]', "outside \\[0, 1\\)"),
    ('dataset = "digits"\nmethods = ["no-such-method"]', "unknown method 'no-such-method'"),
    ('dataset = "digits"\ndense = {epochs = 0}', "at least 1 epoch"),
    ('dataset = "digits"\nretrain = {epochs = -2}', "epochs must be an integer >= 0"),
])
def test_bench_rejects_bad_specs_before_training(tmp_path, capsys, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    status, out, err = _bench(tmp_path, capsys, "--suite", str(path))
    assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("prunelab: error: ") and __import__("re").search(message, err)
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_bench_unreadable_suite_file(tmp_path, capsys):
    status, _, err = _bench(tmp_path, capsys, "--suite", str(tmp_path / "nope.toml"))
    assert status == 2 and "nope.toml: no such suite file" in err and len(err.strip().splitlines()) == 1


def test_bench_default_falls_back_to_digits(tmp_path, capsys, monkeypatch):
    import prunelab.cli.bench as cli_bench

    monkeypatch.setattr(cli_bench, "_fashion_mnist_problem", lambda data_dir: "no files found")
    status, out, err = _bench(tmp_path, capsys, "--dry-run")
    assert status == 0
    assert "Fashion-MNIST unavailable (no files found); running the quick suite on scikit-learn digits" in err
    assert out.splitlines()[0].split()[2:4] == ["digits", "lenet-300-100"]
    monkeypatch.setattr(cli_bench, "_fashion_mnist_problem", lambda data_dir: None)
    status, out, err = _bench(tmp_path, capsys, "--dry-run")
    assert "running the quick suite on Fashion-MNIST" in err and " fashion-mnist " in out.splitlines()[0]
    assert len(out.splitlines()) == len(get_suite("quick").specs)


def test_bench_list(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith("quick: ") for line in lines)
    assert any(line.startswith("standard: ") for line in lines)

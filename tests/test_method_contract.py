"""The contract every registered pruning method keeps, checked for each one on a tiny model.

A method has a frozen ``Hparams`` dataclass with every field documented; run from its family's
entry point (``prune`` for one-shot methods, ``run`` for iterative and training-time ones) on
digits, it returns :class:`Masks` at the sparsity it promises, already applied to its model.
A new method must add its promise to ``PROMISES`` (and tiny hyperparameters to ``TINY``).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from prunelab import data as pdata
from prunelab import methods
from prunelab.core.masks import Masks
from prunelab.errors import MethodError
from prunelab.methods.base import MethodContext, OneShotMethod
from prunelab.training.loop import TrainConfig, train

TARGET = 0.5

# What each method promises about the sparsity it returns (layer sizes are chosen so that 0.5 of
# every layer is a whole number of weights):
#   "exact": exactly TARGET of all prunable weights;
#   "layers": exactly TARGET of every layer but the last, which stays dense (layer-wise methods);
#   "layers-at-most": at most TARGET of every layer but the last (histogram thresholds), the
#       achieved sparsity reported in ``last_info``; the last layer stays dense;
#   "reported": no target: the achieved sparsity is the one reported in ``outcome.info``.
PROMISES = {
    "magnitude": "exact", "random": "exact", "gmp": "exact", "ltp": "exact",
    "os": "exact", "lt": "exact", "sap": "exact",
    "feta": "layers", "lobs": "layers", "nettrim": "layers", "sparsegpt": "layers", "wanda": "layers",
    "hard-threshold": "layers-at-most",
    "grda": "reported",
}

# Small enough for about a second per method; the iterative ones get enough rounds to reach
# TARGET (0.8^4 < 0.5 for OS/LT), where they are capped at it exactly.
TINY = {
    "feta": {"search_steps": 2},
    "nettrim": {"search_steps": 2, "search_iters": 20, "max_iters": 40},
    "os": {"rounds": 4, "epochs": 1, "record_grid": False},
    "lt": {"rounds": 4, "epochs": 1, "record_grid": False},
    "sap": {"rounds": 8, "epochs": 1, "record_grid": False},
    "ltp": {"epochs": 2},
}


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 10))


@pytest.fixture(scope="module")
def digits():
    return pdata.load("digits")


@pytest.fixture(scope="module")
def dense(digits):
    model = _mlp()
    train(model, digits, TrainConfig(epochs=2, batch_size=64, lr=0.05), progress=False)
    return model


def _run(name: str, digits, dense) -> tuple[Masks, nn.Module, object]:
    """Run method ``name`` from its family's entry point: ``(masks, the pruned model, method or outcome)``."""
    method = methods.create(name, **TINY.get(name, {}))
    if isinstance(method, OneShotMethod):
        model = copy.deepcopy(dense)
        return method.prune(model, None, TARGET, digits.train), model, method
    ctx = MethodContext(
        data=digits, model_factory=lambda: _mlp(1), init_state=_mlp(1).state_dict(),
        dense_model=copy.deepcopy(dense), target=TARGET,
        train_config=TrainConfig(epochs=1, batch_size=64, lr=0.05),
        retrain_config=TrainConfig(epochs=2, batch_size=64, lr=0.05), seed=0, log=lambda line: None)
    outcome = method.run(ctx)
    return outcome.masks, outcome.model, outcome


@pytest.mark.parametrize("name", methods.registry.list())
def test_method_keeps_the_contract(name, digits, dense):
    cls = methods.get(name)
    assert cls.name == name and cls.family in ("oneshot", "iterative", "training")
    assert dataclasses.is_dataclass(cls.Hparams) and cls.Hparams.__dataclass_params__.frozen
    undocumented = [field for field, entry in methods.hparam_docs(name).items() if not entry["doc"]]
    assert not undocumented, f"{name}: document {undocumented} in the Attributes: section of its Hparams"
    assert name in PROMISES, f"add {name!r}'s sparsity promise to PROMISES"

    masks, model, result = _run(name, digits, dense)

    assert isinstance(masks, Masks)
    masks.validate(model)
    params = dict(model.named_parameters())
    for layer, keep in masks.items():
        assert not params[layer].detach()[~keep].any(), f"{name}: pruned weights of {layer} are not zero"
    layers = masks.per_layer()
    last = list(layers)[-1]
    promise = PROMISES[name]
    if promise == "exact":
        assert masks.pruned() == round(TARGET * masks.total())
    elif promise == "layers":
        for layer, entry in layers.items():
            want = entry["total"] if layer == last else round((1 - TARGET) * entry["total"])
            assert entry["kept"] == want, layer
    elif promise == "layers-at-most":
        achieved = {row["layer"]: row["sparsity"] for row in result.last_info}
        assert set(achieved) == set(layers) - {last} and layers[last]["sparsity"] == 0.0
        for layer, sparsity in achieved.items():
            assert layers[layer]["sparsity"] == pytest.approx(sparsity) and 0 < sparsity <= TARGET
    else:
        assert result.info["sparsity"] == pytest.approx(masks.sparsity())


def test_unknown_method_is_an_error_naming_the_known_ones():
    with pytest.raises(MethodError, match=r"unknown method 'no-such-method'; known: .*magnitude"):
        methods.get("no-such-method")
    with pytest.raises(MethodError, match="unknown method"):
        methods.create("no-such-method")
    assert "no-such-method" not in methods.registry


def test_a_second_class_under_a_registered_name_is_an_error():
    original = methods.get("magnitude")

    class Impostor(OneShotMethod):
        """Another one-shot method claiming a taken name."""

    with pytest.raises(MethodError, match="registered twice"):
        methods.register("magnitude")(Impostor)
    assert methods.get("magnitude") is original and original.name == "magnitude"

    class NoFamily(methods.Method):
        """A method outside the three families."""

    with pytest.raises(TypeError, match="family"):
        methods.register("no-family")(NoFamily)
    assert "no-family" not in methods.registry

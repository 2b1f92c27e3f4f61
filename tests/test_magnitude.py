import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as nn_prune

import prunelab
from prunelab.errors import ConfigError, MethodError
from prunelab.masks import Masks
from prunelab.methods.magnitude import select_smallest


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 10))


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.9, 0.99])
def test_global_masks_equal_torch_global_unstructured(sparsity):
    model, reference = _mlp(), _mlp()
    masks = prunelab.prune(model, "magnitude", sparsity=sparsity)
    layers = [(reference[i], "weight") for i in (0, 2, 4)]
    nn_prune.global_unstructured(layers, pruning_method=nn_prune.L1Unstructured, amount=sparsity)
    n = 50 * 40 + 40 * 30 + 30 * 10
    assert masks.pruned() == round(sparsity * n)
    for i in (0, 2, 4):
        assert torch.equal(masks[f"{i}.weight"], reference[i].weight_mask.bool())


def test_layer_scope_prunes_exact_count_per_layer():
    model = _mlp()
    masks = prunelab.prune(model, "magnitude", sparsity=0.37, scope="layer")
    for name, d in masks.per_layer().items():
        assert d["total"] - d["kept"] == round(0.37 * d["total"]), name
        module = model[int(name.split(".")[0])]
        reference = copy.deepcopy(module)
        nn_prune.l1_unstructured(reference, "weight", amount=0.37)


def test_iterative_calls_prune_among_survivors_and_are_monotone():
    model = _mlp()
    first = prunelab.prune(model, "magnitude", sparsity=0.5)
    with torch.no_grad():  # survivors change after "training": the next round ranks them anew
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        first.apply(model)
    second = prunelab.prune(model, "magnitude", sparsity=0.8, masks=first)
    n = first.total()
    assert second.pruned() == round(0.8 * n)
    for name in first:
        assert not torch.any(second[name] & ~first[name])
    # a lower target than already reached keeps the masks unchanged
    assert prunelab.prune(model, "magnitude", sparsity=0.3, masks=second).equal(second)


def test_ties_broken_deterministically_earliest_first():
    scores = [torch.tensor([1.0, 0.5, 0.5, 2.0]), torch.tensor([0.5, 3.0])]
    kept = select_smallest(scores, None, 2)
    assert kept[0].tolist() == [True, False, False, True]
    assert kept[1].tolist() == [True, True]
    kept = select_smallest(scores, None, 3)
    assert kept[1].tolist() == [False, True]
    # already-pruned entries stay pruned and count first
    keep = [torch.tensor([True, True, True, False]), torch.tensor([True, True])]
    kept = select_smallest(scores, keep, 2)
    assert kept[0].tolist() == [True, False, True, False]


def test_zero_and_negative_weights_rank_by_magnitude():
    scores = [torch.tensor([-3.0, 0.0, -0.0, 1.0, -2.0])]
    assert select_smallest(scores, None, 3)[0].tolist() == [True, False, False, False, True]


def test_random_is_seeded_and_exact():
    a = prunelab.prune(_mlp(), "random", sparsity=0.6, seed=3)
    b = prunelab.prune(_mlp(), "random", sparsity=0.6, seed=3)
    c = prunelab.prune(_mlp(), "random", sparsity=0.6, seed=4)
    assert a.equal(b) and not a.equal(c)
    assert a.pruned() == round(0.6 * a.total())


def test_bad_input_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        prunelab.prune(_mlp(), "magnitude", sparsity=1.0)
    with pytest.raises(ConfigError):
        prunelab.prune(_mlp(), "magnitude", sparsity=-0.1)
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        prunelab.prune(_mlp(), "nope", sparsity=0.5)
    with pytest.raises(ConfigError, match="scope"):
        prunelab.prune(_mlp(), "magnitude", sparsity=0.5, scope="neuron")
    with pytest.raises(ConfigError, match="no hyperparameter"):
        prunelab.prune(_mlp(), "magnitude", sparsity=0.5, bogus=1)

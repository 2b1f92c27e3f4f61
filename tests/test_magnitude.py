import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as nn_prune

import prunelab
from prunelab.errors import ConfigError, MethodError
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


def test_layer_scope_prunes_exact_count_per_layer_as_torch_l1_unstructured():
    model, dense = _mlp(), _mlp()
    masks = prunelab.prune(model, "magnitude", sparsity=0.37, scope="layer")
    assert len(masks.per_layer()) == 3
    for name, d in masks.per_layer().items():
        assert d["total"] - d["kept"] == round(0.37 * d["total"]), name
        reference = copy.deepcopy(dense[int(name.split(".")[0])])   # the unpruned layer
        nn_prune.l1_unstructured(reference, "weight", amount=0.37)
        assert torch.equal(masks[name], reference.weight_mask.bool()), name


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


def _reference_keep(scores, keep, k):
    """Exact reference: stable sort of |score| (pruned entries first), prune the first k."""
    flat = torch.cat([s.abs().reshape(-1).double() for s in scores])
    if keep is not None:
        flat[~torch.cat([m.reshape(-1) for m in keep])] = -1.0
    order = torch.sort(flat, stable=True).indices
    kept = torch.ones(flat.numel(), dtype=torch.bool)
    kept[order[:k]] = False
    return list(kept.split([s.numel() for s in scores]))


@pytest.mark.parametrize("k", [1, 37, 500, 1000, 1336])
def test_chunked_bracketed_selection_is_exact_with_ties_across_chunks(monkeypatch, k):
    # Tiny chunks and a tiny sample force the bracketed path, many chunks per tensor and ties
    # spread over several chunks and tensors (values drawn from 40 levels).
    from prunelab.methods import magnitude

    monkeypatch.setattr(magnitude, "CHUNK", 64)
    monkeypatch.setattr(magnitude, "SAMPLE", 50)
    g = torch.Generator().manual_seed(1)
    scores = [(torch.randint(-20, 21, shape, generator=g) / 4.0) for shape in [(30, 40), (7,), (13, 10)]]
    keep = [torch.rand(s.shape, generator=g) > 0.2 for s in scores]
    for current in (None, keep):
        already = 0 if current is None else sum(int((~m).sum()) for m in current)
        kk = max(k, already)
        got = select_smallest(scores, current, kk)
        want = _reference_keep(scores, current, kk)
        for g_mask, w_mask in zip(got, want):
            assert torch.equal(g_mask.reshape(-1), w_mask)
        assert sum(int((~m).sum()) for m in got) == kk


def test_nan_scores_are_rejected_on_every_path(monkeypatch):
    from prunelab.methods import magnitude

    monkeypatch.setattr(magnitude, "CHUNK", 16)
    monkeypatch.setattr(magnitude, "SAMPLE", 8)
    w = torch.arange(100, dtype=torch.float32)
    w[77] = float("nan")  # not in the strided sample (stride 12)
    for k in (0, 5, 60):
        with pytest.raises(ConfigError, match="NaN"):
            select_smallest([w], None, k)

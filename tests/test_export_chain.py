"""Whole-chain native calls (SparseSequential, SparseGraphRun) and graph fusion (BatchNorm folding, fused ReLU,
residual add and pre-activation prologue) in to_sparse: same outputs as dense, fallbacks, autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunelab
from prunelab import models
from prunelab.export import SparseConv2d, SparseLinear, make_permanent, native, sparse_layers, to_sparse
from prunelab.export.chain import SparseSequential

needs_native = pytest.mark.skipif(native.load() is None, reason="native sparse kernel unavailable")


def _pruned(name: str, shape, sparsity: float = 0.9, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = models.create(name, shape, 10, **kwargs).eval()
    masks = prunelab.prune(model, "magnitude", sparsity=sparsity, scope="layer")
    return make_permanent(model, masks).eval()


def _assert_close_relative(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    assert float((got - want).abs().max()) <= rel * float(want.abs().max())


@needs_native
@pytest.mark.parametrize("batch", [1, 5])
def test_mlp_chain_is_one_call_bit_identical_to_layer_by_layer(batch, monkeypatch):
    model = _pruned("mlp", (1, 28, 28), hidden=(64, 32))
    fast = to_sparse(model, policy="always")
    layered = to_sparse(model, policy="always", chain=False)
    assert isinstance(fast, SparseSequential) and type(layered) is type(model)
    assert fast.sparse_report["chains"] == {"": [["fc1", "fc2", "fc3"]]} and layered.sparse_report["chains"] == {}
    assert list(fast.state_dict()) == list(layered.state_dict())   # same names: nothing moved
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, reference = layered(x), model(x)
        # the chain never calls the layers' Python forward
        monkeypatch.setattr(SparseLinear, "forward", lambda self, x: pytest.fail("layer called from Python"))
        got = fast(x)
    assert torch.equal(got, expected)
    _assert_close_relative(got, reference)


@needs_native
def test_cnn_chain_with_fused_pools_equals_dense():
    model = _pruned("lenet5", (1, 28, 28))
    fast = to_sparse(model, policy="always")
    assert fast.sparse_report["chains"] == {"": [["conv1", "conv2", "fc1", "fc2"]]}
    assert {n: (m.relu, getattr(m, "pool", 1)) for n, m in sparse_layers(fast).items()} == {
        "conv1": (True, 2), "conv2": (True, 2), "fc1": (True, 1), "fc2": (False, 1)}
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _assert_close_relative(fast(x), model(x))
        # a new input size (the plans are per shape) and a size a layer rejects: module by module
        with pytest.raises(prunelab.errors.ConfigError):
            fast(torch.randn(1, 1, 4, 4))


@needs_native
def test_chain_follows_buffers_moved_after_conversion():
    model = _pruned("mlp", (1, 28, 28), hidden=(64, 32))
    fast = to_sparse(model, policy="always")
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = fast(x)
        fast.fc2.float()   # new buffer objects in one layer only: the chain's pointers go stale
        fast.fc2.values = fast.fc2.values.clone()
        fast.fc2._reset()
        assert torch.equal(fast(x), before)


@needs_native
def test_resnet_folds_batchnorm_and_fuses_relu_and_residual_adds():
    model = _pruned("resnet18", (3, 8, 8), width=0.125)
    fast = to_sparse(model, policy="always")
    fusion = fast.sparse_report["graph_fusion"]
    assert len(fusion["folded_batchnorm"]) == 8 and all(n.endswith(".bn2") for n in fusion["folded_batchnorm"])
    assert fusion["relu"] == [f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]
    assert len(fusion["residual_add"]) == 8   # one add per block
    # each block's pre-activation BatchNorm + ReLU runs in its conv1 and shortcut
    assert sorted(fusion["prologue"]) == sorted([f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]
                                                + [f"layer{s}.0.shortcut" for s in range(2, 5)])
    assert not [n for n in fast.graph.nodes if n.op == "call_module" and n.target.endswith((".bn1", ".relu1"))]
    assert fast.sparse_report["layers"][0]["name"] == "conv1"   # same layer names as the model
    for batch in (1, 2):
        x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            _assert_close_relative(fast(x), model(x))
    nnz = {n: m.nnz for n, m in sparse_layers(fast).items()}
    assert nnz == {n: int((m.weight != 0).sum()) for n, m in model.named_modules() if n in nnz}   # folding keeps zeros


@needs_native
@pytest.mark.parametrize("batch", [1, 2])
def test_resnet_trunk_is_one_native_call_bit_identical_to_layer_by_layer(batch, monkeypatch):
    model = _pruned("resnet18", (3, 8, 8), width=0.125)
    fast = to_sparse(model, policy="always")
    layered = to_sparse(model, policy="always", chain=False)
    trunk = [f"layer{s}.{b}.{c}" for s in range(1, 5) for b in range(2)
             for c in (("conv1", "conv2", "shortcut") if s > 1 and b == 0 else ("conv1", "conv2"))]
    assert fast.sparse_report["graph_runs"] == {"sparse_run_0": ["conv1", *trunk]}
    assert "graph_runs" not in layered.sparse_report
    assert list(fast.state_dict()) == list(layered.state_dict())   # the run refers to the layers
    x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected, reference = layered(x), model(x)
        monkeypatch.setattr(SparseConv2d, "forward", lambda self, *a: pytest.fail("layer called from Python"))
        got = fast(x)
    assert torch.equal(got, expected)
    _assert_close_relative(got, reference)


def test_without_native_kernel_nothing_is_chained_or_fused(monkeypatch):
    monkeypatch.setenv("PRUNELAB_NATIVE", "0")
    native.reset()
    try:
        model = _pruned("mlp", (1, 28, 28), hidden=(64, 32))
        fast = to_sparse(model, policy="always")
        assert type(fast) is type(model) and fast.sparse_report["chains"] == {}
        resnet = _pruned("resnet18", (3, 8, 8), width=0.125)
        slow = to_sparse(resnet, policy="always")
        assert slow.sparse_report["graph_fusion"]["relu"] == [] and slow.sparse_report["graph_fusion"]["residual_add"] == []
        assert slow.sparse_report["graph_runs"] == {}
        with torch.no_grad():
            x = torch.randn(2, 1, 28, 28)
            _assert_close_relative(fast(x), model(x))
            x = torch.randn(2, 3, 8, 8)
            _assert_close_relative(slow(x), resnet(x))
    finally:
        monkeypatch.delenv("PRUNELAB_NATIVE")
        native.reset()


@pytest.mark.parametrize("name, shape, kwargs", [("mlp", (1, 28, 28), {"hidden": (64, 32)}),
                                                 ("resnet18", (3, 8, 8), {"width": 0.125})])
def test_autograd_through_chains_and_fused_blocks_matches_dense(name, shape, kwargs):
    model = _pruned(name, shape, **kwargs)
    fast = to_sparse(model, policy="always")
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    xs, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast(xs).square().sum().backward()
    model(xd).square().sum().backward()
    _assert_close_relative(xs.grad, xd.grad, 1e-4)
    with torch.inference_mode():   # and the native path again afterwards
        _assert_close_relative(fast(x), model(x))


@needs_native
def test_training_mode_runs_module_by_module():
    model = _pruned("mlp", (1, 28, 28), hidden=(64, 32))
    fast = to_sparse(model, policy="always")
    fast.train()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        _assert_close_relative(fast(x), model(x))   # no Dropout in this MLP: same function


@needs_native
def test_wide_resnet_dropout_is_removed_so_its_trunk_is_one_run():
    model = _pruned("wrn", (3, 8, 8), depth=10, widen_factor=1, dropout=0.3)
    fast = to_sparse(model, policy="always")
    assert fast.sparse_report["graph_fusion"]["dropout_removed"] == [f"layer{s}.0.dropout" for s in range(1, 4)]
    assert list(fast.sparse_report["graph_runs"].values()) == [
        ["conv1", "layer1.0.conv1", "layer1.0.conv2"]   # 16 -> 16 channels: no shortcut conv
        + [f"layer{s}.0.{c}" for s in range(2, 4) for c in ("conv1", "conv2", "shortcut")]]
    for batch in (1, 2):
        x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            _assert_close_relative(fast(x), model(x))

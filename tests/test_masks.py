import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as nn_prune

import prunelab
from prunelab.errors import CheckpointError, MaskError
from prunelab.core.masks import Masks, prunable_parameters
from prunelab.training.loop import TrainConfig, train


def test_prunable_parameters_are_linear_and_conv_weights(tiny_net):
    assert list(prunable_parameters(tiny_net)) == ["conv.weight", "fc1.weight", "fc2.weight"]
    assert list(prunable_parameters(tiny_net, exclude_last=True)) == ["conv.weight", "fc1.weight"]
    assert list(prunable_parameters(tiny_net, exclude_first=True)) == ["fc1.weight", "fc2.weight"]
    assert list(prunable_parameters(tiny_net, exclude=("fc1",))) == ["conv.weight", "fc2.weight"]
    with pytest.raises(MaskError, match="not a prunable layer"):
        prunable_parameters(tiny_net, exclude=("bn",))


def test_counts_and_report(tiny_net):
    masks = Masks.ones(tiny_net)
    assert masks.total() == 4 * 9 + 64 * 16 + 16 * 3 == 1108
    assert masks.sparsity() == 0.0
    masks = prunelab.prune(tiny_net, "magnitude", sparsity=0.25)
    assert masks.pruned() == round(0.25 * 1108) == 277
    layers = masks.per_layer()
    assert sum(d["kept"] for d in layers.values()) == 1108 - 277
    assert "total (prunable weights)" in masks.report()


def test_validate_rejects_wrong_model(tiny_net):
    masks = Masks({"fc1.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(MaskError, match="shape"):
        masks.validate(tiny_net)
    with pytest.raises(MaskError, match="names no parameter"):
        Masks({"nope.weight": torch.ones(1, dtype=torch.bool)}).validate(tiny_net)


OPTIMIZERS = [
    ("sgd", dict(momentum=0.9, weight_decay=5e-4)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=5e-4)),
    ("adam", dict(lr=1e-2, weight_decay=1e-4)),
    ("adamw", dict(lr=1e-2, weight_decay=1e-2)),
]


@pytest.mark.parametrize("name,kw", OPTIMIZERS, ids=["sgd-momentum-wd", "nesterov", "adam", "adamw"])
def test_sparsity_never_drifts_over_200_steps(tiny_net, tiny_data, name, kw):
    masks = prunelab.prune(tiny_net, "magnitude", sparsity=0.8)
    before = masks.clone()
    config = TrainConfig(epochs=25, batch_size=32, optimizer=name, **({"lr": 0.05} | kw), schedule="cosine")
    state = train(tiny_net, tiny_data, config, masks=masks, progress=False)
    assert state.step == 200
    params = dict(tiny_net.named_parameters())
    for n, m in before.items():
        assert torch.all(params[n][~m] == 0), n
        assert int((params[n] != 0).sum()) <= int(m.sum())
        for value in state.optimizer.state[params[n]].values():
            if isinstance(value, torch.Tensor) and value.shape == m.shape:
                assert torch.all(value[~m] == 0), (n, name)
    assert Masks.from_nonzero(tiny_net).pruned() >= round(0.8 * 1108)
    assert masks.equal(before)


def test_deepcopy_pickle_and_state_dict_round_trip(tiny_net):
    masks = prunelab.prune(tiny_net, "magnitude", sparsity=0.6)
    assert copy.deepcopy(masks).equal(masks)
    assert pickle.loads(pickle.dumps(masks)).equal(masks)
    assert Masks.from_state_dict(masks.state_dict()).equal(masks)
    # the masked model itself carries no hooks: deepcopy, pickle and state_dict work as usual
    clone = copy.deepcopy(tiny_net)
    buffer = io.BytesIO()
    torch.save(tiny_net.state_dict(), buffer)
    buffer.seek(0)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    assert Masks.from_nonzero(clone).sparsity() == pytest.approx(masks.sparsity())


def test_save_load_safetensors(tiny_net, tmp_path):
    masks = prunelab.prune(tiny_net, "random", sparsity=0.3)
    path = masks.save(tmp_path / "m.safetensors")
    assert Masks.load(path).equal(masks)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        Masks.load(tmp_path / "bad.safetensors")


def test_nn_utils_prune_interop(tiny_net):
    masks = prunelab.prune(tiny_net, "magnitude", sparsity=0.5)
    other = copy.deepcopy(tiny_net)
    masks.to_nn_prune(other)
    assert hasattr(other.fc1, "weight_orig") and hasattr(other.fc1, "weight_mask")
    x = torch.randn(2, 1, 8, 8)
    tiny_net.eval(), other.eval()
    assert torch.equal(tiny_net(x), other(x))
    back = Masks.from_nn_prune(other, remove=True)
    assert back.equal(masks)
    assert not hasattr(other.fc1, "weight_orig")
    with pytest.raises(MaskError):
        Masks.from_nn_prune(nn.Linear(2, 2))


def test_intersect_and_grads(tiny_net):
    a = prunelab.prune(copy.deepcopy(tiny_net), "random", sparsity=0.5, seed=1)
    b = prunelab.prune(copy.deepcopy(tiny_net), "random", sparsity=0.5, seed=2)
    both = a & b
    for n in a:
        assert torch.equal(both[n], a[n] & b[n])
    tiny_net(torch.randn(4, 1, 8, 8)).sum().backward()
    a.mask_grads(tiny_net)
    assert torch.all(tiny_net.fc1.weight.grad[~a["fc1.weight"]] == 0)

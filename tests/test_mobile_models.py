"""The mobile models (mobilenetv2, efficientnet-b0, mixnet-s): sizes, blocks counted by hand, FLOPs of
grouped convs, export of depthwise convs, and every method on them (depthwise convs included)."""

import pytest
import torch
from torch import nn

import prunelab
from prunelab import models
from prunelab.core import metrics
from prunelab.core.masks import Masks
from prunelab.errors import ModelError
from prunelab.methods.gmp import GradualMagnitudePruning
from prunelab.methods.grda import train_grda
from prunelab.methods.ltp import LearnedThresholds
from prunelab.models.mobile import InvertedResidual, MixedDepthwise, split_channels
from prunelab.training.loop import TrainConfig

MOBILE = ("mobilenetv2", "efficientnet-b0", "mixnet-s")
# name -> (parameters, multiply-accumulates per sample) of the default config on (1, 28, 28), 10 classes
DEFAULT_SIZES = {
    "mobilenetv2": (696_970, 21_093_696),
    "efficientnet-b0": (1_066_568, 26_723_304),
    "mixnet-s": (922_333, 24_303_424),
}
TINY = {"width": 0.25, "depth": 0.25}
SHAPE = (1, 16, 16)


def _tiny(name, seed=0):
    torch.manual_seed(seed)
    return models.create(name, SHAPE, 10, **TINY)


def _data(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _grouped(model):
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups != 1]


# -- the models ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MOBILE)
def test_default_sizes_are_the_documented_ones(name):
    model = models.create(name, (1, 28, 28), 10)
    params, flops = DEFAULT_SIZES[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(r["flops"] for r in metrics.count_flops(model, (1, 28, 28))) == flops
    doc = models.get(name).__doc__
    assert f"{params:,} parameters" in doc and f"{flops:,} multiply-accumulates" in doc


@pytest.mark.parametrize("name", MOBILE)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_models_forward_and_backward(name, shape):
    torch.manual_seed(0)
    model = models.create(name, shape, 10)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert _grouped(model)                                          # depthwise convs are there
    assert models.from_config(model.prunelab_config).prunelab_config == model.prunelab_config


@pytest.mark.parametrize("name", MOBILE)
def test_width_and_depth_options_scale_the_model(name):
    small = models.create(name, SHAPE, 10, **TINY)
    deeper = models.create(name, SHAPE, 10, width=0.25, depth=2.0)
    wider = models.create(name, SHAPE, 10, width=0.5, depth=0.25)
    assert len(deeper.blocks) > len(small.blocks) and len(wider.blocks) == len(small.blocks)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(wider) > count(small)
    with pytest.raises(ModelError, match="width"):
        models.create(name, SHAPE, 10, width=0)
    with pytest.raises(ModelError, match="depth"):
        models.create(name, SHAPE, 10, depth=-1.0)


def test_mobilenetv2_block_parameters_match_a_hand_count():
    block = InvertedResidual(8, 8, 6, (3,), 1, "relu6")
    # expand 1x1: 8*48 + BN 2*48; depthwise 3x3: 48*9 + BN 2*48; project 1x1: 48*8 + BN 2*8
    assert sum(p.numel() for p in block.parameters()) == 384 + 96 + 432 + 96 + 384 + 16 == 1408
    assert block.residual and block.depthwise.convs[0].weight.shape == (48, 1, 3, 3)


def test_mbconv_block_with_squeeze_excite_matches_a_hand_count():
    block = InvertedResidual(8, 16, 6, (5,), 2, "silu", se_ratio=0.25)
    # expand 8*48 + 96; depthwise 48*25 + 96; SE reduce 48*2 + 2, expand 2*48 + 48; project 48*16 + 32
    assert sum(p.numel() for p in block.parameters()) == 384 + 96 + 1200 + 96 + 98 + 144 + 768 + 32 == 2818
    assert not block.residual


def test_mixed_depthwise_splits_channels_over_kernels():
    assert split_channels(10, 3) == [4, 3, 3]
    mixed = MixedDepthwise(10, (3, 5, 7), 1)
    assert sum(p.numel() for p in mixed.parameters()) == 4 * 9 + 3 * 25 + 3 * 49
    assert mixed(torch.randn(2, 10, 6, 6)).shape == (2, 10, 6, 6)
    assert len(MixedDepthwise(2, (3, 5, 7), 2).convs) == 2           # one kernel per channel at most


def test_stochastic_depth_is_off_by_default_and_drops_branches_when_on():
    torch.manual_seed(0)
    block = InvertedResidual(8, 8, 6, (3,), 1, "silu", drop_path=0.5).train()
    x = torch.randn(64, 8, 4, 4)
    dropped = (block(x) == x).flatten(1).all(1)
    assert 0 < int(dropped.sum()) < 64
    model = models.create("efficientnet-b0", SHAPE, 10, **TINY)
    assert all(b.drop_path == 0 for b in model.blocks)


# -- FLOPs and export of grouped convs -------------------------------------------------------
def test_count_flops_of_grouped_and_depthwise_convs_is_out_elems_times_group_fan_in():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8))
    records = metrics.count_flops(model, (4, 6, 6))
    # grouped: 8*6*6 outputs x (4/2)*3*3; depthwise: 8*3*3 outputs x 1*5*5
    assert [r["flops"] for r in records] == [288 * 18, 72 * 25] == [5184, 1800]


def test_to_sparse_converts_grouped_and_depthwise_convs():
    from prunelab.export import to_sparse

    model = _tiny("mobilenetv2").eval()
    prunelab.prune(model, "magnitude", sparsity=0.5)
    fast = to_sparse(model, batch_size=2, policy="always", verify=False)
    left = fast.sparse_report["left_dense"]
    depthwise = [n[:-len(".weight")] for n in _grouped(model)]
    assert depthwise and not any(n in left for n in depthwise), left
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-4)


# -- methods on the mobile models ------------------------------------------------------------
FIRST_CONVS = ("blocks.1.expand.0.weight", "blocks.1.project.0.weight")
ONE_SHOT = [
    ("magnitude", {}),
    ("magnitude", {"scope": "layer"}),
    ("random", {}),
    ("hard-threshold", {"exact": True}),
    ("lobs", {"max_samples": 256}),
    ("feta", {"layers": list(FIRST_CONVS), "search_steps": 2, "max_samples": 256}),
    ("nettrim", {"layers": list(FIRST_CONVS), "search_steps": 2, "search_iters": 20, "max_iters": 40,
                 "max_samples": 256}),
    ("sparsegpt", {}),
    ("wanda", {}),
]


@pytest.mark.parametrize("name", MOBILE)
@pytest.mark.parametrize("method, hparams", ONE_SHOT, ids=lambda v: v if isinstance(v, str) else "")
def test_one_shot_methods_prune_exactly_and_training_keeps_the_sparsity(name, method, hparams):
    model = _tiny(name)
    x, y = _data()
    masks = prunelab.prune(model, method, sparsity=0.5, calib=x, **hparams)
    per_layer = {n: (int((~m).sum()), m.numel()) for n, m in masks.items()}
    if method in ("magnitude", "random") and "scope" not in hparams:
        assert masks.pruned() == round(0.5 * masks.total())
    elif method == "magnitude":
        assert all(pruned == round(0.5 * n) for pruned, n in per_layer.values())
    else:                                                           # every layer but the last, or those named
        chosen = hparams.get("layers") or list(masks)[:-1]
        for layer, (pruned, n) in per_layer.items():
            assert pruned == (n - round(0.5 * n) if layer in chosen else 0), layer
    before = masks.pruned()
    prunelab.train(model, (x, y), TrainConfig(epochs=1, batch_size=8, lr=0.05), masks=masks, progress=False)
    assert masks.pruned() == before
    assert Masks.from_nonzero(model).pruned() >= before
    for layer, param in prunelab.core.prunable.prunable_parameters(model).items():
        assert not bool(param.detach()[~masks[layer]].any())


@pytest.mark.parametrize("method, hparams", [("lobs", {}), ("feta", {"search_steps": 2}),
                                             ("nettrim", {"search_steps": 2, "search_iters": 20, "max_iters": 40})])
def test_layerwise_methods_prune_grouped_convs_group_by_group(method, hparams):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=3),
                          nn.ReLU(), nn.Conv2d(6, 6, 5, padding=2, groups=6), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 5 * 5, 3))
    x = torch.randn(12, 2, 5, 5)
    pruner = prunelab.methods.create(method, layers=["2.weight", "4.weight"], **hparams)
    masks = pruner.prune(model, None, 0.5, x)
    # 2.weight: 3 groups of (2 out x 2*9 in) = 36 each, 54 kept of 108 -> 18 per group;
    # 4.weight: 6 depthwise groups of 25, 75 kept of 150 -> 13, 13, 13, 12, 12, 12
    kept_2 = masks["2.weight"].reshape(3, -1).sum(1).tolist()
    kept_4 = masks["4.weight"].reshape(6, -1).sum(1).tolist()
    assert kept_2 == [18, 18, 18] and kept_4 == [13, 13, 13, 12, 12, 12]
    assert bool(masks["0.weight"].all()) and bool(masks["7.weight"].all())
    info = {i["layer"]: i for i in pruner.last_info}
    assert info["4.weight"]["groups"] == 6 and len(info["4.weight"]["per_group"]) == 6
    assert info["4.weight"]["kept"] == 75
    for name in ("2.weight", "4.weight"):
        assert not bool(dict(model.named_parameters())[name].detach()[~masks[name]].any())


def test_a_depthwise_group_with_dead_inputs_keeps_its_largest_weights_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(50, 3))
    x = torch.randn(8, 2, 5, 5)
    x[:, 1] = 0                                                     # channel 1 never fires
    before = model[0].weight.detach().clone()
    pruner = prunelab.methods.create("lobs", layers=["0.weight"])
    masks = pruner.prune(model, None, 0.5, x)
    dead = masks["0.weight"][1].flatten()
    assert masks["0.weight"].reshape(2, -1).sum(1).tolist() == [5, 4]
    assert dead.tolist() == (before[1].abs().flatten() >= before[1].abs().flatten().sort().values[5]).tolist()
    assert torch.equal(model[0].weight.detach()[1][masks["0.weight"][1]], before[1][masks["0.weight"][1]])
    assert pruner.last_info[0]["per_group"][1] == {"dead_inputs": True}


def test_group_keep_counts_share_the_layer_count_equally():
    from prunelab.methods.layerwise.driver import group_keep_counts

    assert group_keep_counts([9, 9, 9], 14) == [5, 5, 4]
    assert group_keep_counts([2, 9, 9], 15) == [2, 7, 6]             # a sparse group gives way
    assert sum(group_keep_counts([3, 0, 5, 4], 12)) == 12


@pytest.mark.parametrize("name", MOBILE)
def test_gmp_reaches_its_exact_target(name):
    model = _tiny(name)
    masks = Masks.ones(model)
    schedule = GradualMagnitudePruning(0.5, begin_step=0, end_step=2, frequency=1)
    prunelab.train(model, _data(), TrainConfig(epochs=2, batch_size=8, lr=0.05), masks=masks,
                   callbacks=[schedule], progress=False)
    assert masks.pruned() == round(0.5 * masks.total())
    for layer, param in prunelab.core.prunable.prunable_parameters(model).items():
        assert not bool(param.detach()[~masks[layer]].any())


@pytest.mark.parametrize("name", MOBILE)
def test_ltp_thresholds_train_and_give_an_exact_hard_model(name):
    x, y = _data()
    ltp = LearnedThresholds(_tiny(name), penalty_weight=3.0, log=lambda message: None)
    optimizer = torch.optim.SGD(ltp.parameter_groups(threshold_lr=5.0), lr=0.05)
    for start in (0, 8):
        loss = nn.functional.cross_entropy(ltp.model(x[start:start + 8]), y[start:start + 8])
        (loss + ltp.penalty_term()).backward()
        optimizer.step()
        optimizer.zero_grad()
        ltp.step()
    pruned, masks = ltp.hard_model(target_compression=2.0)
    assert masks.pruned() == round(0.5 * masks.total())
    for layer, param in prunelab.core.prunable.prunable_parameters(pruned).items():
        assert not bool(param.detach()[~masks[layer]].any())


@pytest.mark.parametrize("name", MOBILE)
def test_grda_trains_to_exact_zeros(name):
    model = _tiny(name)
    records, _ = train_grda(model, _data(), TrainConfig(epochs=1, batch_size=8, lr=0.05), c=0.5, mu=0.55,
                            schedule="constant")
    masks = Masks.from_nonzero(model)
    assert len(records) == 1 and records[0]["sparsity"] == masks.sparsity() > 0
    assert sum(int((~masks[n]).sum()) for n in _grouped(model)) > 0    # depthwise weights are thresholded too


@pytest.mark.parametrize("name", MOBILE)
@pytest.mark.parametrize("method", ["os", "lt", "sap"])
def test_iterative_methods_reach_their_target_exactly_on_mobile_models(name, method):
    import copy

    from prunelab.data import Split
    from prunelab.methods.base import MethodContext

    x, y = _data()
    data = prunelab.data.Dataset("synthetic", Split(x, y), Split(x[:8], y[:8]), Split(x[8:], y[8:]), in_shape=SHAPE,
                                 num_classes=10, source="memory")
    config = TrainConfig(epochs=1, batch_size=8, lr=0.05)
    rounds = {"os": {"rounds": 4, "record_grid": False}, "lt": {"rounds": 4, "record_grid": False},
              "sap": {"rounds": 12}}[method]
    dense = _tiny(name)
    ctx = MethodContext(data=data, model_factory=lambda: _tiny(name, seed=1), init_state=_tiny(name, seed=1).state_dict(),
                        dense_model=copy.deepcopy(dense), target=0.5, train_config=config, retrain_config=config,
                        seed=0, log=lambda line: None)
    outcome = prunelab.methods.create(method, epochs=1, **rounds).run(ctx)
    masks = outcome.masks
    assert masks.pruned() == round(0.5 * masks.total())
    params = dict(outcome.model.named_parameters())
    assert set(_grouped(outcome.model)) <= set(masks)                # depthwise layers are pruned too
    for layer, keep in masks.items():
        assert not bool(params[layer].detach()[~keep].any())

"""Tests of prunelab.models: every registered model (timm style) plus exact architecture facts."""

import copy
import json
import math

import pytest
import torch
from torch import nn

from prunelab import models
from prunelab.errors import ModelError, PrunelabError

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]

# Small options so that the whole file stays fast on one core; a model missing here is tested
# at its defaults (so a newly registered model is covered the day it is added).
TINY = {
    "cnn": {"widths": [4, 8, 8, 16]},
    "conv6": {"widths": [4, 8, 8], "dense": [16, 8]},
    "vgg16": {"width": 0.0625},
    "resnet18": {"width": 0.0625},
    "wrn": {"depth": 10, "widen_factor": 1},
}

#: Language models take token ids of shape (context,), not images: tests/test_gpt_model.py covers them.
LANGUAGE_MODELS = {"gpt", "hf-gpt2"}
ALL = [name for name in models.registry.list() if name not in LANGUAGE_MODELS]


def tiny(name, shape, num_classes=5, **extra):
    return models.create(name, shape, num_classes, **{**TINY.get(name, {}), **extra})


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- every model


def test_registry_lists_the_documented_models():
    assert not hasattr(models, "list") and not hasattr(models, "list_models")  # no shadowed builtin
    assert ALL == sorted(ALL)
    assert set(ALL) >= {
        "linear", "mlp", "lenet-300-100", "fc", "lenet5", "cnn", "conv6", "vgg16", "resnet18", "wrn",
    }


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ALL)
def test_forward_shape_and_every_parameter_gets_a_gradient(name, shape):
    torch.manual_seed(0)
    model = tiny(name, shape)
    assert model.training
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 5)
    out.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    model.eval()
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ALL)
def test_config_is_json_and_rebuilds_the_same_architecture(name, shape):
    model = tiny(name, shape)
    cfg = model.prunelab_config
    assert set(cfg) == {"name", "kwargs", "in_shape", "num_classes"}
    assert cfg["name"] == name and cfg["in_shape"] == [*shape] and cfg["num_classes"] == 5
    assert set(cfg["kwargs"]) == set(models.defaults(name))  # every default recorded
    back = json.loads(json.dumps(cfg))
    assert back == cfg  # already plain JSON: lists, not tuples
    by_keywords = models.create(back["name"], tuple(back["in_shape"]), back["num_classes"], **back["kwargs"])
    for rebuilt in (models.create(**back), models.from_config(back), by_keywords):
        assert rebuilt.prunelab_config == cfg
        a, b = model.state_dict(), rebuilt.state_dict()
        assert [*a] == [*b]
        assert [t.shape for t in a.values()] == [t.shape for t in b.values()]
        assert type(rebuilt) is type(model)


@pytest.mark.parametrize("name", ALL)
def test_init_is_deterministic_under_manual_seed(name):
    def build(seed):
        torch.manual_seed(seed)
        return tiny(name, (3, 32, 32)).state_dict()

    a, b, c = build(7), build(7), build(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", ALL)
def test_create_leaves_training_state_untouched(name):
    # The dry forward must not move BN statistics nor switch the model to eval mode.
    model = tiny(name, (1, 8, 8))
    assert all(m.training for m in model.modules())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))


@pytest.mark.parametrize("name", ALL)
def test_copies_keep_the_config(name):
    model = tiny(name, (1, 8, 8))
    assert copy.deepcopy(model).prunelab_config == model.prunelab_config


# --------------------------------------------------------------------------- exact counts


@pytest.mark.parametrize(
    "name, kwargs, shape, expected",
    [
        ("linear", {}, (1, 28, 28), 784 * 10 + 10),
        ("mlp", {}, (1, 28, 28), (784 * 128 + 128) + (128 * 256 + 256) + (256 * 10 + 10)),  # 136,074
        ("mlp", {"hidden": (512,)}, (1, 28, 28), (784 * 512 + 512) + (512 * 10 + 10)),  # gRDA demo
        ("lenet-300-100", {}, (1, 28, 28), 266_610),
        ("lenet5", {}, (1, 28, 28), 431_080),
        ("fc", {}, (1, 28, 28), 89_610),
        ("fc", {"hidden": (60, 60)}, (1, 28, 28), (784 * 60 + 60) + (60 * 60 + 60) + (60 * 10 + 10)),
        # Pitas CIFAR CNN: 6 convs (2,915,114 total with 1024-512 dense, 10 classes).
        ("conv6", {}, (3, 32, 32),
         (3 * 32 * 9 + 32) + (32 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64)
         + (64 * 128 * 9 + 128) + (128 * 128 * 9 + 128) + (2048 * 1024 + 1024) + (1024 * 512 + 512)
         + (512 * 10 + 10)),
        # Pre-activation ResNet18 with a final BN (1,024 params) before pooling.
        ("resnet18", {}, (3, 32, 32), 11_172_170),
        # VGG16 CIFAR with the 512-512 classifier (dnn-mode-connectivity), no BN.
        ("vgg16", {}, (3, 32, 32), 15_245_130),
        ("wrn", {"depth": 16, "widen_factor": 1}, (3, 32, 32), 175_066),
    ],
)
def test_exact_parameter_counts(name, kwargs, shape, expected):
    assert n_params(models.create(name, shape, 10, **kwargs)) == expected


def test_wrn_28_10_has_the_published_size():
    # Zagoruyko & Komodakis report 36.5M for WRN-28-10 on CIFAR-10. The count does not depend on
    # the spatial size, so a small input keeps the dry forward cheap.
    assert n_params(models.create("wrn", (3, 8, 8), 10)) == 36_479_194


def test_lenet5_layout_and_automatic_padding():
    big = models.create("lenet5", (1, 28, 28), 10)
    assert big.conv1.padding == (0, 0) and big.fc1.in_features == 800  # 50 × 4 × 4, Caffe's ip1
    small = models.create("lenet5", (1, 8, 8), 10)
    assert small.conv1.padding == (2, 2) and small.fc1.in_features == 50 * 2 * 2
    forced = models.create("lenet5", (1, 28, 28), 10, padding=2)
    assert forced.fc1.in_features == 50 * 7 * 7
    kinds = [type(m).__name__ for m in big]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                     "Linear", "ReLU", "Linear"]


def test_fc_layout_dropout_on_input_and_after_each_hidden_layer():
    model = models.create("fc", (1, 28, 28), 10)
    layout = [(n, type(m).__name__) for n, m in model.named_children()]
    assert layout == [
        ("flatten", "Flatten"), ("drop0", "Dropout"), ("fc1", "Linear"), ("relu1", "ReLU"),
        ("drop1", "Dropout"), ("fc2", "Linear"), ("relu2", "ReLU"), ("drop2", "Dropout"),
        ("fc3", "Linear"),
    ]
    assert all(m.p == 0.2 for m in model if isinstance(m, nn.Dropout))
    assert model.max_norm == 3.0 and model.max_norm_layers == ("fc1", "fc2")


def test_conv6_names_follow_the_depth_study_layers():
    model = models.create("conv6", (3, 32, 32), 10)
    weights = [n for n, p in model.named_parameters() if p.dim() > 1]
    assert weights == [f"conv{i}.weight" for i in range(1, 7)] + [f"fc{i}.weight" for i in range(1, 4)]
    assert model.fc1.in_features == 128 * 4 * 4
    assert model.max_norm_layers == ("fc1", "fc2")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3 + 3


def test_cnn_layout_matches_the_pq_index_code():
    model = models.create("cnn", (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3  # last block unpooled
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert model.fc.in_features == 512


def test_cnn_batch_norm_switch_drops_only_the_bn_layers():
    torch.manual_seed(0)
    bn = models.create("cnn", (1, 28, 28), 10, widths=[4, 8, 8, 16])
    torch.manual_seed(0)
    plain = models.create("cnn", (1, 28, 28), 10, widths=[4, 8, 8, 16], batch_norm=False)
    assert bn.prunelab_config["kwargs"]["batch_norm"] is True
    assert plain.prunelab_config["kwargs"]["batch_norm"] is False
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 4
    weights = {n: p for n, p in bn.named_parameters() if not n.startswith("bn")}
    assert list(weights) == [n for n, _ in plain.named_parameters()]
    for name, p in plain.named_parameters():  # same convs, same initialisation
        assert torch.equal(p, weights[name])
    assert plain(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert models.from_config(plain.prunelab_config).prunelab_config == plain.prunelab_config
    with pytest.raises(ModelError):
        models.create("cnn", (1, 28, 28), 10, batch_norm=1)


def test_vgg16_batch_norm_switch_and_classifier():
    plain = models.create("vgg16", (3, 32, 32), 10, width=0.125)
    bn = models.create("vgg16", (3, 32, 32), 10, width=0.125, batch_norm=True)
    assert sum(isinstance(m, nn.Conv2d) for m in plain.modules()) == 13
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 13
    assert [type(m).__name__ for m in plain][-7:] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear",
                                                     "ReLU", "Linear"]


def test_resnet18_is_preactivation_with_a_cifar_stem():
    model = models.create("resnet18", (3, 32, 32), 10, width=0.25)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert [getattr(model, f"layer{i}")[0].conv1.out_channels for i in range(1, 5)] == [16, 32, 64, 128]
    # Pre-activation: a block's first module is BN over its input channels.
    assert isinstance(model.layer2[0].bn1, nn.BatchNorm2d) and model.layer2[0].bn1.num_features == 16


def test_wrn_depth_gives_blocks_per_stage():
    model = models.create("wrn", (3, 32, 32), 10, depth=16, widen_factor=2)
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [2, 2, 2]
    assert model.fc.in_features == 64 * 2


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("name, kwargs", [
    ("cnn", {}), ("resnet18", {"width": 0.25}), ("wrn", {"depth": 10, "widen_factor": 2}),
    ("vgg16", {"width": 0.25, "batch_norm": True}), ("linear", {}), ("mlp", {}),
])
def test_sap_init(name, kwargs):
    torch.manual_seed(0)
    model = models.create(name, (3, 32, 32), 10, **kwargs)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0
    big = max((m for m in model.modules() if isinstance(m, nn.Conv2d)), key=lambda m: m.weight.numel(),
              default=None)
    if big is not None:  # kaiming normal, fan_out: std = sqrt(2 / (out · kh · kw))
        fan_out = big.out_channels * big.kernel_size[0] * big.kernel_size[1]
        assert big.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
        assert big.weight.mean().abs().item() < 0.1 * math.sqrt(2 / fan_out)


def test_pytorch_default_init_elsewhere():
    torch.manual_seed(0)
    model = models.create("lenet5", (1, 28, 28), 10)
    bound = 1 / math.sqrt(1 * 5 * 5)  # PyTorch's default conv init is U(-1/sqrt(fan_in), +)
    assert model.conv1.weight.abs().max().item() <= bound
    assert torch.count_nonzero(model.conv1.bias) > 0


# --------------------------------------------------------------------------- max-norm


def _set_rows(weight, norms):
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        rows = torch.randn(weight.shape, generator=g)
        rows /= rows.norm(dim=1, keepdim=True)
        weight.copy_(rows * torch.tensor(norms)[:, None])


@pytest.mark.parametrize("name, layers", [("fc", ("fc1", "fc2")), ("conv6", ("fc1", "fc2"))])
def test_max_norm_caps_rows_and_leaves_other_rows_untouched(name, layers):
    model = tiny(name, (1, 8, 8))
    before = {}
    for layer in layers:
        w = model.get_submodule(layer).weight
        rows = w.shape[0]
        norms = [10.0 if i % 3 == 0 else 0.5 + 2.0 * i / rows for i in range(rows)]  # > 3 every 3rd row
        _set_rows(w, norms)
        with torch.no_grad():
            w[1].zero_()  # a pruned row stays zero
        before[layer] = w.detach().clone()
    others = {n: p.detach().clone() for n, p in model.named_parameters()
              if n.split(".")[0] not in layers or n.endswith("bias")}
    model.apply_constraint()
    for layer in layers:
        w, old = model.get_submodule(layer).weight.detach(), before[layer]
        norms, old_norms = w.norm(dim=1), old.norm(dim=1)
        assert torch.all(norms <= 3.0 + 1e-6)
        capped = old_norms > 3.0
        assert capped.any() and (~capped).any()
        assert torch.equal(w[~capped], old[~capped])  # bit-identical, unlike Keras' eps formula
        assert torch.allclose(norms[capped], torch.full_like(norms[capped], 3.0), atol=1e-6)
        # direction kept
        cos = torch.nn.functional.cosine_similarity(w[capped], old[capped], dim=1)
        assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)
    for n, p in model.named_parameters():
        if n in others:
            assert torch.equal(p, others[n]), n  # output layer, convs and biases unconstrained


def test_max_norm_is_per_output_unit_row_not_column():
    # Keras MaxNorm(axis=0) on an (in, out) kernel = one norm per output unit = a torch ROW.
    model = models.create("fc", (1, 2, 2), 3, hidden=(2,))
    w = model.fc1.weight  # (2, 4): rows of norm 2.0 (kept); each column has norm sqrt(2)
    with torch.no_grad():
        w.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    model.max_norm = 1.5  # rows (norm 2) exceed, columns (norm 1.41) would not
    model.apply_constraint()
    assert torch.allclose(w.norm(dim=1), torch.tensor([1.5, 1.5]))


def test_max_norm_none_disables_the_constraint():
    model = models.create("fc", (1, 8, 8), 10, max_norm=None)
    _set_rows(model.fc1.weight, [10.0] * 100)
    before = model.fc1.weight.detach().clone()
    model.apply_constraint()
    assert torch.equal(model.fc1.weight, before)
    assert model.prunelab_config["kwargs"]["max_norm"] is None


def test_max_norm_function_on_conv_weights_views_out_by_rest():
    w = torch.ones(4, 2, 3, 3)  # each output filter has norm sqrt(18) ≈ 4.24
    models.max_norm_(w, 3.0)
    assert torch.allclose(w.reshape(4, -1).norm(dim=1), torch.full((4,), 3.0))


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_the_known_models():
    with pytest.raises(ModelError) as info:
        models.create("lenet6", (1, 28, 28), 10)
    msg = str(info.value)
    assert "lenet6" in msg and all(name in msg for name in ALL)
    assert "did you mean 'lenet5'" in msg
    assert isinstance(info.value, PrunelabError)


def test_names_are_case_insensitive():
    assert models.create("LeNet5", (1, 28, 28), 10).prunelab_config["name"] == "lenet5"


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(ModelError, match=r"unknown option\(s\) hiden; it accepts: hidden=\[128, 256\]"):
        models.create("mlp", (1, 28, 28), 10, hiden=(64,))
    with pytest.raises(ModelError, match="accepts: no options"):
        models.create("linear", (1, 28, 28), 10, bias=False)


@pytest.mark.parametrize("name, shape, kwargs", [
    ("cnn", (1, 4, 4), {"widths": [4, 4, 4, 4]}),  # 4 → 2 → 1 → pool fails
    ("lenet5", (1, 8, 8), {"padding": 0}),  # 5×5 conv on a 2×2 map
    ("conv6", (3, 4, 4), TINY["conv6"]),  # three pools: 4 → 2 → 1 → 0
    ("lenet5", (1, 2, 2), {}),
])
def test_too_small_input_is_a_model_error(name, shape, kwargs):
    with pytest.raises(ModelError, match=r"cannot take inputs of shape"):
        models.create(name, shape, 10, **kwargs)


@pytest.mark.parametrize("name, kwargs, fragment", [
    ("fc", {"dropout": 1.5}, "dropout must be a probability"),
    ("fc", {"max_norm": -1}, "max_norm must be a positive number or None"),
    ("mlp", {"hidden": []}, "hidden must be a non-empty sequence"),
    ("mlp", {"hidden": [128, "a"]}, "hidden must be"),
    ("wrn", {"depth": 27}, "depth must be 6n"),
    ("vgg16", {"width": 0}, "width must be a positive number"),
    ("vgg16", {"batch_norm": "yes"}, "batch_norm must be true or false"),
    ("lenet5", {"padding": -1}, "padding must be"),
    ("mlp", {"hidden": torch.tensor([3])}, "must be a number, string, bool"),
])
def test_bad_option_values_are_model_errors(name, kwargs, fragment):
    with pytest.raises(ModelError, match=fragment):
        models.create(name, (3, 32, 32), 10, **kwargs)


@pytest.mark.parametrize("shape, classes, fragment", [
    ((784,), 10, r"needs an input shape \(channels, height, width\)"),
    ((3, 0, 32), 10, "positive integers"),
    ("3x32x32", 10, "positive integers"),
    ((3, 32, 32), 0, "num_classes must be a positive integer"),
    ((3, 32, 32), True, "num_classes must be a positive integer"),
])
def test_bad_shape_or_classes(shape, classes, fragment):
    with pytest.raises(ModelError, match=fragment):
        models.create("cnn", shape, classes)


def test_flat_models_take_any_rank_of_input():
    model = models.create("mlp", (20,), 3)
    assert model(torch.randn(4, 20)).shape == (4, 3)


def test_config_dict_missing_a_key():
    with pytest.raises(ModelError, match="lacks num_classes"):
        models.from_config({"name": "mlp", "in_shape": [1, 28, 28]})


def test_kwargs_dict_and_keywords_together_are_rejected():
    with pytest.raises(ModelError, match="not both"):
        models.create("mlp", (1, 28, 28), 10, kwargs={"hidden": [3]}, hidden=[4])


# --------------------------------------------------------------------------- registration


def test_register_a_new_model_and_reject_duplicates(monkeypatch):
    monkeypatch.setattr(models.registry, "_entries", dict(models.registry._entries))

    @models.register("test-tiny")
    def _tiny(in_shape, num_classes, *, hidden=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))

    model = models.create("test-tiny", (2, 3), 4, hidden=6)
    assert model.prunelab_config == {"name": "test-tiny", "kwargs": {"hidden": 6}, "in_shape": [2, 3],
                                      "num_classes": 4}
    assert "test-tiny" in models.registry.list() and models.get("Test-Tiny") is _tiny
    with pytest.raises(ModelError, match="already registered"):
        models.register("test-tiny")(_tiny)


def test_register_rejects_options_without_defaults():
    def bad(in_shape, num_classes, *, hidden):
        raise AssertionError("never called")

    with pytest.raises(ModelError, match="signature"):
        models.register("test-bad")(bad)
    assert "test-bad" not in models.registry


def test_defaults_in_json_form():
    assert models.defaults("mlp") == {"hidden": [128, 256]}
    assert models.defaults("fc") == {"hidden": [100, 100], "dropout": 0.2, "max_norm": 3.0}
    assert models.defaults("linear") == {}

"""Sparse convolutions beyond groups=1 (grouped, depthwise, ceil-mode pooling), the calibrated
cost model and its cache, and to_sparse's "auto" policy deciding from it."""

import json

import pytest
import torch
from torch import nn

from prunelab import models
from prunelab.errors import ConfigError
from prunelab.export import SparseConv2d, SparseLinear, costmodel, decide, native, sparse_layers, to_sparse
from prunelab.export.convert import _layers

BACKENDS = ["torch"] + (["native"] if native.load() is not None else [])
TOL = dict(atol=1e-5, rtol=1e-5)


def _sparse_(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.mul_(torch.rand(module.weight.shape, generator=g) >= sparsity)
    return module


GROUPED = [
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),              # depthwise
    dict(in_channels=8, out_channels=16, kernel_size=3, padding=1, groups=8, stride=2),   # multiplier 2
    dict(in_channels=6, out_channels=9, kernel_size=(3, 2), padding=(1, 0), groups=3, dilation=2),
    dict(in_channels=12, out_channels=8, kernel_size=1, groups=4),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", range(len(GROUPED)))
def test_grouped_and_depthwise_conv_equal_dense(backend, spec):
    torch.manual_seed(spec)
    for bias in (True, False):
        dense = _sparse_(nn.Conv2d(**GROUPED[spec], bias=bias), 0.6, seed=spec)
        layer = SparseConv2d(dense, backend=backend, relu=True)
        assert layer.nnz == dense.weight.count_nonzero() and layer.groups == dense.groups
        for shape in ((1, 9, 11), (5, 8, 8), (17, 7, 6)):
            x = torch.randn(shape[0], dense.in_channels, *shape[1:])
            with torch.no_grad():
                torch.testing.assert_close(layer(x), dense(x).relu(), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_ceil_mode_pooling_equals_dense(backend):
    torch.manual_seed(5)
    dense = _sparse_(nn.Conv2d(3, 5, 3, padding=1), 0.7)
    for pool in (2, 3):
        layer = SparseConv2d(dense, backend=backend, relu=True, pool=pool, pool_ceil=True)
        for shape in ((1, 7, 9), (9, 10, 5), (2, 2, 2)):   # odd sizes keep partial windows
            x = torch.randn(shape[0], 3, *shape[1:])
            expected = nn.functional.max_pool2d(dense(x).relu(), pool, ceil_mode=True)
            with torch.no_grad():
                got = layer(x)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.skipif("native" not in BACKENDS, reason="native kernel unavailable (no C compiler?)")
@pytest.mark.parametrize("batch", [1, 3, 8, 13])
def test_native_conv_tiles_match_dense_on_wide_and_strided_layers(batch):
    """Rows of 32+ lanes (row tiles), short rows (wide tiles), stride 2 phases, both thread paths."""
    torch.manual_seed(batch)
    for stride, size, threads in ((1, 32, 1), (2, 17, 2), (1, 4, 2), (3, 11, 1)):
        dense = _sparse_(nn.Conv2d(16, 24, 3, stride=stride, padding=1, bias=True), 0.9, seed=stride)
        layer = SparseConv2d(dense, threads=threads)
        x = torch.randn(batch, 16, size, size)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), dense(x), **TOL)


@pytest.mark.skipif("native" not in BACKENDS, reason="native kernel unavailable (no C compiler?)")
def test_native_threads_follow_torch_unless_fixed(monkeypatch):
    layer = SparseLinear(_sparse_(nn.Linear(20, 30), 0.8))
    fixed = SparseLinear(_sparse_(nn.Linear(20, 30), 0.8), threads=3)
    assert layer.threads is None and fixed.threads == 3
    seen = []
    real = native.load().pl_sparse_forward

    def spy(d, batch, x, y, threads):
        seen.append(threads)
        return real(d, batch, x, y, threads)

    x = torch.randn(4, 20)
    with torch.no_grad():
        layer(x)                                   # builds the fast path
        layer._fast = (spy, layer._fast[1])
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            layer(x)
            torch.set_num_threads(1)
            layer(x)
        finally:
            torch.set_num_threads(before)
    assert seen == [2, 1]


# ----------------------------------------------------------------------------------- cost model


def test_cost_model_is_cached_with_its_fingerprint(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    calls = []
    fake = costmodel.CostModel({k: {c: {"dense_rate": 10.0, "sparse_rate": 5.0, "dense_us0": 1.0, "sparse_us0": 2.0}
                                    for c in ("small", "large")} for k in ("conv", "linear")}, {})

    def calibrate(backend, threads):
        calls.append((backend, threads))
        return costmodel.CostModel(fake.params, costmodel.fingerprint(backend, threads))

    monkeypatch.setattr(costmodel, "calibrate", calibrate)
    costmodel.forget()
    try:
        first = costmodel.load("torch", 1)
        files = list((tmp_path / "costmodel").iterdir())
        assert calls == [("torch", 1)] and len(files) == 1
        stored = json.loads(files[0].read_text())
        assert stored["fingerprint"] == costmodel.fingerprint("torch", 1) and stored["params"] == fake.params
        costmodel.forget()
        assert costmodel.load("torch", 1).params == first.params and calls == [("torch", 1)]   # from the file
        costmodel.load("torch", 2)                                  # another thread count: calibrated anew
        assert calls == [("torch", 1), ("torch", 2)] and len(list((tmp_path / "costmodel").iterdir())) == 2
        files[0].write_text("{ damaged")
        costmodel.forget()
        costmodel.load("torch", 1)
        assert calls[-1] == ("torch", 1) and len(calls) == 3
        # 100 MACs at 10 per µs + 1 µs against 10 non-zero MACs at 5 per µs + 2 µs
        assert first.predict("linear", 64, 100, 10) == {"dense_us": 11.0, "sparse_us": 4.0, "speedup": 2.75}
    finally:
        costmodel.forget()


def test_layer_macs_counts_positions_and_nonzeros():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
    assert costmodel.layer_macs(conv, (4, 9, 9), 3) == (3 * 25 * conv.weight.numel(), 3 * 25)
    linear = nn.Linear(5, 7)
    assert costmodel.layer_macs(linear, (11, 5), 2) == (2 * 11 * 35, 2 * 11 * 35)


def _fixed_model(speedup: float) -> costmodel.CostModel:
    """A model whose every prediction has this speedup (overheads 0, rates in ratio)."""
    class Fixed(costmodel.CostModel):
        def predict(self, kind, batch, macs, nnz_macs):
            return {"dense_us": 1000.0 * speedup, "sparse_us": 1000.0, "speedup": speedup}
    return Fixed({}, {})


@pytest.mark.parametrize("speedup,expected", [(5.0, "sparse"), (0.3, "dense")])
def test_auto_decides_sure_layers_from_the_model_without_timing(monkeypatch, speedup, expected):
    torch.manual_seed(0)
    model = models.create("lenet5", (1, 28, 28), 10)
    monkeypatch.setattr(costmodel, "load", lambda backend, threads: _fixed_model(speedup))
    timed = []
    real = decide.timing.interleaved
    monkeypatch.setattr(decide.timing, "interleaved", lambda fns, **kw: timed.append(sorted(fns)) or real(fns, **kw))
    fast = to_sparse(model, batch_size=4, verify=False)
    layers = fast.sparse_report["layers"]
    assert not timed and all(e["decided_by"] == "model" for e in layers)
    assert all((e["choice"] != "dense") == (expected == "sparse") for e in layers)
    assert len(sparse_layers(fast)) == (len(layers) if expected == "sparse" else 0)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model.eval()(x), **TOL)


def test_auto_times_only_uncertain_layers_within_the_budget(monkeypatch):
    torch.manual_seed(0)
    model = models.create("lenet-300-100", (1, 28, 28), 10)
    monkeypatch.setattr(costmodel, "load", lambda backend, threads: _fixed_model(1.1))
    fast = to_sparse(model, batch_size=2, reps=5)
    for entry in fast.sparse_report["layers"]:
        assert entry["decided_by"] == "timing" and set(entry["median_us"]) == {"dense", "sparse"}
        medians = entry["median_us"]
        wanted = medians["sparse"] < 0.95 * medians["dense"] and not fast.sparse_report["reverted"]
        assert (entry["choice"] != "dense") == wanted
    spent = to_sparse(model, batch_size=2, reps=5, time_budget=0.0)
    assert {e["decided_by"] for e in spent.sparse_report["layers"]} == {"model (timing budget spent)"}
    assert all(e["choice"] != "dense" for e in spent.sparse_report["layers"])   # 1.1 >= 1 + margin
    assert "does not allow" in spent.sparse_report["verify_skipped"]


def test_auto_converts_a_resnet_without_timing_sure_layers(monkeypatch):
    """The real cost model on a narrow ResNet-18: the zero-sparsity stem is left dense by the
    model or by one short timing, and the 90 % layers become sparse; outputs stay exact."""
    torch.manual_seed(0)
    model = models.create("resnet18", (3, 16, 16), 10, width=0.25).eval()
    for i, (_, module) in enumerate(m for m in model.named_modules() if isinstance(m[1], (nn.Conv2d, nn.Linear))):
        if i:
            _sparse_(module, 0.9, seed=i)
    fast = to_sparse(model, batch_size=8, time_budget=2.0)
    report = fast.sparse_report
    assert report["seconds"] < 30 and {e["decided_by"] for e in report["layers"]} <= {"model", "timing",
                                                                                       "model (timing budget spent)"}
    assert all("predicted" in e for e in report["layers"])
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), **TOL)


def test_vgg_pooling_with_ceil_mode_is_fused():
    model = models.create("vgg16", (3, 32, 32), 10, width=0.125).eval()
    found = {e["name"]: e for e in _layers(model)}
    assert found["conv2"]["pool"] == "pool1" and found["conv2"]["pool_ceil"] is True
    fast = to_sparse(model, policy="always")
    assert sparse_layers(fast)["conv2"].pool == 2 and isinstance(fast.pool1, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), **TOL)


def test_unknown_policy_is_refused():
    with pytest.raises(ConfigError, match="measure"):
        to_sparse(nn.Sequential(nn.Linear(3, 2)), policy="fastest")


@pytest.mark.skipif("native" not in BACKENDS, reason="native kernel unavailable (no C compiler?)")
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_native_shift_mode_with_prologue_and_channel_segments_matches_dense(batch):
    """Small outputs (shift mode; 128 and 96 input channels: several input-channel segments),
    stride 2 phases, dilation, both thread paths, a BatchNorm + ReLU prologue and fused ReLU."""
    torch.manual_seed(batch)
    specs = ((dict(in_channels=128, out_channels=16, kernel_size=3, padding=1), 4, 1),
             (dict(in_channels=96, out_channels=8, kernel_size=3, padding=1, stride=2), 8, 2),
             (dict(in_channels=64, out_channels=8, kernel_size=(3, 2), padding=(2, 1), dilation=2), 5, 1),
             (dict(in_channels=24, out_channels=8, kernel_size=1, stride=2), 7, 2))
    for spec, size, threads in specs:
        dense = _sparse_(nn.Conv2d(**spec, bias=True), 0.9, seed=size)
        scale, shift = torch.rand(spec["in_channels"]) + 0.5, torch.randn(spec["in_channels"])
        x = torch.randn(batch, spec["in_channels"], size, size)
        with torch.no_grad():
            expected = dense(torch.relu(x * scale.view(-1, 1, 1) + shift.view(-1, 1, 1))).relu()
        for backend in BACKENDS:
            layer = SparseConv2d(dense, backend=backend, relu=True, threads=threads)
            layer.set_prologue(scale, shift)
            with torch.no_grad():
                torch.testing.assert_close(layer(x), expected, **TOL)


def test_prologue_needs_one_scale_and_shift_per_input_channel():
    layer = SparseConv2d(nn.Conv2d(4, 2, 3), backend="torch")
    with pytest.raises(ConfigError, match="4 scales and shifts"):
        layer.set_prologue(torch.ones(3), torch.zeros(3))


@pytest.mark.skipif("native" not in BACKENDS, reason="native kernel unavailable (no C compiler?)")
def test_native_conv_with_one_output_pixel_at_batch_1_matches_dense():
    """One output pixel per sample: only a kernel covering the unpadded input may read x directly
    (dot mode); padding or stride phases need the packed input."""
    torch.manual_seed(11)
    for spec, size in ((dict(kernel_size=3, padding=1), 1), (dict(kernel_size=3, padding=1, stride=2), 2),
                       (dict(kernel_size=1, stride=2), 2), (dict(kernel_size=3), 3)):
        dense = _sparse_(nn.Conv2d(16, 8, **spec), 0.5, seed=size)
        x = torch.randn(1, 16, size, size)
        with torch.no_grad():
            torch.testing.assert_close(SparseConv2d(dense)(x), dense(x), **TOL)

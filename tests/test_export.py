"""Export and sparse inference: make_permanent, sparse layers/models, sparse storage, ONNX, CLI."""

import importlib.util
import json

import pytest
import torch
from torch import nn

from prunelab import models
from prunelab.cli.main import main as cli_main
from prunelab.core.checkpoints import save_checkpoint
from prunelab.errors import CheckpointError, ConfigError, MaskError
from prunelab.export import (SparseConv2d, SparseLinear, load_sparse, make_permanent, native, save_sparse,
                             sparse_layers, storage_sizes, to_sparse)
from prunelab.core.masks import Masks

BACKENDS = ["torch"] + (["native"] if native.load() is not None else [])
TOL = dict(atol=1e-5, rtol=1e-5)


def _prune_(weight: torch.Tensor, sparsity: float, seed: int = 0) -> torch.Tensor:
    """Zero exactly round(sparsity * n) random entries of ``weight`` in place."""
    g = torch.Generator().manual_seed(seed)
    n = weight.numel()
    drop = torch.randperm(n, generator=g)[: round(sparsity * n)]
    with torch.no_grad():
        weight.view(-1)[drop] = 0.0
    return weight


def _global_magnitude(model: nn.Module, sparsity: float) -> Masks:
    weights = {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    scores = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    k = round(sparsity * scores.numel())
    threshold = scores.kthvalue(k).values if k else -1.0
    return Masks({f"{n}.weight": w.detach().abs() > threshold for n, w in weights.items()})


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8) if t.dim() else t.detach().reshape(1).view(torch.uint8)


# ---------------------------------------------------------------------------------- make_permanent


def test_make_permanent_bakes_masks_and_positive_zeros():
    torch.manual_seed(0)
    model = models.create("lenet-300-100", (1, 28, 28), 10)
    masks = _global_magnitude(model, 0.9)
    masks.apply(model)   # multiplies: pruned negative weights become -0.0
    assert any(bool(torch.signbit(p[p == 0]).any()) for p in model.parameters())
    make_permanent(model, masks)
    for name, m in masks.items():
        w = dict(model.named_parameters())[name]
        assert torch.equal(w != 0, m)
        assert not bool(torch.signbit(w[w == 0]).any())
    assert type(model.fc1.weight) is nn.Parameter


def test_make_permanent_removes_nn_prune_reparametrisation():
    from torch.nn.utils import prune as nn_prune

    torch.manual_seed(0)
    model = models.create("lenet5", (1, 28, 28), 10)
    keys = set(model.state_dict())
    nn_prune.global_unstructured([(model.conv2, "weight"), (model.fc1, "weight")],
                                 pruning_method=nn_prune.L1Unstructured, amount=0.8)
    nn_prune.l1_unstructured(model.fc1, "weight", amount=0.5)   # a PruningContainer on fc1
    expected = {n: getattr(model, n).weight.detach().clone() for n in ("conv2", "fc1")}
    make_permanent(model)
    assert set(model.state_dict()) == keys
    for name in ("conv2", "fc1"):
        module = getattr(model, name)
        assert not module._forward_pre_hooks
        assert isinstance(module.weight, nn.Parameter)
        assert torch.equal(module.weight.detach(), expected[name])
    assert (model.fc1.weight == 0).float().mean().item() == pytest.approx(0.9, abs=0.01)


def test_make_permanent_removes_parametrizations():
    from torch.nn.utils import parametrize

    class Half(nn.Module):
        def forward(self, w):
            return w * 0.5

    layer = nn.Linear(4, 3)
    before = layer.weight.detach().clone()
    parametrize.register_parametrization(layer, "weight", Half())
    make_permanent(layer)
    assert not parametrize.is_parametrized(layer)
    assert torch.equal(layer.weight.detach(), before * 0.5)


def test_make_permanent_rejects_foreign_masks():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(MaskError):
        make_permanent(model, {"1.weight": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(MaskError):
        make_permanent(model, {"0.weight": torch.ones(4, 3, dtype=torch.bool)})


# ------------------------------------------------------------------------------- sparse layers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_dense(backend, sparsity, bias):
    torch.manual_seed(1)
    dense = nn.Linear(37, 23, bias=bias)
    _prune_(dense.weight, sparsity)
    for relu in (False, True):
        layer = SparseLinear(dense, backend=backend, relu=relu)
        assert layer.nnz == dense.weight.count_nonzero()
        for batch in (1, 2, 9, 70):   # 70 crosses the 64-sample block of the native kernel
            x = torch.randn(batch, 37)
            expected = dense(x).relu() if relu else dense(x)
            with torch.no_grad():
                torch.testing.assert_close(layer(x), expected, **TOL)
    x3 = torch.randn(2, 5, 37)   # leading dimensions are kept
    with torch.no_grad():
        torch.testing.assert_close(SparseLinear(dense, backend=backend)(x3), dense(x3), **TOL)


CONVS = [
    dict(in_channels=1, out_channels=6, kernel_size=5, padding=2),                 # LeNet-5 style
    dict(in_channels=4, out_channels=7, kernel_size=3, stride=2, padding=1),
    dict(in_channels=3, out_channels=5, kernel_size=3, dilation=2, padding=2),
    dict(in_channels=3, out_channels=4, kernel_size=(2, 3), stride=(2, 1), padding=(0, 1)),
    dict(in_channels=2, out_channels=3, kernel_size=4, padding="same"),            # asymmetric
    dict(in_channels=5, out_channels=8, kernel_size=1),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", range(len(CONVS)))
@pytest.mark.parametrize("sparsity", [0.0, 0.7, 0.95, 1.0])
def test_sparse_conv_equals_dense(backend, spec, sparsity):
    torch.manual_seed(spec)
    for bias in (True, False):
        dense = nn.Conv2d(**CONVS[spec], bias=bias)
        _prune_(dense.weight, sparsity, seed=spec)
        for relu in (False, True):
            layer = SparseConv2d(dense, backend=backend, relu=relu)
            for shape in ((1, 9, 11), (3, 12, 12), (66, 8, 7)):
                x = torch.randn(shape[0], dense.in_channels, *shape[1:])
                expected = dense(x).relu() if relu else dense(x)
                with torch.no_grad():
                    got = layer(x)
                assert got.shape == expected.shape
                torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_conv_fused_relu_and_max_pool(backend):
    torch.manual_seed(3)
    for spec, pool in ((CONVS[0], 2), (CONVS[1], 3), (CONVS[4], 2)):
        dense = nn.Conv2d(**spec)
        _prune_(dense.weight, 0.8)
        layer = SparseConv2d(dense, backend=backend, relu=True, pool=pool)
        for shape in ((1, 13, 11), (67, 9, 10)):   # odd sizes: floor mode drops the last row/column
            x = torch.randn(shape[0], dense.in_channels, *shape[1:])
            expected = nn.functional.max_pool2d(dense(x).relu(), pool)
            with torch.no_grad():
                torch.testing.assert_close(layer(x), expected, **TOL)


@pytest.mark.skipif("native" not in BACKENDS, reason="native kernel unavailable (no C compiler?)")
def test_native_kernel_with_threads_equals_dense():
    torch.manual_seed(4)
    conv, linear = nn.Conv2d(3, 9, 3, padding=1), nn.Linear(50, 40)
    _prune_(conv.weight, 0.8)
    _prune_(linear.weight, 0.8)
    x, v = torch.randn(70, 3, 10, 10), torch.randn(70, 50)
    with torch.no_grad():
        torch.testing.assert_close(SparseConv2d(conv, threads=2, pool=2)(x), nn.functional.max_pool2d(conv(x), 2), **TOL)
        torch.testing.assert_close(SparseLinear(linear, threads=2, block=16)(v), linear(v), **TOL)


def test_sparse_conv_rejects_unsupported_layers():
    with pytest.raises(ConfigError, match="padding_mode"):
        SparseConv2d(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"))
    layer = SparseConv2d(nn.Conv2d(3, 2, 3), backend="torch")
    with pytest.raises(ConfigError):
        layer(torch.randn(1, 4, 5, 5))


# ------------------------------------------------------------------------------- sparse models


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lenet-300-100", "lenet5"])
def test_to_sparse_always_equals_dense(backend, name):
    torch.manual_seed(0)
    model = models.create(name, (1, 28, 28), 10)
    make_permanent(model, _global_magnitude(model, 0.95))
    fast = to_sparse(model, policy="always", backends=(backend,))
    layers = sparse_layers(fast)
    assert len(layers) == sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    assert all(m.relu for n, m in layers.items() if n != list(layers)[-1])   # ReLUs fused, not the logits
    if name == "lenet5":
        assert layers["conv1"].pool == 2 and isinstance(fast.pool1, nn.Identity)
    assert all(e["choice"] == backend for e in fast.sparse_report["layers"])
    for batch in (1, 64):
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), **TOL)
    assert isinstance(model.fc1, nn.Linear)   # the original is untouched


def test_to_sparse_folds_batchnorm_and_fuses_functional_relu(tiny_net):
    make_permanent(tiny_net, _global_magnitude(tiny_net, 0.8))
    tiny_net.eval()
    fast = to_sparse(tiny_net, policy="always")
    fused = native.get() is not None   # the graph fuses ReLUs into native layers only
    assert fast.sparse_report["graph_fusion"]["folded_batchnorm"] == ["bn"]
    assert fast.sparse_report["graph_fusion"]["relu"] == (["conv", "fc1"] if fused else [])
    assert {n: m.relu for n, m in sparse_layers(fast).items()} == {"conv": fused, "fc1": fused, "fc2": False}
    plain = to_sparse(tiny_net, policy="always", fuse=False)   # no graph: torch.relu stays a call
    assert "graph_fusion" not in plain.sparse_report and not any(m.relu for m in sparse_layers(plain).values())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), tiny_net(x), **TOL)


def test_to_sparse_measure_times_every_layer_and_stays_exact():
    torch.manual_seed(0)
    model = models.create("lenet-300-100", (1, 28, 28), 10)
    make_permanent(model, _global_magnitude(model, 0.95))
    fast = to_sparse(model, batch_size=8, warmup=1, reps=5, policy="measure")
    report = fast.sparse_report
    assert report["policy"] == "measure" and report["batch_size"] == 8
    assert [e["name"] for e in report["layers"]] == ["fc1", "fc2", "fc3"]
    for entry in report["layers"]:
        timed, dropped = entry["median_us"], entry["screened_out_us"]
        assert set(timed) | set(dropped) == {"dense", *BACKENDS} and "dense" in timed and not set(timed) & set(dropped)
        assert all(isinstance(t, float) and t > 0 for t in [*timed.values(), *dropped.values()])
        # the choice follows the recorded times: the fastest sparse version if it beats dense by 5 %
        sparse_times = {k: v for k, v in timed.items() if k != "dense"}
        best = min(sparse_times, key=sparse_times.get) if sparse_times else "dense"
        expected = best if sparse_times and sparse_times[best] < 0.95 * timed["dense"] else "dense"
        assert entry["choice"] == ("dense" if report["reverted"] else expected)
        weight = getattr(model, entry["name"]).weight
        assert entry["sparsity"] == pytest.approx((weight == 0).float().mean().item(), abs=1e-6)
    chosen = {n: type(m).__name__ for n, m in sparse_layers(fast).items()}
    assert set(chosen) == {e["name"] for e in report["layers"] if e["choice"] != "dense"}
    for name in chosen:
        assert sparse_layers(fast)[name].backend == next(e["choice"] for e in report["layers"] if e["name"] == name)
    if not report["reverted"] and chosen:
        assert set(report["model_median_us"]) == {"dense", "sparse"}
        assert report["model_median_us"]["sparse"] < report["model_median_us"]["dense"]
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), **TOL)
    never = to_sparse(model, policy="never")
    assert not sparse_layers(never)
    with pytest.raises(ConfigError):
        to_sparse(model, policy="sometimes")
    with pytest.raises(ConfigError, match="input shape"):
        to_sparse(nn.Sequential(nn.Linear(3, 2)))


def test_to_sparse_accepts_nn_prune_models():
    from torch.nn.utils import prune as nn_prune

    model = models.create("lenet-300-100", (1, 28, 28), 10)
    nn_prune.l1_unstructured(model.fc1, "weight", amount=0.9)
    fast = to_sparse(model, policy="always")
    assert sparse_layers(fast)["fc1"].sparsity == pytest.approx(0.9, abs=1e-3)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), **TOL)


# ------------------------------------------------------------------------------- sparse storage


def _assert_bit_identical(a: nn.Module, b: nn.Module):
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    sa.update(dict(a.named_buffers()))
    sb.update(dict(b.named_buffers()))
    assert set(sa) == set(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and sa[name].shape == sb[name].shape, name
        assert torch.equal(_bits(sa[name]), _bits(sb[name])), name


def test_sparse_storage_round_trips_bit_identically(tmp_path):
    torch.manual_seed(0)
    model = models.create("lenet-300-100", (1, 28, 28), 10)
    masks = _global_magnitude(model, 0.95)
    make_permanent(model, masks)
    path = save_sparse(tmp_path / "m.safetensors", model, masks, meta={"note": "test"})
    ckpt = load_sparse(path)
    _assert_bit_identical(model, ckpt.model)
    assert ckpt.masks.equal(masks)
    assert ckpt.meta["meta"] == {"note": "test"}
    assert ckpt.model.prunelab_config == model.prunelab_config


def test_sparse_storage_keeps_negative_zeros_nans_buffers_and_odd_masks(tmp_path, tiny_net):
    masks = _global_magnitude(tiny_net, 0.7)
    masks.apply(tiny_net)   # leaves -0.0 at pruned negative weights
    with torch.no_grad():
        tiny_net.fc1.weight[0, 0] = float("nan")
        tiny_net.fc2.weight[0] = 0.0          # kept by the mask but exactly zero
        tiny_net.bn.running_mean.uniform_()
        tiny_net.bn.num_batches_tracked.fill_(7)
    masks = Masks({n: m.clone() for n, m in masks.items()})
    masks._masks["fc2.weight"][0] = True
    path = save_sparse(tmp_path / "t.safetensors", tiny_net, masks)
    target = type(tiny_net)()
    ckpt = load_sparse(path, model=target)
    _assert_bit_identical(tiny_net, target)
    assert ckpt.masks.equal(masks)


def test_every_encoding_round_trips(tmp_path):
    def build():
        torch.manual_seed(5)
        return nn.Sequential(nn.Linear(5000, 4), nn.Linear(300, 200), nn.Linear(300, 200), nn.Linear(30, 20))

    model = build()
    with torch.no_grad():
        for layer, sparsity in zip(model, (0.999, 0.95, 0.5, 0.0)):
            _prune_(layer.weight, sparsity)
            layer.weight.mul_(torch.where(torch.rand_like(layer.weight) < 0.5, -1.0, 1.0))   # -0.0 at some zeros
    info = storage_sizes(model)["encodings"]
    assert [info[f"param/{i}.weight"] for i in range(4)] == ["csr", "gaps", "bitmap", "dense"]
    target = build()
    load_sparse(save_sparse(tmp_path / "all.safetensors", model), model=target)
    _assert_bit_identical(model, target)


def test_sparse_storage_size_and_encodings():
    torch.manual_seed(0)
    model = models.create("lenet-300-100", (1, 28, 28), 10)
    make_permanent(model, _global_magnitude(model, 0.95))
    sizes = storage_sizes(model)
    assert sizes["sparse"] <= 0.12 * sizes["dense_safetensors"]
    assert sizes["encodings"]["param/fc1.bias"] == "dense"
    assert sizes["encodings"]["param/fc1.weight"] in ("csr", "gaps")
    expected = {0.5: "bitmap", 0.95: "gaps"}   # 1/8 + 4d vs about 5d bytes per weight
    for sparsity, encoding in expected.items():
        layer = nn.Linear(300, 200)
        _prune_(layer.weight, sparsity)
        assert storage_sizes(layer)["encodings"]["param/weight"] == encoding
    wide = nn.Linear(5000, 4)   # 20 non-zeros ~1000 apart: gaps need escapes, CSR 2 bytes each
    _prune_(wide.weight, 0.999)
    assert storage_sizes(wide)["encodings"]["param/weight"] == "csr"
    assert storage_sizes(nn.Linear(30, 20))["encodings"]["param/weight"] == "dense"


def test_damaged_sparse_files_raise_checkpoint_error(tmp_path):
    model = models.create("lenet-300-100", (1, 28, 28), 10)
    make_permanent(model, _global_magnitude(model, 0.9))
    path = save_sparse(tmp_path / "m.safetensors", model)
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "flipped": data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:],
        "garbage": b"not a safetensors file at all",
        "empty": b"",
    }
    for label, content in cases.items():
        bad = tmp_path / f"{label}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError):
            load_sparse(bad)
    with pytest.raises(CheckpointError, match="no such sparse export file"):
        load_sparse(tmp_path / "missing.safetensors")
    dense_ckpt = save_checkpoint(tmp_path / "dense.safetensors", model)
    with pytest.raises(CheckpointError, match="not a prunelab sparse export"):
        load_sparse(dense_ckpt)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_sparse(path, model=models.create("lenet5", (1, 28, 28), 10))


# ------------------------------------------------------------------------------------ ONNX


def test_onnx_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    from prunelab.export import check_onnx, export_onnx

    torch.manual_seed(0)
    model = models.create("lenet5", (1, 28, 28), 10)
    make_permanent(model, _global_magnitude(model, 0.9))
    path = export_onnx(model, tmp_path / "m.onnx")
    for batch in (1, 7):   # the batch axis is dynamic
        assert check_onnx(model, path, torch.randn(batch, 1, 28, 28)) <= 1e-5
    small = export_onnx(model, tmp_path / "s.onnx", sparse_initializers=True)
    assert small.stat().st_size < 0.35 * path.stat().st_size
    assert check_onnx(model, small, torch.randn(3, 1, 28, 28)) <= 1e-5
    with pytest.raises(ConfigError):
        export_onnx(to_sparse(model, policy="always"), tmp_path / "s.onnx")


def test_onnxruntime_session_without_spinning(tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    from prunelab.export import export_onnx, onnxruntime_session

    path = export_onnx(nn.Linear(4, 2), tmp_path / "l.onnx", input_shape=(1, 4))
    options = onnxruntime_session(path, 2, spinning=False).get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = onnxruntime_session(path, 2).get_session_options()
    with pytest.raises(Exception):   # onnxruntime's default (spinning) is left untouched: no entry
        spinning.get_session_config_entry("session.intra_op.allow_spinning")


# ------------------------------------------------------------------------------------- CLI


def test_cli_export_and_latency(tmp_path, capsys):
    torch.manual_seed(0)
    model = models.create("lenet-300-100", (1, 28, 28), 10)
    masks = _global_magnitude(model, 0.95)
    masks.apply(model)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, masks)
    assert cli_main(["export", str(ckpt), "--format", "sparse"]) == 0
    sparse_path = tmp_path / "m.sparse.safetensors"
    loaded = load_sparse(sparse_path)
    assert loaded.masks.equal(masks)
    assert "of dense safetensors" in capsys.readouterr().out
    assert cli_main(["export", str(ckpt), "--format", "dense", "-o", str(tmp_path / "d.safetensors")]) == 0
    assert cli_main(["latency", str(sparse_path), "--batch-sizes", "1,3", "--threads", "1", "--warmup", "1",
                     "--reps", "3", "--json", str(tmp_path / "lat.json")]) == 0
    out = capsys.readouterr().out
    assert "batch    1" in out and "batch    3" in out and "1 thread(s)" in out
    result = json.loads((tmp_path / "lat.json").read_text())
    assert [b["batch"] for b in result["batches"]] == [1, 3]
    assert result["flop_limit"] == pytest.approx(20.0, rel=0.01)
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        assert cli_main(["export", str(ckpt), "--format", "onnx", "--sparse-initializers"]) == 0
        assert "max |difference|" in capsys.readouterr().out
        assert (tmp_path / "m.onnx").is_file()
    assert cli_main(["export", str(ckpt), "--format", "pdf"]) == 2
    assert cli_main(["latency", str(tmp_path / "missing.safetensors")]) == 2
    assert cli_main(["latency", str(ckpt), "--batch-sizes", "0"]) == 2
    assert cli_main(["export", str(ckpt), "-o", str(ckpt)]) == 2
    assert "error" in capsys.readouterr().err


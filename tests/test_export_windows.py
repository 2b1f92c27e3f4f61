"""The native kernel's window format for Linear layers at batch 1 (``pl_window_build``)."""

import pytest
import torch
from torch import nn

from prunelab.export import SparseLinear, native

lib = native.load()
pytestmark = pytest.mark.skipif(lib is None, reason="native kernel unavailable (no C compiler?)")


def _layer(out_f: int, in_f: int, density: float, seed: int = 0, bias: bool = True) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_f, in_f, generator=g) * (torch.rand(out_f, in_f, generator=g) < density))
        if bias:
            layer.bias.copy_(torch.randn(out_f, generator=g))
    return layer


def _decode(sparse: SparseLinear) -> torch.Tensor:
    """The dense weight the window format holds, read back step by step."""
    grp, step, wval = sparse._descriptors.get("windows") or sparse._windows()
    dense = torch.zeros(8 * (grp.numel() - 1), sparse.in_features)
    for g in range(grp.numel() - 1):
        for s in range(int(grp[g]), int(grp[g + 1])):
            word = int(step[s])
            for lane in range(8):
                col = (word >> 32) + ((word >> (3 * lane)) & 7)
                dense[8 * g + lane, col] += float(wval[8 * s + lane])
    return dense[: sparse.out_features]


def test_hand_computed_steps():
    # rows 0 and 1: columns {1, 3, 9} and {2, 9, 10}; 11 inputs, so the window of columns 8..10
    # starts at 3 (11 - 8) to stay inside the input
    w = torch.zeros(2, 11)
    w[0, [1, 3, 9]] = torch.tensor([1.0, 2.0, 3.0])
    w[1, [2, 9, 10]] = torch.tensor([4.0, 5.0, 6.0])
    layer = nn.Linear(11, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    grp, step, wval = SparseLinear(layer, backend="native")._windows()
    # window 0 takes 2 steps (row 0 has 2 non-zeros there), the last window 2 (row 1 has 9, 10)
    assert grp.tolist() == [0, 4]
    base = [int(s) >> 32 for s in step]
    lane = [[(int(s) >> (3 * i)) & 7 for i in range(2)] for s in step]
    assert base == [0, 0, 3, 3]
    # a row with no further non-zero in the window gets offset 0 and weight 0
    assert lane == [[1, 2], [3, 0], [6, 6], [0, 7]]
    assert wval.view(4, 8)[:, :2].tolist() == [[1.0, 4.0], [2.0, 0.0], [3.0, 5.0], [0.0, 6.0]]
    assert wval.view(4, 8)[:, 2:].abs().sum() == 0   # lanes of rows 2..7 (there are none)
    assert [int(s) & ~((1 << 32) - 1) for s in step] == [b << 32 for b in base]   # offsets in the low bits only


@pytest.mark.parametrize("shape,density", [((13, 29), 0.3), ((64, 784), 0.1), ((1024, 1024), 0.05),
                                           ((40, 64), 1.0), ((17, 100), 0.01)])
def test_windows_hold_the_weight_exactly(shape, density):
    layer = _layer(*shape, density)
    sparse = SparseLinear(layer, backend="native")
    assert torch.equal(_decode(sparse), layer.weight.detach())


# (shape, density, windows used): an all-zero weight has no steps, and rows of 32 non-zeros or
# more with under 25 % of the lanes filled keep the gather (64 x 8192 at 1 %: about 80 a row,
# 16 % filled; 10 x 1024 at 5 %: about 52 a row, 24.9 %); 10 x 256 at 5 % (24 %, 14 a row) does not
@pytest.mark.parametrize("shape,density,windows", [((13, 29), 0.3, True), ((1000, 784), 0.1, True),
                                                   ((10, 256), 0.05, True), ((10, 1024), 0.05, False),
                                                   ((40, 64), 1.0, True), ((9, 8), 0.5, True),
                                                   ((16, 300), 0.0, False), ((64, 8192), 0.01, False),
                                                   ((5, 6), 0.5, False)])   # under 8 inputs: no window fits
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
def test_batch1_matches_dense(shape, density, windows, threads, relu):
    layer = _layer(*shape, density)
    sparse = SparseLinear(layer, backend="native", relu=relu, threads=threads)
    x = torch.randn(1, shape[1], generator=torch.Generator().manual_seed(1))
    want = layer(x).detach()
    want = torch.relu(want) if relu else want
    with torch.no_grad():
        got = sparse(x)
    assert (sparse._descriptors["windows"] is not None) == windows
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # batch 2 takes the batched path, not the windows: the same numbers
    with torch.no_grad():
        torch.testing.assert_close(sparse(x.repeat(2, 1))[1:], got, atol=1e-5, rtol=1e-5)


def test_no_read_past_the_input():
    # the last window of a 29-input layer starts at 21, so a NaN just past the input (as a
    # neighbour in a larger buffer) never reaches the output
    layer = _layer(16, 29, 1.0)
    sparse = SparseLinear(layer, backend="native")
    buf = torch.full((1, 40), float("nan"))
    buf[0, :29] = torch.randn(29)
    x = buf[:, :29]
    with torch.no_grad():
        got = sparse(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, layer(x.contiguous()).detach(), atol=1e-5, rtol=1e-5)


def test_windows_are_built_at_the_first_batch1_call_only():
    layer = _layer(64, 200, 0.2)
    sparse = SparseLinear(layer, backend="native")
    x = torch.randn(64, 200)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), layer(x), atol=1e-5, rtol=1e-5)
        sparse(x)   # the fast path, still batch 64
        assert "windows" not in sparse._descriptors   # no memory spent on a format batch 64 never reads
        descriptor = sparse._descriptors[None]
        torch.testing.assert_close(sparse(x[:1]), layer(x[:1]), atol=1e-5, rtol=1e-5)
    grp, step, wval = sparse._descriptors["windows"]
    assert sparse._descriptors[None] is descriptor   # filled in place: plans keep its address
    assert descriptor[-3:].tolist() == [grp.data_ptr(), step.data_ptr(), wval.data_ptr()]


def test_a_chain_builds_the_windows_of_its_linear_layers_at_batch1():
    from prunelab.export import to_sparse

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(torch.rand_like(m.weight) < 0.3)
    fast = to_sparse(model, batch_size=64, policy="always", input_shape=(100,))
    layers = [m for m in fast.modules() if isinstance(m, SparseLinear)]
    assert len(layers) == 3 and fast.chains == [["0", "2", "4"]]
    x = torch.randn(64, 100)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)
        assert all("windows" not in m._descriptors for m in layers)
        torch.testing.assert_close(fast(x[:1]), model(x[:1]), atol=1e-5, rtol=1e-5)
    assert all(m._descriptors["windows"] is not None for m in layers)


def test_windows_added_outside_the_inference_mode_that_made_the_descriptor():
    # a first call under torch.inference_mode() makes the descriptor; the batch-1 call that
    # fills in its window fields in place comes later under no_grad
    layer = _layer(32, 64, 0.3)
    sparse = SparseLinear(layer, backend="native")
    x = torch.randn(4, 64)
    with torch.inference_mode():
        sparse(x)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x[:1]), layer(x[:1]), atol=1e-5, rtol=1e-5)
    assert sparse._descriptors["windows"] is not None

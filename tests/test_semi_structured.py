"""2:4 semi-structured export (prunelab.export.semi_structured): clean refusals, and on CUDA the
converted layers compute what the dense ones do."""

import pytest
import torch
from torch import nn

import prunelab
from prunelab.errors import ConfigError
from prunelab.export import semi_structured_reason, to_semi_structured


def _two_four_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    prunelab.prune(model, "magnitude", sparsity=0.5, pattern="2:4")
    return model


def test_reasons_name_what_is_wrong_before_any_gpu_is_needed():
    assert "not an nn.Linear" in semi_structured_reason(nn.Conv2d(4, 4, 3))
    assert "not 2:4 sparse" in semi_structured_reason(nn.Linear(64, 32))        # dense
    odd = nn.Linear(6, 4)
    with torch.no_grad():
        odd.weight.zero_()
    assert "multiple of 4" in semi_structured_reason(odd)
    attention = nn.MultiheadAttention(8, 2)
    assert "MultiheadAttention" in semi_structured_reason(attention.out_proj, attention)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_a_two_four_layer_is_refused_with_the_reason():
    model = _two_four_mlp()
    assert "CUDA is not available" in semi_structured_reason(model[0])
    with pytest.raises(ConfigError, match="needs CUDA"):
        to_semi_structured(model)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="2:4 kernels need a CUDA GPU of compute capability 8.0+")
def test_on_cuda_two_four_layers_convert_and_compute_the_same():
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    torch.manual_seed(0)
    prunelab.prune(model, "magnitude", sparsity=0.5, pattern="2:4", scope="layer")
    dense = model.half().cuda().eval()
    fast = to_semi_structured(dense)
    assert fast.semi_structured_report["converted"] == ["0", "2"]
    assert "multiple of" in fast.semi_structured_report["left_dense"]["4"]         # 10 rows
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(fast(x), dense(x), rtol=1e-2, atol=1e-2)
    assert "CUDA" not in str(semi_structured_reason(dense.float()[0]))              # float32: dtype or None

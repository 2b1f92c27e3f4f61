"""The ``gpt`` language model and its HuggingFace twin ``hf-gpt2``: shapes, counts, causality, ties."""

import pytest
import torch

from prunelab import models
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab.core.metrics import count_flops, summary
from prunelab.core.prunable import prunable_parameters
from prunelab.errors import ModelError

BLOCK = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


def test_default_counts_match_the_docstring():
    net = models.create("gpt", (128,), 256)
    assert sum(p.numel() for p in net.parameters()) == 445_952
    assert sum(r["flops"] for r in count_flops(net, (128,))) == 54_525_952
    assert summary(net)["prunable"] == 2 * (128 * 384 + 128 * 128 + 128 * 512 + 512 * 128)


def test_prunable_set_is_the_blocks_weight_matrices_when_tied():
    net = models.create("gpt", (16,), 256, layers=2, width=32, heads=2)
    assert list(prunable_parameters(net)) == [f"blocks.{i}.{b}.weight" for i in range(2) for b in BLOCK]
    assert net.head.weight is net.tok.weight
    untied = models.create("gpt", (16,), 256, layers=1, width=32, heads=2, tied=False)
    assert "head.weight" in prunable_parameters(untied)


def test_causal_logits_at_t_ignore_later_tokens():
    torch.manual_seed(0)
    net = models.create("gpt", (12,), 256, layers=2, width=32, heads=4).eval()
    ids = torch.randint(0, 256, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 256
    a, b = net(ids), net(changed)
    assert a.shape == (2, 12, 256)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    # Shorter sequences than the context are accepted; float whole numbers are cast.
    torch.testing.assert_close(net(ids[:, :5].float()), a[:, :5], rtol=1e-5, atol=1e-6)


def test_bad_options_and_inputs_are_refused():
    with pytest.raises(ModelError, match="multiple of heads"):
        models.create("gpt", (16,), 256, width=30, heads=4)
    with pytest.raises(ModelError, match=r"in_shape \(context,\)"):
        models.create("gpt", (1, 28, 28), 10)
    net = models.create("gpt", (8,), 256, layers=1, width=16, heads=2)
    with pytest.raises(ModelError, match="t <= 8"):
        net(torch.zeros(1, 9, dtype=torch.long))


def test_checkpoint_round_trip_keeps_the_tie(tmp_path):
    torch.manual_seed(1)
    net = models.create("gpt", (16,), 256, layers=1, width=32, heads=2)
    save_checkpoint(tmp_path / "lm.safetensors", net)
    back = load_checkpoint(tmp_path / "lm.safetensors").model
    assert back.head.weight is back.tok.weight
    ids = torch.randint(0, 256, (2, 16))
    assert torch.equal(back.eval()(ids), net.eval()(ids))


def test_hf_gpt2_takes_the_same_options_and_interface():
    pytest.importorskip("transformers")
    net = models.create("hf-gpt2", (16,), 256, layers=2, width=32, heads=2)
    assert net(torch.zeros(3, 16, dtype=torch.long)).shape == (3, 16, 256)
    names = list(prunable_parameters(net))
    assert names == [f"model.transformer.h.{i}.{b}.weight" for i in range(2)
                     for b in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    ours = models.create("gpt", (16,), 256, layers=2, width=32, heads=2)
    # The same matrices (HF Conv1D stores them transposed), so the same prunable size and FLOPs.
    assert summary(net)["prunable"] == summary(ours)["prunable"]
    assert summary(net)["flops"] == summary(ours)["flops"]

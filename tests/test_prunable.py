"""PrunableRule: which weight matrices are prunable, on a model with every kind of layer."""

import pytest
import torch
from torch import nn

import prunelab
from prunelab.core import prunable
from prunelab.core.prunable import PrunableRule, coverage, prunable_parameters
from prunelab.errors import MaskError


class Gate(nn.Module):
    """A user's own layer: a ``weight`` matrix and a ``scale`` matrix."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))
        self.scale = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return x @ (self.weight * self.scale)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)            # 80, opt-in
        self.conv = nn.Conv1d(8, 8, 3)             # 192
        self.attn = nn.MultiheadAttention(8, 2)    # in_proj 192, out_proj 64
        self.norm = nn.LayerNorm(8)                # 1-D: never
        self.gate = Gate()                         # 64 + 64, by type/pattern/predicate only
        self.fc = nn.Linear(8, 4)                  # 32

    def forward(self, ids):
        x = self.emb(ids)                                      # (N, L, 8)
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)       # (N, L - 2, 8)
        x = x.transpose(0, 1)
        x = self.attn(x, x, x)[0].transpose(0, 1)
        return self.fc(self.gate(self.norm(x)))


DEFAULT = ["conv.weight", "attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"]


@pytest.fixture
def mixed():
    torch.manual_seed(0)
    return Mixed()


def test_default_rule_takes_linear_conv_and_attention_weights_in_module_order(mixed):
    assert list(prunable_parameters(mixed)) == DEFAULT
    assert list(prunelab.Masks.ones(mixed)) == DEFAULT
    assert list(prunable_parameters(mixed, embeddings=True)) == ["emb.weight"] + DEFAULT


def test_types_patterns_and_predicate_add_weights(mixed):
    assert list(prunable_parameters(mixed, PrunableRule(types=(Gate,)))) == DEFAULT[:3] + ["gate.weight", "fc.weight"]
    assert list(prunable_parameters(mixed, patterns=("gate.sc*",))) == DEFAULT[:3] + ["gate.scale", "fc.weight"]
    rule = PrunableRule(predicate=lambda name, module, p: isinstance(module, Gate))
    assert list(prunable_parameters(mixed, rule)) == DEFAULT[:3] + ["gate.weight", "gate.scale", "fc.weight"]
    # A single type or name is accepted where a tuple is expected.
    assert PrunableRule(types=Gate, exclude="fc").types == (Gate,)
    assert PrunableRule(exclude="fc").exclude == ("fc",)


def test_exclude_by_parameter_name_module_name_and_pattern(mixed):
    assert list(prunable_parameters(mixed, exclude=("fc.weight",))) == DEFAULT[:3]
    assert list(prunable_parameters(mixed, exclude=("attn",))) == ["conv.weight", "fc.weight"]
    assert list(prunable_parameters(mixed, exclude=("attn.out_proj",))) == ["conv.weight", "attn.in_proj_weight", "fc.weight"]
    assert list(prunable_parameters(mixed, exclude=("*proj*",))) == ["conv.weight", "fc.weight"]
    # a pattern that matches nothing is not an error (it may be meant for other models)
    assert list(prunable_parameters(mixed, exclude=("*.nothing.*",))) == DEFAULT


def test_exclude_first_and_last(mixed):
    assert list(prunable_parameters(mixed, exclude_first=True)) == DEFAULT[1:]
    assert list(prunable_parameters(mixed, exclude_last=True)) == DEFAULT[:-1]
    both = PrunableRule(exclude_first=True, exclude_last=True, embeddings=True)
    assert list(prunable_parameters(mixed, both)) == DEFAULT[:-1]   # the embedding is now the first


def test_unknown_exclude_name_and_unknown_option_are_mask_errors(mixed):
    with pytest.raises(MaskError, match="cannot exclude nope: not a prunable layer"):
        prunable_parameters(mixed, exclude=("nope",))
    with pytest.raises(MaskError, match="not a prunable layer"):
        prunable_parameters(mixed, exclude=("norm.weight",))   # exists, but is not prunable
    with pytest.raises(MaskError, match="unknown prunable-rule option"):
        prunable_parameters(mixed, exlude=("fc",))


def test_separate_attention_projections_are_prunable():
    attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=6)
    assert list(prunable_parameters(attn)) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]


def test_coverage_counts_every_weight_matrix_once(mixed):
    cov = coverage(mixed, prunable_parameters(mixed))
    # covered: conv 192 + in_proj 192 + out_proj 64 + fc 32; left: emb 80, gate 64 + 64
    assert (cov.covered, cov.total) == (480, 688)
    assert cov.left_out == (("emb.weight", 80), ("gate.weight", 64), ("gate.scale", 64))
    assert cov.fraction == pytest.approx(480 / 688)
    masks = prunelab.Masks.ones(mixed, PrunableRule(embeddings=True, types=(Gate,), patterns=("gate.scale",)))
    assert masks.coverage(mixed).fraction == 1.0 and masks.coverage(mixed).left_out == ()


def test_prune_with_a_rule_prunes_exactly_what_it_covers(mixed, monkeypatch):
    monkeypatch.setattr(prunable, "_WARNED", set())
    rule = PrunableRule(types=(Gate,), exclude=("attn",))
    with pytest.warns(prunable.CoverageWarning, match=r"left dense: emb.weight \(80\), attn.in_proj_weight \(192\)"):
        masks = prunelab.prune(mixed, "magnitude", sparsity=0.5, rule=rule)
    assert list(masks) == ["conv.weight", "gate.weight", "fc.weight"]
    assert masks.pruned() == round(0.5 * (192 + 64 + 32))
    assert int((mixed.attn.in_proj_weight == 0).sum()) == 0     # excluded: left dense
    assert mixed(torch.randint(0, 10, (2, 6))).shape == (2, 4, 4)

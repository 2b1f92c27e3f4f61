"""prunelab on models it was not written for: HuggingFace GPT-2 (tied and untied output layer)
and torch's own nn.TransformerEncoder / nn.MultiheadAttention."""

import warnings

import pytest
import torch
from torch import nn

import prunelab
from prunelab.core import prunable
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab.core.metrics import count_flops, summary
from prunelab.export import SparseLinear, sparse_layers, to_sparse

transformers = pytest.importorskip("transformers")

# GPT-2 with n_layer=2, n_embd=64: per block c_attn 64x192, attn c_proj 64x64, c_fc 64x256,
# mlp c_proj 256x64 (HF Conv1D weights); wte 500x64, wpe 64x64; lm_head 500x64 when untied.
BLOCK = 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64            # 49152
CONV1D = 2 * BLOCK                                           # 98304
WTE, WPE = 500 * 64, 64 * 64
CONV1D_NAMES = [f"transformer.h.{i}.{n}.weight" for i in range(2)
                for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def gpt2(tied: bool, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64,
                        tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def ids(n=16, seed=0):
    return torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    # the coverage warning is given once per process and model; each test starts afresh
    monkeypatch.setattr(prunable, "_WARNED", set())


def _quiet_prune(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prunable.CoverageWarning)
        return prunelab.prune(*args, **kwargs)


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_global_magnitude_prunes_exactly_the_covered_matrices(tied):
    model = gpt2(tied)
    masks = _quiet_prune(model, "magnitude", sparsity=0.8)
    expected = CONV1D_NAMES + ([] if tied else ["lm_head.weight"])
    n = CONV1D + (0 if tied else WTE)
    assert list(masks) == expected and masks.total() == n
    assert masks.pruned() == round(0.8 * n)
    params = dict(model.named_parameters())
    for name in expected:   # the weights are zero exactly where the masks prune
        assert torch.equal(params[name] != 0, masks[name]), name
    assert int((model.transformer.wte.weight == 0).sum()) == 0   # tied or not, wte is left dense
    assert torch.isfinite(model(ids()).logits).all()


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_layer_scope_prunes_exactly_in_every_matrix(tied):
    masks = _quiet_prune(gpt2(tied), "magnitude", sparsity=0.8, scope="layer")
    assert len(masks) == 8 + (0 if tied else 1)
    for name, mask in masks.items():
        assert mask.numel() - int(mask.sum()) == round(0.8 * mask.numel()), name


def test_gpt2_tied_matrix_is_pruned_once_only_with_embeddings_opted_in():
    model = gpt2(True)
    assert model.lm_head.weight is model.transformer.wte.weight
    masks = prunelab.prune(model, "magnitude", sparsity=0.8, rule=prunelab.PrunableRule(embeddings=True))
    assert list(masks) == ["transformer.wte.weight", "transformer.wpe.weight"] + CONV1D_NAMES
    assert "lm_head.weight" not in masks
    n = CONV1D + WTE + WPE
    assert masks.total() == n and masks.pruned() == round(0.8 * n)
    assert torch.equal(model.lm_head.weight != 0, masks["transformer.wte.weight"])
    assert masks.coverage(model).fraction == 1.0
    # the output layer's own name resolves to the same mask (a tied alias)
    alias = prunelab.Masks({"lm_head.weight": masks["transformer.wte.weight"]})
    alias.validate(model)
    assert list(alias.canonical(model)) == ["transformer.wte.weight"]


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_coverage_by_hand_and_the_warning_once(tied):
    model = gpt2(tied)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = prunelab.prune(model, "magnitude", sparsity=0.5)
        prunelab.prune(gpt2(tied, seed=1), "magnitude", sparsity=0.5)   # the same model again: no repeat
    coverage_warnings = [w for w in caught if issubclass(w.category, prunable.CoverageWarning)]
    assert len(coverage_warnings) == 1
    message = str(coverage_warnings[0].message)
    assert "left dense: transformer.wte.weight (32000), transformer.wpe.weight (4096)" in message
    assert "lm_head" not in message
    cov = masks.coverage(model)
    covered = CONV1D + (0 if tied else WTE)
    total = CONV1D + WTE + WPE + (0 if tied else WTE)
    assert (cov.covered, cov.total) == (covered, total)   # 98304/134400 tied, 130304/166400 untied
    assert cov.left_out == (("transformer.wte.weight", WTE), ("transformer.wpe.weight", WPE))
    assert f"coverage: {covered} of {total} weight-matrix entries covered" in masks.report(model)


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_checkpoint_round_trip_is_bit_identical(tmp_path, tied):
    model = gpt2(tied)
    rule = prunelab.PrunableRule(embeddings=True) if tied else None
    masks = _quiet_prune(model, "magnitude", sparsity=0.7, rule=rule)
    path = save_checkpoint(tmp_path / "gpt2.safetensors", model, masks)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert ("param/lm_head.weight" in keys) is (not tied)    # a tied matrix is written once
    other = gpt2(tied, seed=1)
    ckpt = load_checkpoint(path, other)
    assert ckpt.masks.equal(masks)
    state, loaded = model.state_dict(), other.state_dict()
    assert list(state) == list(loaded)
    for name in state:
        assert torch.equal(state[name], loaded[name]), name
    if tied:
        assert other.lm_head.weight is other.transformer.wte.weight
    assert torch.equal(model(ids()).logits, other(ids()).logits)


def test_gpt2_sparse_storage_and_make_permanent_with_the_tied_matrix(tmp_path):
    from prunelab.export import load_sparse, make_permanent, save_sparse

    model = gpt2(True)
    masks = _quiet_prune(model, "magnitude", sparsity=0.8, rule=prunelab.PrunableRule(embeddings=True))
    by_alias = {("lm_head.weight" if n == "transformer.wte.weight" else n): m for n, m in masks.items()}
    make_permanent(model, by_alias)                  # the output layer's name reaches the tied matrix
    path = save_sparse(tmp_path / "gpt2.sparse.safetensors", model, by_alias)
    other = gpt2(True, seed=1)
    loaded = load_sparse(path, other)
    assert loaded.masks.equal(masks)                 # stored and returned under canonical names
    state, got = model.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], got[k]) for k in state)
    assert other.lm_head.weight is other.transformer.wte.weight


def test_gpt2_random_and_hard_threshold_prune_exact_counts():
    masks = _quiet_prune(gpt2(False), "random", sparsity=0.6, seed=1)
    assert masks.pruned() == round(0.6 * (CONV1D + WTE))
    model = gpt2(False)
    masks = _quiet_prune(model, "hard-threshold", sparsity=0.6, exact=True, include_last=True)
    for name, mask in masks.items():
        assert mask.numel() - int(mask.sum()) == round(0.6 * mask.numel()), name


def test_gpt2_flops_count_conv1d_and_the_tied_output_layer():
    model = gpt2(True)
    masks = _quiet_prune(model, "magnitude", sparsity=0.75)
    example = {"input_ids": ids(16)}
    records = count_flops(model, masks=masks, example_input=example)
    assert [r["param"] for r in records] == CONV1D_NAMES + ["transformer.wte.weight"]
    assert sum(r["flops"] for r in records) == 16 * (CONV1D + WTE)
    s = summary(model, masks, example_input=example)
    assert s["flops_nonzero"] == 16 * (masks.kept() + WTE)    # the tied output layer is dense
    assert s["prunable"] == CONV1D and s["prunable_nonzero"] == masks.kept()
    assert s["coverage"]["covered"] == CONV1D and s["coverage"]["total"] == CONV1D + WTE + WPE


def test_gpt2_to_sparse_converts_conv1d_and_keeps_the_output():
    model = gpt2(False)
    _quiet_prune(model, "magnitude", sparsity=0.8)
    example = {"input_ids": ids(12)}
    fast = to_sparse(model, policy="always", backends=("torch",), example_input=example)
    converted = sparse_layers(fast)
    assert set(converted) == {n.rsplit(".", 1)[0] for n in CONV1D_NAMES} | {"lm_head"}
    assert not fast.sparse_report["reverted"] and fast.sparse_report["left_dense"] == {}
    with torch.no_grad():
        torch.testing.assert_close(fast(**example).logits, model(**example).logits, atol=1e-5, rtol=1e-5)


def encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def test_transformer_encoder_prunes_in_proj_and_runs():
    model = encoder()
    masks = prunelab.prune(model, "magnitude", sparsity=0.6, scope="layer")
    assert "layers.0.self_attn.in_proj_weight" in masks and "layers.1.self_attn.out_proj.weight" in masks
    in_proj = model.layers[0].self_attn.in_proj_weight
    assert int((in_proj == 0).sum()) == round(0.6 * in_proj.numel())
    assert masks.coverage(model).fraction == 1.0
    x = torch.randn(3, 10, 64)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()           # inference fast path
    model.train()
    model(x).sum().backward()                          # training path


def test_to_sparse_on_a_transformer_encoder_never_raises_and_says_why():
    model = encoder()
    prunelab.prune(model, "magnitude", sparsity=0.6)
    x = torch.randn(3, 10, 64)
    for policy in ("always", "auto"):
        with pytest.warns(UserWarning, match="layers.0.self_attn.out_proj: its parent MultiheadAttention"):
            fast = to_sparse(model, policy=policy, backends=("torch",), example_input=x, warmup=1, reps=2)
        left = fast.sparse_report["left_dense"]
        names = [f"layers.{i}.{n}" for i in range(2) for n in ("self_attn.out_proj", "linear1", "linear2")]
        assert sorted(left) == sorted(names)
        assert "out_proj.weight" in left["layers.0.self_attn.out_proj"]
        assert "fused inference kernel" in left["layers.1.linear2"]
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x))


class AttentionClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_to_sparse_converts_what_it_can_beside_attention():
    torch.manual_seed(0)
    model = AttentionClassifier().eval()
    prunelab.prune(model, "magnitude", sparsity=0.7)
    x = torch.randn(5, 7, 16)
    with pytest.warns(UserWarning, match="attn.out_proj"):
        fast = to_sparse(model, policy="always", backends=("torch",), example_input=x)
    assert set(sparse_layers(fast)) == {"head.0", "head.2"}
    assert isinstance(fast.attn.out_proj, nn.Linear)
    assert list(fast.sparse_report["left_dense"]) == ["attn.out_proj"]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)


def test_sparse_model_made_under_inference_mode_works_with_autograd_later():
    torch.manual_seed(0)
    model = AttentionClassifier().eval()
    prunelab.prune(model, "magnitude", sparsity=0.7)
    x = torch.randn(5, 7, 16)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = to_sparse(model, policy="always", backends=("torch",), example_input=x)
        fast(x)                                   # the CSR weight is cached inside inference mode
        layer = SparseLinear(model.head[0], backend="torch")
    assert not any(t.is_inference() for t in list(fast.parameters()) + list(fast.buffers()))
    xg = x.clone().requires_grad_(True)
    fast(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    h = torch.randn(4, 16, requires_grad=True)
    layer(h).sum().backward()
    torch.testing.assert_close(h.grad, model.head[0].weight.sum(0).expand(4, 16))

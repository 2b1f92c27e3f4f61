"""Every registered pruning method on the ``gpt`` language model, and the PQ Index's neurons of
HuggingFace GPT-2.

A one-layer ``gpt`` (width 32, context 16, bytes) is trained briefly on a learnable byte stream
(a random 29-byte phrase repeated: its next byte follows from the current one). Each method runs
from its family's entry point, as the harness calls it, and then through the harness itself. The
prunable weights are the block's four Linear weights; the tied head/embedding stays dense; the
sparsity is the one the method promises (the layer-wise methods leave the last of them,
``mlp.proj``, dense by default); pruned weights stay exactly zero through AdamW steps with the
masks fixed; N:M patterns hold exactly; losses stay finite.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import prunelab
from prunelab import methods
from prunelab.core.masks import Masks
from prunelab.core.patterns import is_nm
from prunelab.data import Dataset, Split
from prunelab.errors import ConfigError
from prunelab.harness import RunSpec, run
from prunelab.harness.store import Store
from prunelab.methods.base import MethodContext, OneShotMethod
from prunelab.training.evaluate import evaluate
from prunelab.training.loop import TrainConfig, train

CONTEXT, VOCAB, TARGET = 16, 256, 0.5
PRUNABLE = [f"blocks.0.{layer}.weight" for layer in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]
LAST = PRUNABLE[-1]
SIZES = {PRUNABLE[0]: 96 * 32, PRUNABLE[1]: 32 * 32, PRUNABLE[2]: 128 * 32, PRUNABLE[3]: 32 * 128}
GPT = {"layers": 1, "width": 32, "heads": 2}
DENSE_BUDGET = {"epochs": 3, "batch_size": 16, "optimizer": "adamw", "lr": 3e-3}
RETRAIN_BUDGET = {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3}
DENSE, RETRAIN = TrainConfig(**DENSE_BUDGET), TrainConfig(**RETRAIN_BUDGET)

# What each method promises (as in tests/test_method_contract.py): "exact" of all prunable weights;
# "layers": exactly TARGET of every layer but the last, which stays dense; "layers-at-most":
# at most TARGET of those (histogram thresholds); "reported": gRDA's own sparsity.
PROMISES = {
    "magnitude": "exact", "random": "exact", "gmp": "exact", "ltp": "exact", "os": "exact", "lt": "exact",
    "sap": "exact", "feta": "layers", "lobs": "layers", "nettrim": "layers", "sparsegpt": "layers",
    "wanda": "layers", "hard-threshold": "layers-at-most", "grda": "reported",
}
TINY = {
    "feta": {"search_steps": 2, "epochs": 1, "outer_iters": 1, "polish_epochs": 1},
    "nettrim": {"search_steps": 2, "search_iters": 20, "max_iters": 40},
    "os": {"rounds": 4, "epochs": 1, "record_grid": False},
    "lt": {"rounds": 4, "epochs": 1, "record_grid": False},
    "sap": {"rounds": 12, "epochs": 1},
    "ltp": {"epochs": 2},
    "gmp": {"epochs": 2},
    "grda": {"epochs": 1},
}


def _offers_patterns(name: str) -> bool:
    if "pattern" not in methods.hparam_docs(name):
        return False
    try:
        methods.create(name, pattern="2:4")
    except ConfigError:          # FeTa and Net-Trim have the field but refuse a pattern
        return False
    return True


PATTERN_METHODS = [n for n in methods.registry.list() if _offers_patterns(n)]


def _windows(n: int, phrase: torch.Tensor, seed: int) -> Split:
    """``n`` windows of the repeated phrase at random offsets; labels are the next bytes."""
    stream = phrase.repeat(4)
    starts = torch.randint(0, len(phrase), (n,), generator=torch.Generator().manual_seed(seed))
    rows = torch.stack([stream[s:s + CONTEXT + 1] for s in starts.tolist()])
    return Split(rows[:, :-1].clone(), rows[:, 1:].clone())


def _gpt(seed: int = 0):
    torch.manual_seed(seed)
    return prunelab.models.create("gpt", (CONTEXT,), VOCAB, **GPT)


@pytest.fixture(scope="module")
def tokens():
    phrase = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[:29]
    splits = [_windows(n, phrase, seed) for seed, n in enumerate((96, 32, 32))]
    return Dataset("synthetic", *splits, in_shape=(CONTEXT,), num_classes=VOCAB, source="memory")


@pytest.fixture(scope="module")
def dense(tokens):
    model = _gpt()
    train(model, tokens, DENSE, progress=False)
    assert evaluate(model, tokens.val)["loss"] < math.log(VOCAB) - 1   # it learned something
    return model


def _run(name, tokens, dense, **hparams):
    """``(masks, pruned model, method or outcome)`` from the family's entry point, as the harness."""
    method = methods.create(name, **{**TINY.get(name, {}), **hparams})
    if isinstance(method, OneShotMethod):
        model = copy.deepcopy(dense)
        return method.prune(model, None, TARGET, tokens.train), model, method
    ctx = MethodContext(data=tokens, model_factory=lambda: _gpt(1), init_state=_gpt(1).state_dict(),
                        dense_model=copy.deepcopy(dense), target=TARGET, train_config=RETRAIN.replace(epochs=1),
                        retrain_config=RETRAIN, seed=0, log=lambda line: None)
    outcome = method.run(ctx)
    return outcome.masks, outcome.model, outcome


def _assert_masked_zero(model, masks):
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        assert not bool(params[name].detach()[~keep].any()), f"pruned weights of {name} are not zero"


def _expected_kept(name: str) -> dict[str, int] | None:
    promise = PROMISES[name]
    if promise == "layers":
        return {n: size if n == LAST else round((1 - TARGET) * size) for n, size in SIZES.items()}
    return None


@pytest.mark.parametrize("name", methods.registry.list())
def test_method_prunes_the_gpt_blocks_and_the_masks_hold_through_training(name, tokens, dense):
    assert name in PROMISES, f"add {name!r}'s sparsity promise to PROMISES"
    masks, model, result = _run(name, tokens, dense)

    assert list(masks) == PRUNABLE                       # the tied head/embedding is not prunable
    assert model.head.weight is model.tok.weight and bool((model.tok.weight != 0).all())
    _assert_masked_zero(model, masks)
    kept = {n: int(m.sum()) for n, m in masks.items()}
    total = sum(SIZES.values())
    if PROMISES[name] == "exact":
        assert masks.pruned() == round(TARGET * total)
    elif PROMISES[name] == "layers":
        assert kept == _expected_kept(name)
    elif PROMISES[name] == "layers-at-most":
        achieved = {row["layer"]: row["sparsity"] for row in result.last_info}
        assert set(achieved) == set(PRUNABLE[:-1]) and kept[LAST] == SIZES[LAST]
        for layer, sparsity in achieved.items():
            assert 1 - kept[layer] / SIZES[layer] == pytest.approx(sparsity) and 0 < sparsity <= TARGET
    else:
        assert result.info["sparsity"] == pytest.approx(masks.sparsity()) and masks.sparsity() > 0

    before = evaluate(model, tokens.val)["loss"]
    state = train(model, tokens, TrainConfig(epochs=1, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=0.1),
                  masks=masks, progress=False)
    assert math.isfinite(before) and all(math.isfinite(r["train_loss"]) for r in state.history)
    assert math.isfinite(evaluate(model, tokens.val)["loss"])
    _assert_masked_zero(model, masks)
    assert {n: int((p != 0).sum()) for n, p in model.named_parameters() if n in masks} == kept


@pytest.mark.parametrize("name", ["os", "lt", "sap"])
def test_iterative_methods_trace_the_pq_index_of_every_gpt_block_weight(name, tokens, dense):
    _, _, outcome = _run(name, tokens, dense)
    rounds = outcome.traces["rounds"]
    assert outcome.info["reached_target"] and rounds[-1]["density"] == TARGET
    for record in rounds:
        assert 0 <= record["pqi"] < 1 and list(record["pqi_layer"]) == PRUNABLE
        assert all(math.isfinite(record[key]) for key in ("val_loss", "test_loss"))


def test_ltp_learns_thresholds_on_layernorm_gpt(tokens, dense):
    _, _, outcome = _run("ltp", tokens, dense)
    info = outcome.info
    # The trail itself passed the target (thresholds were learned, not filled in by magnitude).
    assert info["target_reached"] and info["picked_compression"] >= 1 / (1 - TARGET)
    assert info["filled_fraction"] == 0.0
    assert list(info["thresholds"]) == PRUNABLE and all(t > 0 for t in info["thresholds"].values())


def test_the_pattern_methods_are_the_expected_ones():
    assert {"magnitude", "random", "lobs", "sparsegpt", "wanda"} <= set(PATTERN_METHODS)


@pytest.mark.parametrize("name", PATTERN_METHODS)
def test_two_four_pattern_holds_exactly_on_gpt_through_training(name, tokens, dense):
    hparams = {"pattern": "2:4"}
    if PROMISES[name] == "layers":
        hparams["include_last"] = True
    masks, model, _ = _run(name, tokens, dense, **hparams)
    assert list(masks) == PRUNABLE
    for layer in PRUNABLE:
        assert is_nm(masks[layer], (2, 4)), layer
    assert masks.pruned() == sum(SIZES.values()) // 2
    train(model, tokens, TrainConfig(epochs=1, batch_size=32, optimizer="adamw", lr=1e-3), masks=masks,
          progress=False)
    _assert_masked_zero(model, masks)
    assert all(is_nm(p.detach() != 0, (2, 4), exact=False) for n, p in model.named_parameters() if n in masks)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("lm-store"))


@pytest.mark.parametrize("name", methods.registry.list())
def test_harness_runs_every_method_on_gpt_token_data(name, tokens, store):
    spec = RunSpec("synthetic", "gpt", name, TARGET, hparams=TINY.get(name, {}), model_kwargs=GPT,
                   dense=DENSE_BUDGET, retrain={**RETRAIN_BUDGET, "epochs": 1}, calib_size=64)
    result = run(spec, store, dataset=tokens)
    metrics = result.metrics
    assert [layer["name"] for layer in result.layers] == PRUNABLE
    for phase in ("dense", "final"):
        assert all(math.isfinite(metrics[f"{phase}_{split}_loss"]) for split in ("val", "test"))
    kept = {layer["name"]: layer["nonzero"] for layer in result.layers}
    if PROMISES[name] == "exact":
        assert metrics["sparsity"] == TARGET
    elif PROMISES[name] == "layers":
        assert kept == _expected_kept(name)
    else:
        assert 0 < metrics["sparsity"] <= TARGET


# -- HuggingFace GPT-2: a Conv1D weight is stored (in, out), so its neurons are its columns ------
def _hf_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=256, n_positions=16, bos_token_id=0, eos_token_id=0))


def _as_linear(conv1d_weight: torch.Tensor) -> torch.nn.Linear:
    """The nn.Linear computing what a Conv1D of this weight computes (weight (out, in))."""
    d_in, d_out = conv1d_weight.shape
    linear = torch.nn.Linear(d_in, d_out)
    with torch.no_grad():
        linear.weight.copy_(conv1d_weight.T)
    return linear


def _random_masks(model, seed: int = 3) -> Masks:
    g = torch.Generator().manual_seed(seed)
    return Masks({n: torch.rand(m.shape, generator=g) < 0.7 for n, m in Masks.ones(model).items()})


def test_pq_and_gini_index_neurons_of_gpt2_conv1d_are_its_output_units():
    from prunelab.core.pqi import gini_index_model, pq_index_model

    model = _hf_gpt2()
    masks = _random_masks(model)
    pqi = pq_index_model(model, masks, 0.5, 1.0, "neuron")
    gini = gini_index_model(model, masks, "neuron")
    assert {n: tuple(v.shape) for n, v in pqi.items()} == {
        "transformer.h.0.attn.c_attn.weight": (96,), "transformer.h.0.attn.c_proj.weight": (32,),
        "transformer.h.0.mlp.c_fc.weight": (128,), "transformer.h.0.mlp.c_proj.weight": (32,)}
    params = dict(model.named_parameters())
    for name in masks:
        linear = _as_linear(params[name].detach())
        as_linear = {"weight": masks[name].T.contiguous()}
        assert torch.equal(pqi[name], pq_index_model(linear, as_linear, 0.5, 1.0, "neuron")["weight"]), name
        assert torch.equal(gini[name], gini_index_model(linear, as_linear, "neuron")["weight"]), name
    # the layer and global scopes do not depend on the layout
    assert pq_index_model(model, masks, scope="layer") == pq_index_model(dict(model.named_parameters()), masks,
                                                                         scope="layer")


def _gpt2_loader():
    ids = torch.randint(0, 256, (16, 12), generator=torch.Generator().manual_seed(1))
    return torch.utils.data.DataLoader([{"input_ids": row} for row in ids], batch_size=4)


def _lm_loss(output, batch):
    logits = output.logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             batch["input_ids"][:, 1:].reshape(-1))


@pytest.mark.parametrize("schedule", ["os", "sap"])
def test_neuron_scope_rounds_on_gpt2_prune_within_output_units(schedule):
    from prunelab.methods.iterative import iterate
    from prunelab.methods.iterative.allocation import fixed_fraction_masks, sap_masks

    model = _hf_gpt2()
    seen = {}
    loader = _gpt2_loader()
    result = iterate(model, loader, schedule, rounds=1, epochs=1, scope="neuron", select="last", loss_fn=_lm_loss,
                     train_config=TrainConfig(epochs=1, optimizer="adamw", lr=1e-3), record_grid=False,
                     on_round=lambda rec, m, masks: seen.setdefault(rec["round"], copy.deepcopy(dict(m.named_parameters()))))
    names = list(result.masks)
    # What the rule computes on nn.Linear-layout weights (rows = output units), transposed back.
    weights = {n: seen[0][n].detach().T.contiguous() for n in names}
    ones = Masks({n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()})
    if schedule == "os":
        expected = fixed_fraction_masks(weights, ones, 0.2, 1, "neuron")
    else:
        expected, _ = sap_masks(weights, ones, scope="neuron")
    for name in names:
        assert torch.equal(result.masks[name], expected[name].T), name
    if schedule == "os":   # every output unit (column) of 32 inputs keeps round(0.8 * 32) = 26
        assert all(bool((result.masks[n].sum(dim=0) == 26).all()) for n in names if n.endswith("c_attn.weight"))


def test_layerwise_capture_of_gpt_takes_one_row_per_token_and_caps_tokens(tokens, dense):
    from prunelab.methods.layerwise.driver import capture

    x = tokens.train.x[:8]
    block = dense.blocks[0]
    with torch.no_grad():
        h = dense.tok(x) + dense.pos(torch.arange(CONTEXT))
        rows = block.ln2(h + block.attn(block.ln1(h))).reshape(-1, 32)
    data = capture(dense, "blocks.0.mlp.fc.weight", x)
    assert data.inputs.shape == (8 * CONTEXT, 32) and data.rows_total == 8 * CONTEXT
    torch.testing.assert_close(data.inputs, rows, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(data.outputs, block.mlp.fc(rows).detach(), rtol=1e-5, atol=1e-6)
    capped = capture(dense, "blocks.0.mlp.fc.weight", x, max_samples=100)
    assert capped.inputs.shape == (100, 32) and capped.rows_total == 8 * CONTEXT   # max_samples counts tokens
    assert all(bool((data.inputs == row).all(dim=1).any()) for row in capped.inputs)

"""Methods on models and data that are not prunelab's own: GPT-2 on a DataLoader of token ids with a
language-model loss, nn.MultiheadAttention, and calibration data in every accepted form."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab.data import Split
from prunelab.errors import MethodError
from prunelab.methods.gmp import GradualMagnitudePruning
from prunelab.methods.grda import train_grda
from prunelab.methods.layerwise.driver import capture, default_layers
from prunelab.methods.layerwise.lobs import lobs_prune_layer
from prunelab.methods.ltp import LearnedThresholds, learn_thresholds
from prunelab.training.batches import Calibration, as_calibration
from prunelab.training.loop import TrainConfig

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::prunelab.core.prunable.CoverageWarning")

C_ATTN = "transformer.h.0.attn.c_attn.weight"
LAST = "transformer.h.1.mlp.c_proj.weight"


def _gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _token_loader(n=16, length=12, batch_size=4, seed=1):
    ids = torch.randint(0, 500, (n, length), generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader([{"input_ids": row} for row in ids], batch_size=batch_size)


def lm_loss(output, batch):
    """Next-token cross-entropy of a causal language model."""
    logits = output.logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1))


def _conv1d_weights(model):
    return {n: p for n, p in prunelab.core.prunable.prunable_parameters(model).items()}


# -- layer-wise methods -----------------------------------------------------------------------
def test_lobs_prunes_every_gpt2_conv1d_layer_but_the_last_exactly():
    model = _gpt2()
    reference = copy.deepcopy(model)
    loader = _token_loader()
    masks = prunelab.prune(model, "lobs", sparsity=0.5, calib=loader)
    params = _conv1d_weights(model)
    assert list(masks) == list(params) and len(masks) == 8          # the tied lm_head is not one
    assert default_layers(model, list(masks)) == list(masks)[:-1]
    for name, param in params.items():
        kept = int(masks[name].sum())
        assert kept == (param.numel() if name == LAST else round(0.5 * param.numel())), name
        assert not bool(param.detach()[~masks[name]].any())       # Conv1D layout (d_in, d_out)
    # The first layer saw the unpruned network's inputs: the same L-OBS solve by hand agrees.
    data = capture(reference, C_ATTN, loader)
    conv1d = reference.transformer.h[0].attn.c_attn
    torch.testing.assert_close(data.outputs, data.inputs @ conv1d.weight + conv1d.bias, rtol=1e-5, atol=1e-5)
    weight, bias, mask = lobs_prune_layer(data.inputs, conv1d.weight.detach().T.contiguous(),
                                          conv1d.bias.detach().clone(), 64 * 192 // 2)
    assert torch.equal(masks[C_ATTN], mask.T)
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight.detach(), weight.T)
    assert torch.equal(model.transformer.h[0].attn.c_attn.bias.detach(), bias)


def test_lobs_on_gpt2_takes_token_tensors_and_a_calibration_with_forward_fn():
    ids = torch.cat([batch["input_ids"] for batch in _token_loader()])
    by_tensor = prunelab.prune(_gpt2(), "lobs", sparsity=0.5, calib=ids, layers=[C_ATTN])
    forward = lambda model, inputs: model(input_ids=inputs)   # noqa: E731
    calibration = Calibration(list(ids.split(4)), forward)
    by_loader = prunelab.prune(_gpt2(), "lobs", sparsity=0.5, calib=calibration, layers=[C_ATTN])
    assert by_tensor.equal(by_loader)
    assert int(by_tensor[C_ATTN].sum()) == 64 * 192 // 2 and bool(by_tensor[LAST].all())


def test_calibration_forward_fn_is_the_training_one_and_gets_whole_batches():
    # A DataLoader of 1-tuples of token ids: the forward_fn written for training (batch[0] is the
    # ids) must see whole batches in calibration too, not the ids alone (where batch[0] would be
    # the first sequence).
    ids = torch.cat([batch["input_ids"] for batch in _token_loader()])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=4)
    forward = lambda model, batch: model(input_ids=batch[0])   # noqa: E731
    by_tensor = prunelab.prune(_gpt2(), "lobs", sparsity=0.5, calib=ids, layers=[C_ATTN])
    by_loader = prunelab.prune(_gpt2(), "lobs", sparsity=0.5, calib=loader, forward_fn=forward, layers=[C_ATTN])
    assert by_tensor.equal(by_loader)
    calibration = as_calibration(loader, forward)
    assert len(calibration.batches) == 4 and all(isinstance(b, list) and len(b) == 1 for b in calibration.batches)
    assert calibration.num_samples == 16 and torch.equal(calibration.tensor(), ids)


def test_magnitude_prunes_gpt2_exactly():
    model = _gpt2()
    masks = prunelab.prune(model, "magnitude", sparsity=0.5)
    assert masks.pruned() == round(0.5 * masks.total()) and len(masks) == 8
    for name, param in _conv1d_weights(model).items():
        assert torch.equal(param.detach() != 0, masks[name])


class _Encoder(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_projections_are_captured_and_pruned(batch_first):
    model = _Encoder(batch_first)
    x = torch.randn(12, 5, 16, generator=torch.Generator().manual_seed(2))
    attention = model.layer.self_attn
    data = capture(model, "layer.self_attn.in_proj_weight", x)
    assert torch.equal(data.inputs, x.reshape(-1, 16))             # the query's rows
    torch.testing.assert_close(data.outputs, F.linear(data.inputs, attention.in_proj_weight, attention.in_proj_bias))
    data = capture(model, "layer.self_attn.out_proj.weight", x)
    torch.testing.assert_close(data.outputs, attention(x, x, x, need_weights=False)[0].detach().reshape(-1, 16),
                               rtol=1e-5, atol=1e-6)
    masks = prunelab.prune(model, "lobs", sparsity=0.5, calib=x)
    counts = {n: int(m.sum()) for n, m in masks.items()}
    assert counts == {"layer.self_attn.in_proj_weight": 384, "layer.self_attn.out_proj.weight": 128,
                      "layer.linear1.weight": 256, "layer.linear2.weight": 256, "head.weight": 48}
    assert not bool(attention.in_proj_weight.detach()[~masks["layer.self_attn.in_proj_weight"]].any())


def test_attention_that_cannot_be_fitted_raises_a_clear_error():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x.flip(1), x.flip(1))[0]

    with pytest.raises(MethodError, match="self-attention"):
        capture(Cross(), "attn.in_proj_weight", torch.randn(3, 4, 8))
    separate = nn.Sequential(nn.Linear(4, 4))
    separate.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
    with pytest.raises(MethodError, match="separate q/k/v"):
        capture(separate, "attn.q_proj_weight", torch.randn(3, 4))


@pytest.mark.parametrize("method,hparams", [
    ("lobs", {}),
    ("feta", {"search_steps": 2, "epochs": 1, "outer_iters": 1, "polish_epochs": 1}),
])
def test_layerwise_masks_do_not_depend_on_the_form_of_the_calibration_data(method, hparams):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2200, 20, generator=g), torch.randint(0, 3, (2200,), generator=g)

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))

    results = []
    dataset = torch.utils.data.TensorDataset(x, y)
    for calib in (Split(x, y), x, (x, y), dataset, torch.utils.data.DataLoader(dataset, batch_size=1000)):
        model = mlp()
        masks = prunelab.prune(model, method, sparsity=0.5, calib=calib, **hparams)
        results.append((masks, model.state_dict()))
    first_masks, first_state = results[0]
    assert int(first_masks["0.weight"].sum()) == 160 and bool(first_masks["4.weight"].all())
    for masks, state in results[1:]:
        assert masks.equal(first_masks)
        assert all(torch.equal(state[k], first_state[k]) for k in state)


def test_layerwise_methods_look_through_a_data_parallel_wrapper():
    x = torch.randn(200, 10, generator=torch.Generator().manual_seed(5))

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2))

    plain, inner = mlp(), mlp()
    expected = prunelab.prune(plain, "lobs", sparsity=0.5, calib=x)
    masks = prunelab.prune(nn.DataParallel(inner), "lobs", sparsity=0.5, calib=x)
    assert list(masks) == ["0.weight", "2.weight"] and masks.equal(expected)
    assert torch.equal(inner[0].weight, plain[0].weight)


def test_layerwise_calibration_of_dict_batches_matches_tensor_inputs():
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2))

        def forward(self, features):
            return self.net(features)

    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(4))
    plain = Keyed()
    by_tensor = prunelab.prune(plain, "lobs", sparsity=0.5, calib=x)
    keyed = Keyed()
    loader = torch.utils.data.DataLoader([{"features": row} for row in x], batch_size=1000)
    by_dicts = prunelab.prune(keyed, "lobs", sparsity=0.5, calib=loader, mode="sequential", max_samples=200)
    again = prunelab.prune(Keyed(), "lobs", sparsity=0.5, calib=loader, mode="sequential", max_samples=200)
    assert int(by_dicts["net.0.weight"].sum()) == 40 and by_dicts.equal(again)
    assert by_tensor.equal(prunelab.prune(Keyed(), "lobs", sparsity=0.5, calib=loader))


# -- training-time methods on GPT-2 -------------------------------------------------------------
def test_grda_trains_gpt2_on_token_batches_to_exact_zeros():
    model = _gpt2()
    embedding = model.transformer.wte.weight.detach().clone()
    records, optimizer = train_grda(model, _token_loader(), TrainConfig(epochs=1, lr=0.05), c=0.2, mu=0.55,
                                    schedule="constant", loss_fn=lm_loss)
    masks = prunelab.Masks.from_nonzero(model)
    assert len(records) == 1 and records[0]["sparsity"] == masks.sparsity() > 0.1
    assert [g["name"] for g in optimizer.param_groups] == ["thresholded", "plain"]
    assert bool((model.transformer.wte.weight != 0).all())          # embeddings train as plain SGD
    assert not torch.equal(model.transformer.wte.weight.detach(), embedding)


def test_gmp_callback_reaches_its_exact_target_on_gpt2():
    model = _gpt2()
    masks = prunelab.Masks.ones(model)
    schedule = GradualMagnitudePruning(0.6, begin_step=0, end_step=6, frequency=2)
    prunelab.train(model, _token_loader(), TrainConfig(epochs=2, optimizer="adamw", lr=1e-3), masks=masks,
                   callbacks=[schedule], loss_fn=lm_loss)
    assert [e["step"] for e in schedule.events] == [0, 2, 4, 6]
    assert masks.pruned() == round(0.6 * masks.total())
    for name, param in _conv1d_weights(model).items():
        assert not bool(param.detach()[~masks[name]].any())


def test_ltp_learns_thresholds_of_gpt2_and_its_own_loop_object_reaches_a_target():
    model = _gpt2()
    loader = _token_loader()
    trail, wrapped = learn_thresholds(model, loader, TrainConfig(epochs=1, lr=0.05, momentum=0.0),
                                      penalty_weight=3.0, threshold_lr=5.0, val=loader, loss_fn=lm_loss)
    assert [e.epoch for e in trail] == [0, 1] and trail[1].step == 4
    assert wrapped.names == list(_conv1d_weights(model))              # the tied lm_head is not thresholded
    assert all(t > 0 for t in trail[1].thresholds.values())          # every threshold moved up from 0
    assert trail[1].val_loss > 0 and trail[1].val_top1 != trail[1].val_top1   # no accuracy for an LM
    ltp = LearnedThresholds(_gpt2(), penalty_weight=3.0, log=lambda message: None)
    optimizer = torch.optim.SGD(ltp.parameter_groups(threshold_lr=5.0), lr=0.05)
    for batch in loader:
        (lm_loss(ltp.model(**batch), batch) + ltp.penalty_term()).backward()
        optimizer.step()
        optimizer.zero_grad()
        ltp.step()
    pruned, masks = ltp.hard_model(target_compression=2.0)
    assert masks.pruned() == round(0.5 * masks.total())
    assert not bool(pruned.transformer.h[1].attn.c_attn.weight.detach()[~masks["transformer.h.1.attn.c_attn.weight"]].any())


def test_lottery_ticket_rounds_run_on_gpt2_token_batches():
    from prunelab.methods.iterative import iterate

    loader = _token_loader()
    result = iterate(_gpt2(), loader, "lt", rounds=2, epochs=1, select="val", val=loader, loss_fn=lm_loss,
                     train_config=TrainConfig(epochs=1, optimizer="adamw", lr=1e-3), record_grid=False)
    total = result.masks.total()
    assert [r["kept"] for r in result.rounds] == [total, round(0.8 * total), round(0.64 * total)]
    assert all(r["val_top1"] is None and r["val_loss"] > 0 for r in result.rounds)
    assert result.rounds[1]["pruned_val_loss"] > 0 and result.rounds[0]["pruned_val_loss"] is None
    for name, param in _conv1d_weights(result.model).items():
        assert not bool(param.detach()[~result.masks[name]].any())


def test_learn_thresholds_on_a_dataloader_recalibrates_batchnorm_on_its_first_batches(tiny_net, tiny_data):
    from prunelab.training.batchnorm import recalibrate_batchnorm

    x, y = tiny_data
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    trail, _ = learn_thresholds(tiny_net, loader, TrainConfig(epochs=1, lr=0.05), bn_calibration_size=100,
                                val=(x, y), log=lambda message: None)
    assert [e.bn_recalibrated for e in trail] == [True, True] and 0 <= trail[-1].val_top1 <= 1
    entry = trail[-1]
    model = copy.deepcopy(tiny_net)
    model.load_state_dict(entry.state)
    recalibrate_batchnorm(model, [(x[:64], y[:64]), (x[64:128], y[64:128])])   # the first 2 batches >= 100
    assert torch.equal(model.bn.running_mean, entry.state["bn.running_mean"])
    assert torch.equal(model.bn.running_var, entry.state["bn.running_var"])
    once, _ = learn_thresholds(copy.deepcopy(tiny_net), iter([(x[:64], y[:64])]), TrainConfig(epochs=1, lr=0.05),
                               log=lambda message: None)
    assert not any(e.bn_recalibrated for e in once)        # an iterator's batches belong to training

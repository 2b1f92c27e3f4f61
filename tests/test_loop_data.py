"""The training loop and evaluation on any data: in-memory tensors, DataLoaders, lists of batches,
dict batches with a forward_fn/loss_fn; token-level accuracy; mixed precision; divergence."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from prunelab.core.masks import Masks
from prunelab.data import Split
from prunelab.errors import ConfigError, DivergenceError
from prunelab.training.batchnorm import recalibrate_batchnorm
from prunelab.training.evaluate import train_hits
from prunelab.training.guards import DivergenceGuard
from prunelab.training.loop import Callback, TrainConfig, evaluate, train


class SeededOrder(Sampler):
    """The permutation the loop draws for in-memory tensors (one per epoch, same generator)."""

    def __init__(self, n: int, seed: int):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _history(state):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in state.history]


def _magnitude_masks(model: nn.Module, names=("conv.weight", "fc1.weight", "fc2.weight"), keep=0.4) -> Masks:
    masks = {}
    for name, p in model.named_parameters():
        if name in names:
            k = int(keep * p.numel())
            threshold = p.detach().abs().flatten().kthvalue(p.numel() - k).values
            masks[name] = p.detach().abs() > threshold
    return Masks(masks)


# -- the forms of data -----------------------------------------------------------------------------
def test_dataloader_in_the_loops_order_trains_bit_identically_to_the_split(tiny_net, tiny_data):
    x, y = tiny_data
    other = copy.deepcopy(tiny_net)
    config = TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=1e-2, seed=7)
    split_state = train(tiny_net, Split(x, y), config, progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, sampler=SeededOrder(len(y), seed=7))
    loader_state = train(other, loader, config, progress=False)
    assert _same_weights(tiny_net, other)
    assert _history(loader_state) == _history(split_state)
    assert loader_state.step == split_state.step == 16 and loader_state.steps_per_epoch == 8


def test_list_of_batches_trains_bit_identically_to_one_epoch_of_the_split(tiny_net, tiny_data):
    x, y = tiny_data
    other = copy.deepcopy(tiny_net)
    config = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, seed=3)
    train(tiny_net, Split(x, y), config, progress=False)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    batches = [(x[idx], y[idx]) for idx in order.split(64)]
    state = train(other, batches, config, progress=False)
    assert _same_weights(tiny_net, other)
    assert state.step == 4


@pytest.mark.parametrize("form", ["pair", "tensor_dataset"])
def test_in_memory_forms_are_the_split_path(tiny_net, tiny_data, form):
    x, y = tiny_data
    other = copy.deepcopy(tiny_net)
    masks = _magnitude_masks(tiny_net)
    config = TrainConfig(epochs=2, batch_size=48, optimizer="sgd", lr=0.05, momentum=0.9, seed=5,
                         schedule="cosine")
    split_state = train(tiny_net, Split(x, y), config, masks=masks, val=Split(x[:50], y[:50]), progress=False)
    data = (x, y) if form == "pair" else TensorDataset(x, y)
    state = train(other, data, config, masks=masks.clone(), val=(x[:50], y[:50]), progress=False)
    assert _same_weights(tiny_net, other)
    assert _history(state) == _history(split_state)


def test_unlabelled_iterable_without_length(tiny_net, tiny_data):
    x, y = tiny_data

    class Stream:   # re-iterable, no len()
        def __iter__(self):
            return iter([(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)])

    with pytest.raises(ConfigError, match="scheduler="):
        train(tiny_net, Stream(), TrainConfig(epochs=2, schedule="cosine"), progress=False)
    state = train(tiny_net, Stream(), TrainConfig(epochs=2, schedule="inverse"), progress=False)
    assert state.steps_per_epoch == 4 and state.step == 8 and len(state.history) == 2
    with pytest.raises(ConfigError, match="iterator"):
        train(tiny_net, iter(Stream()), TrainConfig(epochs=2), progress=False)
    with pytest.raises(ConfigError, match="empty"):
        train(tiny_net, [], TrainConfig(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="DataLoader"):
        train(tiny_net, 3, TrainConfig(epochs=1), progress=False)


def test_evaluate_on_a_dataloader_equals_the_split_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 7))
    x, y = torch.randn(203, 6), torch.randint(0, 7, (203,))
    on_split = evaluate(model, Split(x, y), batch_size=50)
    on_loader = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=50), device="cpu")
    assert on_loader == on_split
    assert on_split["n"] == 203 and on_split["top5"] > on_split["top1"]


# -- dict batches, custom forward and loss, token-level accuracy -----------------------------------
class TinyLM(nn.Module):
    def __init__(self, vocab=11):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def forward(self, input_ids):
        return self.head(torch.relu(self.embed(input_ids)))


def test_dict_batches_with_forward_and_loss_functions():
    torch.manual_seed(0)
    vocab = 11
    model = TinyLM(vocab)
    ids = torch.randint(0, vocab, (64, 5), generator=torch.Generator().manual_seed(1))
    batches = [{"input_ids": ids[i : i + 16], "labels": (ids[i : i + 16] + 1) % vocab} for i in range(0, 64, 16)]

    def forward_fn(model, batch):
        return model(batch["input_ids"])

    def loss_fn(output, batch):
        return F.cross_entropy(output.reshape(-1, vocab), batch["labels"].reshape(-1))

    seen = []

    class Peek(Callback):
        def on_batch_end(self, state):
            seen.append((state.output.shape, state.batch["input_ids"].shape))

    config = TrainConfig(epochs=20, optimizer="adam", lr=0.05)
    state = train(model, batches, config, forward_fn=forward_fn, loss_fn=loss_fn, callbacks=[Peek()], progress=False)
    assert seen[0] == (torch.Size([16, 5, vocab]), torch.Size([16, 5])) and len(seen) == 80
    assert state.batch is None and state.output is None
    losses = [h["train_loss"] for h in state.history]
    assert losses[-1] < 0.1 * losses[0]
    assert state.history[-1]["train_top1"] == 1.0    # the next token is learnable exactly
    metrics = evaluate(model, batches, forward_fn=forward_fn, loss_fn=loss_fn)
    assert metrics["n"] == 64 and metrics["top1"] == 1.0 and metrics["top5"] == 1.0
    assert metrics["loss"] == pytest.approx(losses[-1], rel=0.5)


def test_token_level_accuracy_by_hand():
    logits = torch.tensor([
        [0.0, 5, 1, 0],   # token 0 -> predicts 1
        [1.0, 0, 5, 0],   # token 1 -> predicts 2
        [0.0, 0, 0, 5],   # token 2 -> predicts 3
        [5.0, 0, 0, 1],   # token 3 -> predicts 0
    ])
    model = nn.Embedding(4, 4)
    with torch.no_grad():
        model.weight.copy_(logits)
    ids = torch.tensor([[0, 1, 2], [3, 0, 1]])
    labels = torch.tensor([[1, 0, -100], [0, 1, 2]])
    # predictions [[1, 2, 3], [0, 1, 2]]: hits at (0,0), (1,0), (1,1), (1,2); (0,2) is ignored.
    metrics = evaluate(model, (ids, labels))
    assert metrics["top1"] == 4 / 5 and metrics["top5"] == 4 / 5 and metrics["n"] == 2
    expected_loss = F.cross_entropy(logits[ids].reshape(-1, 4), labels.reshape(-1))
    assert metrics["loss"] == float(expected_loss)
    hits, counted = train_hits(model(ids), (ids, labels))
    assert int(hits) == 4 and int(counted) == 5
    # Float targets (regression) or logits of the wrong shape: no accuracy.
    assert train_hits(model(ids), (ids, labels.float())) is None
    assert train_hits(torch.zeros(2, 4), (ids, labels)) is None


def test_regression_outputs_have_no_accuracy():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(40, 3)
    y = x.sum(1, keepdim=True)

    def mse(output, batch):
        return F.mse_loss(output, batch[1])

    state = train(model, (x, y), TrainConfig(epochs=3, batch_size=10, lr=0.05), loss_fn=mse, val=(x, y),
                  select_best=True, progress=False)
    assert all(h["train_top1"] is None and h["val_top1"] is None for h in state.history)
    assert state.best["val_loss"] == min(h["val_loss"] for h in state.history)
    metrics = evaluate(model, (x, y), loss_fn=mse)
    assert metrics["top1"] is None and metrics["top5"] is None
    with torch.no_grad():
        assert metrics["loss"] == pytest.approx(float(F.mse_loss(model(x), y)), rel=1e-6)


def test_huggingface_model_with_its_own_loss():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500,
                                                                 n_positions=64))
    ids = torch.randint(0, 500, (16, 12), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids[i : i + 8], "labels": ids[i : i + 8]} for i in (0, 8)]
    state = train(model, batches, TrainConfig(epochs=3, optimizer="adamw", lr=3e-3), progress=False)
    losses = [h["train_loss"] for h in state.history]
    assert losses[0] > losses[1] > losses[2]
    assert 0.0 <= state.history[-1]["train_top1"] <= 1.0   # per token, position by position
    metrics = evaluate(model, batches)
    assert metrics["n"] == 16 and math.isfinite(metrics["loss"])


# -- masks, state, batch norm ------------------------------------------------------------------------
def test_masks_stay_exact_through_a_dataloader_run_with_adamw(tiny_net, tiny_data):
    x, y = tiny_data
    masks = _magnitude_masks(tiny_net)
    pruned = masks.pruned()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    train(tiny_net, loader, TrainConfig(epochs=2, optimizer="adamw", lr=1e-2, weight_decay=0.1), masks=masks,
          progress=False)
    params = dict(tiny_net.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0, name
        assert torch.count_nonzero(params[name][mask]) == int(mask.sum()), name   # kept weights moved
    assert masks.pruned() == pruned == sum(int((~m).sum()) for m in masks.values())


def test_recalibrate_batchnorm_on_a_dataloader_equals_on_the_tensor(tiny_net, tiny_data):
    x, y = tiny_data
    other = copy.deepcopy(tiny_net)
    assert recalibrate_batchnorm(tiny_net, x[:130], batch_size=50)
    assert recalibrate_batchnorm(other, DataLoader(TensorDataset(x[:130], y[:130]), batch_size=50))
    assert _same_weights(tiny_net, other)
    assert float(tiny_net.bn.running_mean.abs().sum()) > 0 and int(tiny_net.bn.num_batches_tracked) == 3
    assert not recalibrate_batchnorm(nn.Linear(2, 2), x)


# -- mixed precision -----------------------------------------------------------------------------
def test_bf16_on_cpu_trains_in_bfloat16(tiny_net, tiny_data):
    dtypes = set()

    class Dtype(Callback):
        def on_batch_end(self, state):
            dtypes.add(state.output.dtype)

    state = train(tiny_net, tiny_data, TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-2, amp="bf16"),
                  callbacks=[Dtype()], progress=False)
    losses = [h["train_loss"] for h in state.history]
    assert dtypes == {torch.bfloat16}
    assert losses[2] < losses[1] < losses[0]
    assert all(p.dtype == torch.float32 for p in tiny_net.parameters())


def test_amp_validation(tiny_net, tiny_data):
    with pytest.raises(ConfigError, match="unknown amp 'fp32'"):
        TrainConfig(amp="fp32")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs a CUDA device"):
            train(tiny_net, tiny_data, TrainConfig(epochs=1, amp="fp16"), progress=False)
    assert "amp" not in {k for k, v in TrainConfig().to_dict().items() if v != "none"}


# -- divergence ----------------------------------------------------------------------------------
class _Steps(Callback):
    def __init__(self):
        self.batch_ends, self.epoch_ends = 0, 0

    def on_batch_end(self, state):
        self.batch_ends += 1

    def on_epoch_end(self, state):
        self.epoch_ends += 1


def _digits_mlp():
    from prunelab.data import load
    from prunelab.models.factory import create

    data = load("digits")
    torch.manual_seed(0)
    return create("mlp", data.in_shape, data.num_classes), data


def test_a_huge_learning_rate_raises_divergence_before_callbacks_see_the_step():
    model, data = _digits_mlp()
    steps = _Steps()
    with pytest.raises(DivergenceError, match=r"epoch 1/2, step 2: the training loss is .*Lower the learning rate"):
        train(model, data, TrainConfig(epochs=2, optimizer="sgd", lr=1e9), callbacks=[steps], progress=False)
    assert steps.batch_ends == 1 and steps.epoch_ends == 0
    assert issubclass(DivergenceError, ConfigError)


def test_healthy_training_does_not_diverge():
    model, data = _digits_mlp()
    state = train(model, data, TrainConfig(epochs=3, optimizer="sgd", lr=0.1), progress=False)
    assert len(state.history) == 3 and state.history[-1]["train_loss"] < state.history[0]["train_loss"]


def test_non_finite_loss_raises_at_the_first_step(tiny_net, tiny_data):
    x, y = tiny_data
    steps = _Steps()
    with pytest.raises(DivergenceError, match=r"epoch 1/1, step 1: .*not finite"):
        train(tiny_net, (torch.full_like(x, float("nan")), y), TrainConfig(epochs=1), callbacks=[steps], progress=False)
    assert steps.batch_ends == 0


def test_divergence_rule_by_hand():
    guard = DivergenceGuard()
    guard.check(0.01, epoch=1, epochs=1, step=1, lr=0.1)   # the reference; the floor makes the limit 1000
    guard.check(1000.0, epoch=1, epochs=1, step=2, lr=0.1)
    with pytest.raises(DivergenceError, match="over 1000"):
        guard.check(1000.5, epoch=1, epochs=1, step=3, lr=0.1)
    guard = DivergenceGuard()
    guard.check(5.0, epoch=1, epochs=1, step=1, lr=0.1)
    guard.check(4999.0, epoch=1, epochs=1, step=2, lr=0.1)
    with pytest.raises(DivergenceError, match="epoch 2/3, step 9"):
        guard.check(5001.0, epoch=2, epochs=3, step=9, lr=0.1)
    with pytest.raises(DivergenceError, match="not finite"):
        DivergenceGuard().check(float("inf"), epoch=1, epochs=1, step=1, lr=0.1)


# -- devices -------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_from_cpu_batches_with_fp16(tiny_net, tiny_data):
    x, y = tiny_data
    masks = _magnitude_masks(tiny_net)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(epochs=3, optimizer="adam", lr=1e-2, amp="fp16", clip_grad_norm=5.0)
    state = train(tiny_net, loader, config, masks=masks, device="cuda", val=loader, progress=False)
    assert next(tiny_net.parameters()).device.type == "cuda"
    losses = [h["train_loss"] for h in state.history]
    assert losses[2] < losses[0] and state.history[-1]["val_top1"] > 0.9
    params = dict(tiny_net.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name][~mask.to(params[name].device)]) == 0, name
    on_gpu = evaluate(tiny_net, Split(x, y))
    on_cpu = evaluate(tiny_net, Split(x, y), device="cpu")
    assert on_gpu["top1"] == pytest.approx(on_cpu["top1"], abs=2 / 256)

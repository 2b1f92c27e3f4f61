"""Training-time methods inside a user's own loop: a DataLoader, AdamW and a cosine schedule.

GMP (:meth:`GradualMagnitudePruning.attach` / ``.step``), LTP (:class:`LearnedThresholds`) and gRDA
(its optimizer) are driven by the user's loop, not prunelab's, and must still reach exact targets.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab.errors import MethodError
from prunelab.methods.gmp import GradualMagnitudePruning
from prunelab.methods.grda import GRDA, grda_param_groups, train_grda
from prunelab.methods.ltp import LearnedThresholds
from prunelab.training.loop import TrainConfig

STEPS = 200


def _problem(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(3, 64, generator=g)[y] + 0.5 * torch.randn(n, 64, generator=g)
    return x, y


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


def _loader(x, y, batch_size=32):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size,
                                       shuffle=True, generator=torch.Generator().manual_seed(1))


def _batches(loader, steps):
    """``steps`` batches, cycling through the loader's epochs."""
    done = 0
    while done < steps:
        for batch in loader:
            if done == steps:
                return
            done += 1
            yield batch


def _adamw_cosine(params):
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)


def test_gmp_attach_reaches_exactly_its_target_in_a_user_loop():
    x, y = _problem()
    model = _mlp()
    optimizer, scheduler = _adamw_cosine(model.parameters())
    gmp = GradualMagnitudePruning(0.9, initial_sparsity=0.2, begin_step=10, end_step=150, frequency=10)
    handle = gmp.attach(optimizer, model)
    total = gmp.masks.total()
    sparsity = []
    for xb, yb in _batches(_loader(x, y), STEPS):
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        sparsity.append(gmp.masks.sparsity())
    handle.remove()
    masks = gmp.masks
    assert gmp.steps_done == STEPS
    assert [e["step"] for e in gmp.events] == list(range(10, 151, 10))
    assert sparsity[8] == 0.0 and sparsity[9] == round(0.2 * total) / total   # first event: step 10
    assert sparsity[148] < 0.9 and masks.pruned() == round(0.9 * total)
    assert all(s == sparsity[149] for s in sparsity[149:])     # exact from step 150 on
    assert sparsity == sorted(sparsity)                        # never un-prunes
    for name, param in model.named_parameters():
        if name in masks:
            assert torch.equal(param.detach() != 0, masks[name])
            state = optimizer.state[param]
            assert not bool(state["exp_avg"][~masks[name]].any())
            assert not bool(state["exp_avg_sq"][~masks[name]].any())
    assert (model(x).argmax(1) == y).float().mean() > 0.9      # still learns at 90 % sparsity


def test_gmp_step_variant_and_finish_force_the_final_sparsity():
    x, y = _problem()
    model = _mlp()
    optimizer, scheduler = _adamw_cosine(model.parameters())
    gmp = GradualMagnitudePruning(0.75, begin_step=0, end_step=100, frequency=20, scope="layer")
    with pytest.raises(MethodError, match="attach"):
        gmp.finish(model)
    events = []
    for xb, yb in _batches(_loader(x, y), 50):                 # stops before end_step
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        events.append(gmp.step(model, optimizer))
    assert [i + 1 for i, e in enumerate(events) if e] == [20, 40]
    masks = gmp.finish(model, optimizer)
    for name, param in model.named_parameters():
        if name in masks:
            assert int(masks[name].sum()) == param.numel() - round(0.75 * param.numel())
            assert torch.equal(param.detach() != 0, masks[name])


def test_ltp_reaches_a_target_compression_in_a_user_loop():
    x, y = _problem()
    model = _mlp()
    ltp = LearnedThresholds(model, penalty_weight=3.0, target_compression=4.0, check_every=5,
                            log=lambda message: None)
    optimizer, scheduler = _adamw_cosine(ltp.parameter_groups(threshold_lr=0.2))
    handle = ltp.attach(optimizer)
    start = ltp.model.relative_thresholds.detach().clone()
    for xb, yb in _batches(_loader(x, y), STEPS):
        loss = F.cross_entropy(ltp.model(xb), yb) + ltp.penalty_term()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        if ltp.reached:
            break
    handle.remove()
    assert ltp.reached and ltp.steps < STEPS and ltp.steps % 5 == 0
    assert ltp.trail[-1].partial and ltp.trail[-1].compression >= 4.0
    moved = ltp.model.relative_thresholds.detach()
    assert bool((moved != start).all()) and bool((moved[:2] > start[:2]).all())   # hidden layers pruned
    pruned, masks = ltp.hard_model()
    assert masks.pruned() == round(0.75 * masks.total())        # exactly the target
    assert ltp.match_info["filled_fraction"] == 0.0              # reached: thresholds lowered
    for name, param in pruned.named_parameters():
        if name in masks:
            assert not bool(param.detach()[~masks[name]].any())
    assert (pruned(x).argmax(1) == y).float().mean() > 0.9
    # Short of a farther target, the fill by magnitude still lands exactly on it.
    far = ltp.masks(target_compression=20.0)
    assert far.pruned() == round(0.95 * far.total())


def test_ltp_without_target_gives_the_current_hard_mask_and_records_epochs():
    x, y = _problem(96)
    model = _mlp()
    ltp = LearnedThresholds(model, penalty_weight=1.0, val=(x, y), log=lambda message: None)
    optimizer = torch.optim.SGD(ltp.parameter_groups(threshold_lr=1.0), lr=0.05)
    for epoch in range(2):
        for xb, yb in _loader(x, y):
            (F.cross_entropy(ltp.model(xb), yb) + ltp.penalty_term()).backward()
            optimizer.step()
            optimizer.zero_grad()
            ltp.step()
        ltp.end_epoch()
    assert [e.epoch for e in ltp.trail] == [0, 1, 2] and [e.step for e in ltp.trail] == [0, 3, 6]
    assert 0.0 <= ltp.trail[-1].val_top1 <= 1.0
    _, masks = ltp.hard_model()
    assert masks.equal(ltp.model.hard_masks())
    assert ltp.compression() == masks.total() / masks.kept()


def test_grda_in_a_user_loop_is_train_grda_bit_for_bit():
    x, y = _problem(128)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    config = TrainConfig(epochs=1, lr=0.1)
    reference = _mlp()
    train_grda(reference, batches, config, c=0.5, mu=0.55, schedule="constant")
    model = _mlp()
    optimizer = GRDA(grda_param_groups(model, 0.1, 0.5, 0.55), lr=0.1, c=0.5, mu=0.55)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for xb, yb in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()
        scheduler.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name
    masks = prunelab.Masks.from_nonzero(model)
    assert 0 < masks.pruned() < masks.total()
    assert all(bool((p != 0).all()) for n, p in model.named_parameters() if n.endswith("bias"))

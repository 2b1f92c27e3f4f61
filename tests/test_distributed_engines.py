"""The engines of multi-process training: DistributedDataParallel (the default) and FSDP
(``shard=True``), on 2 CPU ranks with gloo, against one process.

Tolerances as in test_distributed.py: weights within 1e-5 of one process (float summation order),
masks exactly.
"""


import torch
from torch import nn

import prunelab
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab.training import distributed
from prunelab.training.loop import Callback, TrainConfig, train
from test_distributed import (  # the forking launcher and the small problem of the launcher tests
    DENSE, RETRAIN, TOLERANCE, WORLD, _assert_ok, _load, _max_diff, _save, launch, make_data, make_model,
    pytestmark,  # noqa: F401
)

class WithUnused(nn.Module):
    """A model with a layer its forward never uses (no gradient ever) and an attribute a forward_fn reads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.spare = make_model(), nn.Linear(4, 4)
        self.scale = 1.0

    def forward(self, x):
        return self.body(x) * self.scale


def _forward_reading_attribute(model, batch):
    _forward_reading_attribute.seen.add(type(model).__name__)
    assert model.scale == 1.0          # read through the DDP wrapper
    return model(batch[0])


_forward_reading_attribute.seen = set()


class _ExternalPenalty(Callback):
    """An extra loss on a tensor the optimizer updates but the model does not own."""

    def __init__(self, external):
        self.external = external

    def extra_loss(self, state):
        return 0.1 * (self.external - 1.0).pow(2).sum()


def _ddp_run():
    model = WithUnused()
    external = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([*model.parameters(), external], lr=0.05, momentum=0.9)
    train(model, make_data(), DENSE, optimizer=optimizer, callbacks=[_ExternalPenalty(external)], progress=False,
          forward_fn=_forward_reading_attribute)
    return model, external


def _ddp_worker(rank, out):
    model, external = _ddp_run()
    spare_untouched = model.spare.weight.grad is None
    # The engine is gone after train: a backward on the bare model is this rank's own (not reduced).
    model.zero_grad()
    model(make_data().train.x[rank :: 2]).sum().backward()
    local = model.body[0].weight.grad.clone()
    _save(out, rank, {**{f"param/{k}": v for k, v in model.state_dict().items()}, "external": external.detach(),
                      "local": local},
          {"seen": sorted(_forward_reading_attribute.seen), "spare_untouched": spare_untouched})


def test_ddp_is_the_engine_and_handles_unused_and_outside_parameters(tmp_path):
    codes, errors, _ = launch(_ddp_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, i0), (t1, i1) = _load(tmp_path)
    assert i0["seen"] == i1["seen"] == ["DistributedDataParallel", "WithUnused"]   # training, validation
    assert i0["spare_untouched"] and i1["spare_untouched"]
    params = [k for k in t0 if k != "local"]
    assert all(torch.equal(t0[k], t1[k]) for k in params)
    assert not torch.equal(t0["local"], t1["local"])     # no hook of the finished run reduced it
    assert errors[1].strip() == "" and "Warning" not in errors[0]
    _forward_reading_attribute.seen.clear()
    model, external = _ddp_run()
    assert _forward_reading_attribute.seen == {"WithUnused"}
    single = {f"param/{k}": v for k, v in model.state_dict().items()} | {"external": external.detach()}
    assert _max_diff({k: t0[k] for k in params}, single) < TOLERANCE
    assert float((external.detach() - 1.0).abs().max()) < 1.0    # the penalty did move it


class _ParameterTypes(Callback):
    """Records what the parameters being trained are (FSDP: DTensor shards)."""

    def __init__(self):
        self.seen = set()

    def on_batch_end(self, state):
        self.seen.update((type(p).__name__, tuple(p.shape), tuple(getattr(p, "_local_tensor", p).shape))
                         for p in state.model.parameters() if p.dim() == 2)


def _sharded_pipeline(shard: bool):
    model = make_model()
    types = _ParameterTypes()
    train(model, make_data(), DENSE, progress=False, shard=shard, callbacks=[types])
    masks = prunelab.prune(model, "magnitude", 0.9)
    state = train(model, make_data(), RETRAIN, masks=masks, progress=False, shard=shard, select_best=True)
    return model, masks, state, types.seen


def _fsdp_worker(rank, out):
    model, masks, state, seen = _sharded_pipeline(shard=True)
    zeros_at_pruned = all(bool((p.detach()[~masks[n]] == 0).all()) for n, p in model.named_parameters() if n in masks)
    if distributed.is_main():
        save_checkpoint(out / "fsdp.safetensors", model, masks)
    tensors = {f"param/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"mask/{k}": v.to(torch.uint8) for k, v in masks.items()})
    _save(out, rank, tensors, {"pruned": masks.pruned(), "total": masks.total(), "zeros": zeros_at_pruned,
                               "types": sorted({type(p).__name__ for p in model.parameters()}),
                               "history": [h["val_top1"] for h in state.history], "seen": sorted(seen)})


def test_fsdp_training_keeps_exact_sparsity_and_matches_single_process(tmp_path):
    codes, errors, _ = launch(_fsdp_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, i0), (t1, i1) = _load(tmp_path)
    assert all(torch.equal(t0[k], t1[k]) for k in t0)
    # Trained as shards: rank 0 holds rows [0, ceil(n/2)) of every weight, rank 1 the rest.
    assert i0["seen"] == [["DTensor", [3, 16], [2, 16]], ["DTensor", [16, 32], [8, 32]], ["DTensor", [32, 20], [16, 20]]]
    assert i1["seen"] == [["DTensor", [3, 16], [1, 16]], ["DTensor", [16, 32], [8, 32]], ["DTensor", [32, 20], [16, 20]]]
    assert {k: v for k, v in i0.items() if k != "seen"} == {k: v for k, v in i1.items() if k != "seen"}
    assert i0["types"] == ["Parameter"] and i0["zeros"]          # plain and whole again after training
    assert i0["pruned"] == round(0.9 * i0["total"])
    model, masks, state, _ = _sharded_pipeline(shard=False)
    for name, mask in masks.items():
        assert torch.equal(t0[f"mask/{name}"].bool(), mask), name
    single = {f"param/{k}": v for k, v in model.state_dict().items()}
    assert _max_diff({k: v for k, v in t0.items() if k.startswith("param/")}, single) < TOLERANCE
    assert i0["history"] == [h["val_top1"] for h in state.history]
    # Rank 0's checkpoint loads in one process bit for bit.
    loaded = load_checkpoint(tmp_path / "fsdp.safetensors", make_model(seed=5))
    assert all(torch.equal(v, t0[f"param/{k}"]) for k, v in loaded.model.state_dict().items())
    assert loaded.masks.equal({k[5:]: v.bool() for k, v in t0.items() if k.startswith("mask/")})


def _cli_worker(rank, out, argv):
    from prunelab.cli.main import main
    from prunelab.training.distributed import fsdp

    original = fsdp.ShardedTraining.__init__

    def counting(self, model):   # record that training went through FSDP
        (out / f"rank{rank}.sharded").write_text("1")
        original(self, model)

    fsdp.ShardedTraining.__init__ = counting
    return main(argv)


def test_cli_shard_trains_through_fsdp_and_matches_single_process(tmp_path):
    from prunelab.cli.main import main

    argv = ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet", "--batch-size", "64",
            "--optimizer", "sgd", "--lr", "0.05"]
    single, sharded = tmp_path / "single.safetensors", tmp_path / "sharded.safetensors"
    assert main([*argv, "--out", str(single)]) == 0
    assert not distributed.sharding_default()                  # --shard does not outlive its command
    codes, errors, _ = launch(_cli_worker, tmp_path, argv=[*argv, "--shard", "--out", str(sharded)])
    _assert_ok(codes, errors)
    a, b = load_checkpoint(sharded), load_checkpoint(single)
    assert _max_diff(a.model.state_dict(), b.model.state_dict()) < TOLERANCE
    assert (tmp_path / "rank0.out").read_text().count("saved ") == 1 and (tmp_path / "rank1.out").read_text() == ""
    assert all((tmp_path / f"rank{r}.sharded").is_file() for r in range(WORLD))

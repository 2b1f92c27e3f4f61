"""Multi-process training on data the user shards (a DataLoader with a DistributedSampler): 2 CPU
ranks with gloo against a single-process run over the same global batches.

Each rank's mean loss is divided by the number of ranks and the gradients are summed, so with
equal shards every step is the single-process step on the union of the shards, up to float32
summation order (weights within the launcher tests' 1e-5).
"""

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from prunelab.errors import ConfigError
from prunelab.training import distributed
from prunelab.training.loop import TrainConfig, evaluate, train
from test_distributed import (  # the forking launcher and the small problem of the launcher tests
    TOLERANCE, WORLD, _assert_ok, _load, _max_diff, _save, launch, make_data, make_model, pytestmark,  # noqa: F401
)

CONFIG = TrainConfig(epochs=2, optimizer="sgd", lr=0.05, momentum=0.9)
SHARD_BATCH = 16   # per rank: the global batch is 32


def _sharded(split, rank):
    dataset = TensorDataset(split.x, split.y)
    sampler = DistributedSampler(dataset, num_replicas=WORLD, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=SHARD_BATCH, sampler=sampler)


def _sampler_worker(rank, out):
    data = make_data(n_train=298, n_val=60)
    model = make_model()
    state = train(model, _sharded(data.train, rank), CONFIG, val=_sharded(data.val, rank), progress=False)
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in state.history]
    _save(out, rank, dict(model.state_dict()), {"history": history, "world": distributed.world_size()})


def test_distributed_sampler_matches_single_process_global_batches(tmp_path):
    codes, errors, _ = launch(_sampler_worker, tmp_path)
    _assert_ok(codes, errors)
    (params0, info0), (params1, info1) = _load(tmp_path)
    assert info0["world"] == WORLD and info0["history"] == info1["history"]
    assert _max_diff(params0, params1) == 0.0

    # rank r's b-th batch is samples r, r + 2, ... of global batch b: the union is 32 consecutive samples.
    data = make_data(n_train=298, n_val=60)
    model = make_model()
    x, y = data.train.x, data.train.y
    batches = [(x[i : i + 2 * SHARD_BATCH], y[i : i + 2 * SHARD_BATCH]) for i in range(0, len(y), 2 * SHARD_BATCH)]
    state = train(model, batches, CONFIG, val=data.val, progress=False)
    assert _max_diff(params0, dict(model.state_dict())) < TOLERANCE
    for got, want in zip(info0["history"], state.history):
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-5)
        assert got["train_top1"] == want["train_top1"]
        assert got["val_top1"] == want["val_top1"]
        assert got["val_loss"] == pytest.approx(want["val_loss"], abs=1e-5)
    assert info0["history"][-1]["val_top1"] == evaluate(model, data.val)["top1"]


def _uneven_worker(rank, out):
    data = make_data()
    x, y = data.train.x, data.train.y
    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 30 - 10 * rank, 10)]   # rank 0: 3, rank 1: 2
    try:
        train(make_model(), batches, TrainConfig(epochs=1), progress=False)
        message = None
    except ConfigError as exc:
        message = str(exc)
    (out / f"rank{rank}.json").write_text(json.dumps({"error": message}))


def test_uneven_shards_are_a_clear_error_on_every_rank(tmp_path):
    codes, errors, _ = launch(_uneven_worker, tmp_path)
    _assert_ok(codes, errors)
    for rank in range(WORLD):
        error = json.loads((tmp_path / f"rank{rank}.json").read_text())["error"]
        assert "ran out at different steps (1 of 2 ranks still had a batch)" in error
        assert "DistributedSampler" in error

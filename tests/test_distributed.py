"""Multi-process training: 2 CPU ranks with gloo against a single-process run.

Ranks are forked from the test process (torch is already imported, so a launch costs well under a
second) with the environment torchrun would set; one test also goes through the real launcher
(``python -m torch.distributed.run``). Every launch has a timeout, so a hang fails the test
instead of stalling CI.

Tolerance: the distributed run sums per-rank gradients where the single-process run sums over the
whole batch, so results differ only by float32 summation order; weights must agree to 1e-5
(absolute, max over all entries) after training, pruning and retraining, and masks exactly.
"""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prunelab.training import distributed
from prunelab.data import Dataset, Split
from prunelab.core.masks import Masks
from prunelab.training.loop import Callback, TrainConfig, evaluate, train
from prunelab.methods.gmp import GradualMagnitudePruning
from prunelab.methods.grda.method import train_grda
from prunelab.methods.ltp import learn_thresholds

WORLD = 2
TOLERANCE = 1e-5
LAUNCH_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(
    not (distributed.dist is not None and distributed.dist.is_available() and distributed.dist.is_gloo_available())
    or "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs torch.distributed with gloo and fork()",
)


# -- launcher ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(target, rank: int, port: int, out: str, kwargs: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    # pytest replaced sys.stdout/stderr in this (forked) process: point both at plain files.
    err = os.open(os.path.join(out, f"rank{rank}.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(err, 2)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.stdout = open(os.path.join(out, f"rank{rank}.out"), "w", buffering=1)
    code = 1
    try:
        distributed.init()
        code = target(rank, Path(out), **kwargs) or 0
        if code == 0:
            distributed.shutdown()
    except BaseException as exc:  # noqa: BLE001 - what the interpreter's top level would do
        sys.excepthook(type(exc), exc, exc.__traceback__)
    finally:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)


def launch(target, out: Path, timeout: float = LAUNCH_TIMEOUT_S, **kwargs) -> tuple[list[int], list[str], float]:
    """Run ``target(rank, out, **kwargs)`` on WORLD forked ranks; (exit codes, stderr texts, seconds).

    Forking is safe here because conftest.py keeps torch at one thread (a fork after OpenMP ran
    with several threads can deadlock the child).
    """
    # The first optimizer imports torch._dynamo (seconds): import it once here, not in every rank.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(target, r, port, str(out), kwargs)) for r in range(WORLD)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(max(0.0, timeout - (time.monotonic() - t0)))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    errors = [(out / f"rank{r}.err").read_text() if (out / f"rank{r}.err").exists() else "" for r in range(WORLD)]
    assert not hung, f"rank(s) {hung} still running after {timeout}s (a hang); stderr: {errors}"
    return [p.exitcode for p in procs], errors, time.monotonic() - t0


# -- a small problem -----------------------------------------------------------------------------
def make_data(n_train: int = 298, n_val: int = 61) -> Dataset:
    """3 Gaussian classes in 20 dimensions; 298 = 9·33 + 1, so with batch 33 the last global batch
    has one sample and rank 1's shard of it is empty."""
    g = torch.Generator().manual_seed(0)
    means = 0.5 * torch.randn(3, 20, generator=g)

    def split(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return Split(means[y] + torch.randn(n, 20, generator=g), y)

    return Dataset("blobs", split(n_train), split(n_val), split(50), (20,), 3, "test")


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.bn, self.fc2 = nn.Linear(20, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


DENSE = TrainConfig(epochs=2, batch_size=33, optimizer="sgd", lr=0.05, momentum=0.9, seed=3)
RETRAIN = TrainConfig(epochs=2, batch_size=33, optimizer="adam", lr=1e-3, seed=4)
SPARSITY = 0.8


def magnitude_pipeline(data: Dataset):
    """Dense training, global magnitude pruning to SPARSITY, retraining with the masks fixed."""
    import prunelab

    model = make_model()
    dense = train(model, data, DENSE, progress=False)
    masks = prunelab.prune(model, "magnitude", SPARSITY)
    retrain = train(model, data, RETRAIN, masks=masks, progress=False)
    return model, masks, dense.history + retrain.history


def _strip_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _save(out: Path, rank: int, tensors: dict, info: dict) -> None:
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(info))


def _load(out: Path) -> list[tuple[dict, dict]]:
    return [(load_file(str(out / f"rank{r}.safetensors")), json.loads((out / f"rank{r}.json").read_text()))
            for r in range(WORLD)]


def _assert_ok(codes, errors):
    assert codes == [0] * WORLD, f"exit codes {codes}; stderr: {errors}"


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


# -- workers (run in the forked ranks) -----------------------------------------------------------
def _magnitude_worker(rank, out):
    model, masks, history = magnitude_pipeline(make_data())
    tensors = {f"param/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"mask/{k}": v.to(torch.uint8) for k, v in masks.items()})
    _save(out, rank, tensors, {"history": _strip_seconds(history), "pruned": masks.pruned(), "total": masks.total(),
                               "world": distributed.world_size(), "main": distributed.is_main()})


def test_magnitude_prune_retrain_matches_single_process(tmp_path):
    codes, errors, _ = launch(_magnitude_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, i0), (t1, i1) = _load(tmp_path)
    # Identical across ranks, bit for bit.
    assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    assert i0["history"] == i1["history"]
    assert [i0["world"], i1["world"], i0["main"], i1["main"]] == [2, 2, True, False]
    # Sparsity exactly the target: round(0.8 · prunable weights) pruned.
    assert i0["pruned"] == round(SPARSITY * i0["total"]) == sum(int((v == 0).sum()) for k, v in t0.items() if k.startswith("mask/"))
    # The same as one process with the same global batch.
    model, masks, history = magnitude_pipeline(make_data())
    single = {f"param/{k}": v for k, v in model.state_dict().items()}
    assert _max_diff({k: v for k, v in t0.items() if k.startswith("param/")}, single) < TOLERANCE
    for name, mask in masks.items():
        assert torch.equal(t0[f"mask/{name}"].bool(), mask), name
    single_history = _strip_seconds(history)
    for dist_epoch, single_epoch in zip(i0["history"], single_history, strict=True):
        assert dist_epoch["train_top1"] == single_epoch["train_top1"]
        assert dist_epoch["val_top1"] == single_epoch["val_top1"]
        assert dist_epoch["train_loss"] == pytest.approx(single_epoch["train_loss"], rel=1e-6)
        assert dist_epoch["val_loss"] == pytest.approx(single_epoch["val_loss"], rel=1e-6)


def _grda_worker(rank, out):
    model = make_model()
    _, optimizer = train_grda(model, make_data(), DENSE.replace(epochs=3, lr=0.1), c=0.02, mu=0.55, schedule="constant")
    tensors = {f"param/{k}": v for k, v in model.state_dict().items()}
    thresholds = {}
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        if "accumulator" in state:
            tensors[f"acc/{name}"] = state["accumulator"]
        thresholds[name] = [state.get("step"), state.get("threshold")]
    _save(out, rank, tensors, {"thresholds": thresholds})


def test_grda_thresholding_identical_across_ranks_and_matches_single_process(tmp_path):
    codes, errors, _ = launch(_grda_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, i0), (t1, i1) = _load(tmp_path)
    assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    assert i0["thresholds"] == i1["thresholds"]     # ℓ_n and n, exactly
    model = make_model()
    _, optimizer = train_grda(model, make_data(), DENSE.replace(epochs=3, lr=0.1), c=0.02, mu=0.55, schedule="constant")
    single = {f"param/{k}": v for k, v in model.state_dict().items()}
    assert _max_diff({k: v for k, v in t0.items() if k.startswith("param/")}, single) < TOLERANCE
    for name, p in model.named_parameters():
        step, threshold = i0["thresholds"][name]
        assert step == optimizer.state[p]["step"] and threshold == pytest.approx(optimizer.state[p]["threshold"], rel=1e-12)
    # The soft threshold made exact zeros, and the same ones as one process.
    weights = [k for k in t0 if k.startswith("param/") and k.endswith("weight")]
    zeros = sum(int((t0[k] == 0).sum()) for k in weights)
    assert zeros > 0.05 * sum(t0[k].numel() for k in weights)
    for k in weights:
        assert torch.equal(t0[k] == 0, single[k] == 0), k


def _ltp_config():
    return TrainConfig(epochs=2, batch_size=33, optimizer="sgd", lr=0.02, momentum=0.9, seed=5)


def _ltp_run(data):
    model = make_model()
    train(model, data, DENSE, progress=False)
    trail, wrapped = learn_thresholds(model, data, _ltp_config(), penalty_weight=2.0, temperature=0.5,
                                      threshold_lr=0.5, check_every=5, log=lambda message: None)
    return trail, wrapped


def _ltp_worker(rank, out):
    trail, wrapped = _ltp_run(make_data())
    masks = wrapped.hard_masks()
    tensors = {f"param/{k}": v for k, v in wrapped.state_dict().items()}
    tensors.update({f"mask/{k}": v.to(torch.uint8) for k, v in masks.items()})
    records = [{k: e.thresholds[k] for k in e.thresholds} | {"compression": e.compression, "val_top1": e.val_top1}
               for e in trail]
    _save(out, rank, tensors, {"trail": records, "thresholds": wrapped.thresholds().tolist()})


def test_ltp_thresholds_identical_across_ranks_and_match_single_process(tmp_path):
    codes, errors, _ = launch(_ltp_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, i0), (t1, i1) = _load(tmp_path)
    assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    assert i0 == i1                               # thresholds of every trail entry, exactly
    trail, wrapped = _ltp_run(make_data())
    assert torch.allclose(torch.tensor(i0["thresholds"]), wrapped.thresholds().detach(), rtol=1e-5, atol=1e-7)
    single = {f"param/{k}": v for k, v in wrapped.state_dict().items()}
    assert _max_diff({k: v for k, v in t0.items() if k.startswith("param/")}, single) < TOLERANCE
    assert i0["trail"][-1]["compression"] == pytest.approx(trail[-1].compression)
    assert trail[-1].compression > 1.2            # the thresholds did prune


def _gmp_run():
    model = make_model()
    masks = Masks.ones(model)
    schedule = GradualMagnitudePruning(0.7, begin_step=2, end_step=12, frequency=3)
    train(model, make_data(), DENSE, masks=masks, callbacks=[schedule], progress=False)
    return model, masks, schedule.events


def _gmp_worker(rank, out):
    model, masks, events = _gmp_run()
    tensors = {f"param/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"mask/{k}": v.to(torch.uint8) for k, v in masks.items()})
    _save(out, rank, tensors, {"events": events, "pruned": masks.pruned(), "total": masks.total()})


def test_gradual_pruning_inside_the_loop_keeps_masks_identical(tmp_path):
    codes, errors, _ = launch(_gmp_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, i0), (t1, i1) = _load(tmp_path)
    assert all(torch.equal(t0[k], t1[k]) for k in t0) and i0 == i1
    assert i0["pruned"] == round(0.7 * i0["total"])
    model, masks, events = _gmp_run()
    assert i0["events"] == events
    assert all(torch.equal(t0[f"mask/{k}"].bool(), v) for k, v in masks.items())
    assert _max_diff({k[6:]: v for k, v in t0.items() if k.startswith("param/")}, dict(model.state_dict())) < TOLERANCE


def _bn_worker(rank, out):
    model = BNNet()
    # 320 = 9·33 + 23: every shard has >= 2 samples, as batch norm in training mode needs.
    train(model, make_data(n_train=320), DENSE, progress=False)   # ends with the cross-rank equality check
    distributed.assert_params_equal_across_ranks(model)
    _save(out, rank, dict(model.state_dict()), {})


def test_batchnorm_buffers_identical_across_ranks(tmp_path):
    codes, errors, _ = launch(_bn_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, _), (t1, _) = _load(tmp_path)
    assert all(torch.equal(t0[k], t1[k]) for k in t0)
    assert not torch.equal(t0["bn.running_mean"], torch.zeros(16))


def _helpers_worker(rank, out):
    torch.manual_seed(rank)   # deliberately different on each rank
    model = make_model(seed=rank)
    masks = Masks({n: torch.rand(p.shape) > 0.5 for n, p in model.named_parameters() if p.dim() > 1})
    shared = distributed.broadcast_masks(masks)
    distributed.assert_masks_equal_across_ranks(shared)
    distributed.broadcast_module(model)
    distributed.assert_params_equal_across_ranks(model)
    decision = distributed.broadcast_json({"todo": ["a", "b"], "rank": rank} if rank == 0 else None)
    distributed.barrier(timeout=10)
    sums = distributed.all_reduce_sum([rank, 1])
    with distributed.single_process():
        local = (distributed.world_size(), distributed.rank(), distributed.all_reduce_sum([rank]))
    _save(out, rank, {f"mask/{k}": v.to(torch.uint8) for k, v in shared.items()} | dict(model.state_dict()),
          {"decision": decision, "sums": sums, "any": [distributed.any_rank(rank == 1), distributed.any_rank(False)],
           "local": list(local), "main": distributed.is_main()})


def test_broadcast_and_reduce_helpers(tmp_path):
    codes, errors, _ = launch(_helpers_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, i0), (t1, i1) = _load(tmp_path)
    assert all(torch.equal(t0[k], t1[k]) for k in t0)
    assert torch.equal(t0["0.weight"], make_model(seed=0).state_dict()["0.weight"])   # rank 0's won
    assert i0["decision"] == i1["decision"] == {"todo": ["a", "b"], "rank": 0}
    assert i0["sums"] == i1["sums"] == [1.0, 2.0]
    assert i0["any"] == i1["any"] == [True, False]
    assert i0["local"] == [1, 0, [0.0]] and i1["local"] == [1, 0, [1.0]]
    assert (i0["main"], i1["main"]) == (True, False)


def _grads_worker(rank, out):
    a, b, c = (torch.zeros(3, requires_grad=True) for _ in range(3))
    a.grad = torch.full((3,), float(rank + 1))
    if rank == 1:
        b.grad = torch.tensor([1.0, 2.0, 3.0])
    distributed.sum_gradients_([a, b, c])
    _save(out, rank, {"a": a.grad, "b": b.grad}, {"c_is_none": c.grad is None})


def test_gradient_sum_keeps_missing_gradients_missing(tmp_path):
    codes, errors, _ = launch(_grads_worker, tmp_path)
    _assert_ok(codes, errors)
    for tensors, info in _load(tmp_path):
        assert torch.equal(tensors["a"], torch.full((3,), 3.0))          # 1 + 2
        assert torch.equal(tensors["b"], torch.tensor([1.0, 2.0, 3.0]))  # only rank 1 had one
        assert info["c_is_none"]                                          # no rank had one


class _StopOnRank(Callback):
    def on_batch_end(self, state):
        if state.step == 2 and distributed.rank() == 1:
            state.stop = True


def _stop_worker(rank, out):
    model = make_model()
    state = train(model, make_data(), DENSE, callbacks=[_StopOnRank()], progress=False)
    _save(out, rank, dict(model.state_dict()), {"step": state.step, "epochs": len(state.history)})


def test_stop_on_one_rank_stops_every_rank(tmp_path):
    codes, errors, _ = launch(_stop_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, i0), (t1, i1) = _load(tmp_path)
    assert i0 == i1 == {"step": 2, "epochs": 1}
    assert all(torch.equal(t0[k], t1[k]) for k in t0)


# -- disagreement and failure --------------------------------------------------------------------
def _mismatch_worker(rank, out):
    import prunelab

    model = make_model()
    masks = prunelab.prune(model, "magnitude", 0.5 if rank == 0 else 0.6)
    train(model, make_data(), DENSE.replace(epochs=1), masks=masks, progress=False)


def test_different_masks_stop_every_rank_with_a_clear_error(tmp_path):
    codes, errors, seconds = launch(_mismatch_worker, tmp_path, timeout=30)
    assert all(code != 0 for code in codes), codes
    for err in errors:
        assert "masks are not identical across ranks" in err and "0.weight differs on rank(s) [1]" in err, err


class _FailOnRank(Callback):
    def __init__(self, rank):
        self.rank = rank

    def on_batch_end(self, state):
        if state.step == 3 and distributed.rank() == self.rank:
            raise ValueError(f"boom on rank {self.rank}")


def _failing_train_worker(rank, out, failing):
    train(make_model(), make_data(), DENSE.replace(epochs=50), callbacks=[_FailOnRank(failing)], progress=False)


@pytest.mark.parametrize("failing", [0, 1])
def test_a_rank_failing_in_training_ends_the_run(tmp_path, failing):
    codes, errors, seconds = launch(_failing_train_worker, tmp_path, timeout=30, failing=failing)
    assert all(code != 0 for code in codes), codes
    assert f"ValueError: boom on rank {failing}" in errors[failing]
    other = errors[1 - failing]
    assert f"rank {failing} failed: ValueError: boom on rank {failing}" in other or "unreachable" in other, other
    assert seconds < 20


def _failing_outside_collective_worker(rank, out, failing):
    if rank == failing:
        time.sleep(0.5)
        raise RuntimeError(f"rank {rank} ran out of luck")
    time.sleep(60)   # not in any collective: only the watchdog can end this rank


@pytest.mark.parametrize("failing", [0, 1])
def test_watchdog_ends_ranks_that_are_not_in_a_collective(tmp_path, failing):
    codes, errors, seconds = launch(_failing_outside_collective_worker, tmp_path, timeout=30, failing=failing)
    assert codes == [1, 1], (codes, errors)
    other = errors[1 - failing]
    assert f"prunelab: rank {1 - failing} stopping:" in other, other
    if failing == 1:   # rank 0 hosts the store, so the message always gets through
        assert f"rank 1 failed: RuntimeError: rank 1 ran out of luck" in other
    assert seconds < 15


# -- the command line ----------------------------------------------------------------------------
def _cli_worker(rank, out, argv):
    from prunelab.cli.main import main

    return main(argv)


def test_cli_train_and_prune_on_two_ranks(tmp_path, capsys):
    """SGD: Adam's scale-free step turns float roundoff in near-zero gradients into differences of
    ~1e-3 after an epoch on digits (measured), in the 2-rank and in any re-ordered computation."""
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.cli.main import main

    recipe = ["--dataset", "digits", "--quiet", "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.05"]
    train_argv = ["train", "--model", "mlp", "--epochs", "1", *recipe]
    dense, single_dense = tmp_path / "dense.safetensors", tmp_path / "s_dense.safetensors"
    # The single-process run first: the forked ranks inherit its loaded data and imports.
    assert main([*train_argv, "--out", str(single_dense)]) == 0
    codes, errors, _ = launch(_cli_worker, tmp_path, argv=[*train_argv, "--out", str(dense)])
    _assert_ok(codes, errors)
    a, b = load_checkpoint(dense), load_checkpoint(single_dense)
    assert _max_diff(a.model.state_dict(), b.model.state_dict()) < TOLERANCE
    assert a.meta["extra"]["world_size"] == 2 and b.meta["extra"]["world_size"] == 1
    assert (tmp_path / "rank0.out").read_text().count("saved ") == 1 and (tmp_path / "rank1.out").read_text() == ""

    prune_argv = ["prune", str(dense), "--sparsity", "0.9", "--retrain-epochs", "1", "--retrain-batch-size", "64",
                  "--retrain-optimizer", "sgd", "--retrain-lr", "0.02", "--quiet"]
    pruned, single_pruned = tmp_path / "pruned.safetensors", tmp_path / "s_pruned.safetensors"
    assert main([*prune_argv, "--out", str(single_pruned)]) == 0
    codes, errors, _ = launch(_cli_worker, tmp_path, argv=[*prune_argv, "--out", str(pruned)])
    _assert_ok(codes, errors)
    capsys.readouterr()
    a, b = load_checkpoint(pruned), load_checkpoint(single_pruned)
    assert a.masks.pruned() == round(0.9 * a.masks.total()) and a.masks.equal(b.masks)
    assert _max_diff(a.model.state_dict(), b.model.state_dict()) < TOLERANCE
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "dense.safetensors", "pruned.safetensors", "s_dense.safetensors", "s_pruned.safetensors"]


def _cli_failing_worker(rank, out, argv):
    from prunelab.cli.main import main

    if rank == 1:
        argv = [*argv[:-2], "--sparsity", "1.5", *argv[-2:]]   # bad input on one rank only
    return main(argv)


def test_cli_error_on_one_rank_exits_every_rank(tmp_path):
    from prunelab.cli.main import main

    dense = tmp_path / "dense.safetensors"
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet", "--out", str(dense)]) == 0
    argv = ["prune", str(dense), "--sparsity", "0.5", "--retrain-epochs", "1", "--out", str(tmp_path / "p.safetensors")]
    codes, errors, seconds = launch(_cli_failing_worker, tmp_path, timeout=30, argv=argv)
    assert codes[1] == 2 and codes[0] != 0, (codes, errors)
    assert "prunelab (rank 1): error: prune: argument --sparsity: expected a fraction in [0, 1), got 1.5" in errors[1]
    assert "rank 1 failed: ConfigError: prune: argument --sparsity" in errors[0] or "unreachable" in errors[0]
    assert "Traceback" not in errors[1]
    assert not (tmp_path / "p.safetensors").exists()


def test_torchrun_launches_the_cli(tmp_path):
    """The real launcher: ``python -m torch.distributed.run --nproc-per-node 2 -m prunelab prune``."""
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.cli.main import main

    dense, pruned, single = (tmp_path / f"{n}.safetensors" for n in ("dense", "pruned", "single"))
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet", "--out", str(dense)]) == 0
    argv = ["prune", str(dense), "--sparsity", "0.75", "--hparam", "scope=layer", "--retrain-epochs", "1", "--quiet",
            "--retrain-optimizer", "sgd", "--retrain-lr", "0.02"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "prunelab", *argv, "--out", str(pruned)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("saved ") == 1            # rank 0 alone prints
    assert main([*argv, "--out", str(single)]) == 0
    a, b = load_checkpoint(pruned), load_checkpoint(single)
    assert a.masks.equal(b.masks) and _max_diff(a.model.state_dict(), b.model.state_dict()) < TOLERANCE


# -- bench and iterate under torchrun ------------------------------------------------------------
def _audit_writes(root: Path) -> list:
    """Record, in this process, every attempt to write under ``root`` (open for writing, mkdir,
    rename/replace, remove, SQLite connect): Python's audit hooks see them all, including the
    os.replace that commits a safetensors checkpoint written by Rust code."""
    root = os.path.abspath(root)
    seen = []

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        try:
            path = os.path.abspath(os.fsdecode(path))
            return path == root or path.startswith(root + os.sep)
        except (TypeError, ValueError):
            return False

    def hook(event, args):
        if event == "open" and args and under(args[0]):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                seen.append((event, os.fsdecode(args[0])))
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "sqlite3.connect") and args and under(args[0]):
            seen.append((event, os.fsdecode(args[0])))
        elif event == "os.rename" and len(args) > 1 and (under(args[0]) or under(args[1])):
            seen.append((event, os.fsdecode(args[1])))

    sys.addaudithook(hook)
    return seen


def _cli_audited_worker(rank, out, argv, watch, fail_rank=None):
    """The CLI on one rank; ranks other than 0 record any write under ``watch`` (there must be
    none). ``fail_rank``: that rank's magnitude pruning raises, in the middle of a bench run."""
    from prunelab.cli.main import main

    seen = _audit_writes(Path(watch)) if rank != 0 else None
    if fail_rank == rank:
        from prunelab.methods.magnitude import MagnitudePruning

        def broken(self, *args, **kwargs):
            raise RuntimeError(f"pruning broke on rank {rank}")

        MagnitudePruning.prune = broken
    try:
        return main(argv)
    finally:
        if seen is not None:
            (out / f"rank{rank}.writes.json").write_text(json.dumps(seen))


BENCH_SUITE = """
name = "tiny-dist"
dataset = "synthetic"
models = [{name = "mlp", kwargs = {hidden = [16, 8]}}]
targets = [%s]
seeds = [0]
baselines = false
data_kwargs = {in_shape = [1, 8, 8], num_classes = 4, n_train = 203, n_test = 100}
dense = {epochs = 2, optimizer = "sgd", lr = 0.1, batch_size = 50}
retrain = {epochs = 1, optimizer = "sgd", lr = 0.02, batch_size = 50}
[[methods]]
name = "magnitude"
[[methods]]
name = "lt"
hparams = {rounds = 1, epochs = 1, rate = 0.5}
targets = [0.5]
"""


def _bench_suite(tmp_path: Path, targets: str) -> Path:
    path = tmp_path / f"suite-{len(targets)}.toml"
    path.write_text(BENCH_SUITE % targets)
    return path


def _store_rows(out: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(out / "results.sqlite") as conn:
        return conn.execute("SELECT hash, COUNT(*) FROM runs GROUP BY hash ORDER BY hash").fetchall()


def _assert_same_results(dist_out: Path, single_out: Path) -> None:
    """Every stored run of the 2-rank bench equals the single-process one: accuracies and the
    achieved sparsity exactly, losses to float32 roundoff (SGD: summation order only)."""
    from prunelab.harness.store import Store

    with Store(dist_out) as a, Store(single_out) as b:
        assert a.hashes() == b.hashes() and a.check() == [] and a.suites() == b.suites()
        for h in sorted(a.hashes()):
            ra, rb = a.get(h), b.get(h)
            assert ra.family == rb.family and ra.dense_cached == rb.dense_cached
            for key, value in rb.metrics.items():
                if key.startswith("time_"):
                    continue
                if key.endswith("_loss") and value is not None:
                    assert ra.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (ra.label, key)
                else:
                    assert ra.metrics[key] == value, (ra.label, key)
            assert [row["nonzero"] for row in ra.layers] == [row["nonzero"] for row in rb.layers]
            assert ra.traces.keys() == rb.traces.keys()
            for name, trace in rb.traces.items():
                assert len(ra.traces[name]) == len(trace)
                for ea, eb in zip(ra.traces[name], trace):
                    for key in ("train_top1", "val_top1", "density", "kept", "test_top1"):
                        assert ea.get(key) == eb.get(key), (ra.label, name, key)


def test_cli_bench_on_two_ranks_matches_single_process_and_only_rank0_writes(tmp_path):
    """``torchrun -m prunelab bench`` (forked ranks with torchrun's environment): the store gets each
    run once, equal to a single-process bench with the same global batch; rank 0 alone writes.
    A rerun with one more target resumes: rank 0 decides what is left, the new run takes its
    dense model from rank 0's cache."""
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.cli.main import main

    suite = _bench_suite(tmp_path, "0.75")
    single, dist_out = tmp_path / "single", tmp_path / "dist"
    # The single-process run first: the forked ranks inherit its imports and data.
    assert main(["bench", "--suite", str(suite), "--out", str(single)]) == 0
    argv = ["bench", "--suite", str(suite), "--out", str(dist_out)]
    codes, errors, _ = launch(_cli_audited_worker, tmp_path, argv=argv, watch=str(dist_out))
    _assert_ok(codes, errors)
    rows = _store_rows(dist_out)
    assert len(rows) == 2 and all(count == 1 for _, count in rows)      # 2 runs, each once
    _assert_same_results(dist_out, single)
    # The dense model of both runs: trained once, data-parallel, cached by rank 0.
    (dense,) = (dist_out / "dense").glob("*.safetensors")
    (single_dense,) = (single / "dense").glob("*.safetensors")
    a, b = load_checkpoint(dense), load_checkpoint(single_dense)
    assert _max_diff(a.model.state_dict(), b.model.state_dict()) < TOLERANCE
    # One report, by rank 0; rank 1 wrote nothing at all under the output directory.
    assert (dist_out / "report.html").is_file() and (dist_out / "report.md").is_file()
    assert errors[0].count("report: ") == 1 and "report" not in errors[1] and errors[1].strip() == ""
    assert (tmp_path / "rank1.out").read_text() == ""
    assert json.loads((tmp_path / "rank1.writes.json").read_text()) == []
    assert not (dist_out / "errors.log").exists()

    # Resume with one more target: only the new run trains, from rank 0's cached dense model.
    more = _bench_suite(tmp_path, "0.75, 0.9")
    assert main(["bench", "--suite", str(more), "--out", str(single), "--no-report"]) == 0
    argv = ["bench", "--suite", str(more), "--out", str(dist_out), "--no-report"]
    codes, errors, _ = launch(_cli_audited_worker, tmp_path, argv=argv, watch=str(dist_out))
    _assert_ok(codes, errors)
    assert "1 runs done" in errors[0] and "2 were already stored" in errors[0]
    rows = _store_rows(dist_out)
    assert len(rows) == 3 and all(count == 1 for _, count in rows)
    _assert_same_results(dist_out, single)
    assert json.loads((tmp_path / "rank1.writes.json").read_text()) == []


@pytest.mark.parametrize("failing", [0, 1])
def test_cli_bench_run_failing_on_one_rank_ends_every_rank(tmp_path, failing):
    suite = _bench_suite(tmp_path, "0.75")
    out = tmp_path / "dist"
    argv = ["bench", "--suite", str(suite), "--out", str(out), "--no-report"]
    codes, errors, seconds = launch(_cli_audited_worker, tmp_path, timeout=30, argv=argv, watch=str(out),
                                    fail_rank=failing)
    assert all(code != 0 for code in codes), (codes, errors)
    assert f"RuntimeError: pruning broke on rank {failing}" in errors[failing]
    other = errors[1 - failing]
    assert f"rank {failing} failed: RuntimeError: pruning broke on rank {failing}" in other or "unreachable" in other, other
    assert seconds < 25
    # Nothing half-done in the store: the failed run is absent. Rank 0 logs the root cause in
    # errors.log: always its own failure; rank 1's unless the watchdog ended rank 0 first.
    assert _store_rows(out) == []
    log = out / "errors.log"
    assert log.exists() or failing == 1
    if log.exists():
        assert f"pruning broke on rank {failing}" in log.read_text()
    if failing == 1:   # (a rank ended by the watchdog leaves no record)
        assert json.loads((tmp_path / "rank1.writes.json").read_text()) == []


ITERATE = ["iterate", "--pruning-schedule", "lt", "--model", "mlp", "--model-arg", "hidden=[32,16]", "--dataset", "digits",
           "--limit", "403", "--rounds", "1", "--epochs", "3", "--batch-size", "50", "--lr", "0.1", "--rate", "0.5",
           "--no-record-grid", "--quiet"]


def test_cli_iterate_on_two_ranks_matches_single_process_and_only_rank0_writes(tmp_path):
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.cli.main import main

    single, dist_out = tmp_path / "single", tmp_path / "dist"
    assert main([*ITERATE, "--out", str(single)]) == 0
    codes, errors, _ = launch(_cli_audited_worker, tmp_path, argv=[*ITERATE, "--out", str(dist_out)],
                              watch=str(dist_out))
    _assert_ok(codes, errors)
    names = ["round_000.safetensors", "round_001.safetensors", "rounds.json"]
    assert sorted(p.name for p in dist_out.iterdir()) == sorted(p.name for p in single.iterdir()) == names
    assert json.loads((tmp_path / "rank1.writes.json").read_text()) == []
    assert (tmp_path / "rank0.out").read_text().count("saved 2 checkpoints") == 1
    assert (tmp_path / "rank1.out").read_text() == ""
    for name in names[:2]:
        a, b = load_checkpoint(dist_out / name), load_checkpoint(single / name)
        assert a.masks.equal(b.masks), name
        assert _max_diff(a.model.state_dict(), b.model.state_dict()) < TOLERANCE, name
    da, db = (json.loads((d / "rounds.json").read_text()) for d in (dist_out, single))
    pa, pb = da["info"].pop("pruned_scores"), db["info"].pop("pruned_scores")
    assert da["info"] == db["info"] and len(da["rounds"]) == len(db["rounds"]) == 2
    for split in ("val", "test"):
        assert pa[split]["top1"] == pb[split]["top1"]
        assert pa[split]["loss"] == pytest.approx(pb[split]["loss"], rel=1e-5)
    for ra, rb in zip(da["rounds"], db["rounds"]):
        for key, value in rb.items():
            if key.startswith("seconds_"):
                continue
            if value is not None and (key.endswith("_loss") or "pqi" in key or key == "gini"):
                assert ra[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
            else:
                assert ra[key] == value, key


def _ltp_checkpoint_worker(rank, out):
    folder = out / "ltp"
    seen = _audit_writes(folder) if rank != 0 else []
    model = make_model()
    train(model, make_data(), DENSE, progress=False)
    trail, _ = learn_thresholds(model, make_data(), _ltp_config(), penalty_weight=2.0, temperature=0.5,
                                threshold_lr=0.5, keep_states=False, checkpoint_dir=folder, log=lambda m: None)
    net = make_model()
    masks = trail[-1].restore(net)   # rank 0 reads its file; the others kept the weights in memory
    tensors = {f"param/{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"mask/{k}": v.to(torch.uint8) for k, v in masks.items()})
    _save(out, rank, tensors, {"writes": seen, "paths": [e.path for e in trail]})


def test_ltp_checkpoint_dir_written_by_rank0_only(tmp_path):
    codes, errors, _ = launch(_ltp_checkpoint_worker, tmp_path)
    _assert_ok(codes, errors)
    (t0, i0), (t1, i1) = _load(tmp_path)
    assert i1["writes"] == [] and i0["paths"] == i1["paths"]
    assert sorted(p.name for p in (tmp_path / "ltp").iterdir()) == [Path(p).name for p in i0["paths"]]
    assert all(torch.equal(t0[k], t1[k]) for k in t0)


def test_cli_grda_train_and_export_written_by_rank0_only(tmp_path):
    from prunelab.core.checkpoints import load_checkpoint

    out = tmp_path / "files"
    out.mkdir()   # an output's directory must exist (prunelab creates none)
    ckpt = out / "grda.safetensors"
    argv = ["grda", "train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--c", "0.01", "--quiet",
            "--out", str(ckpt)]
    codes, errors, _ = launch(_cli_audited_worker, tmp_path, argv=argv, watch=str(out))
    _assert_ok(codes, errors)
    assert json.loads((tmp_path / "rank1.writes.json").read_text()) == []
    assert (tmp_path / "rank0.out").read_text().count("saved ") == 1
    assert load_checkpoint(ckpt).masks.sparsity() > 0
    codes, errors, _ = launch(_cli_audited_worker, tmp_path, argv=["export", str(ckpt), "--format", "sparse"],
                              watch=str(out))
    _assert_ok(codes, errors)
    assert json.loads((tmp_path / "rank1.writes.json").read_text()) == []
    assert sorted(p.name for p in out.iterdir()) == ["grda.safetensors", "grda.sparse.safetensors"]


def test_follower_store_writes_nothing_and_refuses_reads(tmp_path):
    from prunelab.errors import ConfigError
    from prunelab.harness.store import FollowerStore, Store, open_store

    with open_store(tmp_path / "main") as store:   # one process: the real store
        assert isinstance(store, Store) and (tmp_path / "main" / "results.sqlite").is_file()
    follower = FollowerStore(tmp_path / "f", rank=1)
    assert follower.outdir == tmp_path / "f" and follower.put(object()) is False
    follower.record_suite("s")
    for read in (follower.hashes, lambda: follower.get("x"), lambda: len(follower)):
        with pytest.raises(ConfigError, match="rank 1 holds no result store"):
            read()
    assert not (tmp_path / "f").exists()


def test_single_process_helpers_are_identities():
    model = make_model()
    masks = Masks.ones(model)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert not distributed.is_active() and distributed.init() is False
    assert distributed.broadcast_masks(masks) is masks
    assert distributed.broadcast_json({"a": 1}) == {"a": 1}
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0] and distributed.any_rank(True)
    distributed.assert_params_equal_across_ranks(model)
    distributed.barrier()
    assert distributed.report_failure(ValueError("x")) is None


def test_bad_launch_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(distributed.DistributedError, match="RANK is not set; launch with torchrun"):
        distributed.init()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("PRUNELAB_DIST_BACKEND", "mpi")
    with pytest.raises(distributed.DistributedError, match="unknown backend 'mpi'"):
        distributed.init()
    monkeypatch.setenv("PRUNELAB_DIST_BACKEND", "gloo")
    monkeypatch.setenv("PRUNELAB_DIST_TIMEOUT", "soon")
    with pytest.raises(distributed.DistributedError, match="PRUNELAB_DIST_TIMEOUT must be a number"):
        distributed.init()


def test_tensor_digest_is_exact():
    a = torch.tensor([0.0, 1.0])
    assert distributed.tensor_digest(a) == distributed.tensor_digest(a.clone())
    assert distributed.tensor_digest(a) != distributed.tensor_digest(torch.tensor([-0.0, 1.0]))
    assert distributed.tensor_digest(a) != distributed.tensor_digest(a.reshape(2, 1))
    assert distributed.tensor_digest(a) != distributed.tensor_digest(a.double())

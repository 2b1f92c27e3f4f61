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

from prunelab import distributed
from prunelab.data import Dataset, Split
from prunelab.masks import Masks
from prunelab.training import Callback, TrainConfig, evaluate, train

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
    from prunelab.methods.grda import train_grda

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
    pytest.importorskip("prunelab.optim", reason="prunelab.optim (GRDA) is not written yet")
    from prunelab.methods.grda import train_grda

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
    from prunelab.methods.ltp import learn_thresholds

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
    pytest.importorskip("prunelab.methods.ltp", reason="prunelab.methods.ltp is not written yet")
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
    from prunelab.methods.gmp import GradualMagnitudePruning

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
    pytest.importorskip("prunelab.methods.gmp", reason="prunelab.methods.gmp is not written yet")
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
    from prunelab.cli import main

    return main(argv)


def test_cli_train_and_prune_on_two_ranks(tmp_path, capsys):
    """SGD: Adam's scale-free step turns float roundoff in near-zero gradients into differences of
    ~1e-3 after an epoch on digits (measured), in the 2-rank and in any re-ordered computation."""
    from prunelab.checkpoints import load_checkpoint
    from prunelab.cli import main

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
    from prunelab.cli import main

    if rank == 1:
        argv = [*argv[:-2], "--sparsity", "1.5", *argv[-2:]]   # bad input on one rank only
    return main(argv)


def test_cli_error_on_one_rank_exits_every_rank(tmp_path):
    from prunelab.cli import main

    dense = tmp_path / "dense.safetensors"
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet", "--out", str(dense)]) == 0
    argv = ["prune", str(dense), "--sparsity", "0.5", "--retrain-epochs", "1", "--out", str(tmp_path / "p.safetensors")]
    codes, errors, seconds = launch(_cli_failing_worker, tmp_path, timeout=30, argv=argv)
    assert codes[1] == 2 and codes[0] != 0, (codes, errors)
    assert "prunelab (rank 1): error: --sparsity must be in [0, 1), got 1.5" in errors[1]
    assert "rank 1 failed: ConfigError: --sparsity must be in [0, 1)" in errors[0] or "unreachable" in errors[0]
    assert "Traceback" not in errors[1]
    assert not (tmp_path / "p.safetensors").exists()


def test_torchrun_launches_the_cli(tmp_path):
    """The real launcher: ``python -m torch.distributed.run --nproc-per-node 2 -m prunelab prune``."""
    from prunelab.checkpoints import load_checkpoint
    from prunelab.cli import main

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

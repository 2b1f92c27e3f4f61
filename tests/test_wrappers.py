"""Masks and checkpoints move between a model and its torch.compile / DDP wrappers (and CUDA), and
masks.attach keeps sparsity exact in a user's own training loop."""

import json

import pytest
import torch
import torch.distributed as dist
from torch import nn

import prunelab
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab.core.metrics import summary
from prunelab.core.prunable import unwrap
from prunelab.export import load_sparse, make_permanent, save_sparse


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


NAMES = ["0.weight", "2.weight", "4.weight"]


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = unwrap(a).state_dict(), unwrap(b).state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def compiled():
    model = mlp()
    # the eager backend: a real OptimizedModule whose forward runs through dynamo, without
    # the seconds a C++ compile would take
    return model, torch.compile(model, backend="eager")


@pytest.fixture
def ddp(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = mlp()
        yield model, nn.parallel.DistributedDataParallel(model)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("wrapper", ["compiled", "ddp"])
def test_masks_from_the_plain_model_apply_to_the_wrapper_and_back(wrapper, request):
    plain, wrapped = request.getfixturevalue(wrapper)
    prefix = "_orig_mod." if wrapper == "compiled" else "module."
    assert [n for n, _ in wrapped.named_parameters()][0].startswith(prefix)
    assert list(prunelab.Masks.ones(wrapped)) == NAMES           # canonical names, no prefix
    masks = prunelab.prune(mlp(seed=1), "magnitude", sparsity=0.75)
    masks.validate(wrapped)
    masks.apply(wrapped)
    for name in NAMES:
        assert torch.equal(plain.get_parameter(name) != 0, masks[name])
    # pruning through the wrapper gives canonical names and prunes the plain model
    again = prunelab.prune(wrapped, "magnitude", sparsity=0.9, masks=masks)
    assert list(again) == NAMES and again.pruned() == round(0.9 * again.total())
    assert prunelab.Masks.from_nonzero(plain).equal(again)
    # names written with the wrapper's prefix resolve on the plain model and the wrapper
    prefixed = prunelab.Masks({prefix + n: m for n, m in again.items()})
    prefixed.validate(plain)
    assert prefixed.canonical(plain).equal(again) and prefixed.canonical(wrapped).equal(again)
    out = wrapped(torch.randn(4, 12))
    assert out.shape == (4, 3)
    assert summary(wrapped, again)["sparsity"] == again.sparsity()


@pytest.mark.parametrize("wrapper", ["compiled", "ddp"])
def test_checkpoints_move_between_wrapper_and_plain_model(wrapper, request, tmp_path):
    plain, wrapped = request.getfixturevalue(wrapper)
    masks = prunelab.prune(wrapped, "magnitude", sparsity=0.6)
    path = save_checkpoint(tmp_path / "w.safetensors", wrapped, masks)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert sorted(k for k in f.keys() if k.startswith("mask/")) == [f"mask/{n}" for n in NAMES]
    target = mlp(seed=2)
    ckpt = load_checkpoint(path, target)
    assert _same_state(target, plain) and ckpt.masks.equal(masks)
    # and back: a plain model's checkpoint fills the wrapper
    fresh = mlp(seed=3)
    rewrapped = torch.compile(fresh, backend="eager") if wrapper == "compiled" else nn.parallel.DistributedDataParallel(fresh)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "p.safetensors", target, ckpt.masks), rewrapped)
    assert ckpt.model is rewrapped and _same_state(fresh, plain) and ckpt.masks.equal(masks)
    # the sparse format too
    sparse = save_sparse(tmp_path / "s.safetensors", wrapped, masks)
    other = mlp(seed=4)
    loaded = load_sparse(sparse, other)
    assert _same_state(other, plain) and loaded.masks.equal(masks)


def test_a_checkpoint_written_with_wrapper_prefixes_loads_into_the_plain_model(tmp_path):
    from safetensors.torch import save_file

    source = mlp()
    masks = prunelab.prune(source, "magnitude", sparsity=0.5)
    tensors = {f"param/module.{n}": p.detach().clone() for n, p in source.named_parameters()}
    tensors.update({f"mask/module.{n}": m.to(torch.uint8) for n, m in masks.items()})
    meta = {"format": "prunelab-checkpoint", "version": 1, "model": None, "metrics": {}, "extra": {}}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"prunelab": json.dumps(meta)})
    target = mlp(seed=5)
    ckpt = load_checkpoint(tmp_path / "old.safetensors", target)
    assert _same_state(target, source)
    assert list(ckpt.masks) == NAMES and ckpt.masks.equal(masks)


def test_make_permanent_takes_prefixed_names_and_wrappers(compiled):
    plain, wrapped = compiled
    masks = prunelab.prune(mlp(seed=1), "magnitude", sparsity=0.8)
    make_permanent(wrapped, {f"_orig_mod.{n}": m for n, m in masks.items()})
    assert prunelab.Masks.from_nonzero(plain).equal(masks)


def test_attach_keeps_sparsity_exact_for_200_adamw_cosine_steps():
    model = mlp()
    masks = prunelab.prune(model, "magnitude", sparsity=0.85, scope="layer")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 12, generator=g), torch.randint(0, 3, (400,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = masks.attach(optimizer, model)
    steps = 0
    while steps < 200:
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps += 1
            if steps == 200:
                break
    handle.remove()
    assert prunelab.Masks.from_nonzero(model).equal(masks)     # exactly the kept weights survive
    params = dict(model.named_parameters())
    for name in NAMES:
        state = optimizer.state[params[name]]
        assert not state["exp_avg"][~masks[name]].any() and not state["exp_avg_sq"][~masks[name]].any()
        assert not torch.equal(params[name], before[name])    # the kept weights did train


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method, hparams", [("magnitude", {}), ("magnitude", {"scope": "layer"}),
                                             ("random", {"seed": 2})])
def test_masks_of_a_cuda_model_are_made_on_the_gpu_and_equal_the_cpu_ones(method, hparams):
    on_cpu = prunelab.prune(mlp(), method, sparsity=0.7, **hparams)
    model = mlp().cuda()
    on_gpu = prunelab.prune(model, method, sparsity=0.7, **hparams)
    assert all(m.device.type == "cuda" for m in on_gpu.values())
    assert on_gpu.to("cpu").equal(on_cpu)
    assert prunelab.Masks.from_nonzero(model).to("cpu").equal(on_cpu)
    again = prunelab.prune(model, method, sparsity=0.8, masks=on_gpu.to("cpu"), **hparams)   # CPU masks in
    assert all(m.device.type == "cuda" for m in again.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hard_threshold_histogram_is_counted_on_the_gpu():
    cpu_method = prunelab.methods.get("hard-threshold")(include_last=True)
    on_cpu = cpu_method.prune(mlp(), None, 0.7)
    gpu_method = prunelab.methods.get("hard-threshold")(include_last=True)
    model = mlp().cuda()
    on_gpu = gpu_method.prune(model, None, 0.7)
    assert all(m.device.type == "cuda" for m in on_gpu.values())
    assert prunelab.Masks.from_nonzero(model).equal(on_gpu)
    for a, b in zip(cpu_method.last_info, gpu_method.last_info):   # linspace may round apart on a GPU
        assert b["threshold"] == pytest.approx(a["threshold"], rel=1e-9)
    assert on_gpu.pruned() == pytest.approx(on_cpu.pruned(), abs=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prune_moves_the_model_to_the_device_given():
    model = mlp()
    masks = prunelab.prune(model, "magnitude", sparsity=0.5, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    assert all(m.device.type == "cuda" for m in masks.values())

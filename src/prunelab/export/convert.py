"""``to_sparse``: a copy of a pruned model whose layers run sparse only where that is faster."""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.export import native, timing
from prunelab.export.modules import SparseConv2d, SparseLinear, conv_supported
from prunelab.export.permanent import plain_copy

__all__ = ["to_sparse", "sparse_layers"]

POLICIES = ("auto", "always", "never")


def _eligible(module: nn.Module) -> str | None:
    """Why ``module`` stays dense, or None if a sparse version can replace it."""
    if isinstance(module, nn.Linear):
        return None if module.weight.dtype == torch.float32 else f"weight dtype {module.weight.dtype}"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return conv_supported(module)
    return "not a Linear or Conv2d"


def _pool_window(module: nn.Module) -> int | None:
    """k for a ``MaxPool2d`` the native kernel can fuse (k x k window, stride k, floor mode)."""
    if type(module) is not nn.MaxPool2d or module.ceil_mode or module.return_indices:
        return None
    k, stride, pad, dil = module.kernel_size, module.stride, module.padding, module.dilation
    k = k if isinstance(k, int) else (k[0] if k[0] == k[1] else None)
    stride = k if stride is None else stride
    stride = stride if isinstance(stride, int) else (stride[0] if stride[0] == stride[1] else None)
    if k is None or stride != k or pad not in (0, (0, 0)) or dil not in (1, (1, 1)):
        return None
    return k


def _layers(model: nn.Module) -> list[dict]:
    """Each Linear/Conv layer with where it lives and what can be fused after it.

    Fused: the ReLU that is the next sibling in an ``nn.Sequential`` (every prunelab model has
    separate ``nn.ReLU`` modules) and, after a Conv2d, a following non-overlapping ``MaxPool2d``.
    """
    found = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for i, (attr, child) in enumerate(children):
            if not isinstance(child, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                continue
            entry = {"name": f"{parent_name}.{attr}" if parent_name else attr, "module": child,
                     "parent": parent, "attr": attr, "relu": None, "pool": None, "pool_k": 1}
            if isinstance(parent, nn.Sequential):
                j = i + 1
                if j < len(children) and type(children[j][1]) is nn.ReLU:
                    entry["relu"] = children[j][0]
                    j += 1
                if isinstance(child, nn.Conv2d) and j < len(children) and _pool_window(children[j][1]):
                    entry["pool"], entry["pool_k"] = children[j][0], _pool_window(children[j][1])
            found.append(entry)
    return found


def _make(module: nn.Module, backend: str, relu: bool, pool: int, threads: int, block: int) -> nn.Module:
    if isinstance(module, nn.Linear):
        return SparseLinear(module, backend=backend, relu=relu, threads=threads, block=block)
    return SparseConv2d(module, backend=backend, relu=relu, threads=threads, block=block, pool=pool)


def _capture_inputs(model: nn.Module, modules: list[nn.Module], example: torch.Tensor) -> dict[int, torch.Tensor]:
    captured: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: captured.setdefault(id(mod), args[0].detach().clone()))
             for m in modules]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return captured


def _example(model: nn.Module, batch_size: int, input_shape, example_input) -> torch.Tensor:
    if example_input is not None:
        return example_input
    shape = input_shape or (getattr(model, "prunelab_config", None) or {}).get("in_shape")
    if not shape:
        raise ConfigError("to_sparse needs the input shape to time layers: pass input_shape=(C, H, W) or example_input")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(int(batch_size), *[int(s) for s in shape], generator=generator)


def _choose(fns: dict, warmup: int, reps: int, margin: float) -> tuple[str, dict, dict]:
    """Time ``fns`` ("dense" plus one per backend) and pick the fastest sparse one if it beats
    dense by ``margin``. A 3-call screen first drops candidates over 4x slower than the best:
    timed interleaved they would only add time and evict the caches the others rely on.

    Returns:
        (choice, medians in µs of the timed candidates, screen medians of the dropped ones).
    """
    screen = timing.interleaved(fns, warmup=1, reps=3)
    fastest = min(v["median_us"] for v in screen.values())
    keep = {k: f for k, f in fns.items() if k == "dense" or screen[k]["median_us"] <= 4 * fastest}
    timed = timing.interleaved(keep, warmup=warmup, reps=reps)
    medians = {k: v["median_us"] for k, v in timed.items()}
    dropped = {k: screen[k]["median_us"] for k in fns if k not in keep}
    sparse = [k for k in medians if k != "dense"]
    if not sparse:
        return "dense", medians, dropped
    best = min(sparse, key=medians.get)
    return (best if medians[best] < (1 - margin) * medians["dense"] else "dense"), medians, dropped


def to_sparse(model: nn.Module, batch_size: int = 64, threads: int | None = None, *, policy: str = "auto",
              backends: tuple[str, ...] | None = None, input_shape=None, example_input: torch.Tensor | None = None,
              warmup: int = 10, reps: int = 40, margin: float = 0.05, fuse: bool = True,
              verify: bool = True, block: int = 64) -> nn.Module:
    """A copy of ``model`` in which each pruned Linear/Conv2d runs on a sparse kernel where that
    measures faster than the dense layer at ``batch_size``; every other layer stays dense.

    For each eligible layer the dense layer (with the ReLU and max pooling after it, if any) and
    its sparse versions (one per backend, ReLU and pooling fused) are timed on the layer's real
    input, interleaved (after a 3-call screen that drops versions over 4x slower than the best),
    and the sparse one is kept only if its median is below ``(1 - margin)`` times the dense one.
    Then the whole model is timed once more against the dense copy; if it is not faster, the
    dense copy is returned (``verify``). The model given is not modified.

    Args:
        model: the pruned network (zeros in its weights; ``torch.nn.utils.prune`` reparametrisations
            are made permanent in the copy).
        batch_size: batch size to optimise for.
        threads: torch threads while timing and threads of the native kernel (default: current).
        policy: ``"auto"`` (measure), ``"always"`` (every eligible layer sparse, no timing, e.g. for
            equality tests), ``"never"`` (a dense copy).
        backends: sparse backends to consider, among ``"native"`` and ``"torch"``; default: both
            when the native kernel is available, else ``("torch",)``. With ``"always"``, the first.
        input_shape: shape of one sample, default ``model.prunelab_config["in_shape"]``.
        example_input: a batch to time on instead of random data.
        warmup: untimed calls per candidate; reps: timed calls per candidate.
        margin: relative gain a sparse layer must show to be chosen.
        fuse: fold a following ``nn.ReLU`` (and, after a Conv2d, a non-overlapping ``nn.MaxPool2d``)
            into the sparse layer; the folded modules become ``nn.Identity``.
        verify: time the whole model and fall back to dense if the sparse copy is not faster.
        block: samples per block of the native kernel.

    Returns:
        The converted copy, in eval mode, with ``model.sparse_report`` (dict): per layer its
        sparsity, candidates' median latencies in µs and the choice, plus whole-model timings.

    Raises:
        ConfigError: unknown policy or backend, or (for ``"auto"``) no way to know the input shape.
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    available = ("native", "torch") if native.load() is not None else ("torch",)
    backends = tuple(backends) if backends else available
    for b in backends:
        if b not in ("native", "torch"):
            raise ConfigError(f"unknown sparse backend {b!r}; choose among native, torch")
        if b not in available:
            raise ConfigError(f"the native sparse kernel is unavailable ({native.status()['reason']}); use backends=('torch',)")
    dense = plain_copy(model).eval()
    sparse = copy.deepcopy(dense)
    threads = int(threads) if threads else torch.get_num_threads()
    layers = _layers(sparse)
    report = {"policy": policy, "batch_size": int(batch_size), "threads": threads, "backends": list(backends),
              "native": native.status(), "layers": [], "reverted": False}
    inputs = {}
    if policy == "auto" and layers:
        example = _example(sparse, batch_size, input_shape, example_input)
        inputs = _capture_inputs(sparse, [layer["module"] for layer in layers], example)
    with timing.threads(threads):
        for layer in layers:
            module = layer["module"]
            reason = _eligible(module)
            relu = layer["relu"] is not None and fuse
            pool = layer["pool_k"] if fuse and layer["pool"] is not None else 1
            weight = module.weight.detach()
            entry = {"name": layer["name"], "type": type(module).__name__, "shape": list(weight.shape),
                     "sparsity": round(float((weight == 0).sum()) / weight.numel(), 6), "choice": "dense"}
            if reason or policy == "never" or (policy == "auto" and id(module) not in inputs):
                entry["note"] = reason or ("policy never" if policy == "never" else "not reached by the forward pass")
                report["layers"].append(entry)
                continue
            candidates = {b: _make(module, b, relu, pool, threads, block)
                          for b in (backends[:1] if policy == "always" else backends)}
            if policy == "always":
                choice = backends[0]
            else:
                x = inputs[id(module)]
                parent = layer["parent"]
                tail = [getattr(parent, layer["relu"])] if relu else []
                tail += [getattr(parent, layer["pool"])] if pool > 1 else []
                follow = nn.Sequential(*tail)
                fns = {"dense": lambda x=x: follow(module(x))}
                fns.update({b: (lambda x=x, m=m: m(x)) for b, m in candidates.items()})
                choice, entry["median_us"], entry["screened_out_us"] = _choose(fns, warmup, reps, margin)
            entry["choice"] = choice
            if choice != "dense":
                setattr(layer["parent"], layer["attr"], candidates[choice])
                for fused, used in ((layer["relu"], relu), (layer["pool"], pool > 1)):
                    if used:
                        setattr(layer["parent"], fused, nn.Identity())
                entry["fused"] = [f for f, used in ((layer["relu"], relu), (layer["pool"], pool > 1)) if used]
            report["layers"].append(entry)
        if policy == "auto" and verify and any(e["choice"] != "dense" for e in report["layers"]):
            example = _example(sparse, batch_size, input_shape, example_input)
            timed = timing.interleaved({"dense": lambda: dense(example), "sparse": lambda: sparse(example)},
                                       warmup=warmup, reps=reps)
            report["model_median_us"] = {k: v["median_us"] for k, v in timed.items()}
            if timed["sparse"]["median_us"] >= timed["dense"]["median_us"]:
                report["reverted"] = True
                for e in report["layers"]:
                    e["choice"] = "dense"
                sparse = dense
    sparse.sparse_report = report
    return sparse


def sparse_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The sparse modules of a converted model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))}

"""``to_sparse``: a copy of a pruned model whose layers run sparse only where that is faster.

Converted: ``nn.Linear``, ``nn.Conv2d`` and HuggingFace ``Conv1D`` (GPT-2's linear layers, whose
weight is stored transposed; it becomes a :class:`SparseLinear` of the transposed weight). Left
dense, with the reason in ``sparse_report["left_dense"]`` and one warning per call: a layer whose
parent reads its ``weight`` or ``bias`` directly instead of calling it. ``nn.MultiheadAttention``
passes ``out_proj.weight`` to ``F.multi_head_attention_forward``, and ``nn.TransformerEncoderLayer``
passes ``linear1.weight``/``linear2.weight`` to its fused inference kernel, so those stay
``nn.Linear``; any other parent whose ``forward`` source mentions ``self.<child>.weight`` is
treated the same way. If the converted model still fails on the example input, the dense copy
is returned and the reason recorded, so converting never breaks a model.

Besides the per-layer choice, two things cut what surrounds the kernels: BatchNorm folding and
ReLU / residual-add / pre-activation fusion on the ``torch.fx`` graph (:mod:`.fusion`), and chains of native
layers in an ``nn.Sequential`` run in one native call (:mod:`.chain`).
"""

from __future__ import annotations

import copy
import inspect
import re
import time
import warnings
from types import SimpleNamespace

import torch
from torch import nn

from prunelab.core.prunable import is_hf_conv1d
from prunelab.errors import ConfigError
from prunelab.export import costmodel, native, timing
from prunelab.export.chain import install_chains
from prunelab.export.decide import Budget, decide_layer, verify_model
from prunelab.export.fusion import fold_batchnorm, fuse_into_sparse
from prunelab.export.graph import install_graph_runs
from prunelab.export.modules import SparseConv2d, SparseLinear, conv_supported
from prunelab.export.permanent import plain_copy

__all__ = ["to_sparse", "sparse_layers"]

POLICIES = ("auto", "measure", "always", "never")


#: Parents known to read a child layer's tensors directly: type -> (child attributes, how).
_DIRECT_READERS = {
    nn.MultiheadAttention: (("out_proj",), "passes out_proj.weight to F.multi_head_attention_forward"),
    nn.TransformerEncoderLayer: (("linear1", "linear2"), "passes linear1/linear2 weights to its fused inference kernel"),
}
_SOURCE_READS: dict[type, str] = {}


def _forward_source(cls: type) -> str:
    if cls not in _SOURCE_READS:
        try:
            _SOURCE_READS[cls] = inspect.getsource(cls.forward)
        except (OSError, TypeError, AttributeError):
            _SOURCE_READS[cls] = ""   # compiled or built-in forward: nothing to read
    return _SOURCE_READS[cls]


def _read_directly(parent: nn.Module | None, attr: str) -> str | None:
    """Why ``parent`` needs its child ``attr`` to stay a dense module (it reads the child's
    tensors instead of calling it), or None."""
    if parent is None:
        return None
    for cls, (attrs, how) in _DIRECT_READERS.items():
        if isinstance(parent, cls) and attr in attrs:
            return f"its parent {type(parent).__name__} {how}"
    if re.search(rf"\bself\.{re.escape(attr)}\.(weight|bias)\b", _forward_source(type(parent))):
        return f"its parent {type(parent).__name__}.forward reads self.{attr}.weight/bias directly"
    return None


def _eligible(module: nn.Module, parent: nn.Module | None = None, attr: str = "") -> str | None:
    """Why ``module`` stays dense, or None if a sparse version can replace it."""
    direct = _read_directly(parent, attr)
    if direct:
        return direct
    if isinstance(module, nn.Linear) or is_hf_conv1d(module):
        return None if module.weight.dtype == torch.float32 else f"weight dtype {module.weight.dtype}"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return conv_supported(module)
    return "not a Linear or Conv2d"


def _pool_window(module: nn.Module) -> int | None:
    """k for a ``MaxPool2d`` the native kernel can fuse (k x k window, stride k, no padding)."""
    if type(module) is not nn.MaxPool2d or module.return_indices:
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
            if not (isinstance(child, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or is_hf_conv1d(child)):
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
                    entry["pool_ceil"] = bool(children[j][1].ceil_mode)
            found.append(entry)
    return found


def _make(module: nn.Module, backend: str, relu: bool, pool: int, threads: int | None, block: int,
          pool_ceil: bool = False) -> nn.Module:
    if isinstance(module, nn.Linear):
        return SparseLinear(module, backend=backend, relu=relu, threads=threads, block=block)
    if is_hf_conv1d(module):
        # HF Conv1D computes x @ W + b with W of shape (in, out): a Linear of weight W^T.
        weight = module.weight.detach().t()
        linear = SimpleNamespace(weight=weight, bias=module.bias, in_features=weight.shape[1],
                                 out_features=weight.shape[0])
        return SparseLinear(linear, backend=backend, relu=relu, threads=threads, block=block)
    return SparseConv2d(module, backend=backend, relu=relu, threads=threads, block=block, pool=pool,
                        pool_ceil=pool_ceil)


def _call(model: nn.Module, example):
    """``model(example)``; a dict is passed as keyword arguments (``input_ids=...``)."""
    return model(**example) if isinstance(example, dict) else model(example)


def _capture_inputs(model: nn.Module, modules: list[nn.Module], example) -> dict[int, torch.Tensor]:
    captured: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: captured.setdefault(id(mod), args[0].detach().clone()))
             for m in modules]
    try:
        with torch.no_grad():
            _call(model, example)
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
              backends: tuple[str, ...] | None = None, input_shape=None, example_input: torch.Tensor | dict | None = None,
              warmup: int = 10, reps: int = 40, margin: float = 0.05, fuse: bool = True,
              verify: bool = True, block: int = 0, time_budget: float = 5.0, chain: bool = True) -> nn.Module:
    """A copy of ``model`` in which each pruned Linear/Conv2d runs on a sparse kernel where that
    is faster than the dense layer at ``batch_size``; every other layer stays dense.

    ``"auto"`` (the default) decides each layer from a latency model calibrated once per machine
    (:mod:`prunelab.export.costmodel`, about a second the first time, then cached): the dense
    layer's MACs against the sparse one's non-zero MACs, at measured rates. Only a layer whose
    predicted speedup lies near 1 is timed, briefly (dense with the ReLU and pooling after it
    against the fused sparse layer, interleaved, on an input of its real shape), while
    ``time_budget`` lasts; then the whole model is timed against the dense copy if the budget
    left allows, and the dense copy is returned if the sparse one is not faster (``verify``).
    Converting a ResNet-18 takes seconds at any batch size. ``"measure"`` times every layer
    (with each backend, after a 3-call screen that drops versions over 4x slower than the best)
    and the whole model, without a budget: exact but slow. The model given is not modified.

    Args:
        model: the pruned network (zeros in its weights; ``torch.nn.utils.prune`` reparametrisations
            are made permanent in the copy).
        batch_size: batch size to optimise for.
        threads: torch threads while deciding, and fixed threads of the native kernel (default:
            the current count to decide; the layers then follow ``torch.get_num_threads()``).
        policy: ``"auto"`` (cost model, timing only where unsure), ``"measure"`` (time every
            layer), ``"always"`` (every eligible layer sparse, no timing, e.g. for equality
            tests), ``"never"`` (a dense copy).
        backends: sparse backends to consider, among ``"native"`` and ``"torch"``; default: both
            when the native kernel is available, else ``("torch",)``. ``"always"`` and ``"auto"``
            use the first.
        input_shape: shape of one sample, default ``model.prunelab_config["in_shape"]``.
        example_input: a batch to time on instead of random data (a tensor, or a dict of
            keyword arguments such as ``{"input_ids": ids}`` for a HuggingFace model).
        warmup: untimed calls per candidate (``"measure"``); reps: timed calls per candidate
            (at most, for ``"auto"``).
        margin: relative gain a sparse layer must show to be chosen.
        fuse: fold a following ``nn.ReLU`` (and, after a Conv2d, a non-overlapping ``nn.MaxPool2d``)
            into the sparse layer; the folded modules become ``nn.Identity``. Where the model
            traces with ``torch.fx`` and has a ``Conv2d -> BatchNorm2d`` pair or a convolution
            feeding a residual add (a ResNet block), the copy becomes a ``GraphModule`` (same
            layer names) with each BatchNorm folded into its convolution and, after conversion,
            a ReLU or residual add that alone follows a native sparse layer computed in its call,
            and a ``BatchNorm2d -> ReLU`` read only by native sparse convolutions (a
            pre-activation block) applied by them as they pack their input
            (:mod:`prunelab.export.fusion`; ``sparse_report["graph_fusion"]`` lists them).
        verify: time the whole model and fall back to dense if the sparse copy is not faster.
        block: samples per block of the native kernel (0: its default).
        time_budget: seconds ``"auto"`` may spend timing (uncertain layers, then the whole model).
        chain: run each run of two or more native sparse layers in an ``nn.Sequential`` (with the
            Identity/Flatten/Dropout between them) in one native call
            (:class:`~prunelab.export.chain.SparseSequential`, which replaces that Sequential,
            the root included; ``sparse_report["chains"]`` names them): batch-1 latency then
            pays one Python and ``ctypes`` call per chain instead of one per layer. In a traced
            graph module, each run of native sparse convolutions reading one outside tensor (a
            ResNet's trunk, residual adds included) likewise becomes one
            :class:`~prunelab.export.graph.SparseGraphRun` (``sparse_report["graph_runs"]``).

    Returns:
        The converted copy, in eval mode, with ``model.sparse_report`` (dict): per layer its
        sparsity, the predicted latencies (``"auto"``), measured medians in µs where timed,
        ``decided_by`` and the choice, plus whole-model timings and ``seconds`` spent;
        ``left_dense`` maps every layer left dense to the reason (layers their parent reads
        directly, as ``nn.MultiheadAttention``'s ``out_proj``, also raise one warning). A model
        wrapped by ``torch.compile`` or DDP is converted from the plain model inside. Works under
        ``torch.inference_mode()``: the copy holds ordinary tensors, usable later with autograd.

    Raises:
        ConfigError: unknown policy or backend, or (for ``"auto"``) no way to know the input shape.

    Example:
        >>> fast = to_sparse(encoder, policy="always", backends=("torch",))
        >>> fast.sparse_report["left_dense"]["layers.0.self_attn.out_proj"]
        'its parent MultiheadAttention passes out_proj.weight to F.multi_head_attention_forward'
    """
    # Tensors made under inference mode could never be used with autograd again; the copy must
    # be an ordinary model whatever mode the caller is in.
    with torch.inference_mode(False):
        return _to_sparse(model, batch_size, threads, policy, backends, input_shape, example_input,
                          warmup, reps, margin, fuse, verify, block, time_budget, chain)


def _to_sparse(model, batch_size, threads, policy, backends, input_shape, example_input, warmup, reps,
               margin, fuse, verify, block, time_budget, chain) -> nn.Module:
    started = time.perf_counter()
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
    folded: list[str] = []
    if fuse and policy != "never":
        sparse, folded = fold_batchnorm(sparse)
    fixed_threads = int(threads) if threads else None
    threads = fixed_threads or torch.get_num_threads()
    layers = _layers(sparse)
    structural: dict[str, str] = {}
    report = {"policy": policy, "batch_size": int(batch_size), "threads": threads, "backends": list(backends),
              "native": native.status(), "layers": [], "reverted": False, "chains": {}}
    inputs = {}
    budget = Budget(time_budget)
    if policy in ("auto", "measure") and layers:
        # "auto" needs only each layer's input shape (and an input to time the uncertain ones):
        # one pass at batch 1 unless the caller gave an example
        example = _example(sparse, batch_size if policy == "measure" else 1, input_shape, example_input)
        inputs = _capture_inputs(sparse, [layer["module"] for layer in layers], example)
    with timing.threads(threads):
        cost = costmodel.load(backends[0], threads) if policy == "auto" and layers else None
        for layer in layers:
            module = layer["module"]
            reason = _eligible(module, layer["parent"], layer["attr"])
            relu = layer["relu"] is not None and fuse
            pool = layer["pool_k"] if fuse and layer["pool"] is not None else 1
            weight = module.weight.detach()
            entry = {"name": layer["name"], "type": type(module).__name__, "shape": list(weight.shape),
                     "sparsity": round(float((weight == 0).sum()) / weight.numel(), 6), "choice": "dense"}
            if reason or policy == "never" or (policy in ("auto", "measure") and id(module) not in inputs):
                entry["note"] = reason or ("policy never" if policy == "never" else "not reached by the forward pass")
                if reason:
                    structural[layer["name"]] = reason
                report["layers"].append(entry)
                continue
            candidates = {b: _make(module, b, relu, pool, fixed_threads, block, layer.get("pool_ceil", False))
                          for b in (backends if policy == "measure" else backends[:1])}
            parent = layer["parent"]
            tail = [getattr(parent, layer["relu"])] if relu else []
            tail += [getattr(parent, layer["pool"])] if pool > 1 else []
            follow = nn.Sequential(*tail)
            if policy == "always":
                choice = backends[0]
            elif policy == "auto":
                kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
                decision = decide_layer(cost, module, kind, inputs[id(module)], int(batch_size),
                                        lambda x: follow(module(x)), candidates[backends[0]], budget, margin, reps)
                entry.update((k, v) for k, v in decision.items() if k != "sparse")
                choice = backends[0] if decision["sparse"] else "dense"
            else:
                x = inputs[id(module)]
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
        if isinstance(sparse, torch.fx.GraphModule):
            report["graph_fusion"] = {"folded_batchnorm": folded, **fuse_into_sparse(sparse)}
            if chain:
                report["graph_runs"] = install_graph_runs(sparse)
        if chain:
            sparse, report["chains"] = install_chains(sparse)
        failure = _check_runs(sparse, report, batch_size, input_shape, example_input)
        if failure:
            report["reverted"], report["revert_reason"] = True, failure
            for e in report["layers"]:
                e["choice"] = "dense"
            sparse, report["chains"] = dense, {}
            report.pop("graph_fusion", None)
            report.pop("graph_runs", None)
            warnings.warn(f"to_sparse: {failure}; returning the dense copy", stacklevel=3)
        if policy in ("auto", "measure") and verify and any(e["choice"] != "dense" for e in report["layers"]):
            example = _example(sparse, batch_size, input_shape, example_input)
            if policy == "measure":
                timed = timing.interleaved({"dense": lambda: _call(dense, example), "sparse": lambda: _call(sparse, example)},
                                           warmup=warmup, reps=reps)
                checked = {"median_us": {k: v["median_us"] for k, v in timed.items()}}
            else:
                # the layers' predicted dense time, doubled for everything else, says whether
                # three timed rounds of both models fit before running even one
                guess_s = 2e-6 * sum(e.get("predicted", {}).get("dense_us", 0.0) for e in report["layers"])
                checked = verify_model(lambda: _call(dense, example), lambda: _call(sparse, example), budget, reps,
                                       guess_s)
            if "skipped" in checked:
                report["verify_skipped"] = checked["skipped"]
            else:
                report["model_median_us"] = checked["median_us"]
            if "median_us" in checked and checked["median_us"]["sparse"] >= checked["median_us"]["dense"]:
                report["reverted"] = True
                for e in report["layers"]:
                    e["choice"] = "dense"
                sparse, report["chains"] = dense, {}
                report.pop("graph_fusion", None)
                report.pop("graph_runs", None)
    report["left_dense"] = {e["name"]: _dense_reason(e, report) for e in report["layers"] if e["choice"] == "dense"}
    if structural:
        warnings.warn("to_sparse left layers dense: " + "; ".join(f"{n}: {r}" for n, r in structural.items()),
                      stacklevel=3)
    report["seconds"] = round(time.perf_counter() - started, 3)
    sparse.sparse_report = report
    return sparse


def _dense_reason(entry: dict, report: dict) -> str:
    if report.get("revert_reason"):
        return report["revert_reason"]
    if report["reverted"]:
        return "the sparse model as a whole was not faster than the dense one"
    if entry.get("note"):
        return entry["note"]
    return f"the sparse kernel was not faster at batch size {report['batch_size']}"


def _check_runs(sparse: nn.Module, report: dict, batch_size, input_shape, example_input) -> str | None:
    """Run the converted model once on the example input (when one can be had); a failure
    (a module that read a replaced layer's tensors) is returned as the reason to stay dense."""
    if not any(e["choice"] != "dense" for e in report["layers"]):
        return None
    try:   # a sample or two is enough to see a failure; two unless converting for batch 1, so that
        # only then do the Linear layers build their batch-1 window format (memory) here
        example = _example(sparse, 1 if int(batch_size) == 1 else 2, input_shape, example_input)
    except ConfigError:
        return None   # nothing to run it on ("always" without an input shape)
    try:
        with torch.no_grad():
            _call(sparse, example)
    except (AttributeError, RuntimeError, TypeError, ValueError, ConfigError) as exc:
        return f"the converted model failed on the example input ({type(exc).__name__}: {exc})"
    return None


def sparse_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The sparse modules of a converted model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))}

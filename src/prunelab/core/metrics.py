"""Size, compression, FLOPs and theoretical speedup of a (pruned) model.

What is counted (also stated in every summary under ``"counted"``):
- *prunable* weights are those of :func:`prunelab.core.masks.prunable_parameters` (Linear and Conv
  weights, classifier included); ``compression_ratio`` = prunable / non-zero prunable, the
  definition of the LTP paper and of prunelab's sparsity targets;
- ``compression_ratio_all`` = all parameters / non-zero parameters (ShrinkBench's definition,
  biases and norm parameters included);
- FLOPs are multiply-accumulates of Linear and Conv layers for one sample (bias additions,
  activations, pooling and normalisation are not counted); non-zero FLOPs count only the MACs of
  non-zero weights; ``theoretical_speedup`` = FLOPs / non-zero FLOPs.

The PQ Index and Gini index (Diao et al.) are re-exported here from :mod:`prunelab.core.pqi`.

Language models are scored by :func:`lm_scores`: perplexity and bits per byte from the mean
cross-entropy per token.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prunelab.core.masks import PRUNABLE_TYPES, Masks, prunable_parameters
from prunelab.core.prunable import (
    Coverage, is_hf_conv1d, canonical_name, coverage, model_parameters, parameter_aliases, unwrap,
)
from prunelab.errors import ConfigError
# The PQ Index lives in its own module; re-exported so prunelab.core.metrics.pq_index works too.
from prunelab.core.pqi import (  # noqa: F401
    P_GRID, PQ_SCOPES, Q_GRID, check_pq, gini_index, gini_index_model, grid_to_lists, pq_index,
    pq_index_grid, pq_index_grid_model, pq_index_model,
)

COUNTED = (
    "prunable = weights of Linear/Conv layers (classifier included); biases and norm parameters "
    "are not prunable but are in the *_total/all counts; FLOPs = multiply-accumulates of "
    "Linear/Conv layers per sample"
)


def lm_scores(loss, bytes_per_token: float = 1.0) -> dict:
    """Perplexity and bits per byte of a language model from its mean cross-entropy per token.

    Args:
        loss: mean cross-entropy in nats per token (natural log, as ``F.cross_entropy``); None
            or NaN (nothing evaluated) gives None values.
        bytes_per_token: bytes of text per token (1.0 for byte-level data), so bits per byte
            compare across tokenisations.

    Returns:
        ``{"ppl": exp(loss), "bpb": loss / ln 2 / bytes_per_token}``; ``ppl`` is ``inf`` when
        ``exp`` overflows (a diverged model).

    Raises:
        ConfigError: ``bytes_per_token`` is not a positive finite number.

    Example:
        >>> lm_scores(math.log(2))
        {'ppl': 2.0, 'bpb': 1.0}
    """
    try:
        per_token = float(bytes_per_token)
    except (TypeError, ValueError):
        per_token = float("nan")
    if not (math.isfinite(per_token) and per_token > 0):
        raise ConfigError(f"bytes_per_token must be a positive number, got {bytes_per_token!r}; "
                          "use 1.0 for byte-level tokens")
    if loss is None or math.isnan(float(loss)):
        return {"ppl": None, "bpb": None}
    loss = float(loss)
    try:
        ppl = math.exp(loss)
    except OverflowError:
        ppl = float("inf")
    return {"ppl": ppl, "bpb": loss / math.log(2) / per_token}


def _batch_of(example) -> int:
    """Samples in a model input (a tensor, a dict of tensors or a tuple of them)."""
    values = example.values() if isinstance(example, dict) else (
        example if isinstance(example, (tuple, list)) else (example,))
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


def _run(model: nn.Module, example) -> None:
    if isinstance(example, dict):
        model(**example)
    elif isinstance(example, (tuple, list)):
        model(*example)
    else:
        model(example)


def _nonzero_counter(model: nn.Module, masks):
    """``count(name, weight, rows=None) -> non-zero entries`` from the mask of ``name`` (any
    mask name: canonical, tied alias or wrapper-prefixed) or, without one, from ``weight``."""
    aliases = parameter_aliases(model)
    by_key = {}
    for name in masks or ():
        key = canonical_name(name, aliases)
        if key is not None:
            by_key[key] = masks[name]

    def count(name: str, weight: torch.Tensor, rows: slice | None = None) -> int:
        key = canonical_name(name, aliases)
        source = by_key[key] if key in by_key else weight != 0
        return int((source if rows is None else source[rows]).sum())

    return count, aliases


def _mha_records(name: str, module: nn.MultiheadAttention, args, kwargs, batch: int, count) -> list[dict]:
    """MACs of an attention layer's projections: queries, keys, values (each over its own
    tokens) and the output projection (over the query tokens); the attention products
    themselves are not weight MACs and are not counted."""
    query = args[0] if len(args) > 0 else kwargs["query"]
    key = args[1] if len(args) > 1 else kwargs["key"]
    value = args[2] if len(args) > 2 else kwargs["value"]
    tokens = [t.numel() // t.shape[-1] // batch for t in (query, key, value)]
    prefix = f"{name}." if name else ""
    records = []
    if module._qkv_same_embed_dim:
        e = module.embed_dim
        weight = f"{prefix}in_proj_weight"
        parts = [slice(i * e, (i + 1) * e) for i in range(3)]
        flops = sum(e * module.in_proj_weight.shape[1] * n for n in tokens)
        nonzero = sum(count(weight, module.in_proj_weight, rows) * n for rows, n in zip(parts, tokens))
        records.append((name, type(module), weight, flops, nonzero, tokens[0]))
    else:
        for proj, n in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), tokens):
            weight = f"{prefix}{proj}"
            tensor = getattr(module, proj)
            records.append((name, type(module), weight, tensor.numel() * n, count(weight, tensor) * n, n))
    out_weight = f"{prefix}out_proj.weight"
    records.append((f"{prefix}out_proj", type(module.out_proj), out_weight, module.out_proj.weight.numel() * tokens[0],
                    count(out_weight, module.out_proj.weight) * tokens[0], tokens[0]))
    return [{"name": n, "type": t.__name__, "flops": int(f), "flops_nonzero": int(nz),
             "output_positions": int(pos), "param": w} for n, t, w, f, nz, pos in records]


@torch.no_grad()
def count_flops(model: nn.Module, input_shape=None, masks: Masks | None = None, *, example_input=None) -> list[dict]:
    """Per-layer multiply-accumulates of Linear, Conv, HuggingFace ``Conv1D`` and
    ``nn.MultiheadAttention`` (its input and output projections) layers for one sample.

    Args:
        model: the network (a ``torch.compile``/DDP wrapper is looked through).
        input_shape: shape of one sample, e.g. ``(1, 28, 28)``; a zero batch of one is run.
        masks: when given, non-zero counts use the masks; otherwise the weights' own zeros.
        example_input: a model input to run instead (a tensor, a dict of keyword arguments
            such as ``{"input_ids": ids}``, or a tuple of arguments); counts are per sample.

    Returns:
        A list of ``{"name", "type", "flops", "flops_nonzero", "output_positions", "param"}`` in
        call order (``param``: the canonical name of the weight counted).

    Raises:
        ConfigError: neither ``input_shape`` nor ``example_input`` given.

    Example:
        >>> count_flops(gpt2, example_input={"input_ids": torch.zeros(1, 16, dtype=torch.long)})
    """
    inner = unwrap(model)
    count, aliases = _nonzero_counter(inner, masks)
    records: list[dict] = []
    handles = []
    names = {m: n for n, m in inner.named_modules()}
    if example_input is None:
        if input_shape is None:
            raise ConfigError("count_flops needs input_shape (one sample's shape) or example_input")
        param = next(inner.parameters())
        example_input = torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)
    batch = _batch_of(example_input)

    def hook(module, inputs, output):
        weight = module.weight
        name = names[module]
        key = f"{name}.weight" if name else "weight"
        nonzero = count(key, weight)
        if isinstance(module, nn.Linear) or is_hf_conv1d(module):
            positions = output.numel() // output.shape[-1] // batch
        else:
            # Each output position of a conv uses every weight of its group once.
            positions = output[0, 0].numel()
        records.append({"name": name, "type": type(module).__name__, "flops": int(weight.numel() * positions),
                        "flops_nonzero": int(nonzero * positions), "output_positions": int(positions),
                        "param": canonical_name(key, aliases) or key})

    def attention_hook(module, args, kwargs, output):
        records.extend(_mha_records(names[module], module, args, kwargs, batch, count))

    for module in inner.modules():
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_hook(attention_hook, with_kwargs=True))
        elif isinstance(module, PRUNABLE_TYPES) or is_hf_conv1d(module):
            handles.append(module.register_forward_hook(hook))
    was_training = inner.training
    inner.eval()
    try:
        _run(inner, example_input)
    finally:
        for h in handles:
            h.remove()
        inner.train(was_training)
    return records


def summary(model: nn.Module, masks: Masks | None = None, input_shape=None, *, example_input=None) -> dict:
    """Sizes, sparsity, compression, FLOPs and theoretical speedup of ``model``.

    Args:
        model: the network (its zeros count as pruned when ``masks`` is None); a
            ``torch.compile``/DDP wrapper is looked through, a tied weight counts once.
        masks: the pruning masks; when given, non-zero counts of prunable weights come from them.
        input_shape: one sample's shape; needed for FLOPs (read from
            ``model.prunelab_config`` when omitted).
        example_input: a model input for FLOPs instead of ``input_shape`` (see :func:`count_flops`).

    Returns:
        ``params_total``, ``params_nonzero``, ``prunable``, ``prunable_nonzero``, ``sparsity``,
        ``compression_ratio``, ``compression_ratio_all``, ``size_bytes``, ``size_nonzero_bytes``,
        ``flops``, ``flops_nonzero``, ``theoretical_speedup``, ``layers`` (per-layer dicts),
        ``coverage`` (the fraction of all weight-matrix entries the prunable weights or masks
        cover, and the matrices left dense: :meth:`prunelab.core.prunable.Coverage.to_dict`) and
        ``counted`` (what was counted).

    Example:
        >>> summary(model, masks)["coverage"]["fraction"]
        1.0
    """
    inner = unwrap(model)
    if input_shape is None and example_input is None:
        cfg = getattr(inner, "prunelab_config", None)
        input_shape = tuple(cfg["in_shape"]) if cfg else None
    aliases = parameter_aliases(inner)
    params = model_parameters(inner)
    if masks is not None:
        # mask names may be tied aliases or wrapper-prefixed; names of no parameter are ignored
        masks = {key: m for key, m in ((canonical_name(n, aliases), m) for n, m in masks.items())
                 if key is not None}
    prunable = prunable_parameters(inner) if masks is None else {n: params[n] for n in params if n in masks}
    params_total = params_nonzero = 0
    bytes_total = bytes_nonzero = 0
    layers = []
    for name, p in params.items():
        nz = int(masks[name].sum()) if masks is not None and name in masks else int((p != 0).sum())
        params_total += p.numel()
        params_nonzero += nz
        bytes_total += p.numel() * p.element_size()
        bytes_nonzero += nz * p.element_size()
        if name in prunable:
            layers.append({"name": name, "shape": list(p.shape), "params": p.numel(), "nonzero": nz,
                           "sparsity": 1 - nz / p.numel()})
    n_prunable = sum(layer["params"] for layer in layers)
    n_prunable_nz = sum(layer["nonzero"] for layer in layers)
    out = {
        "params_total": params_total,
        "params_nonzero": params_nonzero,
        "prunable": n_prunable,
        "prunable_nonzero": n_prunable_nz,
        "sparsity": 1 - n_prunable_nz / n_prunable if n_prunable else 0.0,
        "compression_ratio": n_prunable / n_prunable_nz if n_prunable_nz else float("inf"),
        "compression_ratio_all": params_total / params_nonzero if params_nonzero else float("inf"),
        "size_bytes": bytes_total,
        "size_nonzero_bytes": bytes_nonzero,
        "coverage": coverage(inner, prunable).to_dict(),
        "counted": COUNTED,
    }
    if input_shape is not None or example_input is not None:
        flops = count_flops(inner, input_shape, masks, example_input=example_input)
        by_name = {r["param"]: r for r in flops}
        for layer in layers:
            r = by_name.get(layer["name"])
            if r:
                layer["flops"], layer["flops_nonzero"] = r["flops"], r["flops_nonzero"]
        total = sum(r["flops"] for r in flops)
        total_nz = sum(r["flops_nonzero"] for r in flops)
        out.update(flops=total, flops_nonzero=total_nz,
                   theoretical_speedup=total / total_nz if total_nz else float("inf"))
    out["layers"] = layers
    return out


def format_summary(s: dict) -> str:
    """A human-readable table of :func:`summary`'s output."""
    lines = [f"{'layer':<28} {'shape':<18} {'kept':>10} {'total':>10} {'sparsity':>9} {'MACs':>12}"]
    for layer in s["layers"]:
        lines.append(
            f"{layer['name']:<28} {str(tuple(layer['shape'])):<18} {layer['nonzero']:>10} "
            f"{layer['params']:>10} {layer['sparsity']:>9.2%} {layer.get('flops_nonzero', ''):>12}"
        )
    lines.append(
        f"prunable: {s['prunable_nonzero']}/{s['prunable']} kept, sparsity {s['sparsity']:.2%}, "
        f"compression {s['compression_ratio']:.2f}x (all params {s['compression_ratio_all']:.2f}x)"
    )
    if "flops" in s:
        lines.append(
            f"MACs: {s['flops_nonzero']}/{s['flops']} non-zero, theoretical speedup "
            f"{s['theoretical_speedup']:.2f}x"
        )
    if "coverage" in s:
        cov = s["coverage"]
        line = Coverage(cov["covered"], cov["total"], tuple(tuple(item) for item in cov["left_out"])).line()
        lines.append(f"coverage: {line}")
    lines.append(f"counted: {s['counted']}")
    return "\n".join(lines)

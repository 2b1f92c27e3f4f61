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
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.core.masks import PRUNABLE_TYPES, Masks, prunable_parameters
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


@torch.no_grad()
def count_flops(model: nn.Module, input_shape, masks: Masks | None = None) -> list[dict]:
    """Per-layer multiply-accumulates of Linear and Conv layers for one sample.

    Args:
        model: the network.
        input_shape: shape of one sample, e.g. ``(1, 28, 28)``.
        masks: when given, non-zero counts use the masks; otherwise the weights' own zeros.

    Returns:
        A list of ``{"name", "type", "flops", "flops_nonzero", "output_positions"}`` in call order.
    """
    records: list[dict] = []
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, inputs, output):
        weight = module.weight
        name = names[module]
        key = f"{name}.weight" if name else "weight"
        if masks is not None and key in masks:
            nonzero = int(masks[key].sum())
        else:
            nonzero = int((weight != 0).sum())
        if isinstance(module, nn.Linear):
            positions = output.numel() // output.shape[-1] // output.shape[0]
            flops = weight.numel() * positions
            flops_nz = nonzero * positions
        else:
            # Each output position of a conv uses every weight of its group once.
            positions = output[0, 0].numel()
            flops = weight.numel() * positions
            flops_nz = nonzero * positions
        records.append({"name": name, "type": type(module).__name__, "flops": int(flops),
                        "flops_nonzero": int(flops_nz), "output_positions": int(positions)})

    for module in model.modules():
        if isinstance(module, PRUNABLE_TYPES):
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return records


def summary(model: nn.Module, masks: Masks | None = None, input_shape=None) -> dict:
    """Sizes, sparsity, compression, FLOPs and theoretical speedup of ``model``.

    Args:
        model: the network (its zeros count as pruned when ``masks`` is None).
        masks: the pruning masks; when given, non-zero counts of prunable weights come from them.
        input_shape: one sample's shape; needed for FLOPs (read from
            ``model.prunelab_config`` when omitted).

    Returns:
        ``params_total``, ``params_nonzero``, ``prunable``, ``prunable_nonzero``, ``sparsity``,
        ``compression_ratio``, ``compression_ratio_all``, ``size_bytes``, ``size_nonzero_bytes``,
        ``flops``, ``flops_nonzero``, ``theoretical_speedup``, ``layers`` (per-layer dicts) and
        ``counted`` (what was counted).
    """
    if input_shape is None:
        cfg = getattr(model, "prunelab_config", None)
        input_shape = tuple(cfg["in_shape"]) if cfg else None
    prunable = prunable_parameters(model) if masks is None else {
        n: p for n, p in model.named_parameters() if n in masks
    }
    params_total = params_nonzero = 0
    bytes_total = bytes_nonzero = 0
    layers = []
    for name, p in model.named_parameters():
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
        "counted": COUNTED,
    }
    if input_shape is not None:
        flops = count_flops(model, input_shape, masks)
        by_name = {f"{r['name']}.weight": r for r in flops}
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
    lines.append(f"counted: {s['counted']}")
    return "\n".join(lines)

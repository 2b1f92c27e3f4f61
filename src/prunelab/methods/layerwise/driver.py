"""The driver of layer-wise pruners: capture a layer's calibration rows, solve, write back.

Layer-wise methods (FeTa, Net-Trim, L-OBS) prune one layer at a time by fitting the layer's
outputs on calibration data. Every layer is seen as a matrix product ``W x + b``
(:mod:`prunelab.methods.layerwise.layers`: ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d`` through
im2col, HuggingFace ``Conv1D``, ``nn.MultiheadAttention``'s projections), so a solver written for
a matrix handles every kind unchanged. The calibration data may be anything
:func:`prunelab.training.batches.as_calibration` accepts, a ``DataLoader`` of token ids included
(:mod:`prunelab.methods.layerwise.capture`).

Two capture modes (Net-Trim's "parallel" and "cascade"):

* ``parallel``: every layer sees the inputs of the *unpruned* network (FeTa's protocol in the
  code of Pitas et al. 2019); all layers could be pruned independently.
* ``sequential``: layer ``l`` sees the inputs produced by the *already pruned* layers before it,
  and is fitted to the *original* network's outputs at layer ``l``, so later layers can correct
  the error of earlier ones.

Memory is bounded: at most ``max_samples`` rows (sampled uniformly without replacement, seeded)
of inputs and outputs are held for the layer being pruned, streamed from the calibration set in
batches; :attr:`LayerData.nbytes` says how many bytes that is. A solver that needs only the Gram
matrix ``XᵀX`` (SparseGPT) or the column norms (Wanda) declares ``needs="gram"``/``"norms"``:
those are accumulated batch by batch and no rows are held (in sequential mode no dense copy of
the model either). Rows, solvers and the rewritten weights stay on the model's device; the
returned masks lie on their parameters' devices.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from prunelab.core.patterns import check_pattern_sparsity, is_nm, nm_keep_count, nm_mask, parse_pattern, pattern_name
from prunelab.core.prunable import canonical_name, model_parameters, parameter_aliases, resolve_parameters, unwrap
from prunelab.errors import ConfigError
from prunelab.methods.layerwise.capture import (  # noqa: F401  (re-exported)
    STATISTICS, CalibrationFeed, LayerData, calibration_feed, capture, capture_statistics,
)
from prunelab.methods.layerwise.layers import (  # noqa: F401  (re-exported)
    KINDS, LayerView, im2col, layer_view, output_rows, weight_matrix,
)

MODES = ("parallel", "sequential")
#: what a solver may need of the calibration rows: the rows and reference outputs themselves, or
#: only their Gram matrix / column norms (:func:`~prunelab.methods.layerwise.capture.capture_statistics`).
NEEDS = ("rows",) + STATISTICS


def model_order(model: nn.Module, names: Sequence[str]) -> list[str]:
    """``names`` sorted by the model's parameter order.

    Args:
        model: the network (wrappers are looked through).
        names: parameter names: canonical, tied aliases or wrapper-prefixed.

    Returns:
        The names in the order ``model.named_parameters()`` lists their parameters; names the
        model lacks go last, in their given order.

    Example:
        >>> model_order(mlp, ["2.weight", "module.0.weight"])
        ['module.0.weight', '2.weight']
    """
    aliases = parameter_aliases(model)
    position = {n: i for i, n in enumerate(model_parameters(model))}
    return sorted(names, key=lambda n: position.get(canonical_name(n, aliases), len(position)))


def default_layers(model: nn.Module, names: Sequence[str], include_last: bool = False) -> list[str]:
    """Layers a layer-wise method prunes when none are named.

    The FeTa paper prunes the hidden layers and leaves the last (softmax) layer dense
    (Pitas et al. 2019, as their code does), so by default the last of ``names`` in the model's
    parameter order is left out: the classifier of a CNN, the last block's output projection of
    a language model whose output layer is tied to the embedding (and so not among the masks).

    Args:
        model: the network.
        names: candidate weight names (the keys of the masks).
        include_last: also prune the last one.

    Returns:
        The names to prune, in the order of ``names``.
    """
    if include_last or not names:
        return list(names)
    last = model_order(model, names)[-1]
    return [n for n in names if n != last]


def as_layer_names(value) -> tuple[str, ...] | None:
    """Normalise a ``layers`` hyperparameter: None, one name, or a list/tuple of names.

    Args:
        value: None, ``"fc1.weight"`` or a sequence of such names (a list from JSON on the CLI).

    Returns:
        None or a tuple of names (hashable, so a frozen hparams dataclass stays hashable).

    Raises:
        ConfigError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"layers must be None, a weight name or a list of weight names such as "
                      f"['fc1.weight'], got {value!r}")


@dataclass
class LayerProblem:
    """What a layer solver gets.

    Attributes:
        data: calibration rows (:class:`LayerData`).
        weight: ``(d_out, d_in)`` current weights (a copy; masked entries are zero).
        bias: ``(d_out,)`` current bias, or None.
        mask: ``(d_out, d_in)`` bool, True where a weight may stay non-zero (current survivors).
        n_keep: how many weights of the layer must survive (``<= mask.sum()``).
        pattern: ``(n, m)`` when the new mask must keep exactly ``min(n, survivors)`` of every
            ``m`` consecutive weights of a row (:mod:`prunelab.core.patterns`; ``n_keep`` is then
            :func:`~prunelab.core.patterns.nm_keep_count`), else None.
    """

    data: LayerData
    weight: torch.Tensor
    bias: torch.Tensor | None
    mask: torch.Tensor
    n_keep: int
    pattern: tuple[int, int] | None = None


# solve(problem) -> (weight, bias, mask, info): new (d_out, d_in) weights, bias (or None), bool
# mask inside problem.mask (exactly problem.n_keep True entries unless the method documents
# otherwise, e.g. FeTa with a fixed tau), and a JSON-able dict.
Solver = Callable[[LayerProblem], tuple]


def keep_count(total: int, already_kept: int, sparsity: float) -> int:
    """Weights a layer keeps at ``sparsity``: ``round((1 - sparsity) * total)``, never above the
    current survivors (pruning only removes)."""
    return min(already_kept, int(round((1.0 - sparsity) * total)))


def top_k_mask(score: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest ``score`` entries among ``allowed`` (ties: lowest index).

    Args:
        score: any-shape float scores.
        allowed: bool of the same shape; only these entries can be kept.
        k: how many to keep, ``0 <= k <= allowed.sum()``.

    Returns:
        Bool tensor on ``score``'s device, same shape, exactly ``k`` True entries.
    """
    device = score.device
    flat = torch.where(allowed.reshape(-1).to(device), score.reshape(-1).to(torch.float64),
                       torch.tensor(-math.inf, dtype=torch.float64, device=device))
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=device)
    if k > 0:
        # A stable descending sort makes ties deterministic.
        order = torch.sort(flat, descending=True, stable=True).indices[:k]
        out[order] = True
    return out.reshape(score.shape)


def _mask_names(masks, requested: Sequence[str], model: nn.Module) -> tuple[list[str], list[str]]:
    """The mask keys ``requested`` names refer to (exact keys, or the same parameter by a tied
    alias or wrapper prefix), and the requested names that match no mask."""
    aliases = parameter_aliases(model)
    by_canonical = {canonical_name(n, aliases): n for n in masks}
    found, unknown = [], []
    for name in requested:
        key = name if name in masks else by_canonical.get(canonical_name(name, aliases))
        (found if key is not None else unknown).append(key if key is not None else name)
    return found, unknown


def prune_layers(model: nn.Module, masks, sparsity: float, calib_x, solve: Solver, *,
                 layers: Sequence[str] | None = None, include_last: bool = False,
                 mode: str = "parallel", max_samples: int | None = None, batch_size: int = 1000,
                 seed: int = 0, log: Callable[[str], None] | None = None,
                 forward_fn=None, pattern=None, needs: str = "rows") -> tuple[dict, list[dict]]:
    """Prune the chosen layers one at a time with ``solve`` and write the results into ``model``.

    Each chosen layer is pruned to ``sparsity`` of its own weights (the same fraction in every
    layer, as the papers do); other layers keep their masks and weights.

    Args:
        model: network to prune in place (weights and biases of the chosen layers are rewritten;
            ``torch.compile``/DDP wrappers are looked through).
        masks: the current masks (a mapping name -> bool tensor); survivors only can survive.
        sparsity: fraction of each chosen layer's weights pruned after the call, in [0, 1).
        calib_x: calibration data: a tensor of inputs or anything
            :func:`~prunelab.methods.layerwise.capture.calibration_feed` accepts (a ``Split``, a
            ``DataLoader``, a ``Calibration``, ...).
        solve: the layer solver (see :data:`Solver`).
        layers: weight names to prune; None = :func:`default_layers` of the masks' names.
        include_last: with ``layers=None``, also prune the last layer.
        mode: ``"parallel"`` or ``"sequential"`` (module docstring).
        max_samples, batch_size, seed: passed to :func:`capture`.
        log: optional progress callback.
        forward_fn: ``forward_fn(model, inputs)`` running the model on one calibration batch
            (default ``model(x)``, ``model(**inputs)`` for dicts).
        pattern: an N:M pattern (``"2:4"``, ``(2, 4)``; :func:`~prunelab.core.patterns.parse_pattern`)
            every chosen layer's mask follows; ``sparsity`` must then be ``1 - N/M``. None: any
            mask with the layer's keep count.
        needs: what the solver reads of the calibration data: ``"rows"`` (``data.inputs`` and
            ``data.outputs``, :func:`capture`), ``"gram"`` (``data.gram``) or ``"norms"``
            (``data.sq_norms``), the latter two accumulated batch by batch
            (:func:`capture_statistics`; ``data.inputs`` is then empty).

    Returns:
        ``(new_masks, infos)``: a dict name -> bool tensor (on its parameter's device) covering
        every name of ``masks``, and one JSON-able info dict per pruned layer (rows, bytes held,
        seconds, kept, ...; a grouped conv's solver infos are listed per group).

    Raises:
        ConfigError: bad sparsity, mode or layer names.
        MethodError: a layer kind that cannot be fitted layer-wise.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if needs not in NEEDS:
        raise ConfigError(f"needs must be one of {NEEDS}, got {needs!r}")
    pattern = parse_pattern(pattern)
    check_pattern_sparsity(pattern, sparsity)
    inner = unwrap(model)
    names = list(masks.keys())
    if layers is None:
        chosen = default_layers(inner, names, include_last)
    else:
        chosen, unknown = _mask_names(masks, list(layers), inner)
        if unknown:
            raise ConfigError(f"layers {unknown} are not prunable parameters of this model; "
                              f"choose among {names}")
    if not chosen:
        raise ConfigError("no layer to prune: the model has a single prunable layer and "
                          "include_last is False; set include_last=True or name the layers")
    chosen = [n for n in model_order(inner, names) if n in chosen]  # sequential mode needs model order
    feed = calibration_feed(calib_x, forward_fn, batch_size)
    # Statistics in sequential mode come from the pruned model alone: no dense copy is held.
    reference = None if needs != "rows" and mode == "sequential" else copy.deepcopy(inner)
    if reference is not None:
        reference.eval()
    params = resolve_parameters(inner, names)
    new_masks = {n: masks[n].to(params[n].device).clone() for n in names}
    infos = []
    for name in chosen:
        start = time.perf_counter()
        source = inner if mode == "sequential" else reference
        if needs == "rows":
            data = capture(source, name, feed, reference=reference, max_samples=max_samples,
                           batch_size=batch_size, seed=seed)
        else:
            data = capture_statistics(source, name, feed, want=needs, max_samples=max_samples,
                                      batch_size=batch_size, seed=seed)
        capture_s = time.perf_counter() - start
        view = layer_view(inner, name)
        mask2d = view.mask_matrix(masks[name]).contiguous()
        weight = view.matrix().clone(memory_format=torch.contiguous_format) * mask2d
        bias = None if view.bias is None else view.bias.data.clone()
        if pattern is None:
            n_keep = keep_count(mask2d.numel(), int(mask2d.sum()), sparsity)
        else:
            n_keep = nm_keep_count(mask2d, pattern)
        if view.groups == 1:
            problem = LayerProblem(data, weight, bias, mask2d, n_keep, pattern)
            new_w, new_b, new_mask, info = solve(problem)
        else:
            new_w, new_b, new_mask, info = solve_groups(data, weight, bias, mask2d, n_keep, view.groups,
                                                        solve, pattern)
        if new_mask.dtype != torch.bool or bool((new_mask & ~mask2d).any()):
            raise RuntimeError(f"solver revived pruned weights of {name}")  # pragma: no cover
        if pattern is not None and (int(new_mask.sum()) != n_keep
                                    or not is_nm(new_mask, pattern, exact=False)):
            raise RuntimeError(f"solver broke the {pattern_name(pattern)} pattern of {name}")  # pragma: no cover
        view.write(new_w * new_mask, new_b)
        new_masks[name] = view.to_parameter_shape(new_mask).reshape(masks[name].shape)
        kept = int(new_mask.sum())
        layer_info = {"layer": name, "rows": data.rows, "rows_total": data.rows_total,
                      "bytes_held": data.nbytes, "kept": kept, "total": mask2d.numel(),
                      "capture_s": capture_s, "seconds": time.perf_counter() - start, **info}
        infos.append(layer_info)
        if log is not None:
            log(f"{name}: kept {kept}/{mask2d.numel()} from {data.rows} rows "
                f"({data.nbytes / 2**20:.1f} MiB) in {layer_info['seconds']:.2f} s")
        del data
    return new_masks, infos


def group_keep_counts(survivors: Sequence[int], n_keep: int) -> list[int]:
    """How many weights each group of a grouped conv keeps so that the layer keeps ``n_keep``.

    Every group gets ``n_keep // groups`` (fewer if it has fewer survivors); the rest goes one
    weight at a time to the groups in index order that still have survivors to give. Equal
    shares make each group as sparse as the layer, as a depthwise conv pruned channel by channel.

    Args:
        survivors: surviving weights per group.
        n_keep: weights the layer keeps (at most ``sum(survivors)``).

    Returns:
        Keep counts per group, summing to ``n_keep``.

    Example:
        >>> group_keep_counts([9, 9, 9], 14)
        [5, 5, 4]
    """
    keeps = [min(s, n_keep // len(survivors)) for s in survivors]
    left = n_keep - sum(keeps)
    while left > 0:
        for g, s in enumerate(survivors):
            if left and keeps[g] < s:
                keeps[g] += 1
                left -= 1
    return keeps


def solve_groups(data: LayerData, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                 n_keep: int, groups: int, solve: Solver, pattern: tuple[int, int] | None = None) -> tuple:
    """Solve a grouped conv as ``groups`` independent layers and put the results back together.

    Group ``g`` of a conv multiplies only its own input channels, so its rows of the weight matrix
    (``d_out / groups`` output channels) against its slice of the im2col columns (``d_in``
    columns) is an ordinary layer problem; its keep count comes from :func:`group_keep_counts`,
    so the layer as a whole keeps exactly ``n_keep`` weights. A group whose inputs are all zero
    on the calibration rows (a dead channel before a depthwise conv) has nothing to fit (its
    Hessian is zero): it keeps its largest-magnitude weights unchanged, ``{"dead_inputs": True}``.

    Args:
        data: the layer's rows (inputs ``(rows, d_in · groups)``, outputs ``(rows, d_out)``).
        weight, bias, mask: the layer's ``(d_out, d_in)`` weights, ``(d_out,)`` bias or None, mask.
        n_keep: weights the layer keeps.
        groups: the conv's groups.
        solve: the layer solver.
        pattern: an N:M pattern each group's rows follow (then each group keeps its own
            :func:`~prunelab.core.patterns.nm_keep_count`), or None.

    Returns:
        ``(weight, bias, mask, info)`` as a solver returns them; ``info`` lists the groups' infos
        under ``"per_group"``.
    """
    rows = weight.shape[0] // groups
    if pattern is None:
        keeps = group_keep_counts([int(m.sum()) for m in mask.split(rows)], n_keep)
    else:
        keeps = [nm_keep_count(m, pattern) for m in mask.split(rows)]
    weights, biases, masks, group_infos = [], [], [], []
    for g in range(groups):
        out = slice(g * rows, (g + 1) * rows)
        part = data.group(g, groups, out)   # its columns (Gram block, norms) and outputs
        problem = LayerProblem(part, weight[out].contiguous(), None if bias is None else bias[out].clone(),
                               mask[out].contiguous(), keeps[g], pattern)
        if part.has_signal():
            new_w, new_b, new_mask, info = solve(problem)
        else:
            new_w, new_b, info = problem.weight, problem.bias, {"dead_inputs": True}
            new_mask = (top_k_mask(problem.weight.abs(), problem.mask, keeps[g]) if pattern is None
                        else nm_mask(problem.weight.abs(), pattern, problem.mask))
        weights.append(new_w)
        biases.append(new_b)
        masks.append(new_mask)
        group_infos.append(info)
    new_bias = None if any(b is None for b in biases) else torch.cat(biases)
    return torch.cat(weights), new_bias, torch.cat(masks), {"groups": groups, "per_group": group_infos}


@dataclass(frozen=True)
class LayerwiseHparams:
    """The hyperparameters every layer-wise method shares (FeTa, Net-Trim, L-OBS).

    Attributes:
        layers: names of the weights to prune (default: every prunable layer but the last).
        include_last: also prune the last prunable layer (the classifier).
        mode: ``"parallel"`` (every layer sees the unpruned network's inputs, as in the papers)
            or ``"sequential"`` (layer l sees the already-pruned layers' outputs).
        max_samples: at most this many calibration rows per layer (subsampled, seeded).
        seed: seeds the subsampling and the method's own randomness.
        pattern: ``"N:M"`` (e.g. ``"2:4"``): every pruned layer keeps exactly N of every M
            consecutive input weights (:mod:`prunelab.core.patterns`), and the sparsity must be
            ``1 - N/M``; None: unstructured. Methods that cannot honour a pattern refuse it.
    """

    layers: tuple[str, ...] | None = None
    include_last: bool = False
    mode: str = "parallel"
    max_samples: int | None = None
    seed: int = 0
    pattern: str | None = None


def check_common_hparams(hparams, label: str, patterns: bool = True) -> None:
    """Normalise ``layers`` and ``pattern`` and check ``mode`` of a layer-wise method's frozen
    hparams in place; ``patterns=False`` refuses a pattern (a method that cannot honour one)."""
    object.__setattr__(hparams, "layers", as_layer_names(hparams.layers))
    object.__setattr__(hparams, "pattern", pattern_name(parse_pattern(hparams.pattern)))
    if hparams.pattern is not None and not patterns:
        raise ConfigError(f"{label} does not offer N:M patterns; use magnitude, wanda, sparsegpt "
                          "or lobs with pattern=...")
    if hparams.mode not in MODES:
        raise ConfigError(f"{label} mode must be one of {MODES}, got {hparams.mode!r}")


def prune_with_solver(label: str, model: nn.Module, masks, sparsity: float, calib, hparams,
                      solve: Callable, needs: str = "rows") -> tuple:
    """The shared body of the layer-wise methods' ``prune``: check the calibration data, run
    :func:`prune_layers` with the method's common hparams, apply the new masks.

    Args:
        label: the method's name in messages.
        model: the network, pruned in place.
        masks: current masks, or None (every prunable weight kept).
        sparsity: per-layer target.
        calib: calibration data (anything :func:`prune_layers` accepts; a ``Calibration``
            brings its own ``forward_fn``).
        hparams: the method's :class:`LayerwiseHparams`.
        solve: the layer solver.
        needs: what the solver reads of the calibration data (:func:`prune_layers`).

    Returns:
        ``(masks, per-layer info)``.
    """
    from prunelab.core.masks import Masks

    if calib is None:
        raise ConfigError(f"{label} needs calibration data: pass calib= a Split (e.g. data.train), a "
                          "tensor of inputs, an (x, y) pair, a TensorDataset or a DataLoader")
    masks = Masks.ones(model) if masks is None else masks
    masks.validate(model)
    new, info = prune_layers(
        model, masks, sparsity, calib, solve, layers=hparams.layers,
        include_last=hparams.include_last, mode=hparams.mode, max_samples=hparams.max_samples,
        seed=hparams.seed, pattern=hparams.pattern, needs=needs)
    result = Masks(new)
    result.apply(model)
    return result, info

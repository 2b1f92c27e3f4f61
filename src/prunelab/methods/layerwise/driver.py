"""Layer-wise capture of calibration activations, and the driver of layer-wise pruners.

Layer-wise methods (FeTa, Net-Trim, L-OBS) prune one layer at a time by fitting the layer's
outputs on calibration data. Every layer is seen as a matrix product: a ``Linear`` layer maps
rows ``x`` (``d_in``) to ``W x + b``; a ``Conv1d``/``Conv2d`` layer is the same product applied to
its im2col patches (``torch.nn.functional.unfold``), with ``W`` the kernel flattened to
``(out_channels, in_channels * prod(kernel_size))``. One calibration image then gives one row per
output position. So a solver written for ``Linear`` handles convolutions unchanged.

Two capture modes (Net-Trim's "parallel" and "cascade"):

* ``parallel``: every layer sees the inputs of the *unpruned* network (FeTa's protocol in the
  code of Pitas et al. 2019); all layers could be pruned independently.
* ``sequential``: layer ``l`` sees the inputs produced by the *already pruned* layers before it,
  and is fitted to the *original* network's outputs at layer ``l``, so later layers can correct
  the error of earlier ones.

Memory is bounded: at most ``max_samples`` rows (sampled uniformly without replacement, seeded)
of inputs and outputs are held for the layer being pruned, streamed from the calibration set in
batches; :attr:`LayerData.nbytes` says how many bytes that is.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.errors import ConfigError, MethodError

MODES = ("parallel", "sequential")

# Elements of im2col patches materialised per forward batch (64 MiB of float32), so capture of a
# conv layer never holds a full (batch * positions, d_in) matrix for a large batch.
_PATCH_BUDGET = 1 << 24


@dataclass
class LayerData:
    """Calibration rows of one layer, seen as a matrix product.

    Attributes:
        name: the layer's weight parameter name, e.g. ``"net.2.weight"``.
        inputs: ``(rows, d_in)`` float32 layer inputs (im2col patches for a conv layer).
        outputs: ``(rows, d_out)`` float32 *pre-activation* outputs ``W x + b`` of the reference
            (unpruned) layer on the reference inputs. Methods that fit post-ReLU targets (FeTa,
            Net-Trim) apply ``relu`` themselves.
        n_samples: calibration samples (images) that were forwarded.
        rows_total: rows those samples give (``n_samples * positions`` for a conv layer).
    """

    name: str
    inputs: torch.Tensor
    outputs: torch.Tensor
    n_samples: int
    rows_total: int

    @property
    def nbytes(self) -> int:
        """Bytes held by ``inputs`` and ``outputs``."""
        return self.inputs.numel() * self.inputs.element_size() + \
            self.outputs.numel() * self.outputs.element_size()


def _module_of(model: nn.Module, param_name: str) -> nn.Module:
    """The module owning ``param_name`` (a ``weight`` of Linear/Conv1d/Conv2d)."""
    if not param_name.endswith(".weight"):
        raise MethodError(f"layer-wise pruning needs a '<module>.weight' name, got {param_name!r}")
    module_name = param_name[: -len(".weight")]
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        raise MethodError(f"the model has no layer {module_name!r}; pick names from "
                          "prunelab.core.masks.prunable_parameters(model)") from None
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            raise MethodError(f"layer {module_name!r} is a grouped convolution (groups="
                              f"{module.groups}); layer-wise methods support groups=1 only")
        if module.padding_mode != "zeros":
            raise MethodError(f"layer {module_name!r} uses padding_mode={module.padding_mode!r}; "
                              "layer-wise methods support zero padding only")
        return module
    raise MethodError(f"layer {module_name!r} is a {type(module).__name__}; layer-wise methods "
                      "handle nn.Linear, nn.Conv1d and nn.Conv2d only")


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a ``(d_out, d_in)`` matrix (a view of the parameter's data).

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``.

    Returns:
        ``(d_out, d_in)`` view; a conv kernel is flattened in im2col order ``(C_in, *kernel)``.
    """
    return module.weight.data.reshape(module.weight.shape[0], -1)


def _conv2d_args(module: nn.Module):
    """Kernel, dilation, padding and stride of a Conv1d/Conv2d as 2-D tuples (Conv1d → 1 × k)."""
    one_d = isinstance(module, nn.Conv1d)
    two = (lambda v, lead=1: (lead,) + tuple(v)) if one_d else (lambda v, lead=1: tuple(v))
    if isinstance(module.padding, str):
        if module.padding == "valid":
            padding = (0,) * len(module.kernel_size)
        elif all(s == 1 for s in module.stride):   # "same" with stride 1 (PyTorch allows no other)
            total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
            if any(t % 2 for t in total):
                raise MethodError("padding='same' with an even kernel pads asymmetrically; "
                                  "im2col supports symmetric padding only, use explicit padding")
            padding = tuple(t // 2 for t in total)
        else:  # pragma: no cover - PyTorch rejects this combination itself
            raise MethodError("padding='same' needs stride 1")
    else:
        padding = module.padding
    return two(module.kernel_size), two(module.dilation), two(padding, 0), two(module.stride)


def im2col(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows a layer multiplies by its weight matrix.

    Args:
        module: ``nn.Linear`` (rows are the inputs, leading dims flattened), or ``nn.Conv1d`` /
            ``nn.Conv2d`` (rows are the im2col patches, one per output position).
        x: the layer's input batch.

    Returns:
        ``(rows, d_in)`` tensor with ``module(x)`` rows equal to ``rows @ weight_matrix(module).T
        + bias`` (see :func:`output_rows` for the matching output layout).
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    kernel, dilation, padding, stride = _conv2d_args(module)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def output_rows(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A layer's output batch as ``(rows, d_out)``, row order matching :func:`im2col`."""
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2).reshape(-1, y.shape[1])


def default_layers(model: nn.Module, names: Sequence[str], include_last: bool = False) -> list[str]:
    """Layers a layer-wise method prunes when none are named.

    The FeTa paper prunes the hidden layers and leaves the last (softmax) layer dense
    (Pitas et al. 2019, as their code does), so by default the model's last Linear/Conv layer is left out.

    Args:
        model: the network.
        names: candidate weight names (the keys of the masks), in model order.
        include_last: also prune the model's last Linear/Conv layer.

    Returns:
        The names to prune, in model order.
    """
    layer_names = [n + ".weight" for n, m in model.named_modules()
                   if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    last = layer_names[-1] if layer_names else None
    return [n for n in names if include_last or n != last]


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


def _row_selection(total: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    """Sorted row indices to keep, or None for all rows."""
    if max_samples is None or total <= max_samples:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=max_samples, replace=False))


@torch.no_grad()
def _forward_rows(model: nn.Module, module: nn.Module, x: torch.Tensor, want: str,
                  keep: np.ndarray | None, rows_per_sample: int, batch_size: int) -> torch.Tensor:
    """Run ``model`` on ``x`` and collect the selected rows of ``module``'s input or output."""
    chunks: list[torch.Tensor] = []
    d_in = weight_matrix(module).shape[1]
    batch = max(1, min(batch_size, _PATCH_BUDGET // max(1, rows_per_sample * d_in)))

    def hook(_mod, args, out):
        rows = im2col(module, args[0]) if want == "inputs" else output_rows(module, out)
        start = hook.row0
        hook.row0 += rows.shape[0]
        if keep is not None:
            lo, hi = np.searchsorted(keep, [start, hook.row0])
            rows = rows[torch.from_numpy(keep[lo:hi] - start)]
        chunks.append(rows.detach().to(torch.float32).clone())
        raise _StopForward

    hook.row0 = 0
    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, x.shape[0], batch):
            try:
                model(x[i:i + batch])
            except _StopForward:
                pass
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, d_in)


class _StopForward(Exception):
    """Raised inside a hook: the layer's rows are captured, the rest of the forward is skipped."""


@torch.no_grad()
def capture(model: nn.Module, param_name: str, x: torch.Tensor, *,
            reference: nn.Module | None = None, max_samples: int | None = None,
            batch_size: int = 1000, seed: int = 0) -> LayerData:
    """Capture a layer's input rows and original output rows on calibration inputs.

    Args:
        model: network whose layer *inputs* are captured (in sequential mode: the partly pruned
            network).
        param_name: the layer's weight name, e.g. ``"net.2.weight"``.
        x: calibration inputs ``(n, *in_shape)``, already normalised.
        reference: network whose layer *outputs* are the targets (the unpruned network); default
            ``model``. It must have the same architecture.
        max_samples: keep at most this many rows (a conv layer gives one row per output position
            and sample), drawn uniformly without replacement with ``seed``; None keeps all.
        batch_size: samples per forward pass.
        seed: seed of the row subsample.

    Returns:
        :class:`LayerData` with matching rows of inputs and pre-activation outputs.

    Raises:
        MethodError: unsupported layer or an unknown name.
        ConfigError: empty calibration data or a bad ``max_samples``/``batch_size``.
    """
    if x.shape[0] == 0:
        raise ConfigError("calibration data is empty; pass a Split with at least one sample")
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be a positive int or None, got {max_samples}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    reference = model if reference is None else reference
    module = _module_of(model, param_name)
    ref_module = _module_of(reference, param_name)
    if ref_module.weight.shape != module.weight.shape:
        raise MethodError(f"reference layer {param_name!r} has shape "
                          f"{tuple(ref_module.weight.shape)}, model has {tuple(module.weight.shape)}")
    # One sample tells how many rows (output positions) each sample gives.
    per_sample = _forward_rows(model, module, x[:1], "inputs", None, 1, 1).shape[0]
    total = per_sample * x.shape[0]
    keep = _row_selection(total, max_samples, seed)
    inputs = _forward_rows(model, module, x, "inputs", keep, per_sample, batch_size)
    outputs = _forward_rows(reference, ref_module, x, "outputs", keep, per_sample, batch_size)
    return LayerData(param_name, inputs, outputs, int(x.shape[0]), int(total))


@dataclass
class LayerProblem:
    """What a layer solver gets.

    Attributes:
        data: calibration rows (:class:`LayerData`).
        weight: ``(d_out, d_in)`` current weights (a copy; masked entries are zero).
        bias: ``(d_out,)`` current bias, or None.
        mask: ``(d_out, d_in)`` bool, True where a weight may stay non-zero (current survivors).
        n_keep: how many weights of the layer must survive (``<= mask.sum()``).
    """

    data: LayerData
    weight: torch.Tensor
    bias: torch.Tensor | None
    mask: torch.Tensor
    n_keep: int


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
        Bool tensor, same shape, exactly ``k`` True entries.
    """
    flat = torch.where(allowed.reshape(-1), score.reshape(-1).to(torch.float64),
                       torch.tensor(-math.inf, dtype=torch.float64))
    out = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        # A stable descending sort makes ties deterministic.
        order = torch.sort(flat, descending=True, stable=True).indices[:k]
        out[order] = True
    return out.reshape(score.shape)


def prune_layers(model: nn.Module, masks, sparsity: float, calib_x: torch.Tensor, solve: Solver, *,
                 layers: Sequence[str] | None = None, include_last: bool = False,
                 mode: str = "parallel", max_samples: int | None = None, batch_size: int = 1000,
                 seed: int = 0, log: Callable[[str], None] | None = None) -> tuple[dict, list[dict]]:
    """Prune the chosen layers one at a time with ``solve`` and write the results into ``model``.

    Each chosen layer is pruned to ``sparsity`` of its own weights (the same fraction in every
    layer, as the papers do); other layers keep their masks and weights.

    Args:
        model: network to prune in place (weights and biases of the chosen layers are rewritten).
        masks: the current masks (a mapping name -> bool tensor); survivors only can survive.
        sparsity: fraction of each chosen layer's weights pruned after the call, in [0, 1).
        calib_x: calibration inputs.
        solve: the layer solver (see :data:`Solver`).
        layers: weight names to prune; None = :func:`default_layers` of the masks' names.
        include_last: with ``layers=None``, also prune the last layer.
        mode: ``"parallel"`` or ``"sequential"`` (module docstring).
        max_samples, batch_size, seed: passed to :func:`capture`.
        log: optional progress callback.

    Returns:
        ``(new_masks, infos)``: a dict name -> bool tensor covering every name of ``masks``, and
        one JSON-able info dict per pruned layer (rows, bytes held, seconds, kept, ...).

    Raises:
        ConfigError: bad sparsity, mode or layer names.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    names = list(masks.keys())
    chosen = default_layers(model, names, include_last) if layers is None else list(layers)
    unknown = [n for n in chosen if n not in masks]
    if unknown:
        raise ConfigError(f"layers {unknown} are not prunable parameters of this model; "
                          f"choose among {names}")
    if not chosen:
        raise ConfigError("no layer to prune: the model has a single prunable layer and "
                          "include_last is False; set include_last=True or name the layers")
    chosen = [n for n in names if n in chosen]  # model order, needed by sequential mode
    reference = copy.deepcopy(model)
    reference.eval()
    new_masks = {n: masks[n].clone() for n in names}
    infos = []
    for name in chosen:
        start = time.perf_counter()
        source = model if mode == "sequential" else reference
        data = capture(source, name, calib_x, reference=reference, max_samples=max_samples,
                       batch_size=batch_size, seed=seed)
        capture_s = time.perf_counter() - start
        module = _module_of(model, name)
        mask2d = masks[name].reshape(module.weight.shape[0], -1).to(torch.bool)
        weight = weight_matrix(module).clone() * mask2d
        bias = None if module.bias is None else module.bias.data.clone()
        n_keep = keep_count(mask2d.numel(), int(mask2d.sum()), sparsity)
        problem = LayerProblem(data, weight, bias, mask2d, n_keep)
        new_w, new_b, new_mask, info = solve(problem)
        if new_mask.dtype != torch.bool or bool((new_mask & ~mask2d).any()):
            raise RuntimeError(f"solver revived pruned weights of {name}")  # pragma: no cover
        with torch.no_grad():
            module.weight.data.copy_((new_w * new_mask).reshape(module.weight.shape))
            if new_b is not None and module.bias is not None:
                module.bias.data.copy_(new_b)
        new_masks[name] = new_mask.reshape(masks[name].shape)
        kept = int(new_mask.sum())
        layer_info = {"layer": name, "rows": data.inputs.shape[0], "rows_total": data.rows_total,
                      "bytes_held": data.nbytes, "kept": kept, "total": mask2d.numel(),
                      "capture_s": capture_s, "seconds": time.perf_counter() - start, **info}
        infos.append(layer_info)
        if log is not None:
            log(f"{name}: kept {kept}/{mask2d.numel()} from {data.inputs.shape[0]} rows "
                f"({data.nbytes / 2**20:.1f} MiB) in {layer_info['seconds']:.2f} s")
        del data, problem
    return new_masks, infos


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
    """

    layers: tuple[str, ...] | None = None
    include_last: bool = False
    mode: str = "parallel"
    max_samples: int | None = None
    seed: int = 0


def check_common_hparams(hparams, label: str) -> None:
    """Normalise ``layers`` and check ``mode`` of a layer-wise method's frozen hparams in place."""
    object.__setattr__(hparams, "layers", as_layer_names(hparams.layers))
    if hparams.mode not in MODES:
        raise ConfigError(f"{label} mode must be one of {MODES}, got {hparams.mode!r}")


def prune_with_solver(label: str, model: nn.Module, masks, sparsity: float, calib, hparams,
                      solve: Callable) -> tuple:
    """The shared body of the layer-wise methods' ``prune``: check the calibration data, run
    :func:`prune_layers` with the method's common hparams, apply the new masks.

    Returns:
        ``(masks, per-layer info)``.
    """
    from prunelab.core.masks import Masks

    if calib is None:
        raise ConfigError(f"{label} needs calibration data: pass calib=<a Split> (e.g. data.train)")
    masks = Masks.ones(model) if masks is None else masks
    masks.validate(model)
    new, info = prune_layers(
        model, masks, sparsity, calib.x, solve, layers=hparams.layers,
        include_last=hparams.include_last, mode=hparams.mode, max_samples=hparams.max_samples,
        seed=hparams.seed)
    result = Masks(new)
    result.apply(model)
    return result, info

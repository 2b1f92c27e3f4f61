"""Every prunable layer a layer-wise method can fit, seen as one matrix product.

A layer maps input rows ``x`` (``d_in``) to output rows ``W x + b`` with a ``(d_out, d_in)``
weight matrix ``W``:

* ``nn.Linear``: ``W`` is the weight; the rows are the input's last dimension, leading
  dimensions flattened.
* ``nn.Conv1d``/``nn.Conv2d``: ``W`` is the kernel flattened to ``(out_channels, in_channels *
  prod(kernel_size))``; the rows are the im2col patches (``torch.nn.functional.unfold``), one per
  output position. A grouped conv (depthwise: groups = channels) has ``W`` of shape
  ``(out_channels, in_channels / groups * prod(kernel_size))`` and rows ``groups`` times as wide:
  group ``g`` is its own layer, rows ``g`` of ``W`` (``out_channels / groups`` of them) times
  column slice ``g`` of the patches (the driver solves one problem per group).
* HuggingFace ``Conv1D`` (GPT-2): its weight is stored ``(d_in, d_out)``, so ``W`` is its
  transpose; the rows are the input's last dimension (output rows ``x @ weight + b``).
* ``nn.MultiheadAttention``'s ``in_proj_weight`` (self-attention only): ``W`` is the stacked
  q/k/v projection ``(3E, E)``; the rows are the query's rows and the outputs ``rows @ W.T +
  in_proj_bias`` are computed from them. Its ``out_proj`` (an ``nn.Linear`` the attention calls
  through ``F.multi_head_attention_forward``, never as a module) has as rows the concatenated
  heads, obtained by re-running the attention with an identity output projection.

:class:`LayerView` holds one such layer: its matrix, bias, how a mask maps to the matrix and back,
and where its rows come from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.core.prunable import is_hf_conv1d, canonical_name, parameter_aliases, unwrap
from prunelab.errors import MethodError

#: ``kind`` of a :class:`LayerView`.
KINDS = ("linear", "conv", "hf_conv1d", "mha_in", "mha_out")
_MHA_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a ``(d_out, d_in)`` matrix (a view of the parameter's data).

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d``, a HuggingFace ``Conv1D`` (its
            transposed weight) or an ``nn.MultiheadAttention`` (its ``in_proj_weight``).

    Returns:
        ``(d_out, d_in)`` view; a conv kernel is flattened in im2col order ``(C_in, *kernel)``.
    """
    if is_hf_conv1d(module):
        return module.weight.data.T
    if isinstance(module, nn.MultiheadAttention):
        return module.in_proj_weight.data
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
        module: ``nn.Linear`` or a HuggingFace ``Conv1D`` (rows are the inputs, leading dims
            flattened), or ``nn.Conv1d`` / ``nn.Conv2d`` (rows are the im2col patches, one per
            output position).
        x: the layer's input batch.

    Returns:
        ``(rows, d_in)`` tensor with ``module(x)`` rows equal to ``rows @ weight_matrix(module).T
        + bias`` (see :func:`output_rows` for the matching output layout).
    """
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return x.reshape(-1, x.shape[-1])
    kernel, dilation, padding, stride = _conv2d_args(module)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def output_rows(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A layer's output batch as ``(rows, d_out)``, row order matching :func:`im2col`."""
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return y.reshape(-1, y.shape[-1])
    return y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2).reshape(-1, y.shape[1])


@dataclass
class LayerView:
    """One prunable weight seen as a ``(d_out, d_in)`` matrix product (module docstring).

    Attributes:
        name: the canonical parameter name (``"transformer.h.0.attn.c_attn.weight"``).
        module: the module owning the parameter (the ``nn.MultiheadAttention`` for
            ``in_proj_weight``, the ``out_proj`` Linear for the output projection).
        kind: one of :data:`KINDS`.
        host: the module whose forward the capture hooks (the attention module for both
            attention kinds, ``module`` otherwise).
    """

    name: str
    module: nn.Module
    kind: str
    host: nn.Module

    @property
    def parameter(self) -> torch.Tensor:
        """The pruned parameter."""
        return self.module.in_proj_weight if self.kind == "mha_in" else self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The layer's bias parameter, or None."""
        return self.module.in_proj_bias if self.kind == "mha_in" else self.module.bias

    @property
    def computes_outputs(self) -> bool:
        """Outputs come from the captured rows (``rows @ W.T + b``), not from a forward hook."""
        return self.kind in ("mha_in", "mha_out")

    def matrix(self) -> torch.Tensor:
        """``(d_out, d_in)`` view of the parameter's data."""
        if self.kind == "hf_conv1d":
            return self.parameter.data.T
        param = self.parameter.data
        return param.reshape(param.shape[0], -1)

    @property
    def groups(self) -> int:
        """The conv's ``groups`` (1 for every other kind): the matrix holds one block of
        ``d_out / groups`` rows per group, each multiplying its own slice of the im2col columns."""
        return self.module.groups if self.kind == "conv" else 1

    def input_width(self) -> int:
        """Columns of the layer's input rows (:func:`im2col`): ``d_in · groups``."""
        return self.matrix().shape[1] * self.groups

    def mask_matrix(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask of the parameter's shape as a ``(d_out, d_in)`` bool matrix on its device."""
        mask = mask.to(device=self.parameter.device, dtype=torch.bool)
        if self.kind == "hf_conv1d":
            return mask.T
        return mask.reshape(self.parameter.shape[0], -1)

    def to_parameter_shape(self, matrix: torch.Tensor) -> torch.Tensor:
        """A ``(d_out, d_in)`` matrix (weights or mask) back in the parameter's layout."""
        if self.kind == "hf_conv1d":
            return matrix.T.contiguous()
        return matrix.reshape(self.parameter.shape)

    @torch.no_grad()
    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Copy a ``(d_out, d_in)`` weight matrix (and a bias, if the layer has one) in."""
        self.parameter.data.copy_(self.to_parameter_shape(weight))
        if bias is not None and self.bias is not None:
            self.bias.data.copy_(bias)

    def linear_outputs(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows @ W.T + b`` with this layer's current weights (for :attr:`computes_outputs`)."""
        weight = self.matrix()
        bias = self.bias
        return F.linear(rows.to(weight.dtype), weight, None if bias is None else bias.data)


def _check_conv(module: nn.Module, module_name: str) -> None:
    if module.padding_mode != "zeros":
        raise MethodError(f"layer {module_name!r} uses padding_mode={module.padding_mode!r}; "
                          "layer-wise methods support zero padding only")


def layer_view(model: nn.Module, param_name: str) -> LayerView:
    """The :class:`LayerView` of ``param_name`` in ``model``.

    Args:
        model: the network (``torch.compile``/DDP wrappers are looked through).
        param_name: the weight's name: canonical, a tied alias or wrapper-prefixed.

    Returns:
        The :class:`LayerView` (its ``name`` canonical).

    Example:
        >>> view = layer_view(gpt2, "transformer.h.0.mlp.c_fc.weight")
        >>> view.kind, tuple(view.matrix().shape)
        ('hf_conv1d', (256, 64))

    Raises:
        MethodError: no such parameter, or a layer kind layer-wise methods cannot fit
            (non-zero-padded convolutions, separate q/k/v attention weights, other modules).
    """
    inner = unwrap(model)
    name = canonical_name(param_name, parameter_aliases(inner))
    if name is None:
        raise MethodError(f"the model has no parameter {param_name!r}; pick names from "
                          "prunelab.core.masks.prunable_parameters(model)")
    module_name, _, attribute = name.rpartition(".")
    module = inner.get_submodule(module_name)
    if isinstance(module, nn.MultiheadAttention):
        if attribute == "in_proj_weight":
            return LayerView(name, module, "mha_in", module)
        if attribute in _MHA_SEPARATE:
            raise MethodError(
                f"{name!r}: attention with separate q/k/v projection weights (kdim or vdim differ "
                "from embed_dim) cannot be fitted layer-wise; leave them dense, e.g. "
                "prunelab.Masks.ones(model, exclude=('*_proj_weight',))")
    if attribute != "weight":
        raise MethodError(f"layer-wise pruning fits '<module>.weight' (or an attention's "
                          f"in_proj_weight), got {name!r}")
    if is_hf_conv1d(module):
        return LayerView(name, module, "hf_conv1d", module)
    if isinstance(module, nn.Linear):
        parent_name, _, child = module_name.rpartition(".")
        parent = inner.get_submodule(parent_name) if module_name else None
        if isinstance(parent, nn.MultiheadAttention) and child == "out_proj":
            return LayerView(name, module, "mha_out", parent)
        return LayerView(name, module, "linear", module)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        _check_conv(module, module_name)
        return LayerView(name, module, "conv", module)
    raise MethodError(f"layer {module_name!r} is a {type(module).__name__}; layer-wise methods "
                      "handle nn.Linear, nn.Conv1d, nn.Conv2d, HuggingFace Conv1D and "
                      "nn.MultiheadAttention only")

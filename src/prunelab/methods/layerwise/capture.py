"""Calibration rows of one layer: its inputs and its original outputs, captured by forward hooks.

The calibration data may be anything :func:`prunelab.training.batches.as_calibration` accepts (a
``Split``, a tensor of inputs, an ``(x, y)`` pair, a ``TensorDataset``, a ``DataLoader`` of
``(x, y)`` or of dicts of token ids, or a ``Calibration`` with its own ``forward_fn``). Tensor
inputs of one shape are forwarded in chunks of the same size whichever way they came (so a
``Split``, a tensor and a ``DataLoader`` of the same data give the same rows bit for bit); other
batches (dicts, tensors of varying shapes, whole batches for a ``forward_fn``) are forwarded as
they come. Every forward runs on the
model's device and stops as soon as the layer's rows are taken (the rest of the network is
skipped). Rows stay on the model's device.

Memory is bounded: at most ``max_samples`` rows (sampled uniformly without replacement, seeded)
are held, chosen before the capture from the total row count; :attr:`LayerData.nbytes` says how
many bytes that is.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from prunelab.errors import ConfigError, MethodError
from prunelab.methods.layerwise.layers import LayerView, im2col, layer_view, output_rows
from prunelab.training.batches import Calibration, as_calibration, tensor_pair

# Elements of im2col patches materialised per forward batch (64 MiB of float32), so capture of a
# conv layer never holds a full (batch * positions, d_in) matrix for a large batch.
_PATCH_BUDGET = 1 << 24


@dataclass
class LayerData:
    """Calibration rows of one layer, seen as a matrix product.

    Attributes:
        name: the layer's weight parameter name, e.g. ``"net.2.weight"``.
        inputs: ``(rows, d_in)`` float32 layer inputs (im2col patches for a conv layer), on the
            model's device.
        outputs: ``(rows, d_out)`` float32 *pre-activation* outputs ``W x + b`` of the reference
            (unpruned) layer on the reference inputs. Methods that fit post-ReLU targets (FeTa,
            Net-Trim) apply ``relu`` themselves.
        n_samples: calibration samples (images, sequences) that were forwarded.
        rows_total: rows those samples give (``n_samples * positions`` for a conv layer, tokens
            for a language model).
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


class CalibrationFeed:
    """Calibration inputs as the capture forwards them (see the module docstring).

    Attributes:
        x: all inputs as one tensor (forwarded in chunks), or None.
        batches: the batches forwarded as they come (when ``x`` is None).
        batch_size: the largest chunk of ``x`` forwarded at once.
        calibration: the :class:`~prunelab.training.batches.Calibration` whose ``forward`` runs
            the model on one chunk or batch.
    """

    def __init__(self, x: torch.Tensor | None, batches: list | None, batch_size: int,
                 calibration: Calibration):
        self.x, self.batches, self.batch_size, self.calibration = x, batches, batch_size, calibration

    @property
    def n_samples(self) -> int:
        """Samples over all inputs."""
        return int(self.x.shape[0]) if self.x is not None else self.calibration.num_samples

    def forward(self, model: nn.Module, inputs) -> None:
        """Run ``model`` on one chunk or batch (moved to its device)."""
        self.calibration.forward(model, inputs)


def calibration_feed(calib, forward_fn=None, batch_size: int = 1000) -> CalibrationFeed:
    """A :class:`CalibrationFeed` from any calibration data (module docstring).

    Args:
        calib: a ``Split``/``Dataset``, a tensor of inputs, an ``(x, y)`` pair, a
            ``TensorDataset``, a ``DataLoader`` or iterable of batches, a ``Calibration``, or a
            :class:`CalibrationFeed` (returned as it is).
        forward_fn: ``forward_fn(model, batch)`` as in training (a ``DataLoader``'s batches reach it
            whole; in-memory tensors as chunks of the inputs); default ``model(x)`` /
            ``model(**inputs)``.
        batch_size: the largest chunk of tensor inputs forwarded at once.

    Returns:
        A :class:`CalibrationFeed`; a ``DataLoader`` is read once, here.

    Raises:
        ConfigError: no data, empty data, or something that is not data.

    Example:
        >>> feed = calibration_feed(loader, forward_fn=lambda model, batch: model(input_ids=batch[0]))
        >>> data = capture(model, "fc1.weight", feed)
    """
    if isinstance(calib, CalibrationFeed):
        return calib
    if calib is None:
        raise ConfigError("calibration data is missing: pass calib= a Split, a tensor of inputs, "
                          "an (x, y) pair, a TensorDataset or a DataLoader")
    x = calib if isinstance(calib, torch.Tensor) else getattr(calib, "x", None)
    if not isinstance(x, torch.Tensor):
        pair = tensor_pair(calib)
        x = pair[0] if pair is not None else None
    if x is not None:
        if x.dim() == 0 or x.shape[0] == 0:
            raise ConfigError("calibration data is empty; pass a Split with at least one sample")
        return CalibrationFeed(x, None, batch_size, Calibration([], forward_fn))
    calibration = as_calibration(calib, forward_fn)
    batches = calibration.batches
    if all(isinstance(b, torch.Tensor) and b.dim() > 0 for b in batches) and \
            len({tuple(b.shape[1:]) for b in batches}) == 1:
        # Re-chunked like in-memory data, so the batching of a DataLoader changes no bit.
        largest = max(int(b.shape[0]) for b in batches)
        return CalibrationFeed(torch.cat(batches), None, min(batch_size, largest), calibration)
    return CalibrationFeed(None, list(batches), batch_size, calibration)


class _StopForward(Exception):
    """Raised inside a hook: the layer's rows are captured, the rest of the forward is skipped."""


@contextmanager
def _attention_fastpath_off():
    """Disable ``nn.TransformerEncoderLayer``'s fused fast path, which never calls its attention
    module (so no hook would see the attention's inputs)."""
    backend = getattr(torch.backends, "mha", None)
    if backend is None or not hasattr(backend, "set_fastpath_enabled"):
        yield
        return
    before = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backend.set_fastpath_enabled(before)


def _first_input(args: tuple, kwargs: dict, position: int = 0, key: str | None = None):
    if len(args) > position:
        return args[position]
    if key is not None and key in kwargs:
        return kwargs[key]
    if position == 0 and kwargs:
        return next(iter(kwargs.values()))
    return None


def _attention_query(view: LayerView, args: tuple, kwargs: dict) -> torch.Tensor:
    query = _first_input(args, kwargs, 0, "query")
    key = _first_input(args, kwargs, 1, "key")
    value = _first_input(args, kwargs, 2, "value")
    for other in (key, value):
        if other is not query and not (isinstance(other, torch.Tensor) and other.shape == query.shape
                                       and torch.equal(other, query)):
            raise MethodError(f"{view.name!r}: layer-wise methods fit the in_proj_weight of "
                              "self-attention only (query, key and value the same tensor); this "
                              "attention gets different ones, leave it dense")
    return query


def _attention_heads(view: LayerView, args: tuple, kwargs: dict) -> torch.Tensor:
    """The attention's concatenated heads: its output with an identity output projection."""
    attention = view.host
    weight = view.module.weight
    substitutes = {"out_proj.weight": torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)}
    if view.module.bias is not None:
        substitutes["out_proj.bias"] = torch.zeros_like(view.module.bias)
    out = functional_call(attention, substitutes, args, kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def _forward_rows(model: nn.Module, view: LayerView, feed: CalibrationFeed, chunks: Iterable,
                  want: str, keep: np.ndarray | None = None) -> torch.Tensor | int:
    """Forward ``chunks`` through ``model`` and collect the selected rows of ``view``'s input
    (``want="inputs"``) or output (``"outputs"``), or count the input rows (``"count"``)."""
    collected: list[torch.Tensor] = []
    state = {"row0": 0, "fired": False, "busy": False}

    def take(rows: torch.Tensor, outputs_from_rows: bool = False):
        state["fired"] = True
        start = state["row0"]
        state["row0"] += rows.shape[0]
        if want != "count":
            if keep is not None:
                lo, hi = np.searchsorted(keep, [start, state["row0"]])
                rows = rows[torch.from_numpy(keep[lo:hi] - start).to(rows.device)]
            if outputs_from_rows:
                rows = view.linear_outputs(rows)
            collected.append(rows.detach().to(torch.float32).clone())
        raise _StopForward

    def hook(module, args, kwargs, out):
        if want == "outputs":
            take(output_rows(module, out))
        else:
            take(im2col(module, _first_input(args, kwargs)))

    def attention_hook(module, args, kwargs):
        if state["busy"]:
            return None
        if view.kind == "mha_in" or want == "count":
            # The attention's output has the query's rows, so counting needs no attention pass.
            query = _attention_query(view, args, kwargs) if view.kind == "mha_in" else \
                _first_input(args, kwargs, 0, "query")
            take(query.reshape(-1, query.shape[-1]), want == "outputs")
        state["busy"] = True
        try:
            heads = _attention_heads(view, args, kwargs)
        finally:
            state["busy"] = False
        take(heads.reshape(-1, heads.shape[-1]), want == "outputs")

    if view.host is view.module and not view.computes_outputs:
        handle = view.module.register_forward_hook(hook, with_kwargs=True)
    else:
        handle = view.host.register_forward_pre_hook(attention_hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        with _attention_fastpath_off():
            for chunk in chunks:
                state["fired"] = False
                try:
                    feed.forward(model, chunk)
                except _StopForward:
                    pass
                if not state["fired"]:
                    raise MethodError(f"layer {view.name!r} was not called by the calibration forward; "
                                      "layer-wise methods prune layers the model calls as modules "
                                      "(or pass a forward_fn that runs the model on a batch)")
    finally:
        handle.remove()
        model.train(was_training)
    if want == "count":
        return state["row0"]
    if collected:
        return torch.cat(collected)
    return torch.empty(0, view.input_width(), device=view.parameter.device)


def _row_selection(total: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    """Sorted row indices to keep, or None for all rows."""
    if max_samples is None or total <= max_samples:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=max_samples, replace=False))


@torch.no_grad()
def capture(model: nn.Module, param_name: str, x, *, reference: nn.Module | None = None,
            max_samples: int | None = None, batch_size: int = 1000, seed: int = 0,
            forward_fn=None) -> LayerData:
    """Capture a layer's input rows and original output rows on calibration inputs.

    Args:
        model: network whose layer *inputs* are captured (in sequential mode: the partly pruned
            network).
        param_name: the layer's weight name, e.g. ``"net.2.weight"``.
        x: calibration data: a tensor of inputs ``(n, *in_shape)`` (already normalised), or
            anything :func:`calibration_feed` accepts.
        reference: network whose layer *outputs* are the targets (the unpruned network); default
            ``model``. It must have the same architecture.
        max_samples: keep at most this many rows (a conv layer gives one row per output position
            and sample, a language model one per token), drawn uniformly without replacement
            with ``seed``; None keeps all.
        batch_size: samples per forward pass of tensor inputs.
        seed: seed of the row subsample.
        forward_fn: ``forward_fn(model, batch)`` running the model on one batch (see
            :func:`calibration_feed`).

    Returns:
        :class:`LayerData` with matching rows of inputs and pre-activation outputs.

    Raises:
        MethodError: unsupported layer, an unknown name, or a layer the forward never calls.
        ConfigError: empty calibration data or a bad ``max_samples``/``batch_size``.

    Example:
        >>> data = capture(gpt2, "transformer.h.0.mlp.c_fc.weight", loader, max_samples=4096)
        >>> data.inputs.shape, data.outputs.shape      # (4096, 64), (4096, 256)
    """
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be a positive int or None, got {max_samples}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    feed = calibration_feed(x, forward_fn, batch_size)
    reference = model if reference is None else reference
    view = layer_view(model, param_name)
    ref_view = layer_view(reference, param_name)
    if ref_view.parameter.shape != view.parameter.shape:
        raise MethodError(f"reference layer {param_name!r} has shape "
                          f"{tuple(ref_view.parameter.shape)}, model has {tuple(view.parameter.shape)}")
    if feed.x is not None:
        inputs = feed.x
        n = int(inputs.shape[0])
        # One sample tells how many rows (output positions) each sample gives.
        per_sample = _forward_rows(model, view, feed, [inputs[:1]], "count")
        total = per_sample * n
        d_in = view.input_width()
        batch = max(1, min(feed.batch_size, _PATCH_BUDGET // max(1, per_sample * d_in)))
        chunks = lambda: (inputs[i:i + batch] for i in range(0, n, batch))  # noqa: E731
    else:
        total = _forward_rows(model, view, feed, feed.batches, "count")
        chunks = lambda: feed.batches  # noqa: E731
    keep = _row_selection(total, max_samples, seed)
    layer_inputs = _forward_rows(model, view, feed, chunks(), "inputs", keep)
    layer_outputs = _forward_rows(reference, ref_view, feed, chunks(), "outputs", keep)
    return LayerData(param_name, layer_inputs, layer_outputs, feed.n_samples, int(total))

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
many bytes that is. Methods that need only statistics of the rows (SparseGPT the Gram matrix
``XᵀX``, Wanda the column norms ``||X_j||²``) use :func:`capture_statistics`, which accumulates
them batch by batch and never holds more than one batch of rows.
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
        gram: from :func:`capture_statistics` only: ``Σ_rows x xᵀ`` in float64, ``(d_in, d_in)``;
            for a grouped conv only the diagonal blocks, ``(groups, d_in / groups, d_in / groups)``
            (group ``g``'s inputs never meet another group's weights). ``inputs`` and ``outputs``
            are then empty ``(0, ·)`` tensors.
        sq_norms: from :func:`capture_statistics` only: ``Σ_rows x_j²`` per input column, float64
            ``(d_in,)``.
        n_rows: rows the statistics sum over (None: ``inputs.shape[0]``).
        transient_bytes: the most bytes of rows and per-batch products held at once while the
            statistics were accumulated (0 for captured rows).
    """

    name: str
    inputs: torch.Tensor
    outputs: torch.Tensor
    n_samples: int
    rows_total: int
    gram: torch.Tensor | None = None
    sq_norms: torch.Tensor | None = None
    n_rows: int | None = None
    transient_bytes: int = 0

    @property
    def rows(self) -> int:
        """Calibration rows the layer is fitted on (held, or summed into the statistics)."""
        return int(self.inputs.shape[0]) if self.n_rows is None else self.n_rows

    @property
    def nbytes(self) -> int:
        """Peak bytes of the capture: ``inputs``, ``outputs``, the statistics, and the largest
        batch held while accumulating them."""
        held = self.inputs.numel() * self.inputs.element_size() + \
            self.outputs.numel() * self.outputs.element_size()
        for stat in (self.gram, self.sq_norms):
            if stat is not None:
                held += stat.numel() * stat.element_size()
        return held + self.transient_bytes

    def has_signal(self) -> bool:
        """Whether any input is non-zero on the calibration rows (else there is nothing to fit)."""
        if self.gram is not None:
            return bool(self.gram.diagonal(dim1=-2, dim2=-1).any())
        if self.sq_norms is not None:
            return bool(self.sq_norms.any())
        return bool(self.inputs.any())

    def group(self, g: int, groups: int, out: slice) -> "LayerData":
        """Group ``g`` of a grouped conv as its own layer: its input columns (its Gram block, its
        norms) and the outputs ``out``."""
        width = self.inputs.shape[1] // groups
        cols = slice(g * width, (g + 1) * width)
        gram = self.gram
        if gram is not None:
            gram = gram[g] if gram.dim() == 3 else gram[cols, cols].contiguous()
        return LayerData(self.name, self.inputs[:, cols].contiguous(), self.outputs[:, out].contiguous(),
                         self.n_samples, self.rows_total, gram,
                         None if self.sq_norms is None else self.sq_norms[cols],
                         self.n_rows, self.transient_bytes)


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
                  want: str, keep: np.ndarray | None = None, consume=None) -> torch.Tensor | int:
    """Forward ``chunks`` through ``model`` and collect the selected rows of ``view``'s input
    (``want="inputs"``) or output (``"outputs"``), or count the input rows (``"count"``).
    With ``consume``, each batch's selected float32 rows go to ``consume(rows)`` instead of being
    kept."""
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
            if consume is not None:
                consume(rows.detach().to(torch.float32))
            else:
                collected.append(rows.detach().to(torch.float32).clone())
        raise _StopForward

    def hook(module, args, kwargs, out):
        if want == "outputs":
            take(output_rows(module, out))
        else:
            take(im2col(module, _first_input(args, kwargs)))

    def input_hook(module, args, kwargs):
        # Inputs are known before the layer runs: its own product is skipped too.
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
        if want == "outputs":
            handle = view.module.register_forward_hook(hook, with_kwargs=True)
        else:
            handle = view.module.register_forward_pre_hook(input_hook, with_kwargs=True)
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
    _check_capture_args(max_samples, batch_size)
    feed = calibration_feed(x, forward_fn, batch_size)
    reference = model if reference is None else reference
    view = layer_view(model, param_name)
    ref_view = layer_view(reference, param_name)
    if ref_view.parameter.shape != view.parameter.shape:
        raise MethodError(f"reference layer {param_name!r} has shape "
                          f"{tuple(ref_view.parameter.shape)}, model has {tuple(view.parameter.shape)}")
    chunks, total = _chunks(model, view, feed)
    keep = _row_selection(total, max_samples, seed)
    layer_inputs = _forward_rows(model, view, feed, chunks(), "inputs", keep)
    layer_outputs = _forward_rows(reference, ref_view, feed, chunks(), "outputs", keep)
    return LayerData(param_name, layer_inputs, layer_outputs, feed.n_samples, int(total))


def _check_capture_args(max_samples: int | None, batch_size: int) -> None:
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be a positive int or None, got {max_samples}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def _chunks(model: nn.Module, view: LayerView, feed: CalibrationFeed):
    """``(chunks factory, total rows)``: tensor inputs in chunks sized so that one chunk's
    im2col patches stay within ``_PATCH_BUDGET``, other batches as they come."""
    if feed.x is not None:
        inputs = feed.x
        n = int(inputs.shape[0])
        # One sample tells how many rows (output positions) each sample gives.
        per_sample = _forward_rows(model, view, feed, [inputs[:1]], "count")
        batch = max(1, min(feed.batch_size, _PATCH_BUDGET // max(1, per_sample * view.input_width())))
        return (lambda: (inputs[i:i + batch] for i in range(0, n, batch))), per_sample * n
    return (lambda: feed.batches), _forward_rows(model, view, feed, feed.batches, "count")


#: what :func:`capture_statistics` can accumulate.
STATISTICS = ("gram", "norms")
#: rows summed into the float32 Gram accumulator before it is added to the float64 one.
_FLUSH_ROWS = 1 << 14


@torch.no_grad()
def capture_statistics(model: nn.Module, param_name: str, x, *, want: str = "gram",
                       max_samples: int | None = None, batch_size: int = 1000, seed: int = 0,
                       forward_fn=None) -> LayerData:
    """Accumulate statistics of a layer's input rows batch by batch, holding one batch at a time.

    ``want="gram"`` sums ``G = Σ_rows x xᵀ`` (the layer Hessian of the squared output error up to
    a factor, SparseGPT's ``H = 2XXᵀ``, Frantar & Alistarh 2023, Sec. 3); ``want="norms"`` sums
    ``Σ_rows x_j²`` per column (Wanda's ``||X_j||₂²``, Sun et al. 2024, Eq. 1). The Gram
    matrix is accumulated in place in float32 (the rows' precision, one BLAS call per batch) over
    at most ``_FLUSH_ROWS`` rows at a time, then added to a float64 sum, so summing millions of
    rows loses no precision; the norms likewise (float32 per batch, float64 across). The rows are the same as
    :func:`capture` would hold (same chunks, same ``max_samples`` subsample), and the layer's
    own product is skipped (inputs are taken by a forward pre-hook). No outputs are captured.

    Args:
        model: network whose layer inputs are summarised (the partly pruned one in sequential
            mode).
        param_name: the layer's weight name.
        x: calibration data (anything :func:`calibration_feed` accepts).
        want: ``"gram"`` or ``"norms"``.
        max_samples, batch_size, seed, forward_fn: as for :func:`capture`.

    Returns:
        :class:`LayerData` with empty ``(0, d_in)`` inputs and ``(0, d_out)`` outputs, ``gram`` or
        ``sq_norms`` set, ``n_rows`` the rows summed and ``transient_bytes`` the largest batch
        of rows (and its float32 copy) plus the float32 Gram accumulator. A grouped conv's ``gram`` holds only the diagonal
        blocks ``(groups, d_in / groups, d_in / groups)``.

    Raises:
        ConfigError: an unknown ``want``, empty data or a bad ``max_samples``/``batch_size``.
        MethodError: as :func:`capture`.

    Example:
        >>> stats = capture_statistics(model, "fc1.weight", data.train, want="gram")
        >>> stats.gram.shape, stats.n_rows      # (784, 784), 55000
    """
    if want not in STATISTICS:
        raise ConfigError(f"want must be one of {STATISTICS}, got {want!r}")
    _check_capture_args(max_samples, batch_size)
    feed = calibration_feed(x, forward_fn, batch_size)
    view = layer_view(model, param_name)
    chunks, total = _chunks(model, view, feed)
    keep = _row_selection(int(total), max_samples, seed)
    width, groups = view.input_width(), view.groups
    device = view.parameter.device
    if want == "gram":
        size = width // groups
        shape = (size, size) if groups == 1 else (groups, size, size)
        stat = torch.zeros(shape, dtype=torch.float64, device=device)
        partial = torch.zeros(shape, dtype=torch.float32, device=device)
    else:
        stat = torch.zeros(width, dtype=torch.float64, device=device)
        partial = None
    state = {"rows": 0, "peak": 0, "pending": 0}

    def flush() -> None:
        if partial is not None and state["pending"]:
            stat.add_(partial)
            partial.zero_()
            state["pending"] = 0

    def consume(rows: torch.Tensor) -> None:
        state["rows"] += rows.shape[0]
        if want == "norms":
            stat.add_(rows.square().sum(0))   # float32 within a batch, float64 across batches
        else:
            if state["pending"] + rows.shape[0] > _FLUSH_ROWS:
                flush()
            state["pending"] += rows.shape[0]
            if groups == 1:
                partial.addmm_(rows.T, rows)   # accumulates in place: no d_in² temporary
            else:
                per_group = rows.reshape(rows.shape[0], groups, -1).transpose(0, 1)
                partial.baddbmm_(per_group.transpose(1, 2), per_group)
        state["peak"] = max(state["peak"], 2 * rows.numel() * rows.element_size())

    _forward_rows(model, view, feed, chunks(), "inputs", keep, consume)
    flush()
    if partial is not None:
        state["peak"] += partial.numel() * partial.element_size()
    d_out = view.matrix().shape[0]
    empty_in = torch.empty(0, width, device=device)
    empty_out = torch.empty(0, d_out, device=device)
    return LayerData(param_name, empty_in, empty_out, feed.n_samples, int(total),
                     gram=stat if want == "gram" else None, sq_norms=stat if want == "norms" else None,
                     n_rows=state["rows"], transient_bytes=state["peak"])

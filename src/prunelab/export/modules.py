"""Inference modules that hold a pruned weight in CSR form: :class:`SparseLinear`, :class:`SparseConv2d`.

Two backends compute the same function:

- ``"native"``: the C kernel of :mod:`prunelab.export.native` (direct sparse convolution in a
  batch-innermost layout; a Linear layer is its 1x1 case), bias, an optional following ReLU
  and, for convolutions, an optional following non-overlapping max pooling fused in.
- ``"torch"``: PyTorch's CSR kernels, always available. Linear: ``y^T = addmm(b, W_csr, x^T)``,
  the fastest of the layouts measured (``x @ W^T`` with ``W^T`` in CSR and ``torch.sparse.mm`` were
  slower; see ``benchmarks/bench_export.py``). Conv: ``unfold`` (im2col) followed by the same
  product.

Both skip pruned weights, so the outputs equal the dense layer's up to float32 rounding of a
different summation order. One difference by design: a pruned weight contributes nothing even
where the input is inf or NaN (a dense layer would propagate ``0 * inf = NaN``).
The modules are for inference: their tensors are buffers, not parameters.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import ConfigError
from prunelab.export import native

__all__ = ["SparseLinear", "SparseConv2d", "conv_supported", "BACKENDS"]

BACKENDS = ("native", "torch")
_INT32_MAX = 2**31 - 1
#: Shift mode works through the input channels in segments of at most this many floats of
#: shifted input (32 KiB, a typical L1 data cache), each for every output channel: measured
#: best of 8 to 64 KiB on ResNet-18's 4x4 and 8x8 layers at batch 1.
_SEGMENT_FLOATS = 8192


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_supported(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot become a :class:`SparseConv2d`, or ``None`` if it can."""
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not supported (only Linear and Conv2d)"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} is not supported (only 'zeros')"
    if conv.weight.dtype != torch.float32:
        return f"weight dtype {conv.weight.dtype} is not supported (only float32)"
    return None


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding, resolving ``padding='same'`` as PyTorch does."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0, 0, 0, 0
        pads = []
        for d, k in zip(conv.dilation, conv.kernel_size):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return pads[0], pads[1], pads[2], pads[3]
    ph, pw = _pair(conv.padding)
    return ph, ph, pw, pw


class _CSRLayer(nn.Module):
    """Shared state: CSR weight over ``(out, in * kh * kw)``, bias, backend and descriptors."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, backend: str, relu: bool,
                 threads: int | None, block: int, groups: int = 1):
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"unknown sparse backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend == "native" and native.load() is None:
            raise ConfigError(f"the native sparse kernel is unavailable ({native.status()['reason']}); use backend='torch'")
        # Buffers made under torch.inference_mode() could never meet autograd again ("Inference
        # tensors cannot be saved for backward"): build ordinary ones whatever the caller's mode.
        with torch.inference_mode(False):
            self._build(weight, bias, groups)
        self.backend, self.relu, self.block = backend, bool(relu), int(block)
        # None: follow torch.get_num_threads() at every call, as PyTorch's own layers do
        self.threads = int(threads) if threads else None
        self._reset()

    def _build(self, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> None:
        # a grouped weight (out, in / groups * kh * kw) is stored as the block-diagonal
        # (out, in * kh * kw) one: group g's columns are shifted by g * (in / groups) * kh * kw
        w2 = weight.detach().reshape(weight.shape[0], -1).to(torch.float32)
        keep = w2 != 0
        if int(keep.sum()) > _INT32_MAX or w2.shape[1] * groups > _INT32_MAX:
            raise ConfigError("layer too large for 32-bit sparse indices; leave it dense")
        counts = keep.sum(dim=1)
        rows, cols = keep.nonzero().unbind(1)
        cols = cols + (rows // (w2.shape[0] // groups)) * w2.shape[1]
        self.register_buffer("crow", torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32))
        self.register_buffer("col", cols.to(torch.int32).contiguous())
        self.register_buffer("values", w2[keep].contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        # per-input-channel affine + ReLU applied to the input first (SparseConv2d.set_prologue)
        self.register_buffer("pro_scale", None)
        self.register_buffer("pro_shift", None)
        self.out_channels, self.fan_in = w2.shape[0], w2.shape[1] * groups

    #: Bumped whenever any layer drops its descriptors: a chain holding descriptors checks its
    #: layers again only when this changed (one comparison per call on the hot path).
    generation = 0

    def _reset(self) -> None:
        # native descriptors hold raw pointers to the buffers; _fast is (kernel, descriptor address)
        _CSRLayer.generation += 1
        self._descriptors: dict = {}
        self._csr = None
        self._fast = None

    # buffers moved or converted (``.to()``, ``.float()``): cached pointers and CSR are stale
    def _apply(self, fn, *args, **kwargs):
        self._reset()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):   # deepcopy / pickle: ctypes objects and raw pointers do not travel
        state = self.__dict__.copy()
        state.update(_descriptors={}, _csr=None, _fast=None)
        return state

    @property
    def nnz(self) -> int:
        """Number of stored (non-zero) weights."""
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        """Fraction of the weight that is zero."""
        total = self.out_channels * self.fan_in
        return 1.0 - self.nnz / total if total else 0.0

    def csr_weight(self) -> torch.Tensor:
        """The weight as a ``torch.sparse_csr_tensor`` of shape ``(out, in * kh * kw)``."""
        if self._csr is None:
            with warnings.catch_warnings(), torch.inference_mode(False):   # cached: an ordinary tensor
                warnings.simplefilter("ignore")   # "sparse CSR support is in beta"
                self._csr = torch.sparse_csr_tensor(
                    self.crow.to(torch.int64), self.col.to(torch.int64), self.values,
                    (self.out_channels, self.fan_in), check_invariants=False)
        return self._csr

    def _use_native(self, x: torch.Tensor) -> bool:
        return (self.backend == "native" and x.dtype == torch.float32 and x.device.type == "cpu"
                and not (x.requires_grad and torch.is_grad_enabled()))

    def _descriptor(self, fields: list[int], taps: torch.Tensor, pool: int = 1, ceil: bool = False,
                    taps2: torch.Tensor | None = None, seg: tuple | None = None,
                    windows: tuple | None = None) -> torch.Tensor:
        ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
        fields = fields + [ptr(self.crow), ptr(taps), ptr(self.values), ptr(self.bias), int(self.relu), self.block,
                           pool, int(ceil), ptr(self.pro_scale), ptr(self.pro_shift), ptr(taps2)]
        fields += [0, 0, 0] if seg is None else [ptr(seg[0]), seg[1], ptr(seg[2])]
        fields += [0, 0, 0] if windows is None else [ptr(t) for t in windows]
        with torch.inference_mode(False):   # an ordinary tensor: the window fields are filled in later, in place
            return torch.tensor(fields, dtype=torch.int64)

    def _windows(self, force: bool = False) -> tuple | None:
        """The weight in the native kernel's window format for batch 1 (``pl_window_build`` in
        ``csrc/sparse_kernel.c``): (group starts, steps, values), or ``None`` where the kernel
        has no use for it (a build without AVX2, fewer than 8 inputs) or its gather is as fast.

        ``benchmarks/bench_windows.py`` timed both on 24 random layers (1024 x 1024, 4096 x 1024,
        512 x 4096; 0.5-50 % dense), one thread: the windows won 1.2-3.5x wherever at least a
        quarter of their lanes hold a non-zero, and 1.07-1.5x with emptier lanes on rows of about
        20 non-zeros or fewer (where the gather pays for short rows); on 512 x 4096 at 1-2 % (rows
        of 41-82 non-zeros, 16-20 % of lanes filled) they lost by up to 6 %. Hence this rule, fitted
        to those points: windows unless fewer than 25 % of the lanes are filled and rows average
        32 non-zeros or more. ``force=True`` builds them regardless (for that benchmark)."""
        lib = native.get() or native.load()
        args = (self.out_channels, self.fan_in, self.crow.data_ptr(), self.col.data_ptr(), self.values.data_ptr())
        steps = lib.pl_window_build(*args, None, None, None)
        if steps <= 0 or (not force and self.nnz < 0.25 * 8 * steps and self.nnz >= 32 * self.out_channels):
            return None
        with torch.inference_mode(False):
            grp = torch.empty((self.out_channels + 7) // 8 + 1, dtype=torch.int32)
            step = torch.empty(steps, dtype=torch.int64)
            wval = torch.empty(8 * steps, dtype=torch.float32)
        lib.pl_window_build(*args, grp.data_ptr(), step.data_ptr(), wval.data_ptr())
        return grp, step, wval

    def chain_step(self, sample_shape: tuple) -> tuple[torch.Tensor, tuple] | None:
        """This layer as one step of a native chain for inputs of ``sample_shape`` (one sample):
        ``(descriptor, output sample shape)``, or ``None`` when the native kernel cannot run it
        (another backend, a shape it does not accept). The descriptor holds raw pointers into
        this layer's buffers: valid until they move (``_apply`` makes a new ``_descriptors``)."""
        raise NotImplementedError

    def _run_native(self, descriptor: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lib = native.get() or native.load()
        threads = self.threads or torch.get_num_threads()
        if lib.pl_sparse_forward(descriptor.data_ptr(), x.shape[0], x.data_ptr(), y.data_ptr(), threads) != 0:
            raise MemoryError("native sparse kernel: out of memory for its work buffers")
        return y

    def _torch_product(self, cols: torch.Tensor) -> torch.Tensor:
        """``W_csr @ cols + bias`` (cols: ``(in * kh * kw, n)``), ReLU if fused."""
        w = self.csr_weight().to(cols.dtype) if cols.dtype != torch.float32 else self.csr_weight()
        if self.bias is None:
            out = torch.mm(w, cols)
        else:
            out = torch.addmm(self.bias.to(cols.dtype).unsqueeze(1), w, cols)
        return torch.relu(out) if self.relu else out


class SparseLinear(_CSRLayer):
    """``nn.Linear`` with a CSR weight, optionally fused with the ReLU that follows it.

    Args:
        linear: the (pruned) dense layer; zeros in its weight are skipped.
        backend: ``"native"`` or ``"torch"`` (see the module docstring).
        relu: apply ReLU to the output (the caller removes the ReLU module it replaces).
        threads: threads of the native kernel (default: ``torch.get_num_threads()`` at each call).
        block: samples per block in the native kernel (its working set is ``in * block`` floats);
            0 picks 64.

    Example:
        >>> layer = SparseLinear(pruned_linear, backend="torch")
        >>> torch.allclose(layer(x), pruned_linear(x), atol=1e-5)
        True
    """

    def __init__(self, linear: nn.Linear, backend: str = "native", relu: bool = False,
                 threads: int | None = None, block: int = 0):
        super().__init__(linear.weight, linear.bias, backend, relu, threads, block)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self._fast
        # the common case in as few Python operations as possible: batch-1 latency is overhead
        if (fast is not None and x.dim() == 2 and x.shape[1] == self.in_features and x.dtype == torch.float32
                and x.is_cpu and not x.requires_grad):
            if x.shape[0] == 1 and "windows" not in self._descriptors:
                self._linear_descriptor(1)
            x = x.contiguous()
            y = x.new_empty(x.shape[0], self.out_features)
            if fast[0](fast[1], x.shape[0], x.data_ptr(), y.data_ptr(), self.threads or torch.get_num_threads()):
                raise MemoryError("native sparse kernel: out of memory for its work buffers")
            return y
        return self._forward(x)

    def chain_step(self, sample_shape: tuple) -> tuple[torch.Tensor, tuple] | None:
        if self.backend != "native" or tuple(sample_shape) != (self.in_features,):
            return None
        return self._linear_descriptor(), (self.out_features,)

    def _fields(self) -> list[int]:
        """The shape fields of the descriptor: a 1x1 convolution over ``in_features`` channels."""
        return [self.in_features, 1, 1, self.out_features, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1]

    def _linear_descriptor(self, batch: int = 0) -> torch.Tensor:
        """The native descriptor; at ``batch == 1`` with the window format filled in. The
        windows are built at the first batch-1 call only: they help no other batch size and take
        about as much memory as the CSR weight again (up to about 4.5x it on nearly empty layers)."""
        descriptor = self._descriptors.get(None)
        if descriptor is None:
            descriptor = self._descriptors[None] = self._descriptor(self._fields(), self.col)
        if batch == 1 and "windows" not in self._descriptors:
            windows = self._descriptors["windows"] = self._windows()   # kept alive beside the descriptor
            if windows is not None:   # in place: chain plans hold the descriptor's address
                descriptor[-3:] = torch.tensor([t.data_ptr() for t in windows], dtype=torch.int64)
        return descriptor

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ConfigError(f"SparseLinear expects inputs with {self.in_features} features, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self._use_native(x2):
            if self._descriptors.get(None) is None:
                self._fast = (native.load().pl_sparse_forward, self._linear_descriptor().data_ptr())
            descriptor = self._linear_descriptor(x2.shape[0])
            y = self._run_native(descriptor, x2.contiguous(), x2.new_empty(x2.shape[0], self.out_features))
        else:
            y = self._torch_product(x2.t()).t()
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"sparsity={self.sparsity:.4f}, bias={self.bias is not None}, relu={self.relu}, backend={self.backend}")


class SparseConv2d(_CSRLayer):
    """``nn.Conv2d`` (zero padding, any stride, dilation and groups, depthwise included) with a
    CSR weight, optionally fused with the ReLU and the non-overlapping max pooling that follow it
    (``conv -> ReLU -> MaxPool2d(k)``, as in LeNet-5 and VGG; ReLU and max commute, and pooling
    before writing the output saves writing and re-reading k*k times more data).

    Args:
        conv: the (pruned) dense layer; zeros in its weight are skipped.
        backend: ``"native"`` (direct sparse convolution) or ``"torch"`` (unfold + CSR product).
        relu: apply ReLU to the output.
        threads: threads of the native kernel (default: ``torch.get_num_threads()`` at each call).
        block: samples per block in the native kernel; 0 picks 8 (the input rows one tile reads
            then stay in L2 for every output channel).
        pool: window (= stride) of a fused ``MaxPool2d`` (no padding); 1 for none.
        pool_ceil: the pooling's ``ceil_mode`` (partial windows at the bottom and right edges).

    Raises:
        ConfigError: a convolution :func:`conv_supported` rejects.
    """

    def __init__(self, conv: nn.Conv2d, backend: str = "native", relu: bool = False,
                 threads: int | None = None, block: int = 0, pool: int = 1, pool_ceil: bool = False):
        reason = conv_supported(conv)
        if reason:
            raise ConfigError(f"cannot make a sparse convolution: {reason}; leave this layer dense")
        super().__init__(conv.weight, conv.bias, backend, relu, threads, block, conv.groups)
        self.groups = conv.groups
        self.in_channels = conv.in_channels
        self.kernel_size = _pair(conv.kernel_size)
        self.stride = _pair(conv.stride)
        self.dilation = _pair(conv.dilation)
        self.pads = _conv_padding(conv)   # top, bottom, left, right
        if int(pool) < 1:
            raise ConfigError(f"pool must be a window size >= 1, got {pool}")
        self.pool, self.pool_ceil = int(pool), bool(pool_ceil) and int(pool) > 1

    def set_prologue(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Compute ``conv(relu(x * scale[c] + shift[c]))`` from now on: the eval-mode BatchNorm and
        ReLU that precede the layer (a pre-activation ResNet block) applied while packing its input.

        Args:
            scale, shift: one value per input channel (``gamma / sqrt(var + eps)`` and
                ``beta - mean * scale`` for a BatchNorm).

        Raises:
            ConfigError: not one value per input channel.

        Example:
            >>> conv.set_prologue(*batchnorm_affine(bn))   # conv(relu(bn(x))) in one native call
        """
        if scale.numel() != self.in_channels or shift.numel() != self.in_channels:
            raise ConfigError(f"a prologue needs {self.in_channels} scales and shifts (one per input channel), "
                              f"got {scale.numel()} and {shift.numel()}")
        with torch.inference_mode(False):
            self.pro_scale = scale.detach().to(torch.float32).reshape(-1).clone()
            self.pro_shift = shift.detach().to(torch.float32).reshape(-1).clone()
        self._reset()

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw), (pt, pb, pl, pr) = self.kernel_size, self.stride, self.dilation, self.pads
        return (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1

    def _pooled(self, size: int) -> int:
        return -(-size // self.pool) if self.pool_ceil else size // self.pool

    def _native_descriptor(self, h: int, w: int):
        ho, wo = self._out_size(h, w)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        hp, wp = (ho - 1) * sh + (kh - 1) * dh + 1, (wo - 1) * sw + (kw - 1) * dw + 1
        hq, wq = -(-hp // sh), -(-wp // sw)   # extent of one stride phase of the padded input
        if self.in_channels * sh * sw * hq * wq > _INT32_MAX:
            return None
        # the kernel packs the padded input as (C, sh, sw, hq, wq, batch): padded pixel (y, x) in
        # phase (y % sh, x % sw) at (y // sh, x // sw), so weight (c, i, j) read by output
        # (oh, ow) sits at phase pixel tap + oh * wq + ow, stride 1 within the phase
        col = self.col.to(torch.int64)
        c, r = col // (kh * kw), col % (kh * kw)
        ry, rx = (r // kw) * dh, (r % kw) * dw
        plane = (c * sh + ry % sh) * sw + rx % sw
        taps = ((plane * hq + ry // sh) * wq + rx // sw).to(torch.int32)
        # shift mode (small outputs, where wq - wo junk pixels per row would cost the most): the
        # kernel copies each phase plane once per column offset q = rx // sw (of J), rows of wo
        # pixels, so weight (c, i, j) sits at ((plane * J + q) * hq + ry // sh) * wo + oh * wo + ow
        taps2, shifts = None, (kw - 1) * dw // sw + 1
        if wq > wo and self.in_channels * sh * sw * shifts * hq * wo <= _INT32_MAX:
            taps2 = (((plane * shifts + rx // sw) * hq + ry // sh) * wo).to(torch.int32)
        seg = None
        if taps2 is not None:
            seg = self._segments(c, max(1, _SEGMENT_FLOATS // (sh * sw * shifts * hq * wo)))
            if seg is not None:
                taps2, seg = taps2[seg[3]].contiguous(), seg[:3]
        fields = [self.in_channels, h, w, self.out_channels, ho, wo, kh, kw, sh, sw,
                  self.pads[0], self.pads[2], dh, dw]
        return self._descriptor(fields, taps, self.pool, self.pool_ceil, taps2, seg), taps, ho, wo, taps2, seg

    def _segments(self, channel: torch.Tensor, per: int) -> tuple | None:
        """The non-zeros in (input-channel segment, row) order, segments of ``per`` channels:
        ``(starts, k, values, order)`` with ``starts[j * out + o]`` the first of segment j of row o
        (int32, ``k * out + 1``), k the number of segments, the values in that order and the
        permutation giving it; None when there is one segment."""
        k = -(-self.in_channels // per)
        if k < 2:
            return None
        rows = torch.repeat_interleave(torch.arange(self.out_channels), (self.crow[1:] - self.crow[:-1]).to(torch.int64))
        keys = (channel // per) * self.out_channels + rows
        order = torch.sort(keys, stable=True).indices
        counts = torch.bincount(keys, minlength=k * self.out_channels)
        starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
        return starts, k, self.values[order].contiguous(), order

    def chain_step(self, sample_shape: tuple) -> tuple[torch.Tensor, tuple] | None:
        if self.backend != "native" or len(sample_shape) != 3 or sample_shape[0] != self.in_channels:
            return None
        h, w = int(sample_shape[1]), int(sample_shape[2])
        ho, wo = self._out_size(h, w)
        if self._pooled(ho) < 1 or self._pooled(wo) < 1:
            return None
        entry = self._descriptors.get((h, w))
        if entry is None:
            entry = self._descriptors[(h, w)] = self._native_descriptor(h, w)
        return None if entry is None else (entry[0], (self.out_channels, self._pooled(ho), self._pooled(wo)))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if residual is not None:   # a fused residual add (to_sparse's graph fusion): conv(x) + residual
            return self._forward_add(x, residual)
        fast = self._fast   # (kernel, descriptor address, H, W, output H, output W) of the last size
        if (fast is not None and x.dim() == 4 and x.shape[1] == self.in_channels and x.shape[2] == fast[2]
                and x.shape[3] == fast[3] and x.dtype == torch.float32 and x.is_cpu and not x.requires_grad):
            x = x.contiguous()
            y = x.new_empty(x.shape[0], self.out_channels, fast[4], fast[5])
            if fast[0](fast[1], x.shape[0], x.data_ptr(), y.data_ptr(), self.threads or torch.get_num_threads()):
                raise MemoryError("native sparse kernel: out of memory for its work buffers")
            return y
        return self._forward(x)

    def _forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        fast = self._fast
        if (fast is not None and isinstance(residual, torch.Tensor) and x.dim() == 4 and x.shape[1] == self.in_channels and x.shape[2] == fast[2]
                and x.shape[3] == fast[3] and x.dtype == torch.float32 and x.is_cpu and not x.requires_grad
                and residual.dtype == torch.float32 and residual.is_cpu and not residual.requires_grad
                and residual.shape == (x.shape[0], self.out_channels, fast[4], fast[5])):
            x, residual = x.contiguous(), residual.contiguous()
            y = x.new_empty(x.shape[0], self.out_channels, fast[4], fast[5])
            lib = native.get() or native.load()
            if lib.pl_sparse_forward_add(fast[1], x.shape[0], x.data_ptr(), y.data_ptr(),
                                         self.threads or torch.get_num_threads(), residual.data_ptr()):
                raise MemoryError("native sparse kernel: out of memory for its work buffers")
            return y
        return self.forward(x) + residual

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(f"SparseConv2d expects (batch, {self.in_channels}, H, W) inputs, got shape {tuple(x.shape)}")
        h, w = x.shape[2], x.shape[3]
        ho, wo = self._out_size(h, w)
        if self._pooled(ho) < 1 or self._pooled(wo) < 1:
            raise ConfigError(f"input {h}x{w} is too small for the convolution (and pooling) of this layer")
        if self._use_native(x):
            entry = self._descriptors.get((h, w))
            if entry is None:
                entry = self._descriptors[(h, w)] = self._native_descriptor(h, w)
            if entry is not None:
                self._fast = (native.load().pl_sparse_forward, entry[0].data_ptr(), h, w,
                              self._pooled(ho), self._pooled(wo))
                y = x.new_empty(x.shape[0], self.out_channels, self._pooled(ho), self._pooled(wo))
                return self._run_native(entry[0], x.contiguous(), y)
        out = self._torch_forward(x, ho, wo)
        return F.max_pool2d(out, self.pool, ceil_mode=self.pool_ceil) if self.pool > 1 else out

    def _torch_forward(self, x: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
        if self.pro_scale is not None:
            x = torch.relu(x * self.pro_scale.to(x.dtype).view(-1, 1, 1) + self.pro_shift.to(x.dtype).view(-1, 1, 1))
        pt, pb, pl, pr = self.pads
        if pt != pb or pl != pr:
            x = F.pad(x, (pl, pr, pt, pb))
            pt = pl = 0
        batch = x.shape[0]
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=(pt, pl), stride=self.stride)
        cols = cols.transpose(0, 1).reshape(self.fan_in, batch * ho * wo)
        out = self._torch_product(cols)
        return out.reshape(self.out_channels, batch, ho, wo).transpose(0, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"pads={self.pads}, dilation={self.dilation}, nnz={self.nnz}, sparsity={self.sparsity:.4f}, "
                f"groups={self.groups}, bias={self.bias is not None}, prologue={self.pro_scale is not None}, "
                f"relu={self.relu}, pool={self.pool}, "
                f"pool_ceil={self.pool_ceil}, backend={self.backend}")

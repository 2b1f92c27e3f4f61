"""Build and load the native sparse kernel (``csrc/sparse_kernel.c``) with the system C compiler.

One kernel serves ``nn.Linear`` and ``nn.Conv2d`` (groups=1): a *direct* sparse convolution in a
batch-innermost layout, in the spirit of Park et al. 2017, "Faster CNNs with Direct Sparse
Convolutions and Guided Pruning" (arXiv:1608.01409), instead of im2col + CSR:

1. pack: ``xp[c, hp, wp, b] = x[b, c, hp - pad_top, wp - pad_left]`` (zero outside) for a block of
   up to ``block`` samples; for a Linear layer this is a plain transpose ``x^T`` (in, batch). A
   convolution with a *prologue* (the pre-activation BatchNorm + ReLU that ``to_sparse`` fuses in)
   packs ``relu(x * scale[c] + shift[c])`` instead, padding still zero.
2. compute: for every output channel ``o`` and output row ``oh``, ``out[o, oh, :, :] = bias[o] +
   sum_p val[p] * xp[tap_p + oh*sh*Wp*nb ...]`` where each non-zero ``p`` of row ``o`` of the CSR
   weight ``W.reshape(O, C*KH*KW)`` is one *tap* offset ``(c*Hp + kh*dh)*Wp + kw*dw``. With stride 1
   along the width, the ``Wo * nb`` outputs of one row read ``Wo * nb`` contiguous inputs, so each
   non-zero is one long vector FMA (an implicit im2col row, never materialised). A Linear layer
   is the 1x1 case: ``y^T[o, :] = sum_p val[p] * x^T[col_p, :]``.
   Small outputs (a 4x4 or 8x8 output at batch 1, where the ``Wp - Wo`` padding pixels of each
   row would be up to half the lanes) use *shift mode*: the packed input is copied once per
   kernel column offset with rows of ``Wo`` pixels, so every non-zero reads ``Ho * Wo * nb``
   contiguous lanes with no junk, and the input channels are worked through in segments whose
   copies fit in L1 (the non-zeros stored again in segment order).
   A Linear layer at batch 1 (a sparse matrix-vector product) uses a *window format* instead
   (``pl_window_build``, built once per layer by :class:`~prunelab.export.modules.SparseLinear`):
   rows in groups of 8, one vector lane each; each step of a group loads 8 consecutive inputs,
   permutes them in the register (``vpermps``) so that every lane holds its row's input, and
   does one FMA with 8 stored weights (zero where a row has no non-zero in that window). It
   replaces an AVX2 gather per 8 non-zeros, which costs about as much as 8 scalar loads: on
   784-1024-1024-10 at 90 % sparsity the three products went from about 93 to 41 µs, although
   only 29-46 % of the lanes hold a non-zero.
3. unpack: transpose back to ``(batch, O, Ho, Wo)``, with bias and ReLU already applied.

The accumulation order differs from a dense GEMM, so results agree with PyTorch's to float32
rounding, not bit for bit.

The kernel is plain C (no PyTorch headers), read from the package with :mod:`importlib.resources`,
compiled in about a second and called through ``ctypes`` with raw tensor pointers. The compiler is
``$PRUNELAB_CC``, else ``$CC``, else ``gcc`` (then ``cc``). Everything degrades gracefully: with no
compiler, a failed build, or ``PRUNELAB_NATIVE=0`` in the environment, :func:`load` returns ``None``
and :mod:`prunelab.export.modules` uses PyTorch's own CSR kernels instead; a missing compiler or a
failed build is logged once as a warning on the ``prunelab.export`` logger (when the kernel is
first looked for), an explicit ``PRUNELAB_NATIVE=0`` at INFO level.

Builds are cached in ``$PRUNELAB_CACHE/kernels`` (default ``$XDG_CACHE_HOME/prunelab/kernels``,
i.e. ``~/.cache/prunelab/kernels``; a per-user folder under the system temp directory when that is
not writable) as ``prunelab_sparse_<key>.so``, where ``<key>`` hashes the source, the compiler
(path and ``--version``), the flags and the CPU (the build uses ``-march=native``). Libraries are
written atomically, so concurrent processes never load a half-written one, and a second process
(or a :func:`reset`) finds the cached library instead of compiling again.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch  # noqa: F401  (loaded first: its libgomp then also serves the kernel's OpenMP)

from prunelab.utils.io import atomic_path

__all__ = ["load", "get", "status", "reset", "kernel_source", "DESCRIPTOR_FIELDS", "SOURCES"]

#: Order of the int64 fields of a layer descriptor (``enum`` in the C source).
DESCRIPTOR_FIELDS = ("C", "H", "W", "O", "HO", "WO", "KH", "KW", "SH", "SW", "PT", "PL", "DH", "DW",
                     "ROWPTR", "TAPS", "VAL", "BIAS", "RELU", "BLOCK", "POOL", "POOL_CEIL", "PRO_SCALE",
                     "PRO_SHIFT", "TAPS2", "SEG", "NSEG", "VAL2", "WGRP", "WSTEP", "WVAL")
#: The C sources, joined in this order into one translation unit.
SOURCES = ("sparse_layout.c", "sparse_kernel.c")

# Tried in order; the first that compiles wins (a compiler may lack OpenMP or -march=native).
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3", "-fopenmp"),
    ("-O3",),
)
_BUILD_TIMEOUT_S = 120

_lock = threading.Lock()
_state: dict = {}
_logger = logging.getLogger("prunelab.export")


@functools.lru_cache(maxsize=None)
def kernel_source() -> str:
    """The C source of the kernel, as shipped in the package: the files of :data:`SOURCES` in
    ``csrc/``, joined in order (one translation unit, so one compiler call and one cache key)."""
    folder = importlib.resources.files("prunelab.export") / "csrc"
    return "\n".join((folder / name).read_bytes().decode("utf-8") for name in SOURCES)


def _cache_dir() -> Path:
    root = os.environ.get("PRUNELAB_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prunelab")
    path = Path(root) / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, delete=True)
        probe.close()
        return path
    except OSError:
        fallback = Path(tempfile.gettempdir()) / f"prunelab-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features", "CPU part")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return text


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


class _CompileError(Exception):
    """The compiler rejected the kernel with these flags (its stderr is the message)."""


def _build(cc: str) -> tuple[Path | None, tuple[str, ...], str]:
    """Compile the kernel (or find it cached). Returns (library path or None, flags, message)."""
    version = _compiler_version(cc)
    if not version:
        return None, (), f"compiler {cc!r} does not run"
    directory = _cache_dir()
    c_source = kernel_source()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256("\0".join([c_source, cc, version, " ".join(flags), _cpu_signature()]).encode()).hexdigest()[:20]
        target = directory / f"prunelab_sparse_{key}.so"
        if target.is_file():
            return target, flags, "cached"
        source = directory / f".prunelab_sparse_{key}_{os.getpid()}.c"
        try:
            source.write_text(c_source)
            with atomic_path(target) as partial:   # a killed build never leaves a half library under the key
                cmd = [cc, *flags, "-std=gnu11", "-shared", "-fPIC", "-o", str(partial), str(source)]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
                if done.returncode != 0:
                    raise _CompileError(done.stderr.strip()[-300:])
            return target, flags, "built"
        except (_CompileError, OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{' '.join(flags)}: {exc}")
        finally:
            source.unlink(missing_ok=True)
    return None, (), "compilation failed: " + " | ".join(errors)


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.pl_sparse_forward.restype = ctypes.c_int
    lib.pl_sparse_forward.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.pl_chain_forward.restype = ctypes.c_int
    lib.pl_chain_forward.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_int64, ctypes.c_int64]
    lib.pl_sparse_forward_add.restype = ctypes.c_int
    lib.pl_sparse_forward_add.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                          ctypes.c_int64, ctypes.c_void_p]
    lib.pl_graph_forward.restype = ctypes.c_int
    lib.pl_graph_forward.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.pl_window_build.restype = ctypes.c_int64
    lib.pl_window_build.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.pl_descriptor_length.restype = ctypes.c_int
    lib.pl_openmp.restype = ctypes.c_int
    if lib.pl_descriptor_length() != len(DESCRIPTOR_FIELDS):
        raise OSError("kernel descriptor layout does not match this version of prunelab")
    return lib


def load() -> ctypes.CDLL | None:
    """The native kernel library, building it on first use; ``None`` when it cannot be had.

    Returns:
        A ``ctypes.CDLL`` exposing ``pl_sparse_forward(descriptor, batch, x, y, threads)`` and
        ``pl_chain_forward(steps, n, batch, x, y, threads, max_elems)`` (``n`` layers in one call,
        ``steps`` their descriptors' addresses) and ``pl_sparse_forward_add(descriptor, batch, x,
        y, threads, residual)`` (``y = layer(x) + residual``) and ``pl_graph_forward(prog, n, batch,
        x, y, threads, nbufs, buf_elems)`` (a graph of layers with residual adds, see
        :mod:`prunelab.export.graph`), or ``None``
        (no compiler, failed build, non-x86/ARM oddities, or ``PRUNELAB_NATIVE=0``); the reason
        is in :func:`status`.
    """
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        started = time.perf_counter()
        lib, info = None, {}
        disabled = os.environ.get("PRUNELAB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")
        if disabled:
            info = {"reason": "disabled by PRUNELAB_NATIVE=0"}
        else:
            explicit = os.environ.get("PRUNELAB_CC")
            cc = explicit or os.environ.get("CC") or "gcc"
            resolved = shutil.which(cc) or (None if explicit else shutil.which("cc"))
            if resolved is None:
                info = {"reason": f"no C compiler found ({cc!r}); set PRUNELAB_CC to use one"}
            else:
                path, flags, message = _build(resolved)
                info = {"compiler": resolved, "flags": list(flags), "reason": message}
                if path is not None:
                    try:
                        lib = _bind(path)
                        info.update(path=str(path), openmp=bool(lib.pl_openmp()))
                    except OSError as exc:
                        info["reason"] = f"cannot load {path}: {exc}"
        info.update(available=lib is not None, seconds=round(time.perf_counter() - started, 3))
        _state.update(lib=lib, info=info)
        if lib is None:
            # once per look-up: load() caches its answer, so every later layer reuses it silently;
            # a user who switched the kernel off needs no warning about it
            level = logging.INFO if disabled else logging.WARNING
            _logger.log(level, "native sparse kernel unavailable (%s); sparse layers use PyTorch's CSR kernels",
                        info["reason"])
        return lib


def get() -> ctypes.CDLL | None:
    """The kernel if :func:`load` already succeeded, else ``None`` (no lock: the hot path)."""
    return _state.get("lib")


def status() -> dict:
    """How the native kernel was obtained: ``available``, ``reason``, ``compiler``, ``flags``,
    ``path``, ``openmp`` and ``seconds`` (build or cache look-up time). Loads it if needed."""
    load()
    return dict(_state["info"])


def reset() -> None:
    """Forget the loaded kernel so the next :func:`load` looks again (tests toggle
    ``PRUNELAB_NATIVE`` with it)."""
    with _lock:
        _state.clear()

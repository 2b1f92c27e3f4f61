"""Build and load the native sparse kernel (``_csrc.C_SOURCE``) with the system C compiler.

The kernel is plain C (no PyTorch headers), so it compiles in well under a second, and is called
through ``ctypes`` with raw tensor pointers. Everything degrades gracefully: with no compiler, a
failed build, or ``PRUNELAB_NATIVE=0`` in the environment, :func:`load` returns ``None`` and
:mod:`prunelab.export.modules` uses PyTorch's own CSR kernels instead.

Builds are cached in ``$PRUNELAB_CACHE/kernels`` (default ``~/.cache/prunelab/kernels``), keyed
by the source, the compiler, the flags and the CPU (the build uses ``-march=native``), and written
atomically, so concurrent processes never load a half-written library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch  # noqa: F401  (loaded first: its libgomp then also serves the kernel's OpenMP)

from prunelab.export._csrc import C_SOURCE

__all__ = ["load", "get", "status", "reset", "DESCRIPTOR_FIELDS"]

#: Order of the int64 fields of a layer descriptor (``enum`` in the C source).
DESCRIPTOR_FIELDS = ("C", "H", "W", "O", "HO", "WO", "KH", "KW", "SH", "SW", "PT", "PL", "DH", "DW",
                     "ROWPTR", "TAPS", "VAL", "BIAS", "RELU", "BLOCK", "THREADS", "POOL")

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


def _build(cc: str) -> tuple[Path | None, tuple[str, ...], str]:
    """Compile the kernel (or find it cached). Returns (library path or None, flags, message)."""
    version = _compiler_version(cc)
    if not version:
        return None, (), f"compiler {cc!r} does not run"
    directory = _cache_dir()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256("\0".join([C_SOURCE, cc, version, " ".join(flags), _cpu_signature()]).encode()).hexdigest()[:20]
        target = directory / f"prunelab_sparse_{key}.so"
        if target.is_file():
            return target, flags, "cached"
        source = directory / f".prunelab_sparse_{key}_{os.getpid()}.c"
        partial = directory / f".prunelab_sparse_{key}_{os.getpid()}.so"
        try:
            source.write_text(C_SOURCE)
            cmd = [cc, *flags, "-std=gnu11", "-shared", "-fPIC", "-o", str(partial), str(source)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
            if done.returncode == 0:
                os.replace(partial, target)
                return target, flags, "built"
            errors.append(f"{' '.join(flags)}: {done.stderr.strip()[-300:]}")
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{' '.join(flags)}: {exc}")
        finally:
            for leftover in (source, partial):
                try:
                    leftover.unlink()
                except OSError:
                    pass
    return None, (), "compilation failed: " + " | ".join(errors)


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.pl_sparse_forward.restype = ctypes.c_int
    lib.pl_sparse_forward.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.pl_descriptor_length.restype = ctypes.c_int
    lib.pl_openmp.restype = ctypes.c_int
    if lib.pl_descriptor_length() != len(DESCRIPTOR_FIELDS):
        raise OSError("kernel descriptor layout does not match this version of prunelab")
    return lib


def load() -> ctypes.CDLL | None:
    """The native kernel library, building it on first use; ``None`` when it cannot be had.

    Returns:
        A ``ctypes.CDLL`` exposing ``pl_sparse_forward(descriptor, batch, x, y)``, or ``None``
        (no compiler, failed build, non-x86/ARM oddities, or ``PRUNELAB_NATIVE=0``); the reason
        is in :func:`status`.
    """
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        started = time.perf_counter()
        lib, info = None, {}
        if os.environ.get("PRUNELAB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
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

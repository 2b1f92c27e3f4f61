"""CIFAR-10 (Krizhevsky 2009), from its python batches or its binary batches.

The python batches are pickles. They are read with a restricted unpickler that can only rebuild
numpy arrays and dtypes, so a crafted file cannot run code.
"""

from __future__ import annotations

import codecs
import functools
import importlib
import io
import pickle
import pickletools
from pathlib import Path

import numpy as np

from prunelab.data.files import FIX, file_key, read_bytes, search_paths
from prunelab.data.datasets import RawData, no_options, register
from prunelab.data.splits import STANDARD_STATS
from prunelab.errors import DataError

_CIFAR_PY = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_BIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _latin1_encode(text, encoding="latin1", errors="strict"):
    # Protocol-2 pickles from Python 3 store bytes as _codecs.encode(str, "latin1"). Any other
    # codec is refused, so that this one allowed global cannot run arbitrary codecs.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1", errors)


def _numpy_global(module: str, name: str):
    # numpy 2 renamed numpy.core to numpy._core and warns on the old name; CIFAR's Python 2
    # pickles use the old one, so the new name is tried first.
    for candidate in (module.replace("numpy.core", "numpy._core"),
                      module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"{module}.{name} is not available in this numpy")


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays and dtypes. Any other global is refused, so no code can run."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in self._ALLOWED:
            return _numpy_global(module, name)
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not allowed in a CIFAR batch (only numpy arrays are)"
        )


def _read_cifar_py_batch(path: Path, fix: str) -> tuple[np.ndarray, np.ndarray]:
    # Unpickled from memory: reading from the file, the unpickler asks it for as many bytes as a
    # length field says (a damaged one may say gigabytes), and the file allocates them.
    data = read_bytes(path, fix)
    try:
        _check_memo_indices(data)
        # The original batches are Python 2 pickles; "bytes" keeps their str keys as bytes.
        batch = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"refusing to load {path}: {_one_line(err)}; {fix}") from err
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, OSError,
            MemoryError, OverflowError, SystemError) as err:   # SystemError: numpy, on a malformed dtype state
        raise DataError(f"{path} is truncated or not a CIFAR-10 python batch ({_one_line(err)}); {fix}") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (no dict inside); {fix}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path} has no uint8 'data' array of shape (n, 3072); {fix}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path} has malformed 'labels' ({err}); {fix}") from err
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path} holds {data.shape[0]} images but {labels.size} labels; {fix}"
        )
    _check_labels(labels, path, fix)
    return data.reshape(-1, 3, 32, 32), labels


def _check_memo_indices(data: bytes) -> None:
    """UnpicklingError when a memo index exceeds the number of opcodes before it. A pickler
    numbers its memo entries 0, 1, 2...; the C unpickler sizes its memo table by the largest
    index it meets, so one damaged index would allocate gigabytes."""
    for count, (op, arg, _) in enumerate(pickletools.genops(data)):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > count:
            raise pickle.UnpicklingError(f"memo index {arg} at opcode {count} (a damaged pickle)")


def _one_line(err: BaseException) -> str:
    # Some unpickler messages span lines; the CLI prints an error on one.
    return " ".join(str(err).split()) or type(err).__name__


def _read_cifar_bin_batch(path: Path, fix: str) -> tuple[np.ndarray, np.ndarray]:
    data = read_bytes(path, fix)
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DataError(
            f"{path} is truncated or damaged: {len(data)} bytes is not a whole number of "
            f"{_CIFAR_RECORD}-byte CIFAR-10 records; {fix}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, path, fix)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _check_labels(labels: np.ndarray, path: Path, fix: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise DataError(f"{path} has labels outside 0..9; {fix}")


@functools.lru_cache(maxsize=2)
def _parse_cifar(binary: bool, keys: tuple[tuple[str, int, int], ...]) -> tuple[np.ndarray, ...]:
    reader = _read_cifar_bin_batch if binary else _read_cifar_py_batch
    parts = [reader(Path(k[0]), FIX["cifar10"]) for k in keys]
    train_x = np.concatenate([x for x, _ in parts[:-1]])
    train_y = np.concatenate([y for _, y in parts[:-1]])
    test_x, test_y = parts[-1]
    test_x = np.ascontiguousarray(test_x)
    for array in (train_x, train_y, test_x, test_y):
        array.flags.writeable = False  # shared through the cache: nobody may modify it
    return train_x, train_y, test_x, test_y


@register("cifar10")
def _load_cifar10(data_dir=None, **kwargs) -> RawData:
    """CIFAR-10 (Krizhevsky 2009): 50000 train / 10000 test 32x32 RGB images, 10 classes."""
    no_options("cifar10", kwargs)
    searched: list[str] = []
    archives: list[str] = []
    for folder in search_paths("cifar10", data_dir):
        searched.append(str(folder))
        if not folder.is_dir():
            continue
        for binary, names in ((False, _CIFAR_PY), (True, _CIFAR_BIN)):
            paths = [folder / n for n in names]
            if all(p.is_file() for p in paths):
                keys = tuple(file_key(p) for p in paths)
                train_x, train_y, test_x, test_y = _parse_cifar(binary, keys)
                fmt = "binary batches" if binary else "python batches"
                return RawData(train_x, train_y, test_x, test_y, 10, f"{folder} (CIFAR-10 {fmt})",
                               255.0, *STANDARD_STATS["cifar10"])
        for archive in ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"):
            if (folder / archive).is_file():
                archives.append(str(folder / archive))
    note = (f" Found {', '.join(archives)}: extract it there (tar xzf ARCHIVE) and retry."
            if archives else "")
    raise DataError(
        "CIFAR-10 not found: looked for cifar-10-batches-py (data_batch_1..5, test_batch) or "
        f"cifar-10-batches-bin (*.bin) in: {'; '.join(searched)}.{note} To get it: download "
        "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it in a "
        "folder DIR and pass --data-dir DIR or set PRUNELAB_DATA=DIR. prunelab never downloads."
    )
